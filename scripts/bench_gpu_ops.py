"""Microbenchmarks behind docs/performance.md, for the device machine (MLX's CUDA build):

- `encode`: MLX's host cost of encoding kernels (`mx.async_eval`, the work a batch thread does before it waits),
  per op kind and per whole decoder / encoder layer, warm, the same shapes repeated (so the buffer cache hits).
- `conv1`: the encoder's first convolution with its GELU and length mask, the fused CUDA kernel
  (`cuda_kernels.conv1_gelu`) against the MLX ops it replaces, alone, with their largest difference.
- `hostwrites`: the first-conv and bias + GELU kernels' device time (CUPTI, through torch.profiler) with and
  without another thread making MLX arrays from host data meanwhile, as a batch thread does while its
  convolution pieces run, and with the kernels' small arguments (lengths, sizes) made from host data (CUDA
  managed memory, as before the ninth session) or copied into device memory (`device_arrays`, as shipped). The
  eighth session's question: the first-conv kernel took 0.70-0.74 ms per 256 chunks alone and 2.2 ms inside a
  pass (docs/performance.md).

    python scripts/bench_gpu_ops.py [encode] [conv1] [hostwrites]

They print per-op figures; none of them is a pass's time (see scripts/gpu_timeline.py for that).
"""

from __future__ import annotations

import corpus_aligner  # noqa: F401  (loads OpenBLAS before MLX: keep this import first)

# isort: split
import collections
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from corpus_aligner.model import cuda_kernels, decoder, device_arrays, encoder
from corpus_aligner.model.args import DecoderArgs, EncoderArgs

Graph = Callable[[], object]


def encode_cost(name: str, build: Graph, ops: int, reps: int = 5) -> None:
    """Median `mx.async_eval` time of `build()`'s graph per op (wall and this thread's CPU), after a warm-up."""
    mx.eval(build())
    wall, cpu, graph = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = build()
        t1, c1 = time.perf_counter(), time.thread_time()
        mx.async_eval(out)
        wall.append(time.perf_counter() - t1)
        cpu.append(time.thread_time() - c1)
        graph.append(t1 - t0)
        mx.eval(out)
    us = 1e6 / ops
    print(
        f"{name:34s} graph {us * np.median(graph):7.1f} us/op  encode {us * np.median(wall):7.1f} us/op "
        f"(CPU {us * np.median(cpu):6.1f})",
        flush=True,
    )


def chain(x: mx.array, step: Callable[[mx.array], mx.array], n: int) -> Graph:
    def build() -> mx.array:
        y = x
        for _ in range(n):
            y = step(y)
        return y

    return build


def bench_encode(n: int = 200) -> None:
    if mx.default_device() != mx.gpu:
        print("encode: for a GPU (on the CPU, MLX runs the kernels while it encodes them)")
        return
    bf = mx.bfloat16
    x, y = mx.random.normal((64, 1024)).astype(bf), mx.random.normal((64, 1024)).astype(bf)
    w, g = (0.03 * mx.random.normal((1024, 1024))).astype(bf), mx.ones((1024,), bf)
    mx.eval(x, y, w, g)
    encode_cost("add", chain(x, lambda z: z + y, n), n)
    encode_cost("product 64x1024x1024", chain(x, lambda z: z @ w, n), n)
    encode_cost("rms_norm", chain(x, lambda z: mx.fast.rms_norm(z, g, 1e-6), n), n)
    encode_cost("compiled SiLU * up", chain(x, lambda z: decoder._silu_mul(z, y), n), n)
    encode_cost("transpose copy", chain(x, lambda z: mx.contiguous(z.reshape(64, 8, 128).transpose(1, 0, 2)), n), n)
    q = mx.random.normal((1, 16, 64, 128)).astype(bf)
    kv = mx.random.normal((1, 8, 64, 128)).astype(bf)
    mx.eval(q, kv)
    encode_cost(
        "SDPA, causal",
        lambda: [mx.fast.scaled_dot_product_attention(q, kv, kv, scale=0.08, mask="causal") for _ in range(n)],
        n,
    )
    xc = mx.random.normal((2, 16, 16, 480)).astype(mx.float16)
    wc = (0.01 * mx.random.normal((480, 3, 3, 480))).astype(mx.float16)
    mx.eval(xc, wc)
    encode_cost("conv2d 480 -> 480", lambda: [mx.conv2d(xc, wc, 2, 1) for _ in range(n)], n)
    if cuda_kernels.available(128):
        qkv, nw = mx.random.normal((1, 64, 4096)).astype(bf), mx.ones((128,), bf)
        mx.eval(qkv, nw)
        encode_cost(
            "q/k/v norm + RoPE kernel",
            lambda: [cuda_kernels.qkv_norm_rope(qkv, nw, nw, 16, 8, 1e6, 1e-6)[0] for _ in range(n)],
            n,
        )
    dargs, eargs = DecoderArgs(), EncoderArgs()
    layer = decoder.DecoderLayer(dargs)
    layer.set_dtype(bf)
    mx.eval(layer.parameters())
    for b, s in ((8, 2048), (1, 64)):
        xd = mx.random.normal((b, s, dargs.hidden_size)).astype(bf)
        mx.eval(xd)
        encode_cost(f"decoder layer {b}x{s} (per layer)", chain(xd, layer, 28), 28)
    elayer = encoder.AudioEncoderLayer(eargs)
    elayer.set_dtype(mx.float16)
    mx.eval(elayer.parameters())
    for rows in (256, 4):
        xe = mx.random.normal((rows * 104, eargs.d_model)).astype(mx.float16)
        bias = mx.zeros((rows, 1, 104, 104), mx.float16)
        mx.eval(xe, bias)
        step = lambda z, bias=bias: elayer.compiled(z, bias)  # noqa: E731
        encode_cost(f"encoder layer {rows}x104 (per layer)", chain(xe, step, 24), 24)


def bench_conv1(chunks_n: int = 256, reps: int = 20) -> None:
    mx.random.seed(0)
    conv = nn.Conv2d(1, 480, 3, stride=2, padding=1)
    if not cuda_kernels.conv1_available(conv):
        print("conv1: needs MLX's CUDA build and an NVIDIA GPU")
        return
    conv.set_dtype(mx.float16)
    mx.eval(conv.parameters())
    chunks = mx.random.normal((chunks_n, 100, 128)).astype(mx.float16)
    lengths = np.full(chunks_n, 50)
    lengths[::7] = 17  # some chunks end early, as a clip's last one does
    keep = mx.array((np.arange(50)[None, :] < lengths[:, None])[:, None, :, None].astype(np.float16))
    weight, bias = encoder.taps_by_row(conv)
    mx.eval(chunks, keep)

    def ops() -> mx.array:
        return encoder.gelu_masked(encoder.conv3x3_s2(conv, chunks.transpose(0, 2, 1)[..., None]), keep)

    def fused() -> mx.array:
        return cuda_kernels.conv1_gelu(chunks, weight, bias, lengths)

    ref = np.array(ops().astype(mx.float32))
    for name, fn in (("MLX ops", ops), ("fused kernel", fused)) * 2:
        mx.eval(fn())
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            out = fn()
            mx.eval(out)
            times.append(time.perf_counter() - t)
        diff = np.abs(np.array(out.astype(mx.float32)) - ref)
        print(
            f"conv1 {chunks_n} chunks, {name:12s} {1e3 * np.median(times):6.3f} ms (min {1e3 * min(times):.3f}); "
            f"max |diff| {diff.max():.4f}, mean {diff.mean():.1e}",
            flush=True,
        )


@cache
def _managed_constant(values: Any, dtype: mx.Dtype) -> mx.array:
    a = mx.array(values, dtype)
    mx.eval(a)
    return a


def use_managed_args(managed: bool) -> None:
    """managed: the custom kernels take their small arguments as MLX makes them from host data (CUDA managed
    memory), as before the ninth session; otherwise as copies in device memory (`device_arrays`)."""
    cuda_kernels.device_array = mx.array if managed else device_arrays.device_array  # type: ignore[assignment]
    cuda_kernels.constant = _managed_constant if managed else device_arrays.constant  # type: ignore[assignment]


def bench_host_writes(chunks_n: int = 256, reps: int = 4) -> None:
    from torch.profiler import ProfilerActivity, profile  # the device machine's torch, for CUPTI

    mx.random.seed(0)
    enc = encoder.AudioEncoder(EncoderArgs())
    enc.set_dtype(mx.float16)
    mx.eval(enc.parameters())
    if not cuda_kernels.conv1_available(enc.conv2d1):
        print("hostwrites: needs MLX's CUDA build and an NVIDIA GPU")
        return
    weight, bias = encoder.taps_by_row(enc.conv2d1)
    chunks = mx.random.normal((chunks_n, 100, 128)).astype(mx.float16)
    conv2_out = mx.random.normal((chunks_n, 32, 25, 480)).astype(mx.float16)
    lengths1, lengths2 = np.full(chunks_n, 50), np.full(chunks_n, 25)
    lengths1[::7], lengths2[::7] = 17, 9  # some chunks end early, as a clip's last one does
    mx.eval(chunks, conv2_out)

    def work() -> None:  # five pieces, each scheduled before the next is built, as `AudioEncoder.downsample`
        outs = []
        for _ in range(5):
            a = cuda_kernels.conv1_gelu(chunks, weight, bias, lengths1)
            g = cuda_kernels.bias_gelu(conv2_out, enc.conv2d2.bias, lengths2)
            mx.async_eval(a, g)
            outs += [a, g]
        mx.eval(*outs)

    def host_writes(stop: threading.Event) -> None:
        rng, kept = np.random.default_rng(1), []
        while not stop.is_set():
            kept += [mx.array(rng.integers(0, 100, 256).astype(np.int32)), mx.array(float(rng.random()), mx.float32)]
            kept = kept[-30:]

    for _ in range(2):
        for device_args, host in ((False, False), (False, True), (True, True), (True, False)):
            use_managed_args(not device_args)
            work()
            stop = threading.Event()
            writer = threading.Thread(target=host_writes, args=(stop,), daemon=True)
            if host:
                writer.start()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                for _ in range(reps):
                    work()
                wall = (time.perf_counter() - t0) / reps
            stop.set()
            if host:
                writer.join()
            trace = Path(tempfile.mkdtemp()) / "trace.json"
            prof.export_chrome_trace(str(trace))
            total, count = collections.defaultdict(float), collections.Counter()
            for e in json.loads(trace.read_text())["traceEvents"]:
                if e.get("cat") == "kernel":
                    kind = next((k for k in ("conv1_gelu", "bias_gelu") if k in e["name"]), "other")
                    total[kind] += e["dur"]
                    count[kind] += 1
            label = f"{'device' if device_args else 'managed'} args, {'host writing' if host else 'no host writes'}"
            print(f"hostwrites {label:30s} wall/rep {1e3 * wall:7.2f} ms | " + " | ".join(
                f"{k} {total[k] / count[k]:.0f} us x{count[k]}" for k in total), flush=True)  # fmt: skip
    use_managed_args(False)


def main() -> None:
    which = sys.argv[1:] or ["encode", "conv1"]
    if "encode" in which:
        bench_encode()
    if "conv1" in which:
        bench_conv1()
    if "hostwrites" in which:
        bench_host_writes()
    print(f"MLX cache {mx.get_cache_memory() / 2**30:.1f} GiB, limit {mx.get_memory_limit() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
