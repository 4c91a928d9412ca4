"""One aligned batch -> its TextGrids and its committed Parquet parts (the last stage of the main job).

Free of MLX, like loading.py: on a GPU this runs in spawned writer processes (`batch.writer_processes`),
which import this module to unpickle their work; `tests/test_layout.py` checks that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

from corpus_aligner.config import AlignConfig
from corpus_aligner.errors import AlignerError
from corpus_aligner.loading import Prepared
from corpus_aligner.longform import Aligned
from corpus_aligner.outputs import OutputStore
from corpus_aligner.quality import collapsed_tail, flagged_share, word_flags
from corpus_aligner.writers.parquet import Outcome, utterance_row, utterances_frame, word_rows, words_frame
from corpus_aligner.writers.textgrid import write_textgrid


@dataclass(frozen=True)
class BatchWriter:
    """Rows, TextGrids and the committed Parquet parts of one aligned batch. Picklable: on a GPU it runs in
    writer processes (`batch.writer_processes`), so that building rows and TextGrids (about 0.1 ms per audio
    second, holding the GIL) never competes with the model lanes' host work; otherwise in one writer thread."""

    store: OutputStore
    textgrids: bool
    cfg: AlignConfig
    tick_s: float

    def __call__(
        self, seq: int, items: list[Prepared], failed: list[dict[str, Any]], results: list[Aligned | AlignerError]
    ) -> float:
        """Commit part `seq`: the items' rows (failed ones included) and TextGrids; returns the seconds taken."""
        start = perf_counter()
        word_rows_out: list[dict[str, Any]] = []
        utt_rows: list[dict[str, Any]] = list(failed)
        for p, result in zip(items, results):
            if isinstance(result, AlignerError):
                utt_rows.append(p.failed("align", result))
                continue
            words, row = self.rows(p, result)
            word_rows_out.extend(words)
            utt_rows.append(row)
        self.store.write_part(seq, words_frame(word_rows_out), utterances_frame(utt_rows))
        return perf_counter() - start

    def rows(self, p: Prepared, result: Aligned) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        flags = word_flags(result.placed, self.tick_s, self.cfg.low_probability, self.cfg.long.collapse_min_words)
        rows = word_rows(p.utt.utt_id, p.utt.speaker, p.utt.recording, p.words, result.placed, flags)
        textgrid = self.write_textgrid(p, rows) if self.textgrids else None
        spans = [(r["start_s"], r["end_s"]) for r in rows]
        outcome = Outcome(
            n_words=len(rows),
            windows=result.windows,
            flagged_share=flagged_share(flags),
            collapsed_tail_words=collapsed_tail(spans, self.cfg.long.collapse_min_words),
            textgrid=textgrid,
        )
        return rows, utterance_row(p.utt, p.probed.info, p.duration_s, outcome, warnings=p.probed.warnings)

    def write_textgrid(self, p: Prepared, rows: list[dict[str, Any]]) -> str:
        name = p.utt.utt_id.replace("/", "_").replace("\\", "_") + ".TextGrid"
        rel = Path("textgrids", *p.utt.rel_dir.split("/"), name) if p.utt.rel_dir else Path("textgrids", name)
        spans = [(r["start_s"], r["end_s"], r["word"]) for r in rows]
        write_textgrid(self.store.root / rel, spans, p.utt.text, p.duration_s)
        return rel.as_posix()
