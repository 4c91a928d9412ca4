"""Write the 4-bit MLX layout (aufklarer/Qwen3-ForcedAligner-0.6B-4bit) from the official checkpoint.

python scripts/convert_checkpoint.py Qwen/Qwen3-ForcedAligner-0.6B out/Qwen3-ForcedAligner-0.6B-4bit
python scripts/convert_checkpoint.py /path/to/official out/8bit --bits 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from corpus_aligner.checkpoint import convert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="official checkpoint: local folder or Hugging Face repo id")
    parser.add_argument("dest", type=Path, help="output folder")
    parser.add_argument("--bits", type=int, default=4, choices=[4, 8], help="quantization bits (default 4)")
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args()
    out = convert(args.source, args.dest, bits=args.bits, group_size=args.group_size)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
