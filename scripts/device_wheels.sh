#!/usr/bin/env bash
# Wheels and data for the GPU benchmark on the device tool's machine (its image has torch, numpy, scipy, tokenizers,
# but not MLX, our I/O stack or the official code's pins). Carries are capped at 64 MiB a call, so everything travels
# in three calls to one warm machine; run from the repo root, then follow what it prints.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bash ../shared/tools/device-mlx-cuda.sh >/dev/null  # .mlxcuda-a (mlx + first half of mlx-cuda), .mlxcuda-b
for d in /.whl1/ /.whl2/ /.devdata/; do
  grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude
done
rm -rf .whl1 .whl2 .devdata && mkdir -p .whl1 .whl2 .devdata/dev/tokenizer .devdata/dev/text
get() {  # folder, then NAME==VERSION...: CPython 3.12 manylinux wheels, no dependencies
  local dest=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" "$@"
}
# ours: Parquet, TextGrids, Hydra, audio I/O (soundfile needs cffi there)
get .whl1 polars==2.1.0 polars-runtime-32==2.1.0 praatio==6.2.2 hydra-core==1.3.8 omegaconf==2.3.1 \
  soundfile==0.14.0 soxr==1.1.0 cffi pycparser
python3 -m pip wheel -q --no-deps -w .whl1 antlr4-python3-runtime==4.9.3  # Hydra's parser: a source release only
# the official: qwen-asr and the pins its transformers checks at import
get .whl2 qwen-asr==0.0.6 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 librosa==0.11.0 \
  audioread pooch decorator platformdirs
# pytest, for the CUDA kernels' tests (tests/test_cuda_kernels.py run only where MLX has CUDA)
get .whl2 pytest==8.3.5 pluggy iniconfig packaging
# the real Qwen3 tokenizer and the LibriSpeech transcripts the bench corpus draws its words from (same order as here)
cp "$(python3 -c 'from corpus_aligner.testing.tiny_checkpoint import qwen_tokenizer_files as q; print(q())')"/{vocab.json,merges.txt} \
  .devdata/dev/tokenizer/
text=$PWD/.devdata/dev/text
(cd ../shared/testdata/librispeech-mini && find . -name '*.trans.txt' -exec cp --parents {} "$text" \;)
du -sh .mlxcuda-a .mlxcuda-b .whl1 .whl2 .devdata
cat <<'TXT'
Three calls in a row (the machine stays warm ~30 s after each):
 1) carry [".mlxcuda-a", ".whl2"]:  mkdir -p /root/stash && cp .mlxcuda-a/* .whl2/* /root/stash/
 2) carry [".whl1", ".devdata"]:    cp .whl1/* /root/stash/ && cp -r .devdata/dev /root/stash/
 3) carry [".mlxcuda-b"]:
    S=/root/stash; cat $S/part_aa .mlxcuda-b/part_ab > $S/$(cat .mlxcuda-b/WHEEL_NAME) && rm $S/part_aa &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site $S/*.whl &&
    export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 &&
    python3 -m pytest -q -p no:cacheprovider -p no:timeout tests/test_cuda_kernels.py &&
    python3 scripts/bench_align.py --device gpu --utterances 1000 --scale 4 --pipeline --official-batch 32,64,128 \
      --tokenizer-files $S/dev/tokenizer --text-root $S/dev/text --json $OUT/bench.json 2>&1 | tee $OUT/bench.log
TXT
