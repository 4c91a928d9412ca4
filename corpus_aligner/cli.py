"""`python -m corpus_aligner corpus=librispeech`: the Hydra entry point of the main job.

Composes conf/ against the schema in config.py, converts it once to typed dataclasses and hands
them to pipeline.run. Errors that stop a whole run (no corpus, no weights) print one clear message
and exit with status 2; per-utterance failures are recorded in the output and the run exits 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from corpus_aligner.config import (
    AppConfig,
    BatchConfig,
    LibriSpeechConfig,
    ManifestConfig,
    ModelConfig,
    OutputConfig,
    validate,
)
from corpus_aligner.errors import AlignerError


def register_configs() -> None:
    """The schemas as base_* nodes in Hydra's ConfigStore; conf/**/*.yaml extend them."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=AppConfig)
    cs.store(group="corpus", name="base_librispeech", node=LibriSpeechConfig)
    cs.store(group="corpus", name="base_manifest", node=ManifestConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="batch", name="base_batch", node=BatchConfig)
    cs.store(group="output", name="base_output", node=OutputConfig)


def to_app_config(cfg: DictConfig) -> AppConfig:
    """The composed config as typed dataclasses (the one conversion; nothing below sees OmegaConf)."""
    app = OmegaConf.to_object(cfg)
    assert isinstance(app, AppConfig)
    return validate(app)


# conf/ sits next to the package in the source tree (hence the editable install). An absolute path,
# because under `python -m` Hydra would resolve "../conf" as an importable module, not a folder.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> None:
    from corpus_aligner import pipeline  # after Hydra: `--help` stays fast

    try:
        app = to_app_config(cfg)
    except (ValueError, MissingMandatoryValue) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    if app.model.random_tiny:
        print("WARNING: model=tiny uses RANDOM weights: the times it writes are MEANINGLESS.", file=sys.stderr)
    try:
        result = pipeline.run(app)
    except AlignerError as exc:  # the run cannot start (no corpus, no weights, another run's output)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(result.report_text)
    print(f"outputs: {result.output_dir}")


def main() -> None:
    register_configs()
    _main()
