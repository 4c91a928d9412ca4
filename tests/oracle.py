"""The official implementation (qwen-asr 0.0.6, CPU torch float32) as a test oracle.

Forward hooks expose the intermediates (log-mel features, encoder output, ids, logits) without changing
anything. qwen-asr is a test dependency installed by .ci/run; it is never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForcedAligner

torch.set_num_threads(2)


@dataclass
class OracleRun:
    features: list[np.ndarray]  # per clip (n_frames, 128), time-major like ours
    encoder: list[np.ndarray]  # per clip (N_a, D)
    input_ids: np.ndarray  # (B, S), left-padded
    slot_logits: list[np.ndarray]  # per clip (2K, classes), logits at the <timestamp> slots
    words: list[list[tuple[str, float, float]]]  # per clip (text, start_s, end_s)


@lru_cache(maxsize=4)
def official(folder: str, attn: str = "sdpa") -> Qwen3ForcedAligner:
    return Qwen3ForcedAligner.from_pretrained(folder, dtype=torch.float32, device_map="cpu", attn_implementation=attn)


def run_official(folder: Path, audio: list, text: list[str], language: list[str], attn: str = "sdpa") -> OracleRun:
    aligner = official(str(folder), attn)
    thinker = aligner.model.thinker
    feats: list[np.ndarray] = []
    enc: list[np.ndarray] = []
    seen: dict[str, torch.Tensor] = {}

    def pre_tower(_m, args, kwargs):
        feats.append(args[0].detach().float().numpy().T.copy())

    def post_tower(_m, _args, output):
        enc.append(output.last_hidden_state.detach().float().numpy().copy())

    def pre_thinker(_m, _args, kwargs):
        seen["ids"] = kwargs["input_ids"].detach().clone()

    def post_head(_m, _args, output):
        seen["logits"] = output.detach().float().clone()

    hooks = [
        thinker.audio_tower.register_forward_pre_hook(pre_tower, with_kwargs=True),
        thinker.audio_tower.register_forward_hook(post_tower),
        thinker.register_forward_pre_hook(pre_thinker, with_kwargs=True),
        thinker.lm_head.register_forward_hook(post_head),
    ]
    try:
        with torch.no_grad():
            results = aligner.align(audio=audio, text=text, language=language)
    finally:
        for h in hooks:
            h.remove()
    ids = seen["ids"].numpy()
    ts = aligner.timestamp_token_id
    logits = seen["logits"].numpy()
    slot_logits = [logits[b][ids[b] == ts] for b in range(len(ids))]
    words = [[(it.text, it.start_time, it.end_time) for it in r] for r in results]
    return OracleRun(feats, enc, ids, slot_logits, words)


def official_encoder(folder: Path, features: np.ndarray, windowed: bool) -> np.ndarray:
    """The official audio tower on one clip's (n_frames, 128) features.

    windowed=True applies the block mask the official code builds from its own `cu_seqlens` rule
    (`_prepare_attention_mask`), i.e. what it computes under flash-attention; False is the CPU default
    (full attention over the clip).
    """
    tower = official(str(folder)).model.thinker.audio_tower
    originals = [layer.forward for layer in tower.layers]

    def masked(original):
        def forward(hidden_states, cu_seqlens, attention_mask=None, **kwargs):
            mask = tower._prepare_attention_mask(hidden_states, cu_seqlens)
            return original(hidden_states, cu_seqlens, attention_mask=mask, **kwargs)

        return forward

    try:
        if windowed:
            for layer, original in zip(tower.layers, originals):
                layer.forward = masked(original)
        with torch.no_grad():
            out = tower(torch.from_numpy(features.T.copy()), feature_lens=torch.tensor([features.shape[0]]))
    finally:
        for layer, original in zip(tower.layers, originals):
            layer.forward = original
    return out.last_hidden_state.float().numpy()
