"""How a batch of clips is laid out for the encoder (model.md §2.1, §2.4, §2.5): host-side index arrays.

Every clip is cut into 1-s chunks (the tail chunk zero-padded to the full length, as the official
`pad_sequence` does), the valid conv outputs of each chunk are its tokens, and each clip's tokens are
tiled with attention windows (104 tokens, or the whole clip in "full" mode). The transformer layers then
run on rows of `width` slots that hold whole windows: a full window fills a row, shorter ones (each clip's
last) share rows, first-fit decreasing, and a block-diagonal mask keeps every window to itself. Tokens
enter that layout once and leave it once, so no layer gathers or scatters, and little is padding. All of it
is vectorized numpy: on a GPU this host work runs for every batch and must stay far below the device time.

`chunk_multiple` / `window_multiple` round the chunk and row counts up with dummy entries (zeros, masked,
never read back), so that batches share shapes and a GPU reuses its compiled kernels and plans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corpus_aligner.batching import round_up
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
    """Host-side index arrays that lay a batch of clips out as chunks and as rows of attention windows."""

    chunks: np.ndarray  # (n_chunks, chunk_frames, mel) zero-padded features (dummy chunks at the end), their dtype
    conv_lengths: np.ndarray | None  # (n_chunks,) frames to keep valid through the convs, None if all full
    slot_src: np.ndarray  # (rows * width,) row of the (n_chunks * tokens_per_chunk) conv grid each slot holds
    slot_window: np.ndarray  # (rows, width) window of each slot (unique in the batch); -1 on padding slots
    token_slot: np.ndarray  # (n_tokens,) slot of each valid token, clip after clip
    tokens_per_clip: tuple[int, ...]
    conv_piece: int = 0  # run the convs over this many chunks at a time (0: all at once)

    def device_inputs(self) -> list[np.ndarray]:
        """The arrays the encoder reads on the device, in the order `AudioEncoder.__call__` takes them."""
        return [self.chunks, self.slot_src, self.slot_window, self.token_slot]

    @property
    def width(self) -> int:
        """Slots per row: the longest window of the batch."""
        return self.slot_window.shape[1]

    def padding_fraction(self) -> float:
        """Share of the layers' slots that hold no token."""
        return 1.0 - len(self.token_slot) / self.slot_window.size


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
    total = round_up(n_chunks, chunk_multiple)
    mel = features[0].shape[1]
    chunks = np.zeros((total * cf, mel), dtype=np.result_type(np.float16, *(f.dtype for f in features)))
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
    token_src = np.repeat(np.arange(n_chunks) * per_chunk, valid) + _ranks(valid)  # conv-grid row of each token
    counts = np.add.reduceat(valid, chunk_start)  # tokens per clip
    size = np.full_like(counts, per_chunk * (args.n_window_infer // cf)) if attention == "windowed" else counts
    slot_window, token_slot = _rows(counts, size, window_multiple)
    slot_src = np.zeros(slot_window.size, dtype=np.int32)
    slot_src[token_slot] = token_src
    return EncoderPlan(
        chunks=chunks.reshape(total, cf, mel),
        conv_lengths=conv_lengths,
        slot_src=slot_src,
        slot_window=slot_window,
        token_slot=token_slot,
        tokens_per_clip=tuple(int(c) for c in counts),
        conv_piece=conv_piece,
    )


def _rows(counts: np.ndarray, size: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile each clip's tokens with windows of `size` tokens from its start, and pack the windows into rows
    as wide as the longest one. Returns the window of each slot (rows, width), -1 on padding, and the slot
    of each token in clip order."""
    per_clip = -(-counts // size)
    clip = np.repeat(np.arange(len(counts)), per_clip)
    length = np.minimum(size[clip], counts[clip] - _ranks(per_clip) * size[clip])  # tokens per window, in order
    width = int(length.max())
    row, offset = _first_fit_decreasing(length, width)
    n_rows = round_up(int(row.max()) + 1, multiple)
    token_slot = (np.repeat(row * width + offset, length) + _ranks(length)).astype(np.int32)
    slot_window = np.full(n_rows * width, -1, dtype=np.int32)
    slot_window[token_slot] = np.repeat(np.arange(len(length), dtype=np.int32), length)
    return slot_window.reshape(n_rows, width), token_slot


def _first_fit_decreasing(length: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and offset of each window: full windows get a row each, the others go, longest first, into the
    first row with room (at most one short window per clip, so this loop is short)."""
    row = np.empty(len(length), dtype=np.int64)
    offset = np.zeros(len(length), dtype=np.int64)
    full = length == width
    n_full = int(full.sum())
    row[full] = np.arange(n_full)
    short = np.flatnonzero(~full)
    free = np.empty(len(short), dtype=np.int64)  # room left in each row opened for short windows
    opened = 0
    for w in short[np.argsort(-length[short], kind="stable")]:
        fits = np.flatnonzero(free[:opened] >= length[w])
        r = int(fits[0]) if len(fits) else opened
        if r == opened:
            free[r] = width
            opened += 1
        row[w], offset[w] = n_full + r, width - free[r]
        free[r] -= length[w]
    return row, offset
