if __name__ == "__main__":  # a spawned loader process imports this module as `__mp_main__`: nothing to run there
    from corpus_aligner.cli import main

    main()
