"""Model-only throughput of one GPU shared by several aligner processes, each with its own MLX and batch threads.

    python scripts/bench_procs.py ROOT --procs 2 --workers 1 [--gpu-memory 0.35] [--passes 5]

ROOT is a bench corpus made by scripts/bench_align.py (its 1x block). Every process loads the model, computes
the features of the whole block and packs it as the aligner does, then takes every N-th batch; all processes
start each pass together (a barrier), and a pass's figure is the block's audio over the slowest process's wall
time. Prints each pass and the median, as `bench_align.py --model-only` does for one process. Why: within one
process the batch threads share one GIL and MLX's encoding, and their kernels run beside each other; separate
processes encode in parallel and the GPU time-slices their contexts (docs/performance.md, seventh session).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(rank: int, args: argparse.Namespace, barrier: Any, results: Any) -> None:
    import bench_sides  # beside this script

    ns = argparse.Namespace(device=args.device, root=args.root, out=args.root / f"procs-{rank}", budget=args.budget,
                            workers=args.workers, dtype=None, quantize=None, cpu_matmul=None, shapes=None,
                            gpu_memory=args.gpu_memory, gpu_cache=None, gpu_turns=False)  # fmt: skip
    ours = bench_sides.Ours(ns)
    utts = ours.corpus.block(1)
    feats, words, lengths = ours.features(utts)
    batches = ours.aligner.pack(lengths)[rank :: args.procs]
    mine = sum(utts[i].duration_s for b in batches for i in b)
    jobs = [([feats[i] for i in b], [words[i] for i in b]) for b in batches]
    for _ in list(ours.aligner.align_batches(jobs[:2])):  # this process's shapes warm before the passes
        pass
    ours.close()
    for p in range(args.passes):
        barrier.wait()
        t = time.perf_counter()
        for _ in ours.aligner.align_batches(iter(jobs)):
            pass
        results.put((p, rank, time.perf_counter() - t, mine, ours.mx.get_peak_memory() / 2**30))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="batch threads per process")
    parser.add_argument("--gpu-memory", type=float, default=None, help="each process's MLX memory limit, a fraction")
    parser.add_argument("--budget", type=int, default=None, help="decoder positions per batch")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="gpu", help="cpu: a smoke test of the script")
    args = parser.parse_args()
    if args.gpu_memory is None and args.device == "gpu":
        args.gpu_memory = 0.7 / args.procs
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(args.procs), ctx.Queue()
    procs = [ctx.Process(target=child, args=(r, args, barrier, results)) for r in range(args.procs)]
    for p in procs:
        p.start()
    walls: dict[int, list[float]] = {}
    audio, peaks = 0.0, []
    for _ in range(args.procs * args.passes):
        while True:
            try:
                p, _rank, wall, mine, peak = results.get(timeout=5)
                break
            except queue.Empty:
                dead = [q.exitcode for q in procs if q.exitcode not in (None, 0)]
                if dead:
                    for q in procs:
                        q.kill()
                    sys.exit(f"a process failed (exit codes {dead}); its traceback is above")
        walls.setdefault(p, []).append(wall)
        if p == 0:
            audio += mine
            peaks.append(peak)
    for p in procs:
        p.join()
    rates = [audio / max(w) for _, w in sorted(walls.items())]
    print(f"procs {args.procs} workers {args.workers} gpu_memory {args.gpu_memory} audio {audio:.0f} s")
    print("passes", [round(r) for r in rates], "per-process walls", [[round(x, 3) for x in w] for w in walls.values()])
    print(f"median {statistics.median(rates):.0f} audio-s/s  peak_gpu_gib {[round(x, 1) for x in peaks]}")


if __name__ == "__main__":
    main()
