"""Full-dimension random checkpoint (~0.92 B parameters, real Qwen3 tokenizer) on this machine:
generation, load time, align time of a 10 s clip, and peak memory. Times are meaningless (random weights).

    python scripts/bench_full_checkpoint.py [--folder .bench/full-seed0] [--seconds 10]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import corpus_aligner  # noqa: F401  (loads OpenBLAS before MLX)
from corpus_aligner import Aligner
from corpus_aligner.testing.tiny_checkpoint import full_checkpoint

LIBRI = Path(__file__).resolve().parents[2] / "shared/testdata/librispeech-mini/LibriSpeech"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", type=Path, default=Path(".bench/full-seed0"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--attention", default="windowed", choices=["windowed", "full"])
    args = parser.parse_args()

    if not (args.folder / "model.safetensors").is_file():
        t = time.perf_counter()
        full_checkpoint(args.folder, seed=0)
        print(f"generated {args.folder} in {time.perf_counter() - t:.1f} s")
    size = sum(f.stat().st_size for f in args.folder.glob("*.safetensors")) / 2**30
    print(f"checkpoint {args.folder}: {size:.2f} GiB on disk")

    rss0 = peak_rss_gib()
    t = time.perf_counter()
    aligner = Aligner.from_pretrained(args.folder, encoder_attention=args.attention)
    load_s = time.perf_counter() - t
    n_params = sum(v.size for _, v in __import__("mlx.utils").utils.tree_flatten(aligner.model.parameters()))
    print(f"load: {load_s:.2f} s, {n_params / 1e9:.3f} B parameters, peak RSS {peak_rss_gib():.2f} GiB")

    files = sorted(LIBRI.glob("**/*.flac"))
    waves, texts = [], []
    for f in files:
        waves.append(sf.read(f, dtype="float32")[0])
        trans = f.parent / f"{f.parent.parent.name}-{f.parent.name}.trans.txt"
        line = next(ln for ln in trans.read_text().splitlines() if ln.startswith(f.stem))
        texts.append(line.split(" ", 1)[1])
        if sum(len(w) for w in waves) >= args.seconds * 16000:
            break
    wave = np.concatenate(waves)[: int(args.seconds * 16000)]
    text = " ".join(texts)
    text = " ".join(text.split()[: int(args.seconds * 2.7)])  # ~2.7 words per second of read speech
    for run in ("first", "second"):
        t = time.perf_counter()
        words = aligner.align(audio=(wave, 16000), text=text, language="English")[0]
        dt = time.perf_counter() - t
        print(
            f"align {run}: {dt:.2f} s for {args.seconds:.0f} s of audio, {len(words)} words "
            f"(RTFx {args.seconds / dt:.1f})"
        )
    print(f"peak RSS {peak_rss_gib():.2f} GiB (before load {rss0:.2f} GiB)")


if __name__ == "__main__":
    main()
