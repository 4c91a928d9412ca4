from corpus_aligner.cli import main

main()
