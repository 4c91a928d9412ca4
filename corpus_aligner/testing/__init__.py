"""Factories for tests, demos and benches: tiny random checkpoints and tiny generated corpora."""

from corpus_aligner.testing.tiny_corpus import TinyCorpus, tiny_librispeech, tiny_manifest

__all__ = ["TinyCorpus", "tiny_librispeech", "tiny_manifest"]
