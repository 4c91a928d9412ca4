"""Ours vs the official qwen-asr on the same generated corpus and the same random full-size weights.

    python scripts/bench_align.py --device cpu --utterances 40
    python scripts/bench_align.py --device gpu --utterances 1000 --scale 4 --pipeline --official-batch 32,64,128

Each side runs in its own process (clean peak-memory figures; both stay loaded), driven by this one;
on the CPU the end-to-end runs alternate between the sides round by round, so a noisy machine slows
both alike. Figures are audio seconds per wall second:
- model-only: features already in memory. Ours: `Aligner.align_batches`; official: time inside
  `thinker.forward` during its end-to-end run (its pipeline has no overlap, so that is exact).
- end-to-end: FLAC decode, resample, log-mel, align, and for ours also writing a TextGrid per
  utterance and a Parquet part per batch (prefetch.py workers), from the file list to files on disk.
  Official: `Qwen3ForcedAligner.align(paths, texts)` in chunks of its batch size, corpus sorted by
  length (kinder to its padding than corpus order), results in memory.
- 1x and 4x corpus (ours) show the cost is linear; padding = 1 - real / computed decoder positions (rows and
  width rounded up as the model pads them, `Aligner.padding_fraction`).
The last line is `speedup_vs_official=<ours end-to-end / official end-to-end at its best batch size>`.
Random weights: the times are meaningless, the costs are real. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

# Peak FLOPs of one audio second, for the "fraction of the compute limit" figure (see bench_sides.py).
RESULT = "RESULT "
# Warm model-only passes, back to back, whose median is the figure: one GPU pass of the 1x corpus lasts ~2 s,
# and single passes of one build spread by +-15 %.
MODEL_REPEATS = {"cpu": 1, "gpu": 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--utterances", type=int, default=40, help="utterances of the 1x corpus")
    parser.add_argument("--root", type=Path, default=ROOT / ".bench/bench")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench/out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=4, help="the larger corpus is this many 1x blocks (0: skip)")
    parser.add_argument("--rounds", type=int, default=None, help="CPU: alternate the sides over this many rounds")
    parser.add_argument("--official-batch", default=None, help="official batch sizes to try (comma list)")
    parser.add_argument("--budget", type=int, default=None, help="our decoder positions per batch")
    parser.add_argument("--workers", type=int, default=None, help="our batches in flight")
    parser.add_argument("--dtype", default=None, help="our dtype (default per device)")
    parser.add_argument("--shapes", default=None, choices=["none", "default"], help="our batch shape rounding")
    parser.add_argument("--gpu-memory", type=float, default=None, help="our MLX memory limit, a fraction of the GPU")
    parser.add_argument("--gpu-cache", type=float, default=None, help="our MLX buffer cache limit, GiB")
    parser.add_argument("--gpu-turns", action="store_true", help="our batch threads take turns on the device")
    parser.add_argument("--model-processes", type=int, default=None, help="our model processes (default 1: in-process)")
    parser.add_argument("--quantize", type=int, default=None, help="GPU: also convert to this many bits and use it")
    parser.add_argument("--cpu-matmul", default=None, choices=["auto", "float32", "bfloat16"], help="our CPU products")
    parser.add_argument("--tokenizer-files", type=Path, default=None, help="folder with the real vocab.json/merges.txt")
    parser.add_argument("--text-root", type=Path, default=None, help="LibriSpeech *.trans.txt for the transcripts")
    parser.add_argument("--pipeline", action="store_true", help="also time `python -m corpus_aligner` on the 1x corpus")
    parser.add_argument(
        "--pipeline-variant",
        default=None,
        help="space-separated overrides for a second main-job run, e.g. batch.loader_threads=4",
    )
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--model-only", action="store_true", help="only our model-only figure (e.g. with --quantize)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()

    from corpus_aligner.testing.bench_corpus import make_bench_corpus

    t = time.perf_counter()
    blocks = max(1, args.scale)
    corpus = make_bench_corpus(
        args.root, args.utterances, blocks=blocks, seed=args.seed, text_root=args.text_root,
        tokenizer_files=args.tokenizer_files,
    )  # fmt: skip
    one = corpus.block(1)
    print(
        f"corpus: {len(one)} utterances, {sum(u.duration_s for u in one):.0f} s of audio (1x), "
        f"{len(corpus.utterances)} utterances in {blocks} blocks; ready in {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    common = ["--device", args.device, "--root", str(args.root), "--out", str(args.out)]
    ours_args = common + [f"--{k}={v}" for k, v in (("budget", args.budget), ("workers", args.workers),
                                                     ("dtype", args.dtype), ("quantize", args.quantize),
                                                     ("shapes", args.shapes), ("cpu-matmul", args.cpu_matmul),
                                                     ("gpu-memory", args.gpu_memory), ("gpu-cache", args.gpu_cache),
                                                     ("model-processes", args.model_processes))
                 if v is not None] + ["--gpu-turns"] * args.gpu_turns  # fmt: skip
    # CPU: both sides loaded at once, alternating round by round. GPU: one after the other, each with the
    # whole device (both caching allocators keep what they touched, and side by side they ran out of memory).
    together = args.device == "cpu"
    sides = {"ours": Side("ours", ours_args)}
    if not args.skip_official and not args.model_only and together:
        sides["official"] = Side("official", common)
    figures: dict[str, Any] = {"device": args.device, "utterances": len(one), "audio_s": sum(u.duration_s for u in one)}
    try:
        figures.update(run_all(args, sides, corpus))
    finally:
        for side in sides.values():
            side.close()
    if not args.skip_official and not args.model_only and not together:
        official = Side("official", common)
        try:
            figures.update(run_official_alone(args, official))
        finally:
            official.close()
    if args.pipeline:
        figures["pipeline"] = run_pipeline(args, corpus)
        if args.pipeline_variant:
            figures["pipeline_variant"] = run_pipeline(args, corpus, args.pipeline_variant.split(), "variant")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print_table(figures)


class Side:
    """One side in its own process: commands as JSON lines on stdin, results as `RESULT {json}` lines."""

    def __init__(self, name: str, argv: list[str]):
        self.name = name
        cmd = [sys.executable, "-u", str(ROOT / "scripts/bench_sides.py"), name, *argv]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self.call({"cmd": "ping"})

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                out = json.loads(line[len(RESULT) :])
                if "error" in out:
                    raise RuntimeError(f"{self.name} failed on {command}: {out['error']}")
                return out
            print(f"[{self.name}] {line.rstrip()}", flush=True)
        raise RuntimeError(f"{self.name} exited (code {self.proc.wait()}) during {command}")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError):
                self.call({"cmd": "quit"})
        self.proc.wait(timeout=120)


def run_all(args: argparse.Namespace, sides: dict[str, Side], corpus: Any) -> dict[str, Any]:
    """Every figure; a step that fails is recorded as {"error": ...} and the others still run."""
    out: dict[str, Any] = {"ours_info": sides["ours"].ready}
    n = args.utterances
    if args.model_only:  # a first pass builds the kernels of each new batch shape; the warm passes are the figure
        cmd = {"cmd": "model", "blocks": 1, "first": 0, "stop": n}
        cold = attempt("ours model-only, first pass", sides["ours"], cmd)
        res = attempt("ours model-only", sides["ours"], {**cmd, "repeats": MODEL_REPEATS[args.device]})
        return {**out, **({"ours_model_1x_cold": cold} if cold else {}), **({"ours_model_1x": res} if res else {})}
    official = sides.get("official")
    if official:
        out["official_info"] = official.ready
    rounds = args.rounds or (4 if args.device == "cpu" else 1)
    batch_sizes = official_batch_sizes(args)
    ours_e2e, official_e2e = [], []
    if args.device == "gpu":  # MLX builds kernels per new shape: a first pass shows that cost, then warm figures
        res = attempt(
            "ours e2e 1x cold", sides["ours"], {"cmd": "e2e", "blocks": 1, "tag": "1x-cold", "first": 0, "stop": n}
        )
        if res:
            out["ours_e2e_1x_cold"] = res
    for r in range(rounds):  # end to end on the 1x corpus, the sides alternating round by round
        sub = {"first": r * n // rounds, "stop": (r + 1) * n // rounds}
        res = attempt(f"ours e2e round {r}", sides["ours"], {"cmd": "e2e", "blocks": 1, "tag": f"1x-r{r}", **sub})
        if res:
            ours_e2e.append(res)
        if not official:
            continue
        sizes = batch_sizes if r == 0 else [out.get("official_best_batch", batch_sizes[0])]
        for bs in sizes:
            res = attempt(f"official e2e round {r} batch {bs}", official, {"cmd": "e2e", "batch": bs, **sub})
            if res and r == 0:
                out.setdefault("official_by_batch", {})[bs] = res
            elif res:
                official_e2e.append(res)
        if r == 0 and out.get("official_by_batch"):
            best = max(out["official_by_batch"].items(), key=lambda kv: kv[1]["audio_s_per_s"])
            out["official_best_batch"] = best[0]
            official_e2e.append(best[1])
    if ours_e2e:
        out["ours_e2e_1x"] = combine(ours_e2e)
    if official_e2e:
        out["official_e2e"] = combine(official_e2e)
    stop = n // rounds if args.device == "cpu" else n
    cmd = {"cmd": "model", "blocks": 1, "first": 0, "stop": stop, "repeats": MODEL_REPEATS[args.device]}
    res = attempt("ours model-only", sides["ours"], cmd)
    if res:
        out["ours_model_1x"] = res
    if args.scale > 1:
        cmd = {"cmd": "e2e", "blocks": args.scale, "tag": f"{args.scale}x", "first": 0, "stop": n * args.scale}
        res = attempt(f"ours e2e {args.scale}x", sides["ours"], cmd)
        if res:
            out["ours_e2e_scaled"] = res
    return out


def official_batch_sizes(args: argparse.Namespace) -> list[int]:
    """The official batch sizes to try: `--official-batch`, else 1 on the CPU and 32, 64, 128 on a GPU."""
    return [int(b) for b in (args.official_batch or ("1" if args.device == "cpu" else "32,64,128")).split(",")]


def run_official_alone(args: argparse.Namespace, official: Side) -> dict[str, Any]:
    """The official side over the whole 1x corpus at each batch size; its best is its figure. An untimed pass at
    the first size comes first: on an H200 the first timed size ran at 287-300 audio-s/s, the same size later in
    the same process at 505-533 (first-use costs not covered by its 8-utterance warm-up), so the order of the
    sizes decided."""
    out: dict[str, Any] = {"official_info": official.ready}
    sizes = official_batch_sizes(args)
    whole = {"cmd": "e2e", "first": 0, "stop": args.utterances}
    cold = attempt(f"official e2e batch {sizes[0]}, untimed warm pass", official, {**whole, "batch": sizes[0]})
    if cold:
        out["official_cold"] = cold
    for bs in sizes:
        res = attempt(f"official e2e batch {bs}", official, {**whole, "batch": bs})
        if res:
            out.setdefault("official_by_batch", {})[bs] = res
    if out.get("official_by_batch"):
        best = max(out["official_by_batch"].items(), key=lambda kv: kv[1]["audio_s_per_s"])
        out["official_best_batch"] = best[0]
        out["official_e2e"] = combine([best[1]])
    return out


def attempt(label: str, side: Side, command: dict[str, Any]) -> dict[str, Any] | None:
    try:
        res = side.call(command)
    except RuntimeError as exc:
        print(f"{label}: FAILED {str(exc)[-1500:]}", flush=True)
        return None
    print(f"{label}: {fmt(res)}", flush=True)
    return res


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds -> one figure: total audio over total wall time; peaks are maxima."""
    audio = sum(r["audio_s"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    out = {"audio_s": audio, "wall_s": wall, "audio_s_per_s": audio / wall, "rounds": len(runs)}
    for key in ("model_s", "prepare_s", "merge_s"):
        if all(key in r for r in runs):
            out[key] = sum(r[key] for r in runs)
    for key in ("peak_host_gib", "peak_gpu_gib", "padding"):
        if all(key in r for r in runs):
            out[key] = max(r[key] for r in runs)
    if "model_s" in out:
        out["model_audio_s_per_s"] = audio / out["model_s"]
    return out


def run_pipeline(
    args: argparse.Namespace, corpus: Any, extra: list[str] | None = None, tag: str = ""
) -> dict[str, Any]:
    """The corpus runner as shipped (`python -m corpus_aligner`), its own throughput figure."""
    out_dir = (args.out / f"pipeline-1x{tag}").resolve()
    subprocess.run(["rm", "-rf", str(out_dir)], check=True)
    cmd = [sys.executable, "-m", "corpus_aligner", f"corpus.root={corpus.corpus_root.resolve()}",
           "corpus.parts=[bench-0]", f"model.path={corpus.checkpoint.resolve()}", f"batch={args.device}",
           f"output.dir={out_dir}",
           "output.progress=false", *([f"model.cpu_matmul={args.cpu_matmul}"] if args.cpu_matmul else []),
           *(extra or [])]  # fmt: skip
    # The same package as this process imported: `python -m` puts its working directory first on sys.path, so
    # it runs from the output folder, with the package's parent first on PYTHONPATH (an A/B of another
    # checkout's code then times that code, not the repository's).
    import corpus_aligner

    package_root = str(Path(corpus_aligner.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    out_dir.mkdir(parents=True)
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=out_dir, env=env)
    wall = time.perf_counter() - t
    if done.returncode:
        return {"error": done.stderr[-2000:]}
    run = json.loads((out_dir / "run.json").read_text())
    return {"wall_s": wall, "this_run": run.get("this_run"), "timings_s": run.get("timings_s")}


def fmt(r: dict[str, Any]) -> str:
    parts = [f"{r['audio_s_per_s']:.1f} audio-s/s ({r['audio_s']:.0f} s in {r['wall_s']:.1f} s)"]
    if "model_audio_s_per_s" in r:
        parts.append(f"model {r['model_audio_s_per_s']:.1f}")
    if len(r.get("passes_audio_s_per_s", ())) > 1:
        parts.append(f"median of passes {r['passes_audio_s_per_s']}")
    for key, unit in (("padding", ""), ("peak_host_gib", " GiB host"), ("peak_gpu_gib", " GiB GPU")):
        if key in r:
            parts.append(f"{key.split('_')[0] if unit else key} {r[key]:.3f}{unit}")
    return ", ".join(parts)


def print_table(f: dict[str, Any]) -> None:
    from bench_sides import FLOP_PER_AUDIO_S

    rows = [
        ("ours model-only (1x)", f.get("ours_model_1x")),
        ("ours end-to-end (1x, first pass)", f.get("ours_e2e_1x_cold")),
        ("ours end-to-end (1x)", f.get("ours_e2e_1x")),
        ("ours end-to-end (scaled)", f.get("ours_e2e_scaled")),
        ("official end-to-end", f.get("official_e2e")),
    ]
    print("\n| run | audio-s/s | model-only audio-s/s | padding | peak host GiB | peak GPU GiB |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        if not r:
            continue
        model = r.get("model_audio_s_per_s", r["audio_s_per_s"] if "model" in name else None)
        print(
            f"| {name} | {r['audio_s_per_s']:.1f} | {model if model is None else f'{model:.1f}'} | "
            f"{r.get('padding', float('nan')):.3f} | {r.get('peak_host_gib', float('nan')):.2f} | "
            f"{r.get('peak_gpu_gib', float('nan')):.2f} |"
        )
    if f.get("official_by_batch"):
        cold = f.get("official_cold")
        print(
            "official by batch size: "
            + ", ".join(f"{b}: {r['audio_s_per_s']:.1f}" for b, r in f["official_by_batch"].items())
            + (f" (untimed warm pass at {cold['batch']}: {cold['audio_s_per_s']:.1f})" if cold else "")
        )
    for key in ("pipeline", "pipeline_variant"):
        if f.get(key):
            p = f[key]
            if "error" in p:
                print(f"python -m corpus_aligner ({key}): FAILED {p['error'][-800:]}")
                continue
            run = p["this_run"]
            print(
                f"python -m corpus_aligner ({key}, 1x): {run['throughput_audio_s_per_s']:.1f} audio-s/s in its batch "
                f"loop, {run['audio_s_processed'] / p['wall_s']:.1f} counting start-up; timings (s): "
                + ", ".join(f"{k} {v:.2f}" for k, v in p["timings_s"].items())
            )
    if f.get("ours_e2e_scaled") and f.get("ours_e2e_1x"):
        ratio = f["ours_e2e_scaled"]["audio_s_per_s"] / f["ours_e2e_1x"]["audio_s_per_s"]
        print(f"scaling: {f['ours_e2e_scaled']['audio_s']:.0f} s of audio ran at {ratio:.2f}x the 1x throughput")
    model = f.get("ours_model_1x")
    if model:
        flops = FLOP_PER_AUDIO_S * model["audio_s_per_s"]
        print(
            f"ours model-only: {flops / 1e12:.0f} TFLOP/s of model arithmetic "
            f"({FLOP_PER_AUDIO_S / 1e9:.1f} GFLOP per audio second)"
        )
    if f.get("official_e2e") and f.get("ours_e2e_1x"):
        o, t = f["official_e2e"], f["ours_e2e_1x"]
        if "model_audio_s_per_s" in o:
            print(
                f"model-only ratio ours/official: {model['audio_s_per_s'] / o['model_audio_s_per_s']:.2f}"
                if model
                else ""
            )
        print(f"speedup_vs_official={t['audio_s_per_s'] / o['audio_s_per_s']:.2f}")


if __name__ == "__main__":
    main()
