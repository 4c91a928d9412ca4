"""The configuration schema: structured-config dataclasses that Hydra checks the YAML in `conf/` against.

YAML only picks values; every key, type and default lives here, so a misspelt key fails at start-up.
Library code receives these frozen dataclasses (converted once in cli.py) and never imports Hydra.
OmegaConf makes a frozen dataclass node read-only, so Hydra composes against mutable twins of these
classes (`hydra_schema`) and `freeze` turns its result back into the frozen ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any, get_type_hints

from omegaconf import MISSING


@dataclass(frozen=True)
class LibriSpeechConfig:
    """A corpus in LibriSpeech's layout: <root>/<part>/<speaker>/<chapter>/<utt>.flac + *.trans.txt."""

    kind: str = "librispeech"
    # None: the real LibriSpeech sample shipped in corpus_aligner/data/librispeech (CC BY 4.0).
    root: str | None = None
    # Subsets to align (e.g. [dev-clean, test-clean]); None aligns every part found under root.
    parts: list[str] | None = None
    language: str = "English"


@dataclass(frozen=True)
class ManifestConfig:
    """A NeMo-style JSON-lines manifest, or a CSV/TSV with the same columns."""

    kind: str = "manifest"
    path: str = MISSING
    # "auto" picks by extension: .json/.jsonl -> jsonl, .csv -> csv, .tsv -> tsv.
    format: str = "auto"
    # Used for rows without a `language` column.
    language: str = "English"


@dataclass(frozen=True)
class ModelConfig:
    """Which weights to load; see conf/model/*.yaml."""

    # A Hugging Face repo id or a local checkpoint folder (official or MLX layout).
    path: str = MISSING
    revision: str | None = None
    # None: float32 on the CPU; on a GPU encoder/head float16 and decoder bfloat16 (measured fastest).
    dtype: str | None = None
    # A 4-bit checkpoint's layers: true keeps them quantized (less memory), false dequantizes, null picks
    # (dequantized unless dtype is float16/bfloat16).
    quantized: bool | None = None
    # "windowed" (8-s windows, how the model is served) or "full" (the official CPU behaviour).
    encoder_attention: str = "windowed"
    # CPU float32 matrix products: "float32" (exact, as the official code), "bfloat16" (AMX through oneMKL,
    # float32 accumulation), "auto" (bfloat16 where the CPU has AMX and oneMKL is installed).
    cpu_matmul: str = "auto"
    # True (model=tiny): `path` is a folder that receives a tiny RANDOM checkpoint if it has none.
    # For tests and demos only: the times it gives are meaningless.
    random_tiny: bool = False
    tiny_seed: int = 0


@dataclass(frozen=True)
class BatchConfig:
    """Batch packing by padded cost: n_utterances * longest sequence <= budget_positions."""

    # Decoder positions per batch, padding included (about 13 per audio second + 3-4 per word).
    budget_positions: int = MISSING
    max_utterances: int = MISSING
    # Batches loaded (decoded, resampled, log-mel) ahead of the model by `loader_threads` threads; 0: no
    # prefetch. Memory grows with it: a batch of samples plus features is about 0.2 MB per audio second.
    prefetch_batches: int = 2
    loader_threads: int = 2
    # Loaders as spawned processes instead of threads: threads share the GIL and top out near 1,100
    # audio-s/s, too slow for a GPU; processes cost a start-up and send the features back.
    loader_processes: bool = False
    # Batches are written (rows, TextGrids, Parquet parts) by this many spawned processes; 0: one thread of
    # this process, enough on a CPU. On a GPU the writing (~0.1 ms per audio second) would hold the GIL
    # that the model lanes need.
    writer_processes: int = 0
    # Model passes in this many spawned processes, each with its own copy of the weights and its share of
    # the GPU memory limit; 1: in this process. On an H200 three ran model-only within noise of one (8,401 vs
    # 8,131 audio-s/s), and slower since the kernels read their inputs from device memory (9,163 vs 9,585), so
    # it stays 1 (docs/performance.md, seventh and ninth sessions).
    model_processes: int = 1


@dataclass(frozen=True)
class OutputConfig:
    # Where TextGrids, Parquet and reports go; by default the Hydra run dir (outputs/<corpus>).
    dir: str = "${hydra:runtime.output_dir}"
    textgrid: bool = True
    # A tqdm bar in audio hours; shown only when stderr is a terminal.
    progress: bool = True


@dataclass(frozen=True)
class ShardConfig:
    """Align only the utterances whose id hashes to `index` modulo `count` (see corpus.select_shard)."""

    index: int = 0
    count: int = 1


@dataclass(frozen=True)
class LongformConfig:
    """Recordings longer than `threshold_s` are aligned window by window (longform.py).

    Each window holds `window_s` of audio but only the words expected in its first `window_s - tail_s`
    (at the remaining text's mean rate): fewer words than audio is the safe direction, since the model
    places a text prefix well and leaves untranscribed audio alone. The window's words up to its last
    confident one, at least `backoff_words` before the window's last word, are kept; the next window
    starts at that anchor word's end with the remaining words.
    """

    threshold_s: float = 120.0
    window_s: float = 60.0
    tail_s: float = 15.0
    backoff_words: int = 4
    # A run of at least this many words with identical times at the end is a collapsed tail.
    collapse_min_words: int = 4
    # Re-align a collapsed tail on the audio after the last good word (every utterance, not only long ones);
    # false keeps the single-pass result exactly as the official code gives it.
    recover_collapse: bool = True
    max_recoveries: int = 2


@dataclass(frozen=True)
class AlignConfig:
    """How audio and words reach the model, and what counts as a suspicious word."""

    # None: average the channels, as the official code does; k: take channel k of every file (a manifest
    # row's own `channel` wins). A file without channel k fails at probe.
    channel: int | None = None
    # Words whose slot probability (min of start and end) is below this are flagged `low_probability`
    # and never anchor a window.
    low_probability: float = 0.1
    # Longer recordings fail at probe (TooLongError): decoding holds the whole file in memory.
    max_duration_s: float = 4 * 3600.0
    long: LongformConfig = field(default_factory=LongformConfig)


@dataclass(frozen=True)
class AppConfig:
    # LibriSpeechConfig or ManifestConfig, chosen by the `corpus` config group.
    corpus: Any = MISSING
    model: ModelConfig = MISSING
    batch: BatchConfig = MISSING
    output: OutputConfig = MISSING
    shard: ShardConfig = field(default_factory=ShardConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    # "align" (the main job) or "validate": read and check the whole corpus without the model (validate.py).
    mode: str = "align"


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
    if cfg.batch.prefetch_batches < 0 or cfg.batch.loader_threads < 1:
        raise ValueError("batch.prefetch_batches must be at least 0 and batch.loader_threads at least 1")
    if cfg.batch.writer_processes < 0:
        raise ValueError("batch.writer_processes must be at least 0")
    if cfg.model.encoder_attention not in ("windowed", "full"):
        raise ValueError(f"model.encoder_attention must be windowed or full, got {cfg.model.encoder_attention!r}")
    if cfg.model.cpu_matmul not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"model.cpu_matmul must be auto, float32 or bfloat16, got {cfg.model.cpu_matmul!r}")
    if cfg.mode not in ("align", "validate"):
        raise ValueError(f"mode must be align or validate, got {cfg.mode!r}")
    validate_align(cfg.align)
    return cfg


def validate_align(a: AlignConfig) -> None:
    if a.channel is not None and a.channel < 0:
        raise ValueError(f"align.channel must be null or a channel index >= 0, got {a.channel}")
    if not 0.0 <= a.low_probability <= 1.0:
        raise ValueError(f"align.low_probability must lie in [0, 1], got {a.low_probability}")
    if not a.max_duration_s > 0:
        raise ValueError(f"align.max_duration_s must be positive, got {a.max_duration_s}")
    long = a.long
    if not 0 < long.window_s <= 400.0 or not 0 <= long.tail_s < long.window_s:
        raise ValueError(
            f"need 0 < align.long.window_s <= 400 (the model's range) and 0 <= align.long.tail_s < window_s, "
            f"got window_s={long.window_s}, tail_s={long.tail_s}"
        )
    if long.threshold_s <= 0 or long.backoff_words < 0 or long.collapse_min_words < 2 or long.max_recoveries < 0:
        raise ValueError(
            "need align.long.threshold_s > 0, backoff_words >= 0, collapse_min_words >= 2, max_recoveries >= 0"
        )


_TWINS: dict[type, type] = {}
_FROZEN: dict[type, type] = {}


def hydra_schema(cls: type) -> type:
    """A mutable twin of frozen config dataclass `cls` (nested config dataclasses twinned too), for Hydra."""
    if cls in _TWINS:
        return _TWINS[cls]
    hints = get_type_hints(cls)
    specs: list[tuple[str, Any, Any]] = []
    for f in fields(cls):
        kind = hints[f.name]
        kind = hydra_schema(kind) if isinstance(kind, type) and is_dataclass(kind) else kind
        if f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            factory = hydra_schema(factory) if isinstance(factory, type) and is_dataclass(factory) else factory
            specs.append((f.name, kind, field(default_factory=factory)))
        else:
            specs.append((f.name, kind, field(default=f.default)))
    twin = make_dataclass(cls.__name__, specs)
    twin.__doc__ = cls.__doc__
    _TWINS[cls], _FROZEN[twin] = twin, cls
    return twin


def freeze(value: Any) -> Any:
    """The frozen config dataclasses again, from the twins OmegaConf.to_object built (recursively)."""
    cls = _FROZEN.get(type(value))
    if cls is None:
        return value
    return cls(**{f.name: freeze(getattr(value, f.name)) for f in fields(value)})
