"""Two microbenchmarks behind docs/performance.md, for the device machine (MLX's CUDA build):

- `encode`: MLX's host cost of encoding kernels (`mx.async_eval`, the work a batch thread does before it waits),
  per op kind and per whole decoder / encoder layer, warm, the same shapes repeated (so the buffer cache hits).
- `conv1`: the encoder's first convolution with its GELU and length mask, the fused CUDA kernel
  (`cuda_kernels.conv1_gelu`) against the MLX ops it replaces, alone, with their largest difference.

    python scripts/bench_gpu_ops.py [encode] [conv1]

Both print per-op figures; none of them is a pass's time (see scripts/gpu_timeline.py for that).
"""

from __future__ import annotations

import corpus_aligner  # noqa: F401  (loads OpenBLAS before MLX: keep this import first)

# isort: split
import sys
import time
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from corpus_aligner.model import cuda_kernels, decoder, encoder
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


def main() -> None:
    which = sys.argv[1:] or ["encode", "conv1"]
    if "encode" in which:
        bench_encode()
    if "conv1" in which:
        bench_conv1()
    print(f"MLX cache {mx.get_cache_memory() / 2**30:.1f} GiB, limit {mx.get_memory_limit() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
