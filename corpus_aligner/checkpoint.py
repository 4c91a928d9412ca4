"""The one loading path: resolve (folder or repo id) -> config + tokenizer -> weights -> model.

Reads the official layout (`Qwen/Qwen3-ForcedAligner-0.6B`: `thinker.*` keys, bf16) and the 4-bit MLX
layout of `aufklarer/Qwen3-ForcedAligner-0.6B-4bit` (same keys; decoder linears and `embed_tokens` as
uint32 codes + fp16 scales/biases, group 64; conv weights in PyTorch layout), model.md §7-8. What is
quantized follows the checkpoint: a layer is quantized exactly where `<name>.scales` exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from corpus_aligner.errors import CheckpointError
from corpus_aligner.model import AlignerArgs, ForcedAligner, bf16_matmul
from corpus_aligner.model.aligner import quantizable

log = logging.getLogger(__name__)

SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
)
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


@dataclass(frozen=True)
class CheckpointInfo:
    """Where the weights came from; `fingerprint` identifies them (hub commit, or a hash of the files)."""

    source: str
    path: Path
    revision: str | None
    fingerprint: str


def resolve(path_or_repo: str | Path, revision: str | None = None) -> CheckpointInfo:
    """A folder that exists is used as is; anything else is a Hugging Face repo id to download."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a folder but has no config.json: not a checkpoint folder")
        return CheckpointInfo(str(path_or_repo), path.resolve(), revision, _hash_files(path))
    repo_id = str(path_or_repo)
    if repo_id.startswith((".", "/", "~")) or repo_id.count("/") != 1:
        raise CheckpointError(f"checkpoint folder {path} does not exist (and it is not a repo id 'owner/name')")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "merges.txt", "vocab.json"],
            )
        )
    except Exception as exc:
        raise CheckpointError(
            f"cannot download the weights of '{repo_id}' from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"Without network, fetch them elsewhere (`huggingface-cli download {repo_id} --local-dir DIR`) "
            "and pass the local folder: Aligner.from_pretrained('DIR'), or model.path=DIR on the command "
            "line."
        ) from exc
    return CheckpointInfo(repo_id, folder, revision, f"hub:{repo_id}@{folder.name}")


def _hash_files(folder: Path) -> str:
    """sha256 of the weights and config, remembered per folder with each file's size, mtime and inode: the
    files are read again only when one of those changes (a local 0.6B checkpoint is 1.8 GB, 2.5 s to hash
    from the page cache and far longer from disk, on every run and every `Aligner.from_pretrained`)."""
    files = [*sorted(folder.glob("*.safetensors")), folder / "config.json"]
    stats = [[f.name, st.st_size, st.st_mtime_ns, st.st_ino] for f in files for st in (f.stat(),)]
    cache = fingerprint_cache_file()
    records = _read_records(cache)
    key = str(folder.resolve())
    known = records.get(key)
    if isinstance(known, dict) and known.get("files") == stats and isinstance(known.get("fingerprint"), str):
        return known["fingerprint"]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    fingerprint = "sha256:" + digest.hexdigest()[:16]
    records[key] = {"files": stats, "fingerprint": fingerprint}
    try:  # a cache that cannot be written only costs the next run the hashing again
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=1), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError as exc:
        log.warning("could not remember the checkpoint's fingerprint in %s: %s", cache, exc)
    return fingerprint


def fingerprint_cache_file() -> Path:
    """$CORPUS_ALIGNER_CACHE, else $XDG_CACHE_HOME/corpus-aligner, else ~/.cache/corpus-aligner."""
    root = os.environ.get("CORPUS_ALIGNER_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "corpus-aligner"
    )
    return Path(root) / "checkpoint-fingerprints.json"


def _read_records(cache: Path) -> dict[str, Any]:
    try:
        records = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def read_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def quantization_settings(folder: Path, config: dict[str, Any]) -> tuple[int, int]:
    """(group_size, bits) from `quantize_config.json` (aufklarer) or `config["quantization"]`."""
    qfile = folder / "quantize_config.json"
    q = json.loads(qfile.read_text())["quantization"] if qfile.is_file() else config.get("quantization", {})
    return int(q.get("group_size", 64)), int(q.get("bits", 4))


def read_weights(folder: Path) -> dict[str, mx.array]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {folder}")
    weights: dict[str, mx.array] = {}
    for file in files:
        weights.update(mx.load(str(file)))  # type: ignore[arg-type]
    return weights


def dequantize_weights(
    weights: dict[str, mx.array], group_size: int, bits: int, to_bf16: frozenset[str] = frozenset()
) -> dict[str, mx.array]:
    """Replace every (weight, scales, biases) triple by a float32 weight (the CPU path); the weights named in
    `to_bf16` come out as the bf16 rounding of that float32 weight instead, the bits their bf16 products take
    (float32 products asked for after loading then use those rounded values)."""
    out = dict(weights)
    for key in [k for k in weights if k.endswith(".scales")]:
        base = key.removesuffix(".scales")
        name = f"{base}.weight"
        w = mx.dequantize(weights[name], weights[key], weights[f"{base}.biases"], group_size, bits).astype(mx.float32)
        out[name] = w.astype(mx.bfloat16) if name in to_bf16 else w
        del out[key], out[f"{base}.biases"]
    return out


def load_model(
    folder: Path, dtype: str | None = None, device: str | None = None, quantized: bool | None = None
) -> ForcedAligner:
    """Build the model and load the folder's weights strictly.

    dtype None picks per device: the CPU computes everything in float32 (half/4-bit matmuls are far slower
    there), with the bf16 weights of its bf16 products left as they are (`_cast`); a GPU computes the
    encoder/head in float16 and the decoder in bfloat16, 4-bit layers dequantized (on an H100 the bf16
    decoder aligned 4.1-4.7k audio-s/s, the 4-bit one 2.2-3.4k: scripts/bench_align.py --quantize 4).
    "float32"/"float16"/"bfloat16" force one float dtype.
    quantized: True keeps the checkpoint's 4-bit layers as QuantizedLinear (less memory), False
    dequantizes them; None keeps them only with a forced half dtype.
    """
    config = read_config(folder)
    model = ForcedAligner(AlignerArgs.from_config(config))
    weights = ForcedAligner.sanitize(read_weights(folder))
    group_size, bits = quantization_settings(folder, config)
    on_cpu = (device or default_device()) == "cpu"
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None, got {dtype!r}")
    keep = quantized if quantized is not None else dtype in ("float16", "bfloat16")
    bf16_products = dtype is None and on_cpu and bf16_matmul.resolved_precision() == "bfloat16"
    if dtype == "float32" or (dtype is None and on_cpu) or not keep:
        to_bf16 = frozenset(
            f"{name}.weight" for name, m in model.named_modules() if bf16_products and bf16_matmul.keeps_bf16_weight(m)
        )
        weights = dequantize_weights(weights, group_size, bits, to_bf16)
    if any(k.endswith(".scales") for k in weights):
        nn.quantize(
            model,
            group_size=group_size,
            bits=bits,
            class_predicate=lambda p, m: f"{p}.scales" in weights,  # type: ignore[arg-type]
        )
    model.load_weights(list(weights.items()), strict=True)
    _cast(model, dtype, on_cpu, keep_bf16=bf16_products)
    mx.eval(model.parameters())
    model.eval()
    return model


def default_device() -> str:
    return "gpu" if mx.default_device() == mx.gpu else "cpu"


def _cast(model: ForcedAligner, dtype: str | None, on_cpu: bool, keep_bf16: bool = False) -> None:
    """Cast float parameters; quantized codes (uint32) are never touched. With `keep_bf16` (the CPU with bf16
    products and no forced dtype) the weights that only feed those products and are bf16 in the checkpoint
    stay so (`bf16_matmul.keeps_bf16_weight`), their bf16 copies sharing the loaded bits. Converting those
    ~0.76 B weights to float32 and rounding them back took a full-size load 9.3-9.8 s and its first batch 1-2 s
    more on 2 cores (now 1.5-2.2 s), and peak memory was 5.3 GiB (now 2.4); the outputs are the same bits. A
    4-bit checkpoint's layers are dequantized straight to that bf16 (`dequantize_weights`): first batch
    12.5 -> 9.5 s, peak 5.3 -> 3.6 GiB, the same bits."""
    if dtype is not None:
        enc = dec = DTYPES[dtype]
    elif on_cpu:
        enc = dec = mx.float32
    else:
        enc, dec = mx.float16, mx.bfloat16

    def cast(module: nn.Module, key: str, value: Any) -> bool:
        kept = keep_bf16 and key == "weight" and isinstance(value, mx.array) and value.dtype == mx.bfloat16
        return nn.Module.valid_parameter_filter(module, key, value) and not (
            kept and bf16_matmul.keeps_bf16_weight(module)
        )

    for module, target in ((model.audio_tower, enc), (model.lm_head, enc), (model.model, dec)):
        module.apply(lambda x, t=target: x.astype(t) if mx.issubdtype(x.dtype, mx.floating) else x, cast)


def save(
    model: ForcedAligner,
    folder: Path,
    source: Path,
    quantize_bits: int | None = None,
    group_size: int = 64,
) -> Path:
    """Write `model` into `folder` in a layout `load_model` reads, copying config and tokenizer files.

    quantize_bits None: the official layout, every tensor bf16. 4 (or 8): the aufklarer MLX layout,
    decoder linears and embedding quantized (affine, `group_size`), the rest fp16, conv weights in PyTorch
    layout, plus `quantize_config.json`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        if (source / name).is_file() and (source / name).resolve() != (folder / name).resolve():
            shutil.copyfile(source / name, folder / name)
    params = dict(_flat(model.parameters()))
    if quantize_bits is None:
        tensors = {k: v.astype(mx.bfloat16) for k, v in params.items()}
    else:
        tensors = {}
        for name, value in params.items():
            base = name.removesuffix(".weight")
            if name.startswith("model.") and name.endswith(".weight") and value.ndim == 2 and value.dtype != mx.uint32:
                w, scales, biases = quantize_affine(np.array(value.astype(mx.float32)), group_size, quantize_bits)
                tensors[name] = mx.array(w)
                tensors[f"{base}.scales"] = mx.array(scales)
                tensors[f"{base}.biases"] = mx.array(biases)
            elif name.endswith((".scales", ".biases")) and base + ".weight" in params:
                tensors[name] = value.astype(mx.float16)
            else:
                tensors[name] = value if value.dtype == mx.uint32 else value.astype(mx.float16)
        (folder / "quantize_config.json").write_text(
            json.dumps(
                {
                    "quantization": {
                        "group_size": group_size,
                        "bits": quantize_bits,
                        "quantized_components": ["text_decoder"],
                        "float_components": ["audio_encoder", "classify_head", "norms"],
                    }
                },
                indent=2,
            )
        )
    mx.save_safetensors(str(folder / "model.safetensors"), ForcedAligner.unsanitize(tensors), metadata={"format": "pt"})
    return folder


def quantize_affine(w: np.ndarray, group_size: int, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The converter's scheme (model.md §8): per group of `group_size` input columns
    scale = (max-min)/(2^bits-1) (>= 1e-10), bias = min, q = clamp(round((w-min)/scale)) with the
    float32 scale; stored scale/bias fp16; codes packed LSB first, 32/bits per uint32 (MLX's layout,
    so `mx.dequantize` reads it)."""
    out_dim, in_dim = w.shape
    if in_dim % group_size:
        raise ValueError(f"input width {in_dim} is not a multiple of the group size {group_size}")
    groups = w.reshape(out_dim, in_dim // group_size, group_size).astype(np.float32)
    lo, hi = groups.min(-1), groups.max(-1)
    levels = (1 << bits) - 1
    scale = np.maximum((hi - lo) / levels, 1e-10).astype(np.float32)
    q = np.clip(np.round((groups - lo[..., None]) / scale[..., None]), 0, levels).astype(np.uint32)
    per_word = 32 // bits
    q = q.reshape(out_dim, in_dim // per_word, per_word)
    packed = np.zeros((out_dim, in_dim // per_word), dtype=np.uint32)
    for j in range(per_word):
        packed |= q[..., j] << np.uint32(bits * j)
    return packed, scale.astype(np.float16), lo.astype(np.float16)


def _flat(tree: Any, prefix: str = "") -> list[tuple[str, mx.array]]:
    from mlx.utils import tree_flatten

    return tree_flatten(tree, prefix=prefix)  # type: ignore[return-value]


__all__ = ["CheckpointInfo", "convert", "load_model", "quantizable", "read_config", "resolve", "save"]


def convert(source: str | Path, dest: Path, bits: int | None = 4, group_size: int = 64) -> Path:
    """Official checkpoint (folder or repo id) -> `dest` in the 4-bit (or 8-bit) MLX layout, or in the
    official bf16 layout when `bits` is None. Goes through the same `load_model`/`save` as everything."""
    info = resolve(source)
    model = load_model(info.path, dtype="float32")
    return save(model, Path(dest), source=info.path, quantize_bits=bits, group_size=group_size)
