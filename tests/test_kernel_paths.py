"""The GPU's kernel choices (MLX's fused SDPA, its own GELU/SiLU, MLX convolutions) computed on the CPU give
the same logits as the CPU's kernels (numpy attention core, cheap-op element-wise kernels): the GPU path is
otherwise only exercised on a GPU."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from corpus_aligner.model import fastmath


def test_gpu_kernel_path_matches_the_cpu_one(tiny_checkpoint_dir: Path) -> None:
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


def test_stacked_projections_give_the_separate_products_and_follow_new_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from corpus_aligner.model import decoder
    from corpus_aligner.model.args import DecoderArgs

    mx.random.seed(0)
    args = DecoderArgs(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    mlp = decoder.MLP(args)
    x = mx.random.normal((2, 5, 64))
    monkeypatch.setattr(fastmath, "use_fast_math", lambda: False)  # the GPU's path, on the CPU
    with mx.stream(mx.cpu):
        monkeypatch.setattr(decoder, "FUSED_GATE_UP", False)
        separate = np.array(mlp(x))
        monkeypatch.setattr(decoder, "FUSED_GATE_UP", True)
        np.testing.assert_allclose(np.array(mlp(x)), separate, rtol=1e-5, atol=1e-6)
        first = decoder.stacked(mlp, ("gate_proj", "up_proj"))
        assert first is not None and first is decoder.stacked(mlp, ("gate_proj", "up_proj"))
        mlp.up_proj.weight = mlp.up_proj.weight * 2  # e.g. weights loaded again
        second = decoder.stacked(mlp, ("gate_proj", "up_proj"))
        assert second is not first
        assert mx.array_equal(second.weight[args.intermediate_size :], mlp.up_proj.weight).item()
        assert not np.allclose(np.array(mlp(x)), separate, atol=1e-3)
