"""The GPU's kernel choices (MLX's fused SDPA, its own GELU/SiLU, MLX convolutions) computed on the CPU give
the same logits as the CPU's kernels (numpy attention core, cheap-op element-wise kernels): the GPU path is
otherwise only exercised on a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from corpus_aligner.model import fastmath


@pytest.fixture
def on_cpu() -> Iterator[None]:
    """The comparison runs on the CPU wherever the suite runs (on a GPU machine too: there the default device
    is the GPU, with half-precision weights)."""
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    try:
        yield
    finally:
        mx.set_default_device(device)


def test_gpu_kernel_path_matches_the_cpu_one(tiny_checkpoint_dir: Path, on_cpu: None) -> None:
    from corpus_aligner import Aligner
    from corpus_aligner.model.encoder import plan_batch
    from corpus_aligner.prompt import pad_prompts

    aligner = Aligner.from_pretrained(tiny_checkpoint_dir)
    rng = np.random.default_rng(3)
    feats = [rng.standard_normal((n, 128)).astype(np.float32) for n in (260, 90)]
    plan = plan_batch(feats, aligner.args.encoder, "windowed")
    prompts = [aligner.prompts.build(n, w) for n, w in zip(plan.tokens_per_clip, [["a", "b"], ["c", "d", "e"]])]
    ids, src, slots = pad_prompts(prompts, aligner.args.audio_end_token_id)

    def logits() -> np.ndarray:
        with mx.stream(mx.cpu):
            return np.array(aligner.model(mx.array(ids), mx.array(src), mx.array(slots), plan))

    cpu = logits()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastmath, "use_fast_math", lambda: False)
        gpu_path = logits()
    np.testing.assert_allclose(gpu_path, cpu, atol=2e-4 * np.abs(cpu).max())


def test_stacked_projections_equal_the_weights_and_follow_new_ones() -> None:
    from corpus_aligner.model import decoder
    from corpus_aligner.model.args import DecoderArgs

    mx.random.seed(0)
    args = DecoderArgs(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    attn = decoder.Attention(args)
    names = ("q_proj", "k_proj", "v_proj")
    first = decoder.stacked(attn, names)
    assert first is not None and first is decoder.stacked(attn, names)  # built once
    assert mx.array_equal(first, mx.concatenate([attn[n].weight for n in names])).item()
    attn.k_proj.weight = attn.k_proj.weight * 2  # e.g. weights loaded again
    second = decoder.stacked(attn, names)
    assert second is not first
    assert mx.array_equal(second[64:96], attn.k_proj.weight).item()
    attn.load_weights([("v_proj.weight", mx.zeros((32, 64), mx.uint32))], strict=False)  # packed codes
    assert decoder.stacked(attn, names) is None
