"""How a batch of clips is laid out for the encoder (model.md §2.1, §2.4, §2.5): host-side index arrays.

Every clip is cut into 1-s chunks (the tail chunk zero-padded to the full length, as the official
`pad_sequence` does), the valid conv outputs of each chunk are its tokens, and each clip's tokens are
tiled with attention windows (104 tokens, or the whole clip in "full" mode). All of it is vectorized
numpy: on a GPU this host work runs for every batch and must stay far below the device time.

`chunk_multiple` / `window_multiple` round the chunk and window counts up with dummy entries (zeros,
masked, never read back), so that batches share shapes and a GPU reuses its compiled kernels and plans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corpus_aligner.model.args import EncoderArgs

ENCODER_ATTENTION_MODES = ("windowed", "full")


def conv_output_tokens(chunk_frames: np.ndarray) -> np.ndarray:
    """Tokens three stride-2 convs leave of chunks of `l` frames: ceil(l/8), the official formula."""
    f = (chunk_frames - 1) // 2 + 1
    return ((f - 1) // 2 + 1 - 1) // 2 + 1


def audio_token_count(n_frames: int, chunk_frames: int = 100) -> int:
    """N_a for a clip of `n_frames` mel frames (model.md §2.4): 13 per full chunk plus ceil(rest/8)."""
    full, rest = divmod(n_frames, chunk_frames)
    per_chunk = int(conv_output_tokens(np.array(chunk_frames)))
    return full * per_chunk + (int(conv_output_tokens(np.array(rest))) if rest else 0)


@dataclass(frozen=True)
class EncoderPlan:
    """Host-side index arrays that lay a batch of clips out as chunks and attention windows."""

    chunks: np.ndarray  # (n_chunks, chunk_frames, mel) zero-padded features (dummy chunks at the end)
    conv_lengths: np.ndarray | None  # (n_chunks,) frames to keep valid through the convs, None if all full
    token_src: np.ndarray  # (n_tokens,) row of each valid token in the (n_chunks * tokens_per_chunk) grid
    window_src: np.ndarray  # (n_windows, window_len) index of each window slot in the token list
    window_mask: np.ndarray | None  # (n_windows, window_len) True on real slots, None if none padded
    window_out: np.ndarray  # (n_tokens,) row of each token in the (n_windows * window_len) grid
    tokens_per_clip: tuple[int, ...]
    conv_piece: int = 0  # run the convs over this many chunks at a time (0: all at once)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _starts(counts: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum: where each group starts in the concatenation."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each group of `counts`, concatenated."""
    return np.arange(int(counts.sum())) - np.repeat(_starts(counts), counts)


def plan_batch(
    features: list[np.ndarray],
    args: EncoderArgs,
    attention: str,
    chunk_multiple: int = 1,
    window_multiple: int = 1,
    conv_piece: int = 0,
) -> EncoderPlan:
    """Chunk every clip (model.md §2.1) and tile its tokens with attention windows (§2.5).

    A clip with several chunks has its tail chunk zero-padded to the full chunk length, exactly as the
    official `pad_sequence` does. A clip of one short chunk is not padded by the official code; here it is
    padded but its activations past the valid length are zeroed after every conv, which is the same
    computation (`conv_lengths`).
    """
    if attention not in ENCODER_ATTENTION_MODES:
        raise ValueError(f"encoder attention must be one of {ENCODER_ATTENTION_MODES}, got {attention!r}")
    cf = args.chunk_frames
    per_chunk = int(conv_output_tokens(np.array(cf)))
    frames = np.array([f.shape[0] for f in features], dtype=np.int64)
    if (frames < 1).any():
        raise ValueError("a clip needs at least one mel frame")
    clip_chunks = -(-frames // cf)
    chunk_start = _starts(clip_chunks)
    n_chunks = int(clip_chunks.sum())
    total = _round_up(n_chunks, chunk_multiple)
    mel = features[0].shape[1]
    chunks = np.zeros((total * cf, mel), dtype=np.float32)
    for feat, start in zip(features, chunk_start):
        chunks[start * cf : start * cf + feat.shape[0]] = feat
    last = chunk_start + clip_chunks - 1
    chunk_len = np.full(n_chunks, cf, dtype=np.int64)
    chunk_len[last] = frames - (clip_chunks - 1) * cf
    short = (clip_chunks == 1) & (frames < cf)
    conv_lengths = None
    if short.any():
        conv_lengths = np.full(total, cf, dtype=np.int64)
        conv_lengths[chunk_start[short]] = frames[short]
    valid = conv_output_tokens(chunk_len)  # (n_chunks,) real tokens per chunk
    token_src = (np.repeat(np.arange(n_chunks) * per_chunk, valid) + _ranks(valid)).astype(np.int32)
    counts = np.add.reduceat(valid, chunk_start)  # tokens per clip
    window_src, window_mask, window_out = _windows(counts, per_chunk * (args.n_window_infer // cf), attention,
                                                   window_multiple)  # fmt: skip
    return EncoderPlan(
        chunks=chunks.reshape(total, cf, mel),
        conv_lengths=conv_lengths,
        token_src=token_src,
        window_src=window_src,
        window_mask=window_mask,
        window_out=window_out,
        tokens_per_clip=tuple(int(c) for c in counts),
        conv_piece=conv_piece,
    )


def _windows(
    counts: np.ndarray, window: int, attention: str, multiple: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Tile each clip's tokens from its start: windows of `window` tokens, or one per clip ("full")."""
    size = np.full_like(counts, window) if attention == "windowed" else counts
    per_clip = -(-counts // size)
    clip = np.repeat(np.arange(len(counts)), per_clip)
    offset = _ranks(per_clip) * size[clip]
    start = _starts(counts)[clip] + offset
    length = np.minimum(size[clip], counts[clip] - offset)
    width = int(length.max())
    slots = np.arange(width)
    real = slots[None, :] < length[:, None]  # (W, width)
    window_out = np.flatnonzero(real).astype(np.int32)  # row-major real slots are the tokens in order
    n_windows = _round_up(len(length), multiple)
    window_src = np.zeros((n_windows, width), dtype=np.int32)
    window_src[: len(length)] = np.where(real, start[:, None] + slots[None, :], 0)
    mask = np.zeros((n_windows, width), dtype=bool)
    mask[: len(length)] = real
    mask[len(length) :, 0] = True  # dummy windows see one key, so no row is fully masked (no NaN)
    return window_src, (None if mask.all() else mask), window_out
