"""`python -m corpus_aligner corpus=librispeech`: the Hydra entry point of the main job (and `mode=validate`).

Composes conf/ against the schema in config.py, converts it once to typed dataclasses and hands
them to pipeline.run (or validate.run). Exit status:
- 0: the run finished; per-utterance failures are rows of utterances.parquet and lines of the report;
- 2: it could not run at all (bad config, no corpus, no weights, an unwritable or foreign output
  folder), with a one-line `error: ...` on stderr;
- 130: stopped by Ctrl-C/SIGTERM after the batch in flight; the message says how to resume.
"""

from __future__ import annotations

import shlex
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
    freeze,
    hydra_schema,
    validate,
)
from corpus_aligner.errors import AlignerError


def register_configs() -> None:
    """The schemas as base_* nodes in Hydra's ConfigStore; conf/**/*.yaml extend them."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=hydra_schema(AppConfig))
    cs.store(group="corpus", name="base_librispeech", node=hydra_schema(LibriSpeechConfig))
    cs.store(group="corpus", name="base_manifest", node=hydra_schema(ManifestConfig))
    cs.store(group="model", name="base_model", node=hydra_schema(ModelConfig))
    cs.store(group="batch", name="base_batch", node=hydra_schema(BatchConfig))
    cs.store(group="output", name="base_output", node=hydra_schema(OutputConfig))


def to_app_config(cfg: DictConfig) -> AppConfig:
    """The composed config as frozen typed dataclasses (the one conversion; nothing below sees OmegaConf)."""
    app = freeze(OmegaConf.to_object(cfg))
    assert isinstance(app, AppConfig)
    return validate(app)


# conf/ sits next to the package in the source tree (hence the editable install). An absolute path,
# because under `python -m` Hydra would resolve "../conf" as an importable module, not a folder.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def fail(message: object) -> None:
    """Exit 2 with a one-line reason (the first line of `message`)."""
    lines = str(message).strip().splitlines() or [repr(message)]
    print(f"error: {lines[0]}", file=sys.stderr)
    sys.exit(2)


def resume_command() -> str:
    return shlex.join(["python", "-m", "corpus_aligner", *sys.argv[1:]])


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> None:
    from corpus_aligner import pipeline, validate  # after Hydra: `--help` stays fast

    try:
        app = to_app_config(cfg)
    except (ValueError, MissingMandatoryValue) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    if app.mode == "validate":
        try:
            checked = validate.run(app)
        except AlignerError as exc:
            fail(exc)
            return
        except OSError as exc:
            fail(f"cannot write to output.dir={app.output.dir}: {exc}")
            return
        print(checked.text)
        print(f"outputs: {checked.output_dir}")
        return
    if app.model.random_tiny:
        print("WARNING: model=tiny uses RANDOM weights: the times it writes are MEANINGLESS.", file=sys.stderr)
    try:
        result = pipeline.run(app)
    except KeyboardInterrupt:  # before the first batch (reading the corpus, loading the model) or a second Ctrl-C
        message = "interrupted: finished batches are kept; run the same command again to resume"
        print(f"{message}:\n  {resume_command()}", file=sys.stderr)
        sys.exit(130)
    except AlignerError as exc:  # the run cannot start (no corpus, no weights, another run's output)
        fail(exc)
        return
    except OSError as exc:  # the output folder cannot be created or written (a disk full mid-run too)
        fail(f"cannot write to output.dir={app.output.dir}: {exc} (batches already written are kept; a rerun resumes)")
        return
    print(result.report_text)
    print(f"outputs: {result.output_dir}")
    if result.interrupted:
        print(
            f"interrupted: {result.n_done} of {result.n_total} utterances are done in {result.output_dir}; "
            f"run the same command again to resume:\n  {resume_command()}",
            file=sys.stderr,
        )
        sys.exit(130)


def main() -> None:
    register_configs()
    _main()
