"""A benchmark corpus, deterministic from a seed: a full-dimension random checkpoint plus N FLAC utterances
with LibriSpeech-like lengths (2-35 s, mean about 12 s) and real LibriSpeech transcripts.

    <root>/checkpoint/                          full_checkpoint(): real shapes, real Qwen3 tokenizer, random weights
    <root>/corpus/bench-<p>/<spk>/<chapter>/    FLAC + .trans.txt (LibriSpeech layout, one part per block)
    <root>/corpus/bench-<p>.jsonl               the same utterances as a manifest (audio, text, duration)

Utterance i depends only on (seed, i), so block 0 of a 4-block corpus is the 1-block corpus: benches use
block 0 as "1x" and blocks 0-3 as "4x". The audio is synthesised speech-like sound (a glottal pulse train
through per-word formants, consonant noise bursts, pauses), not speech: it only has to cost what speech
costs to decode and align. Transcripts are runs of real LibriSpeech words at about 2.7 words per second.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE_HZ = 16000
MIN_S, MAX_S = 2.0, 35.0
# Log-normal lengths: median 11 s, sigma 0.45 -> mean about 12 s once clipped to [2, 35] (LibriSpeech
# train-clean utterances are mostly 10-16 s with a long tail both ways).
MEDIAN_S, SIGMA = 11.0, 0.45
WORDS_PER_S = 2.7  # read speech in LibriSpeech
UTTERANCES_PER_CHAPTER = 50
# (F1, F2, F3) in Hz of a few vowels: each word gets one, so the spectrum moves like speech.
VOWEL_FORMANTS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240))


@dataclass(frozen=True, slots=True)
class BenchUtterance:
    utt_id: str
    audio_path: str
    text: str
    duration_s: float
    block: int


@dataclass(frozen=True)
class BenchCorpus:
    root: Path
    checkpoint: Path
    corpus_root: Path  # LibriSpeech layout root: parts bench-0 .. bench-<blocks-1>
    utterances: tuple[BenchUtterance, ...]

    def block(self, n_blocks: int) -> list[BenchUtterance]:
        """The utterances of blocks 0..n_blocks-1 ("1x", "4x" corpus)."""
        return [u for u in self.utterances if u.block < n_blocks]

    def parts(self, n_blocks: int) -> list[str]:
        return [f"bench-{b}" for b in range(n_blocks)]


def durations(n: int, seed: int) -> np.ndarray:
    """LibriSpeech-like utterance lengths in seconds, rounded to 10 ms."""
    rng = np.random.default_rng([seed, 0xD0])
    d = np.exp(np.log(MEDIAN_S) + SIGMA * rng.standard_normal(n))
    return np.round(np.clip(d, MIN_S, MAX_S), 2)


def librispeech_words(text_root: Path) -> list[str]:
    """All words of the *.trans.txt files under `text_root`, in a stable order."""
    words: list[str] = []
    for trans in sorted(text_root.glob("**/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            words.extend(line.split()[1:])
    if not words:
        raise FileNotFoundError(f"no LibriSpeech *.trans.txt under {text_root}")
    return words


def default_text_root() -> Path:
    """../shared/testdata (beside the checkout) when present, else the LibriSpeech sample in the package."""
    shared = Path(__file__).resolve().parents[3] / "shared/testdata/librispeech-mini"
    return shared if shared.is_dir() else Path(__file__).resolve().parents[1] / "data/librispeech"


def transcript(pool: list[str], duration_s: float, rng: np.random.Generator) -> str:
    n = max(1, round(duration_s * WORDS_PER_S * rng.uniform(0.85, 1.15)))
    start = int(rng.integers(0, len(pool)))
    return " ".join(pool[(start + k) % len(pool)] for k in range(n))


def speech_like(duration_s: float, words: list[str], rng: np.random.Generator) -> np.ndarray:
    """Float32 mono at 16 kHz: per word a voiced segment with formants, a noise onset, a pause."""
    n = round(duration_s * SAMPLE_RATE_HZ)
    out = np.zeros(n, dtype=np.float32)
    lead = rng.uniform(0.1, 0.4)
    weights = np.array([len(w) + 2.0 for w in words])
    spans = (duration_s - lead - 0.2) * weights / weights.sum()
    t0, f0_base = lead, rng.uniform(90, 210)
    for span in spans:
        voiced = span * rng.uniform(0.6, 0.85)
        a, m = round(t0 * SAMPLE_RATE_HZ), round(voiced * SAMPLE_RATE_HZ)
        m = min(m, n - a)
        if m > 64:
            out[a : a + m] = _word(m, f0_base, rng)
        t0 += span
    out += 0.003 * rng.standard_normal(n).astype(np.float32)
    return (0.5 * out / max(float(np.abs(out).max()), 1e-6)).astype(np.float32)


def _word(m: int, f0_base: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(m) / SAMPLE_RATE_HZ
    f0 = f0_base * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6.3)))
    phase = np.cumsum(f0) / SAMPLE_RATE_HZ
    source = (phase % 1.0) - 0.5  # sawtooth: all harmonics, like a glottal pulse train
    burst = min(m, round(rng.uniform(0.02, 0.08) * SAMPLE_RATE_HZ))
    source[:burst] += rng.standard_normal(burst) * 0.6
    n_fft = 1 << int(np.ceil(np.log2(m)))
    f = np.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE_HZ)
    shape = np.zeros_like(f)
    for k, fk in enumerate(VOWEL_FORMANTS[int(rng.integers(0, len(VOWEL_FORMANTS)))]):
        shape += np.exp(-0.5 * ((f - fk * rng.uniform(0.9, 1.1)) / (60 + 40 * k)) ** 2) / (k + 1)
    spectrum = np.fft.rfft(source, n_fft) * (shape + 0.02)
    y = np.fft.irfft(spectrum, n_fft)[:m]
    envelope = np.sin(np.pi * np.arange(m) / m) ** 0.6
    return (y * envelope).astype(np.float32)


def _write_block(args: tuple[Path, int, int, int, int, list[str]]) -> list[BenchUtterance]:
    corpus_root, block, first, count, seed, pool = args
    lengths = durations(first + count, seed)
    part = corpus_root / f"bench-{block}"
    out = []
    for i in range(first, first + count):
        rng = np.random.default_rng([seed, i])
        spk, chapter = 1000 + i // UTTERANCES_PER_CHAPTER, 1
        utt_id = f"{spk}-{chapter}-{i % UTTERANCES_PER_CHAPTER:04d}"
        text = transcript(pool, float(lengths[i]), rng)
        folder = part / str(spk) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{utt_id}.flac"
        sf.write(path, speech_like(float(lengths[i]), text.split(), rng), SAMPLE_RATE_HZ, subtype="PCM_16")
        out.append(BenchUtterance(utt_id, str(path.resolve()), text, float(lengths[i]), block))
    return out


def make_bench_corpus(
    root: Path,
    utterances_per_block: int,
    blocks: int = 1,
    seed: int = 0,
    checkpoint: bool = True,
    text_root: Path | None = None,
    tokenizer_files: Path | None = None,
    workers: int | None = None,
) -> BenchCorpus:
    """Write (or reuse, when `<root>/bench.json` says the same) the checkpoint and the corpus."""
    from corpus_aligner.testing.tiny_checkpoint import full_checkpoint

    root = Path(root)
    ckpt, corpus_root = root / "checkpoint", root / "corpus"
    if checkpoint and not (ckpt / "model.safetensors").is_file():
        full_checkpoint(ckpt, seed=seed, tokenizer_files=tokenizer_files)
    key = {"utterances_per_block": utterances_per_block, "blocks": blocks, "seed": seed}
    index = root / "bench.json"
    if index.is_file():
        stored = json.loads(index.read_text())
        if stored["key"] == key:
            utts = tuple(BenchUtterance(**u) for u in stored["utterances"])
            return BenchCorpus(root, ckpt, corpus_root, utts)
    pool = librispeech_words(text_root or default_text_root())
    step = max(1, min(utterances_per_block, 64))
    jobs = [
        (corpus_root, b, first, min(step, (b + 1) * utterances_per_block - first), seed, pool)
        for b in range(blocks)
        for first in range(b * utterances_per_block, (b + 1) * utterances_per_block, step)
    ]
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool_exec:
        utts = tuple(u for chunk in pool_exec.map(_write_block, jobs) for u in chunk)
    _write_trans_files(corpus_root, utts)
    for b in range(blocks):
        with (corpus_root / f"bench-{b}.jsonl").open("w", encoding="utf-8") as fh:
            for u in utts:
                if u.block == b:
                    fh.write(json.dumps({"audio": u.audio_path, "text": u.text, "duration": u.duration_s}) + "\n")
    index.write_text(json.dumps({"key": key, "utterances": [_asdict(u) for u in utts]}))
    return BenchCorpus(root, ckpt, corpus_root, utts)


def _asdict(u: BenchUtterance) -> dict[str, object]:
    return {f.name: getattr(u, f.name) for f in fields(u)}


def _write_trans_files(corpus_root: Path, utts: tuple[BenchUtterance, ...]) -> None:
    """One .trans.txt per chapter folder (jobs may split a chapter, so write them after all jobs)."""
    chapters: dict[Path, list[str]] = {}
    for u in utts:
        folder = Path(u.audio_path).parent
        chapters.setdefault(folder, []).append(f"{u.utt_id} {u.text}")
    for folder, lines in chapters.items():
        (folder / f"{folder.parent.name}-{folder.name}.trans.txt").write_text("\n".join(lines) + "\n")
