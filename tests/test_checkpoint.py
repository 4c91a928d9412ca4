"""Checkpoint loading, saving and the 4-bit layout (model.md §7-8), on generated checkpoints.

Run: python -m pytest -q tests/test_checkpoint.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from corpus_aligner.checkpoint import convert, load_model, read_weights, resolve, save
from corpus_aligner.errors import CheckpointError
from corpus_aligner.model import ForcedAligner
from corpus_aligner.model.encoder import plan_batch
from corpus_aligner.testing.tiny_checkpoint import tiny_checkpoint

QUANT_TOL = 0.5  # relative RMS logit error of 4-bit vs float on the tiny random model (observed ~0.33)
FP16_TOL = 0.02  # 4-bit kernels in float16 vs the same weights dequantized to float32 (observed ~0.003)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=2)


@pytest.fixture(scope="module")
def quantized(ckpt, tmp_path_factory) -> Path:
    return convert(ckpt, tmp_path_factory.mktemp("q4"), bits=4)


def forward(model: ForcedAligner, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((250, 128)).astype(np.float32)
    plan = plan_batch([features], model.args.encoder, "windowed")
    n = plan.tokens_per_clip[0]
    a = model.args
    ids = [a.audio_start_token_id] + [a.audio_token_id] * n + [a.audio_end_token_id]
    ids += [5, 9, a.timestamp_token_id, a.timestamp_token_id, 17, a.timestamp_token_id, a.timestamp_token_id]
    src = [-1] + list(range(n)) + [-1] * 8
    slots = [n + 4, n + 5, n + 7, n + 8]
    out = model(mx.array([ids]), mx.array([src]), mx.array([slots]), plan)
    return np.array(out.astype(mx.float32))[0]


def test_official_keys_and_sanitize_is_idempotent(ckpt):
    """The generated file has the official `thinker.*` names; sanitize maps them once and then no more."""
    raw = read_weights(ckpt)
    assert all(k.startswith("thinker.") for k in raw)
    assert raw["thinker.audio_tower.conv2d2.weight"].shape == (8, 8, 3, 3)  # PyTorch [O, I, kH, kW]
    assert raw["thinker.lm_head.weight"].shape == (5000, 64)
    assert all(v.dtype == mx.bfloat16 for v in raw.values())
    once = ForcedAligner.sanitize(raw)
    twice = ForcedAligner.sanitize(once)
    assert once.keys() == twice.keys()
    assert once["audio_tower.conv2d2.weight"].shape == (8, 3, 3, 8)
    for k in once:
        assert mx.array_equal(once[k], twice[k]), k


def test_save_then_load_gives_equal_parameters(ckpt, tmp_path):
    """save (official layout) -> load_model reproduces every parameter exactly."""
    model = load_model(ckpt)
    again = load_model(save(model, tmp_path / "copy", source=ckpt))
    a, b = dict(tree_flatten(model.parameters())), dict(tree_flatten(again.parameters()))
    assert a.keys() == b.keys()
    for k in a:
        assert mx.array_equal(a[k], b[k]), k


def test_quantized_layout_is_the_aufklarer_one(quantized):
    """4-bit file: decoder linears + embedding as uint32 codes with fp16 scales/biases, rest fp16."""
    raw = read_weights(quantized)
    scales = sorted(k for k in raw if k.endswith(".scales"))
    linears = ("mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj")
    linears += ("self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj")
    expected = [
        "thinker.model.embed_tokens.scales",
        *(f"thinker.model.layers.{i}.{m}.scales" for i in range(2) for m in linears),
    ]
    assert scales == sorted(expected)
    q = raw["thinker.model.layers.0.mlp.down_proj.weight"]
    assert q.dtype == mx.uint32 and q.shape == (64, 128 // 8)
    s = raw["thinker.model.layers.0.mlp.down_proj.scales"]
    assert s.dtype == mx.float16 and s.shape == (64, 128 // 64)
    assert raw["thinker.audio_tower.conv2d1.weight"].shape == (8, 1, 3, 3)
    floats = [
        k for k in raw if not k.endswith((".scales", ".biases")) and k.removesuffix(".weight") + ".scales" not in raw
    ]
    assert floats and all(raw[k].dtype == mx.float16 for k in floats)
    config = json.loads((quantized / "quantize_config.json").read_text())["quantization"]
    assert config["bits"] == 4 and config["group_size"] == 64


def test_quantized_loads_quantized_exactly_where_scales_are(quantized):
    """Kept quantized (dtype float16), QuantizedLinear/QuantizedEmbedding appear exactly where the file
    has scales; on the CPU default everything is dequantized to float32."""
    raw = {k.removeprefix("thinker."): v for k, v in read_weights(quantized).items()}
    model = load_model(quantized, dtype="float16")
    for path, module in model.named_modules():
        has_scales = f"{path}.scales" in raw
        is_quant = isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        assert has_scales == is_quant, path
    cpu = load_model(quantized)
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in cpu.named_modules())
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(cpu.parameters()))
    # GPU default: the decoder dequantized to bfloat16 (measured faster), encoder and head float16;
    # quantized=True keeps the file's 4-bit layers, also with the per-device dtypes.
    quant = (nn.QuantizedLinear, nn.QuantizedEmbedding)
    gpu = load_model(quantized, device="gpu")
    assert not any(isinstance(m, quant) for _, m in gpu.named_modules())
    assert {v.dtype for _, v in tree_flatten(gpu.model.parameters())} == {mx.bfloat16}
    assert {v.dtype for _, v in tree_flatten(gpu.audio_tower.parameters())} == {mx.float16}
    kept = load_model(quantized, device="gpu", quantized=True)
    assert sum(isinstance(m, quant) for _, m in kept.named_modules()) == sum(k.endswith(".scales") for k in raw)
    assert not any(
        isinstance(m, quant) for _, m in load_model(quantized, dtype="float16", quantized=False).named_modules()
    )


def test_quantized_weights_within_half_a_step(ckpt, quantized):
    """Every dequantized 4-bit weight is within half a step (+ fp16 rounding) of the float one."""
    ref = dict(tree_flatten(load_model(ckpt).parameters()))
    raw = {k.removeprefix("thinker."): v for k, v in read_weights(quantized).items()}
    deq = dict(tree_flatten(load_model(quantized).parameters()))
    for key in (k for k in raw if k.endswith(".scales")):
        name = key.removesuffix(".scales") + ".weight"
        step = np.abs(np.repeat(np.array(raw[key].astype(mx.float32)), 64, axis=1))
        err = np.abs(np.array(deq[name]) - np.array(ref[name]))
        bias = np.abs(np.repeat(np.array(raw[key.replace(".scales", ".biases")].astype(mx.float32)), 64, axis=1))
        fp16 = (15 * step + bias) * 2.0**-11  # scale and bias are stored in fp16
        assert (err <= step / 2 + fp16 + 1e-6).all(), name


def test_quantized_logits_close_to_float(ckpt, tmp_path):
    """Logits of the 4-bit model, kept quantized in float16 or dequantized to float32, are within
    QUANT_TOL of the float model (relative RMS over the slot logits), and the quantized kernels equal the
    dequantized float32 model within FP16_TOL. The q/k norms are reset to 1 first: the test checkpoint's
    sharp attention (norms ~3) turns any weight error into large logit changes, which says nothing about
    real weights (those cannot be judged here)."""
    model = load_model(ckpt)
    model.update(
        tree_unflatten(
            [(k, mx.ones_like(v)) for k, v in tree_flatten(model.parameters()) if k.endswith("_norm.weight")]
        )
    )
    folder = save(model, tmp_path / "float", source=ckpt)
    quantized = convert(folder, tmp_path / "q4", bits=4)
    ref = forward(load_model(folder))
    deq = forward(load_model(quantized))
    kept = forward(load_model(quantized, dtype="float16"))
    for out in (deq, kept):
        err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        assert 0 < err < QUANT_TOL, err
    assert np.abs(kept - deq).max() / np.abs(deq).max() < FP16_TOL


def test_repo_id_without_network_says_how_to_pass_a_folder(tmp_path):
    """No network: a repo id fails with a message naming the repo and how to pass a local folder."""
    code = "from corpus_aligner.checkpoint import resolve\nresolve('aufklarer/Qwen3-ForcedAligner-0.6B-4bit')\n"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "CheckpointError" in proc.stderr
    assert "aufklarer/Qwen3-ForcedAligner-0.6B-4bit" in proc.stderr
    assert "local folder" in proc.stderr


def test_missing_folder_is_a_clear_error(tmp_path):
    """A path that does not exist is reported as such, not sent to the hub."""
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        resolve(tmp_path / "empty")


def test_fingerprint_is_remembered_until_a_file_changes(ckpt, tmp_path, monkeypatch):
    import hashlib
    import shutil

    import corpus_aligner.checkpoint as checkpoint

    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt, folder)
    monkeypatch.setenv("CORPUS_ALIGNER_CACHE", str(tmp_path / "cache"))
    hashed = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(checkpoint.hashlib, "sha256", lambda *a: hashed.append(1) or real_sha256(*a))

    first = resolve(folder).fingerprint
    assert first.startswith("sha256:") and len(hashed) == 1
    assert (tmp_path / "cache" / "checkpoint-fingerprints.json").is_file()
    assert resolve(folder).fingerprint == first and len(hashed) == 1  # from the cache: no file read
    monkeypatch.setenv("CORPUS_ALIGNER_CACHE", str(tmp_path / "other-cache"))
    assert resolve(folder).fingerprint == first and len(hashed) == 2  # a fresh cache hashes the same

    config = json.loads((folder / "config.json").read_text())
    config["note"] = "edited"
    (folder / "config.json").write_text(json.dumps(config))  # new size and mtime
    changed = resolve(folder).fingerprint
    assert changed != first and len(hashed) == 3


def test_unwritable_fingerprint_cache_still_resolves(ckpt, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("CORPUS_ALIGNER_CACHE", str(blocker))
    with caplog.at_level("WARNING"):
        assert resolve(ckpt).fingerprint.startswith("sha256:")
    assert "could not remember" in caplog.text
