"""Where a warm GPU model-only pass spends its time: a CUPTI kernel timeline (torch.profiler, which records
every kernel of the process, MLX's too), the host phases of each batch thread, and MLX's products against
torch's (cuBLAS) on the decoder's and encoder's shapes. For the device machine, where torch has CUDA:

    python scripts/gpu_timeline.py .bench/bench OUTDIR [UTTERANCES]

ROOT is a bench corpus made by scripts/bench_align.py; prints the GPU's busy share, its gaps, the kernels by
total time and the per-batch host phases; OUTDIR/trace.json opens in chrome://tracing or Perfetto.
TL_DEVICE=cpu runs the host side alone (no kernels recorded), TW=N sets the batch threads, TL_NOPROF=1 times the
host phases of an ordinary warm pass (no profiler, whose per-launch callbacks slow the host down) and stops there.
A batch thread's evaluation is timed in two: "encode" (`mx.async_eval`: MLX encodes the kernels in the calling
thread) and "eval" (the wait for them).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sides  # beside this script


def main() -> None:
    root, outdir = Path(sys.argv[1]), Path(sys.argv[2])
    stop = int(sys.argv[3]) if len(sys.argv) > 3 else None
    outdir.mkdir(parents=True, exist_ok=True)
    gpu = os.environ.get("TL_DEVICE", "gpu") == "gpu"
    ns = argparse.Namespace(device="gpu" if gpu else "cpu", root=root, out=outdir / "o", budget=None,
                            workers=int(os.environ.get("TW", 0)) or None, dtype=None, quantize=None,
                            cpu_matmul=None, shapes=None, gpu_memory=None, gpu_cache=None,
                            gpu_turns=False, model_processes=None)  # fmt: skip
    ours = bench_sides.Ours(ns)
    cmd = {"cmd": "model", "blocks": 1, "first": 0, "stop": stop, "repeats": 2}
    r = ours.model(cmd)
    print("warm:", r["passes_audio_s_per_s"], "batches", r["batches"], flush=True)

    import mlx.core as mx

    import corpus_aligner.api as api
    from corpus_aligner.model.aligner import ForcedAligner

    events: list[tuple[int, str, float, float]] = []
    cpu: dict[tuple[int, str], float] = collections.defaultdict(float)  # thread CPU seconds per (thread, phase)

    def record(name, fn):
        def g(*a, **k):
            t, c = time.perf_counter(), time.thread_time()
            out = fn(*a, **k)
            events.append((threading.get_ident(), name, t, time.perf_counter()))
            cpu[threading.get_ident(), name] += time.thread_time() - c
            return out

        return g

    for n in ("plan_batch", "pad_prompts"):
        setattr(api, n, record(n, getattr(api, n)))
    ForcedAligner.__call__ = record("graph", ForcedAligner.__call__)
    for n in ("prepare_batch", "run_batch", "decode_batch"):
        setattr(api.Aligner, n, record(n, getattr(api.Aligner, n)))

    encode, wait = record("encode", mx.async_eval), record("eval", mx.eval)

    class MxProxy:
        def __getattr__(self, name):
            return getattr(mx, name)

        @staticmethod
        def eval(*arrays):
            encode(*arrays)  # the kernels scheduled (MLX encodes them in this thread), not waited for
            wait(*arrays)

    api.mx = MxProxy()  # type: ignore[assignment]

    if os.environ.get("TL_NOPROF"):
        t0 = time.perf_counter()
        r = ours.model({**cmd, "repeats": 1})
        print(f"timed pass: {r['audio_s_per_s']:.0f} audio-s/s, wall {time.perf_counter() - t0:.3f} s", flush=True)
        host_phases(events, t0, cpu)
        ours.close()
        return

    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if gpu else [ProfilerActivity.CPU]
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        r = ours.model({**cmd, "repeats": 1})
    t1 = time.perf_counter()
    print(f"profiled pass: {r['audio_s_per_s']:.0f} audio-s/s, wall {t1 - t0:.3f} s", flush=True)
    trace = outdir / "trace.json"
    prof.export_chrome_trace(str(trace))

    host_phases(events, t0, cpu)

    # ----- GPU kernels
    data = json.loads(trace.read_text())
    kern = [e for e in data.get("traceEvents", []) if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    print("gpu events:", len(kern))
    if kern:
        iv = sorted((e["ts"], e["ts"] + e["dur"]) for e in kern)
        busy, cur_s, cur_e = 0.0, *iv[0]
        gaps = []
        for s, e in iv[1:]:
            if s > cur_e:
                busy += cur_e - cur_s
                gaps.append(s - cur_e)
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        busy += cur_e - cur_s
        span = iv[-1][1] - iv[0][0]
        gaps.sort(reverse=True)
        print(f"GPU span {span / 1e3:.1f} ms, busy {busy / 1e3:.1f} ms ({busy / span:.1%}), "
              f"sum of kernel durations {sum(e['dur'] for e in kern) / 1e3:.1f} ms; gaps >1ms: "
              f"{sum(g for g in gaps if g > 1000) / 1e3:.1f} ms in {sum(g > 1000 for g in gaps)}; largest "
              f"{[round(g / 1e3, 2) for g in gaps[:10]]}")  # fmt: skip
        tot = collections.defaultdict(float)
        n = collections.Counter()
        for e in kern:
            tot[e["name"][:110]] += e["dur"]
            n[e["name"][:110]] += 1
        for name, d in sorted(tot.items(), key=lambda kv: -kv[1])[:45]:
            print(f"{d / 1e3:9.2f} ms {n[name]:6d}x {d / n[name]:8.1f} us  {name}")
        streams = collections.Counter(e.get("args", {}).get("stream") for e in kern)
        print("streams", dict(streams))

    # ----- products: MLX in one eval of 10 independent products vs torch
    if gpu:
        shapes = [("dec qkv", 43008, 1024, 4096), ("dec o", 43008, 2048, 1024), ("dec gate", 43008, 1024, 3072),
                  ("dec down", 43008, 3072, 1024), ("enc qkv 1", 21632, 1024, 1024), ("enc fc1", 21632, 1024, 4096),
                  ("enc fc2", 21632, 4096, 1024)]  # fmt: skip
        for label, M, K, N in shapes:
            x = mx.random.normal((M, K)).astype(mx.bfloat16)
            ws = [mx.random.normal((N, K)).astype(mx.bfloat16) * 0.02 for _ in range(10)]
            mx.eval(x, *ws)
            for _ in range(2):
                mx.eval(*[x @ w.T for w in ws])
            mx.synchronize()
            t = time.perf_counter()
            mx.eval(*[x @ w.T for w in ws])
            mx.synchronize()
            ml = (time.perf_counter() - t) / 10 * 1e3
            tx = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            tw = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(10)]
            for _ in range(2):
                [tx @ w.T for w in tw]
            torch.cuda.synchronize()
            t = time.perf_counter()
            outs = [tx @ w.T for w in tw]
            torch.cuda.synchronize()
            tt = (time.perf_counter() - t) / 10 * 1e3
            del outs
            fl = 2 * M * K * N
            print(f"{label:10s} {M}x{K}x{N}: MLX {ml:.3f} ms ({fl / ml / 1e9:.0f} TF/s)  torch {tt:.3f} ms "
                  f"({fl / tt / 1e9:.0f} TF/s)", flush=True)  # fmt: skip
        with profile(activities=[ProfilerActivity.CUDA]) as p2:
            x = mx.random.normal((43008, 1024)).astype(mx.bfloat16)
            w = mx.random.normal((4096, 1024)).astype(mx.bfloat16)
            mx.eval(x @ w.T)
            mx.synchronize()
            tx = torch.randn(43008, 1024, device="cuda", dtype=torch.bfloat16)
            tw = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16)
            (tx @ tw.T).sum().item()
        for e in p2.events():
            if e.device_type.name == "CUDA":
                print(f"  kernel {e.name[:120]} {e.device_time:.1f} us" if hasattr(e, "device_time") else e.name)
    ours.close()


def host_phases(events: list[tuple[int, str, float, float]], t0: float, cpu: dict[tuple[int, str], float]) -> None:
    """Seconds per phase and thread (wall, and the thread's CPU time: wall well above CPU in a phase that holds
    the GIL is time spent waiting for it), then each batch's pass (`run_batch`) and the phases inside it."""
    by = collections.defaultdict(lambda: collections.defaultdict(float))
    cnt = collections.Counter()
    names = {}
    for tid, name, a, b in events:
        by[tid][name] += b - a
        cnt[name] += 1
        names.setdefault(tid, len(names))
    for tid, d in by.items():
        print(f"thread {names[tid]}", {k: f"{v:.3f} s (CPU {cpu[tid, k]:.3f})" for k, v in d.items()})
    print("counts", dict(cnt))
    for tid, _, a, b in sorted([e for e in events if e[1] == "run_batch"], key=lambda e: e[2]):
        inside = [e for e in events if e[0] == tid and a <= e[2] and e[3] <= b and e[1] != "run_batch"]
        parts = collections.defaultdict(float)
        for e in inside:
            parts[e[1]] += e[3] - e[2]
        print(f"batch t={a - t0:6.3f}..{b - t0:6.3f} thread {names[tid]}: {b - a:.3f} s",
              {k: round(v, 3) for k, v in parts.items()})  # fmt: skip


if __name__ == "__main__":
    main()
