"""Model dimensions read from the checkpoint's config.json (model.md §2, §3, §7.1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T", bound="BaseArgs")


@dataclass(frozen=True)
class BaseArgs:
    @classmethod
    def from_dict(cls: type[T], params: dict[str, Any]) -> T:
        """Build from a Hugging Face config dict, keeping only the fields this class declares."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


@dataclass(frozen=True)
class EncoderArgs(BaseArgs):
    num_mel_bins: int = 128
    d_model: int = 1024
    encoder_layers: int = 24
    encoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    downsample_hidden_size: int = 480
    n_window: int = 50  # chunk = 2 * n_window = 100 mel frames = 1 s
    n_window_infer: int = 800  # attention window in mel frames (8 s)
    output_dim: int = 1024
    max_source_positions: int = 1500

    @property
    def chunk_frames(self) -> int:
        return 2 * self.n_window

    @property
    def freq_after_conv(self) -> int:
        return (((self.num_mel_bins + 1) // 2 + 1) // 2 + 1) // 2


@dataclass(frozen=True)
class DecoderArgs(BaseArgs):
    vocab_size: int = 152064
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0


@dataclass(frozen=True)
class AlignerArgs:
    encoder: EncoderArgs
    decoder: DecoderArgs
    classify_num: int = 5000
    audio_token_id: int = 151676
    audio_start_token_id: int = 151669
    audio_end_token_id: int = 151670
    timestamp_token_id: int = 151705
    timestamp_segment_time_ms: float = 80.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AlignerArgs:
        """From the official config.json: ids in `thinker_config`, timestamp id and tick at the top level."""
        thinker = config["thinker_config"]
        return cls(
            encoder=EncoderArgs.from_dict(thinker["audio_config"]),
            decoder=DecoderArgs.from_dict(thinker["text_config"]),
            classify_num=int(thinker["classify_num"]),
            audio_token_id=int(thinker["audio_token_id"]),
            audio_start_token_id=int(thinker["audio_start_token_id"]),
            audio_end_token_id=int(thinker["audio_end_token_id"]),
            timestamp_token_id=int(config["timestamp_token_id"]),
            timestamp_segment_time_ms=float(config["timestamp_segment_time"]),
        )
