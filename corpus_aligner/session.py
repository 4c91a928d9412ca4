"""One run of the main job over an output folder: claim it, skip what is done, and at the end merge the
tables, write the report and run.json. Also the Ctrl-C/SIGTERM handling that stops after a batch.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from types import FrameType
from typing import TYPE_CHECKING, Any

from corpus_aligner.config import AppConfig, ModelConfig
from corpus_aligner.corpus import Utterance, corpus_identity, read_corpus, select_shard
from corpus_aligner.outputs import OutputStore, run_info, write_json
from corpus_aligner.report import build_report, format_report
from corpus_aligner.writers import atomic_path

if TYPE_CHECKING:
    from corpus_aligner.api import Aligner
    from corpus_aligner.pipeline import RunResult

log = logging.getLogger(__name__)


def load_aligner(cfg: ModelConfig, processes: int = 1) -> Aligner:
    """The configured weights, passes in `processes` model processes (`Aligner.from_pretrained`); with
    `random_tiny`, generate the tiny random checkpoint first."""
    from corpus_aligner.api import Aligner

    if cfg.random_tiny:
        folder = Path(cfg.path)
        if not (folder / "config.json").is_file():
            from corpus_aligner.testing.tiny_checkpoint import tiny_checkpoint

            tiny_checkpoint(folder, seed=cfg.tiny_seed)
        log.warning("model=tiny: a tiny checkpoint with RANDOM weights (%s); the times are MEANINGLESS", folder)
    return Aligner.from_pretrained(
        cfg.path,
        encoder_attention=cfg.encoder_attention,
        dtype=cfg.dtype,
        quantized=cfg.quantized,
        revision=cfg.revision,
        cpu_matmul=cfg.cpu_matmul,
        processes=processes,
    )


def cpu_matmul_precision() -> str | None:
    """What "auto" resolved to on this machine (it differs between machines); None on a GPU."""
    import mlx.core as mx

    from corpus_aligner.model import bf16_matmul

    return bf16_matmul.resolved_precision() if mx.default_device() == mx.cpu else None


def settings_identity(cfg: AppConfig, fingerprint: str) -> dict[str, Any]:
    """Everything that changes what a run writes: two runs into one folder must agree on all of it.
    (Batch sizes and shards do not change results, so they may differ between a run and its resume.)"""
    return {
        "corpus": corpus_identity(cfg.corpus),
        "model": fingerprint,
        "dtype": cfg.model.dtype,
        "quantized": cfg.model.quantized,
        "cpu_matmul": cpu_matmul_precision(),
        "encoder_attention": cfg.model.encoder_attention,
        "align": asdict(cfg.align),
        "textgrid": cfg.output.textgrid,
    }


class GracefulStop:
    """Within the block, Ctrl-C or SIGTERM once sets `requested` (the run stops after the batch in flight);
    a second one raises KeyboardInterrupt at once. Only the main thread can install handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "%s: stopping after the batch in flight (send it again to stop at once; a rerun resumes)",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@dataclass
class Session:
    cfg: AppConfig
    aligner: Aligner
    store: OutputStore
    output_dir: Path
    utterances: list[Utterance]
    todo: list[Utterance]
    info: dict[str, Any]
    started: float
    load_s: float

    @classmethod
    def open(cls, cfg: AppConfig) -> Session:
        """Read the corpus, create the output folder, load the model, claim the folder, find what is left."""
        started = perf_counter()
        output_dir = Path(cfg.output.dir).expanduser()
        utterances = select_shard(read_corpus(cfg.corpus), cfg.shard.index, cfg.shard.count)
        store = OutputStore(output_dir, cfg.shard.index, cfg.shard.count)  # before the model: fail fast
        t_load = perf_counter()
        aligner = load_aligner(cfg.model, cfg.batch.model_processes)
        t_load = perf_counter() - t_load
        store.claim(settings_identity(cfg, aligner.checkpoint.fingerprint))
        store.remove_stale_temporaries()
        done = store.completed_ids()
        todo = [u for u in utterances if u.utt_id not in done]
        info = run_info(cfg, aligner.checkpoint, len(utterances), len(utterances) - len(todo))
        write_json(store.run_json, {**info, "status": "running"})
        return cls(cfg, aligner, store, output_dir, utterances, todo, info, started, t_load)

    def finish(self, this_run: dict[str, Any], timings: dict[str, float], interrupted: bool) -> RunResult:
        """Merge all committed parts into the tables, write the report and run.json (also when interrupted)."""
        from corpus_aligner.pipeline import RunResult

        with self.store.lock():
            words, utts = self.store.merge()
            timings = {"load_model": self.load_s, **timings, "total": perf_counter() - self.started}
            this_run = {**this_run, "wall_s": timings["total"]}
            report = build_report(words, utts, this_run)
            text = format_report(report)
            write_json(self.output_dir / "report.json", report)
            with atomic_path(self.output_dir / "report.txt") as tmp:
                tmp.write_text(text + "\n", encoding="utf-8")
        status = "interrupted" if interrupted else "finished"
        write_json(self.store.run_json, {**self.info, "status": status, "timings_s": timings, "this_run": this_run})
        mine = {u.utt_id for u in self.utterances}
        n_done = sum(1 for u in utts["utt_id"].to_list() if u in mine)
        skipped = len(self.utterances) - len(self.todo)
        return RunResult(self.output_dir, report, text, skipped, timings, interrupted, n_done, len(self.utterances))
