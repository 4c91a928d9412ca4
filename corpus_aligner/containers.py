"""What a file's bytes say, beyond what libsndfile reports: its real container, and whether it is cut short.

libsndfile (through soundfile) sniffs content, not extensions, and reports no error for a truncated WAV
or MP3: it silently decodes what is there (shared/testdata/awkward/SOURCES.md). So:
- `sniff` names the container from its magic bytes (for clear messages and extension mismatches);
- `check_complete` compares what the header promises with the bytes present: the RIFF/AIFF data-chunk
  size for WAV/AIFF, and a walk over the MPEG frames for MP3 (the last frame cut off, or fewer frames
  than the Xing/Info header counts). FLAC and Ogg truncation shows up when decoding (audio.py).
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from corpus_aligner.errors import TruncatedAudioError

# Content kinds libsndfile 1.2 decodes, and ones it does not (with what to do about them).
SUPPORTED = frozenset({"WAV", "FLAC", "MP3", "OGG", "AIFF", "AU", "CAF", "SPHERE", "W64"})
_EXTENSIONS = {
    ".wav": "WAV", ".wave": "WAV", ".flac": "FLAC", ".mp3": "MP3", ".ogg": "OGG", ".oga": "OGG",
    ".opus": "OGG", ".aif": "AIFF", ".aiff": "AIFF", ".aifc": "AIFF", ".au": "AU", ".snd": "AU",
    ".caf": "CAF", ".sph": "SPHERE", ".nist": "SPHERE", ".w64": "W64", ".m4a": "MP4", ".mp4": "MP4",
    ".aac": "AAC", ".webm": "WEBM", ".mkv": "WEBM", ".wma": "ASF", ".amr": "AMR", ".wv": "WAVPACK",
}  # fmt: skip
_MAGIC = (
    (0, b"fLaC", "FLAC"), (0, b"OggS", "OGG"), (0, b".snd", "AU"), (0, b"caff", "CAF"),
    (0, b"NIST_1A", "SPHERE"), (0, b"riff\x2e\x91\xcf\x11", "W64"), (4, b"ftyp", "MP4"),
    (0, b"\x1aE\xdf\xa3", "WEBM"), (0, b"0&\xb2u", "ASF"), (0, b"#!AMR", "AMR"), (0, b"wvpk", "WAVPACK"),
)  # fmt: skip


def extension_kind(path: str | os.PathLike[str]) -> str | None:
    """The container the file name claims (None for an extension we do not know)."""
    return _EXTENSIONS.get(Path(path).suffix.lower())


def _id3_size(head: bytes) -> int:
    """Bytes of an ID3v2 tag at the start (0 if none): 10-byte header + synchsafe size (+ footer)."""
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
    return 10 + size + (10 if head[5] & 0x10 else 0)


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The container named by the file's magic bytes: "WAV", "FLAC", "MP3", "MP4", ...; "EMPTY" for 0 bytes;
    "TEXT" for a text file; None when unknown."""
    with open(path, "rb") as f:
        head = f.read(64)
        skip = _id3_size(head)
        if skip:  # an ID3 tag can precede MP3, FLAC or AAC data
            f.seek(skip)
            head = f.read(64)
    if not head:
        return "EMPTY"
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    for offset, magic, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "AAC" if head[1] & 0x06 == 0 else "MP3"  # layer bits 00: ADTS AAC
    if skip:
        return "MP3"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "TEXT"
    return None


def describe_unreadable(path: str | os.PathLike[str]) -> str:
    """Why libsndfile cannot open a file, in words a user can act on (used in error messages)."""
    kind = sniff(path)
    if kind == "EMPTY":
        return "the file is empty (0 bytes)"
    if kind == "TEXT":
        return "the file holds text, not audio"
    if kind is not None and kind not in SUPPORTED:
        return (
            f"the content is {kind} audio, which soundfile (libsndfile) cannot decode: convert it to FLAC or WAV "
            f"(e.g. ffmpeg -i {Path(path).name} {Path(path).stem}.flac)"
        )
    if kind is None:
        return "the content is not an audio format soundfile knows"
    return f"the {kind} header is malformed"


def extension_mismatch(path: str | os.PathLike[str]) -> str | None:
    """A warning when the extension names another container than the content has (the file still loads)."""
    claimed, actual = extension_kind(path), sniff(path)
    if claimed is None or actual is None or claimed == actual or actual in ("EMPTY", "TEXT"):
        return None
    return f"the extension {Path(path).suffix} says {claimed} but the content is {actual}"


def check_complete(path: str | os.PathLike[str], format: str) -> None:
    """Raise TruncatedAudioError when the file is shorter than its own header says (WAV, AIFF, MP3)."""
    if format not in ("WAV", "WAVEX", "AIFF", "MP3") or os.path.getsize(path) == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        problem = _riff_problem(data) if format in ("WAV", "WAVEX") else None
        if format == "AIFF":
            problem = _aiff_problem(data)
        elif format == "MP3":
            problem = _mpeg_problem(data)
    if problem:
        raise TruncatedAudioError(f"{os.fspath(path)}: truncated: {problem}")


def _chunks(data: mmap.mmap, start: int, endian: str) -> list[tuple[bytes, int, int]]:
    """(id, data offset, declared size) of the IFF-style chunks from `start` (stops at the first cut one)."""
    out, pos = [], start
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack(endian + "I", data[pos + 4 : pos + 8])[0]
        out.append((cid, pos + 8, size))
        pos += 8 + size + (size & 1)
    return out


def _riff_problem(data: mmap.mmap) -> str | None:
    if data[:4] not in (b"RIFF", b"RIFX"):
        return None  # RF64/BW64 keep sizes in a ds64 chunk: libsndfile reads those itself
    endian = "<" if data[:4] == b"RIFF" else ">"
    chunks = _chunks(data, 12, endian)
    fmt = next((c for c in chunks if c[0] == b"fmt "), None)
    for cid, offset, size in chunks:
        if cid == b"data" and size not in (0, 0xFFFFFFFF) and offset + size > len(data):
            available = len(data) - offset
            align = struct.unpack(endian + "H", data[fmt[1] + 12 : fmt[1] + 14])[0] if fmt else 0
            rate = struct.unpack(endian + "I", data[fmt[1] + 4 : fmt[1] + 8])[0] if fmt else 0
            if align and rate:
                return (
                    f"the header promises {size // align / rate:.3f} s ({size} bytes of samples) but the file "
                    f"ends after {available // align / rate:.3f} s ({available} bytes)"
                )
            return f"the header promises {size} bytes of samples but the file holds {available}"
    return None


def _aiff_problem(data: mmap.mmap) -> str | None:
    chunks = _chunks(data, 12, ">")
    for cid, offset, size in chunks:
        if cid == b"SSND" and offset + size > len(data):
            return f"the header promises {size - 8} bytes of samples but the file holds {len(data) - offset - 8}"
    return None


# MPEG audio frame headers (ISO 11172-3 / 13818-3): kbit/s by (MPEG-1?, layer), sample rates by version.
_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mpeg_frame(data: mmap.mmap, pos: int) -> tuple[int, int] | None:
    """(frame length in bytes, Xing tag offset in the frame) of the frame header at `pos`, or None."""
    if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return None
    b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
    version, layer = (b1 >> 3) & 3, 4 - ((b1 >> 1) & 3)
    bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version == 1 or layer == 4 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values, or free format (no length in the header)
    mpeg1 = version == 3
    bitrate = _BITRATES[(mpeg1, 1 if layer == 1 else (layer if mpeg1 else 2))][bitrate_index] * 1000
    rate = _RATES[version][rate_index]
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    else:
        length = (144 if mpeg1 or layer == 2 else 72) * bitrate // rate + padding
    mono = (b3 >> 6) == 3
    xing = 4 + (17 if mono else 32) if mpeg1 else 4 + (9 if mono else 17)
    return length, xing


def _mpeg_problem(data: mmap.mmap) -> str | None:
    """Walk the frames; None when the stream ends on a frame boundary (or cannot be judged)."""
    pos = _id3_size(bytes(data[:10]))
    end = len(data)
    if end >= 128 and data[end - 128 : end - 125] == b"TAG":  # ID3v1 at the end
        end -= 128
    first = _mpeg_frame(data, pos)
    if first is None:
        return None
    declared = None
    tag = pos + first[1]
    if data[tag : tag + 4] in (b"Xing", b"Info") and data[tag + 7] & 1:
        declared = struct.unpack(">I", data[tag + 8 : tag + 12])[0]
    frames = 0
    while pos < end:
        frame = _mpeg_frame(data, pos)
        if frame is None:
            return None  # junk or another tag (APE, Lyrics3): not a stream we can judge
        if pos + frame[0] > end:
            return (
                f"the last MPEG frame (number {frames + 1}) needs {pos + frame[0] - end} more bytes than the file has"
            )
        pos += frame[0]
        frames += 1
    # Counted with the Xing/Info frame itself, so a file is judged short only when surely short.
    if declared is not None and frames < declared:
        return f"the Xing/Info header counts {declared} MPEG frames but the file holds {frames}"
    return None
