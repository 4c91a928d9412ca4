"""The configuration schema: structured-config dataclasses that Hydra checks the YAML in `conf/` against.

YAML only picks values; every key, type and default lives here, so a misspelt key fails at start-up.
Library code receives these dataclasses (converted once in cli.py) and never imports Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class LibriSpeechConfig:
    """A corpus in LibriSpeech's layout: <root>/<part>/<speaker>/<chapter>/<utt>.flac + *.trans.txt."""

    kind: str = "librispeech"
    # None: the real LibriSpeech sample shipped in corpus_aligner/data/librispeech (CC BY 4.0).
    root: str | None = None
    # Subsets to align (e.g. [dev-clean, test-clean]); None aligns every part found under root.
    parts: list[str] | None = None
    language: str = "English"


@dataclass
class ManifestConfig:
    """A NeMo-style JSON-lines manifest, or a CSV/TSV with the same columns."""

    kind: str = "manifest"
    path: str = MISSING
    # "auto" picks by extension: .json/.jsonl -> jsonl, .csv -> csv, .tsv -> tsv.
    format: str = "auto"
    # Used for rows without a `language` column.
    language: str = "English"


@dataclass
class ModelConfig:
    """Which weights to load; see conf/model/*.yaml."""

    # A Hugging Face repo id or a local checkpoint folder (official or MLX layout).
    path: str = MISSING
    revision: str | None = None
    # None: float32 on the CPU, the checkpoint's own dtype on a GPU.
    dtype: str | None = None
    # "windowed" (8-s windows, how the model is served) or "full" (the official CPU behaviour).
    encoder_attention: str = "windowed"
    # True (model=tiny): `path` is a folder that receives a tiny RANDOM checkpoint if it has none.
    # For tests and demos only: the times it gives are meaningless.
    random_tiny: bool = False
    tiny_seed: int = 0


@dataclass
class BatchConfig:
    """Batch packing by padded cost: n_utterances * longest sequence <= budget_positions."""

    # Decoder positions per batch, padding included (about 13 per audio second + 3-4 per word).
    budget_positions: int = MISSING
    max_utterances: int = MISSING


@dataclass
class OutputConfig:
    # Where TextGrids, Parquet and reports go; by default the Hydra run dir (outputs/<corpus>).
    dir: str = "${hydra:runtime.output_dir}"
    textgrid: bool = True
    # A tqdm bar in audio hours; shown only when stderr is a terminal.
    progress: bool = True


@dataclass
class ShardConfig:
    """Align only the utterances whose id hashes to `index` modulo `count` (see corpus.select_shard)."""

    index: int = 0
    count: int = 1


@dataclass
class AppConfig:
    # LibriSpeechConfig or ManifestConfig, chosen by the `corpus` config group.
    corpus: Any = MISSING
    model: ModelConfig = MISSING
    batch: BatchConfig = MISSING
    output: OutputConfig = MISSING
    shard: ShardConfig = field(default_factory=ShardConfig)


CORPUS_TYPES = (LibriSpeechConfig, ManifestConfig)


def validate(cfg: AppConfig) -> AppConfig:
    """Checks that the types alone cannot express; raises ValueError with the key to fix."""
    if not isinstance(cfg.corpus, CORPUS_TYPES):
        raise ValueError(f"corpus must be one of the corpus configs, got {type(cfg.corpus).__name__}")
    if isinstance(cfg.corpus, ManifestConfig) and cfg.corpus.format not in ("auto", "jsonl", "csv", "tsv"):
        raise ValueError(f"corpus.format must be auto, jsonl, csv or tsv, got {cfg.corpus.format!r}")
    if cfg.shard.count < 1 or not 0 <= cfg.shard.index < cfg.shard.count:
        raise ValueError(f"need 0 <= shard.index < shard.count, got {cfg.shard.index} of {cfg.shard.count}")
    if cfg.batch.budget_positions < 1 or cfg.batch.max_utterances < 1:
        raise ValueError("batch.budget_positions and batch.max_utterances must be at least 1")
    if cfg.model.encoder_attention not in ("windowed", "full"):
        raise ValueError(f"model.encoder_attention must be windowed or full, got {cfg.model.encoder_attention!r}")
    return cfg
