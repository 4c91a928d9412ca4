"""The real conf/ composes against the schema in corpus_aligner/config.py (run: pytest tests/test_config.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import MissingMandatoryValue

from corpus_aligner.cli import CONF_DIR, register_configs, to_app_config
from corpus_aligner.config import AlignConfig, AppConfig, LibriSpeechConfig, LongformConfig, ManifestConfig


def load(*overrides: str) -> AppConfig:
    """Compose conf/ with overrides, as `python -m corpus_aligner` does, and convert it once."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=["output.dir=/tmp/out", *overrides])
    return to_app_config(cfg)


def test_defaults_are_the_shipped_sample_and_the_4bit_model() -> None:
    """With no override the main job aligns the embedded LibriSpeech sample with the 4-bit checkpoint."""
    cfg = load()
    assert isinstance(cfg.corpus, LibriSpeechConfig)
    assert cfg.corpus.root is None and cfg.corpus.parts is None
    assert cfg.model.path == "aufklarer/Qwen3-ForcedAligner-0.6B-4bit"
    assert cfg.model.random_tiny is False
    assert (cfg.batch.budget_positions, cfg.batch.max_utterances) == (4096, 8)
    assert (cfg.shard.index, cfg.shard.count) == (0, 1)
    assert cfg.output.dir == "/tmp/out"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=qwen3_forced_aligner"], ("Qwen/Qwen3-ForcedAligner-0.6B", False)),
        (["model.path=/models/fa"], ("/models/fa", False)),
        (["model=tiny"], ("/tmp/out/tiny-checkpoint", True)),
    ],
)
def test_model_choices(overrides: list[str], expected: tuple[str, bool]) -> None:
    """Each model option resolves to its repo id or folder; only model=tiny generates random weights."""
    cfg = load(*overrides)
    assert (cfg.model.path, cfg.model.random_tiny) == expected


def test_corpus_overrides_reach_typed_configs() -> None:
    """`corpus.root=... corpus.parts=[...]` and corpus=manifest come out as their dataclasses."""
    cfg = load("corpus.root=/data/LibriSpeech", "corpus.parts=[dev-clean,test-clean]", "batch=gpu")
    assert isinstance(cfg.corpus, LibriSpeechConfig)
    assert cfg.corpus.root == "/data/LibriSpeech" and cfg.corpus.parts == ["dev-clean", "test-clean"]
    assert cfg.batch.budget_positions == 131072
    manifest = load("corpus=manifest", "corpus.path=/data/m.tsv", "shard.count=4", "shard.index=3")
    assert isinstance(manifest.corpus, ManifestConfig)
    assert (manifest.corpus.path, manifest.corpus.format) == ("/data/m.tsv", "auto")
    assert (manifest.shard.index, manifest.shard.count) == (3, 4)


@pytest.mark.parametrize(
    "overrides",
    [["corpus.rooot=/x"], ["batch.budget_positions=many"], ["model=nonexistent"], ["shard.idx=1"]],
)
def test_misspelt_or_mistyped_keys_fail_at_start_up(overrides: list[str]) -> None:
    """The dataclasses are the schema: an unknown key or a wrong type never reaches the pipeline."""
    with pytest.raises(ConfigCompositionException):
        load(*overrides)


def test_align_settings_are_frozen_and_overridable() -> None:
    """Every config is a frozen dataclass, yet `align.long.window_s=...` overrides it from the command line
    (Hydra composes against mutable twins, config.hydra_schema)."""
    cfg = load("align.channel=1", "align.long.window_s=30", "align.long.threshold_s=90", "mode=validate")
    assert (cfg.align.channel, cfg.align.long.window_s, cfg.align.long.threshold_s, cfg.mode) == (
        1,
        30.0,
        90.0,
        "validate",
    )
    assert cfg.align.long.tail_s == LongformConfig().tail_s  # untouched keys keep the schema's default
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.align.long.window_s = 10.0  # type: ignore[misc]
    assert load().align == AlignConfig() and load().mode == "align"
    with pytest.raises(ConfigCompositionException):
        load("align.long.window=30")


def test_manifest_without_path_is_missing() -> None:
    """corpus.path is required for corpus=manifest (MISSING in the schema)."""
    with pytest.raises(MissingMandatoryValue, match="path"):
        load("corpus=manifest")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["shard.count=2", "shard.index=2"], "shard.index"),
        (["batch.max_utterances=0"], "batch"),
        (["model.encoder_attention=sparse"], "encoder_attention"),
        (["corpus=manifest", "corpus.path=x.jsonl", "corpus.format=xml"], "corpus.format"),
        (["mode=check"], "mode must be align or validate"),
        (["align.channel=-1"], "align.channel"),
        (["align.low_probability=2"], "align.low_probability"),
        (["align.long.tail_s=60"], "tail_s < window_s"),
        (["align.long.window_s=500"], "window_s <= 400"),
        (["align.long.collapse_min_words=1"], "collapse_min_words >= 2"),
    ],
)
def test_values_checked_beyond_types(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(*overrides)


OPTIONS = sorted(f"{p.parent.name}={p.stem}" for p in Path(CONF_DIR).glob("*/*.yaml"))


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_composes_against_the_schema(option: str) -> None:
    """Each YAML only picks values the schema declares (a stray key would fail composition)."""
    extra = ["corpus.path=/data/m.jsonl"] if option == "corpus=manifest" else []
    cfg = load(option, *extra)
    group, name = option.split("=")
    if group == "model":
        assert cfg.model.path, name
    if group == "batch":
        assert cfg.batch.budget_positions >= 1 and cfg.batch.max_utterances >= 1


def test_all_groups_have_their_options() -> None:
    for option in [
        "corpus=librispeech",
        "corpus=manifest",
        "model=qwen3_forced_aligner_4bit",
        "model=qwen3_forced_aligner",
        "model=tiny",
        "batch=cpu",
        "batch=gpu",
        "output=default",
    ]:
        assert option in OPTIONS
