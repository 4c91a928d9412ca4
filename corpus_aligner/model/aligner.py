"""Encoder + decoder + 5000-class timestamp head (model.md §4.5, §5; oracle:
`Qwen3ASRThinkerForConditionalGeneration.forward` with `lm_head` of `classify_num` classes).

Attribute names equal the checkpoint keys after the `thinker.` prefix is stripped.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn

from corpus_aligner.model import bf16_matmul
from corpus_aligner.model.args import AlignerArgs
from corpus_aligner.model.decoder import TextModel
from corpus_aligner.model.device_arrays import constant
from corpus_aligner.model.encoder import AudioEncoder, EncoderPlan

CHECKPOINT_PREFIX = "thinker."
CONV_KEYS = ("audio_tower.conv2d1.weight", "audio_tower.conv2d2.weight", "audio_tower.conv2d3.weight")


class ForcedAligner(nn.Module):
    def __init__(self, args: AlignerArgs):
        super().__init__()
        self.args = args
        self.audio_tower = AudioEncoder(args.encoder)
        self.model = TextModel(args.decoder)
        self.lm_head = bf16_matmul.Linear(args.decoder.hidden_size, args.classify_num, bias=False)

    def __call__(
        self,
        input_ids: mx.array,
        audio_src: mx.array,
        slots: mx.array,
        plan: EncoderPlan,
        plan_arrays: Sequence[mx.array] | None = None,
    ) -> mx.array:
        """Logits at the timestamp slots.

        input_ids (B, S) right-padded; audio_src (B, S) row of the encoder output that replaces each
        `<|audio_pad|>` (-1 elsewhere); slots (B, K) position of each `<timestamp>` (padded slots may
        repeat any position); plan_arrays: the plan's device arrays if already sent (`AudioEncoder`).
        Returns (B, K, classify_num).
        """
        audio = self.audio_tower(plan, plan_arrays)  # (T, D)
        embeds = self.model.embed_tokens(input_ids)  # (B, S, D)
        zero = constant(0, audio_src.dtype)  # not a Python 0: `device_arrays`
        is_audio = (audio_src >= zero)[..., None]
        embeds = mx.where(is_audio, audio.astype(embeds.dtype)[mx.maximum(audio_src, zero)], embeds)
        hidden = self.model(embeds, rows=slots)  # (B, K, D)
        return self.lm_head(self.model.norm(hidden))

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Official names/layout -> ours: strip `thinker.`, conv weights [O,I,kH,kW] -> [O,kH,kW,I].

        Idempotent: a conv weight already in MLX layout (last axis = input channels) is left alone.
        """
        out = {}
        for key, value in weights.items():
            name = key.removeprefix(CHECKPOINT_PREFIX)
            if name in CONV_KEYS and value.shape[1] != value.shape[2]:
                value = value.transpose(0, 2, 3, 1)
            out[name] = value
        return out

    @staticmethod
    def unsanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Ours -> official names/layout (inverse of `sanitize`)."""
        out = {}
        for name, value in weights.items():
            if name in CONV_KEYS:
                value = value.transpose(0, 3, 1, 2)
            out[CHECKPOINT_PREFIX + name] = value
        return out


def quantizable(path: str, module: nn.Module) -> bool:
    """What the 4-bit layout quantizes (model.md §8): decoder embedding and decoder linears only."""
    return path.startswith("model.") and isinstance(module, (nn.Linear, nn.Embedding))
