"""The two sides of scripts/bench_align.py, each run as its own process (`bench_sides.py ours|official`).

Commands arrive as JSON lines on stdin ({"cmd": "e2e"|"model"|"ping"|"quit", ...}); each answer is one
`RESULT {json}` line on stdout. Not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import traceback
import types
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FLOP_PER_AUDIO_S = 1.4e12 / 60  # the figure: about 1.4 TFLOP per minute of audio
COMPUTE_LIMIT_AUDIO_S_PER_S = 34_000  # H100 dense bf16 over FLOP_PER_AUDIO_S
WRITE_PIECE = 32  # utterances per writer job


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write("RESULT " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def reset_peak_host() -> None:
    """Reset VmHWM (Linux: writing 5 to clear_refs), so each run reports its own peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_host_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def select(corpus: Any, cmd: dict[str, Any]) -> list[Any]:
    return corpus.block(cmd.get("blocks", 1))[cmd.get("first", 0) : cmd.get("stop")]


# ----- writing (runs in writer processes) ---------------------------------------------------------------
def write_outputs(out_dir: str, seq: int, records: list[tuple[str, str, str, float, list[str], Any]]) -> int:
    """One TextGrid per utterance and one Parquet part per batch; returns the number of word rows.

    records: (utt_id, rel_dir, transcript, duration_s, words, aligned words or an error message).
    """
    import polars as pl

    from corpus_aligner.writers.textgrid import write_textgrid

    rows: dict[str, list[Any]] = {k: [] for k in ("utt_id", "word_index", "word", "start_s", "end_s", "probability")}
    for utt_id, rel_dir, text, duration_s, words, result in records:
        if isinstance(result, str):
            continue
        spans = [(w.start_s, w.end_s, word) for word, w in zip(words, result)]
        write_textgrid(Path(out_dir, "textgrids", rel_dir, f"{utt_id}.TextGrid"), spans, text, duration_s)
        for i, (word, w) in enumerate(zip(words, result)):
            for key, value in zip(rows, (utt_id, i, word, w.start_s, w.end_s, w.probability)):
                rows[key].append(value)
    schema = {"utt_id": pl.String, "word_index": pl.Int32, "word": pl.String}
    schema |= {"start_s": pl.Float64, "end_s": pl.Float64, "probability": pl.Float64}
    frame = pl.DataFrame(rows, schema=schema)
    part = Path(out_dir, "parts", f"words-{seq:09d}.parquet")
    frame.write_parquet(part)
    return frame.height


# ----- ours -----------------------------------------------------------------------------------------------
class Ours:
    def __init__(self, args: argparse.Namespace):
        import corpus_aligner  # noqa: F401  (OpenBLAS before MLX: keep this import first)

        # isort: split
        import mlx.core as mx

        from corpus_aligner import Aligner
        from corpus_aligner.prefetch import BackgroundWriter, FeaturePrefetcher
        from corpus_aligner.testing.bench_corpus import make_bench_corpus

        self.mx = mx
        if args.device == "cpu":
            mx.set_default_device(mx.cpu)
        stored = json.loads((args.root / "bench.json").read_text())["key"]
        self.corpus = make_bench_corpus(args.root, stored["utterances_per_block"], stored["blocks"], stored["seed"])
        ckpt = self.corpus.checkpoint
        if args.quantize:
            from corpus_aligner.checkpoint import convert

            q = args.root / f"checkpoint-{args.quantize}bit"
            if not (q / "model.safetensors").is_file():
                convert(ckpt, q, bits=args.quantize)
            ckpt = q
        t = time.perf_counter()
        from corpus_aligner.api import Shapes

        shapes = Shapes() if args.shapes == "none" else None
        self.aligner = Aligner.from_pretrained(
            ckpt,
            dtype=args.dtype,
            quantized=True if args.quantize else None,  # --quantize measures the 4-bit decoder itself
            batch_positions=args.budget,
            workers=args.workers,
            shapes=shapes,
            cpu_matmul=args.cpu_matmul,
            processes=args.model_processes or 1,
        )
        self.load_s = time.perf_counter() - t
        if args.gpu_memory:  # instead of the Aligner's own limit (api.gpu_memory_target), higher or lower
            total = mx.device_info()["total_memory"]
            self.aligner.memory_limit = int(total * args.gpu_memory)  # type: ignore[operator]
            mx.set_memory_limit(self.aligner.memory_limit)
        self.cache_gib, self.turns = args.gpu_cache, args.gpu_turns
        if args.gpu_cache is not None:  # MLX's buffer cache limit, GiB (by default its memory limit)
            mx.set_cache_limit(int(args.gpu_cache * 2**30))
        if args.gpu_turns:  # the batch threads take turns on the device (docs/performance.md, sixth session)
            turn, run = threading.Lock(), self.aligner.run_batch

            def run_batch(inputs: Any) -> Any:
                with turn:
                    return run(inputs)

            self.aligner.run_batch = run_batch  # type: ignore[method-assign]
        self.out = args.out
        cores = os.cpu_count() or 1
        gpu = args.device == "gpu"
        # CPU: the two cores belong to the model; one feature process and one writer process are plenty.
        # GPU: the loaders are what the device waits for (docs/performance.md), so they get every core but
        # the main process's and two writers' (two write 4,000 TextGrids in well under the run's 10 s).
        # As the main job's loaders: every process started, with the checks of `prepare` imported (`loading`).
        self.prefetch = FeaturePrefetcher(
            processes=max(1, cores - 2 - (self.aligner.processes.count if self.aligner.processes else 1)) if gpu else 1,
            dtype=self.aligner.feature_dtype,
            preload="corpus_aligner.loading",
        )
        self.writer_processes = 2 if gpu else 1
        self.writer_cls = BackgroundWriter
        self.gpu = gpu
        self.warm_up()

    def info(self) -> dict[str, Any]:
        from corpus_aligner.model import bf16_matmul

        a = self.aligner
        return {
            "load_s": self.load_s,
            "device": a.device,
            "workers": a.workers,
            "budget": a.batch_positions,
            "decoder_dtype": str(a.model.model.norm.weight.dtype),
            "encoder_dtype": str(a.model.audio_tower.conv2d1.weight.dtype),
            "quantized": any(k.endswith(".scales") for k, _ in _flat(a.model.parameters())),
            "cpu_matmul": bf16_matmul.resolved_precision() if a.device == "cpu" else None,
            "memory_limit_gib": a.memory_limit / 2**30 if a.memory_limit else None,
            "cache_limit_gib": self.cache_gib,
            "device_turns": self.turns,
            "model_processes": a.processes.count if a.processes else 1,
            "device_info": {k: v for k, v in self.mx.device_info().items() if isinstance(v, (int, str))},
        }

    def warm_up(self) -> None:
        """Compile kernels (g++ on the CPU, NVRTC on the GPU) outside the timed runs."""
        utts = self.corpus.block(1)[:8]
        feats, words, _ = self.features(utts)
        copies = self.aligner.processes.count if self.aligner.processes else 1  # roughly one per model process
        list(self.aligner.align_batches([(feats[:1], words[:1])] + [(feats, words)] * copies))

    def features(self, utts: list[Any]) -> tuple[list[Any], list[list[str]], list[int]]:
        from corpus_aligner.normalize import split_words
        from corpus_aligner.prefetch import AudioSpan

        spans = [AudioSpan(u.audio_path) for u in utts]
        feats: list[Any] = []
        for f in (f for batch in self.prefetch.batches([spans]) for f in batch):
            if isinstance(f, Exception):
                raise f  # the bench corpus is generated readable
            feats.append(f)
        words = [split_words(u.text, "English") for u in utts]
        lengths = [self.aligner.sequence_length(f.shape[0], w) for f, w in zip(feats, words)]
        return feats, words, lengths

    def model(self, cmd: dict[str, Any]) -> dict[str, Any]:
        utts = select(self.corpus, cmd)
        feats, words, lengths = self.features(utts)
        batches = self.aligner.pack(lengths)
        self.reset_peaks()
        walls = []
        for _ in range(cmd.get("repeats", 1)):  # passes back to back; the median is the figure
            t = time.perf_counter()
            for _ in self.aligner.align_batches(([feats[i] for i in b], [words[i] for i in b]) for b in batches):
                pass
            walls.append(time.perf_counter() - t)
        wall = sorted(walls)[len(walls) // 2]
        audio = sum(u.duration_s for u in utts)
        return {"audio_s": audio, "wall_s": wall, "audio_s_per_s": audio / wall, "batches": len(batches),
                "passes_audio_s_per_s": [round(audio / w, 1) for w in walls],
                "padding": self.aligner.padding_fraction(lengths, batches), **self.peaks()}  # fmt: skip

    def e2e(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Files on disk -> TextGrids + Parquet on disk, every stage overlapped."""
        import shutil

        import polars as pl

        from corpus_aligner.config import AlignConfig
        from corpus_aligner.corpus import Utterance
        from corpus_aligner.errors import AlignerError
        from corpus_aligner.pipeline import prepare
        from corpus_aligner.prefetch import AudioSpan

        utts = select(self.corpus, cmd)
        out = self.out / f"ours-{cmd['tag']}"
        shutil.rmtree(out, ignore_errors=True)
        (out / "parts").mkdir(parents=True)
        self.reset_peaks()
        t0 = time.perf_counter()
        # the main job's prepare: header probe and normalize in the loader processes, then packing lengths
        items = [Utterance(u.utt_id, u.audio_path, u.text) for u in utts]
        prepared, failed = prepare(items, AlignConfig(), 0.08, self.aligner, self.prefetch.pool)
        assert not failed and len(prepared) == len(utts), "the bench corpus has no bad utterances"
        words = [[w.token for w in p.words] for p in prepared]
        durations = [p.duration_s for p in prepared]
        lengths = [p.length for p in prepared]
        batches = self.aligner.pack(lengths)
        prepare_s = time.perf_counter() - t0
        spans = ([AudioSpan(utts[i].audio_path) for i in b] for b in batches)
        order: deque[list[int]] = deque()

        def jobs() -> Any:
            for b, feats in zip(batches, self.prefetch.batches(spans)):
                order.append(b)
                yield feats, [words[i] for i in b]  # the bench corpus has no unreadable files

        model_s = 0.0
        with self.writer_cls(write_outputs, processes=self.writer_processes, max_pending=64) as writer:
            t_model = time.perf_counter()
            for seq, result in enumerate(self.aligner.align_batches(jobs()), start=1):
                b = order.popleft()
                if isinstance(result, AlignerError):
                    result = [str(result)] * len(b)
                records = [(utts[i].utt_id, Path(utts[i].audio_path).parent.name, utts[i].text, durations[i],
                            words[i], r) for i, r in zip(b, result)]  # fmt: skip
                for k in range(0, len(records), WRITE_PIECE):  # the last batch's writing shared by every writer
                    writer.submit(str(out), seq * 1000 + k // WRITE_PIECE, records[k : k + WRITE_PIECE])
            model_s = time.perf_counter() - t_model
        t_merge = time.perf_counter()
        merged = pl.concat([pl.read_parquet(p) for p in sorted((out / "parts").glob("*.parquet"))])
        merged.sort(["utt_id", "word_index"]).write_parquet(out / "words.parquet")
        wall = time.perf_counter() - t0
        audio = sum(u.duration_s for u in utts)
        return {"audio_s": audio, "wall_s": wall, "audio_s_per_s": audio / wall, "prepare_s": prepare_s,
                "merge_s": time.perf_counter() - t_merge, "align_loop_s": model_s, "batches": len(batches),
                "padding": self.aligner.padding_fraction(lengths, batches), "words": merged.height,
                "textgrids": sum(1 for _ in (out / "textgrids").rglob("*.TextGrid")), **self.peaks()}  # fmt: skip

    def release(self) -> None:
        """Hand cached device memory back between commands (the other side shares the GPU)."""
        self.mx.clear_cache()

    def reset_peaks(self) -> None:
        reset_peak_host()
        self.mx.reset_peak_memory()
        if self.aligner.processes:
            self.aligner.processes.peak_memory(reset=True)

    def peaks(self) -> dict[str, float]:
        out = {"peak_host_gib": peak_host_gib()}
        if self.gpu:
            out["peak_gpu_gib"] = self.mx.get_peak_memory() / 2**30
            if self.aligner.processes:  # the model processes' together, beside this process's own
                out["peak_gpu_gib"] += sum(self.aligner.processes.peak_memory()) / 2**30
        return out

    def close(self) -> None:
        self.prefetch.close()
        self.aligner.close()


def _flat(tree: Any) -> list[tuple[str, Any]]:
    from mlx.utils import tree_flatten

    return tree_flatten(tree)  # type: ignore[return-value]


# ----- official -------------------------------------------------------------------------------------------
class Official:
    def __init__(self, args: argparse.Namespace):
        # nagisa (Japanese only) is imported by qwen_asr at module import; English never calls it.
        sys.modules.setdefault("nagisa", types.ModuleType("nagisa"))
        import torch

        from corpus_aligner.testing.bench_corpus import make_bench_corpus

        stored = json.loads((args.root / "bench.json").read_text())["key"]
        self.corpus = make_bench_corpus(args.root, stored["utterances_per_block"], stored["blocks"], stored["seed"])
        from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForcedAligner

        self.torch = torch
        self.gpu = args.device == "gpu"
        if not self.gpu:
            torch.set_num_threads(2)
        t = time.perf_counter()
        self.model = Qwen3ForcedAligner.from_pretrained(
            str(self.corpus.checkpoint),
            dtype=torch.bfloat16 if self.gpu else torch.float32,
            device_map="cuda:0" if self.gpu else "cpu",
        )
        self.load_s = time.perf_counter() - t
        self.model_s = 0.0
        thinker = self.model.model.thinker
        started: list[float] = []

        def before(*_: Any) -> None:
            self.sync()
            started.append(time.perf_counter())

        def after(*_: Any) -> None:
            self.sync()
            self.model_s += time.perf_counter() - started.pop()

        thinker.register_forward_pre_hook(before)
        thinker.register_forward_hook(after)
        utts = self.corpus.block(1)[:8]
        self.align(utts)  # warm-up

    def sync(self) -> None:
        if self.gpu:
            self.torch.cuda.synchronize()

    def info(self) -> dict[str, Any]:
        return {"load_s": self.load_s, "dtype": "bfloat16" if self.gpu else "float32",
                "torch": self.torch.__version__, "threads": self.torch.get_num_threads()}  # fmt: skip

    def align(self, utts: list[Any]) -> Any:
        with self.torch.inference_mode():
            return self.model.align(audio=[u.audio_path for u in utts], text=[u.text for u in utts], language="English")

    def e2e(self, cmd: dict[str, Any]) -> dict[str, Any]:
        utts = sorted(select(self.corpus, cmd), key=lambda u: -u.duration_s)
        bs = int(cmd["batch"])
        reset_peak_host()
        if self.gpu:
            self.torch.cuda.reset_peak_memory_stats()
        self.model_s = 0.0
        t = time.perf_counter()
        for i in range(0, len(utts), bs):
            self.align(utts[i : i + bs])
        self.sync()
        wall = time.perf_counter() - t
        audio = sum(u.duration_s for u in utts)
        out = {"audio_s": audio, "wall_s": wall, "audio_s_per_s": audio / wall, "model_s": self.model_s,
               "model_audio_s_per_s": audio / self.model_s, "batch": bs, "peak_host_gib": peak_host_gib()}  # fmt: skip
        if self.gpu:
            out["peak_gpu_gib"] = self.torch.cuda.max_memory_allocated() / 2**30
        return out

    def release(self) -> None:
        if self.gpu:
            self.torch.cuda.empty_cache()

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=["ours", "official"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--quantize", type=int, default=None)
    parser.add_argument("--cpu-matmul", default=None, choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--shapes", default=None)
    parser.add_argument("--gpu-memory", type=float, default=None)
    parser.add_argument("--gpu-cache", type=float, default=None)
    parser.add_argument("--gpu-turns", action="store_true")
    parser.add_argument("--model-processes", type=int, default=None)
    args = parser.parse_args()
    stdout = sys.stdout
    sys.stdout = sys.stderr  # library chatter goes to stderr; only RESULT lines on stdout
    side: Ours | Official | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        sys.stdout = sys.stderr
        try:
            if side is None:
                side = Ours(args) if args.side == "ours" else Official(args)
            if cmd["cmd"] == "quit":
                side.close()
                sys.stdout = stdout
                reply({"bye": True})
                return
            result = side.info() if cmd["cmd"] == "ping" else getattr(side, cmd["cmd"])(cmd)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"}
        finally:
            if side is not None:
                side.release()
        sys.stdout = stdout
        reply(result)


if __name__ == "__main__":
    main()
