"""`Aligner`: the Python API (feels like the official `Qwen3ForcedAligner`, answers in seconds).

    aligner = Aligner.from_pretrained("Qwen/Qwen3-ForcedAligner-0.6B")   # or a local folder
    words = aligner.align(audio="a.flac", text="Hello world.", language="English")[0]

`align` batches internally, and an utterance's result does not depend on the batch it lands in.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

import mlx.core as mx
import numpy as np

from corpus_aligner import cpu_blas
from corpus_aligner.audio import load_audio
from corpus_aligner.batching import OVERHEAD_SHARE, pack_batches, padding_fraction
from corpus_aligner.checkpoint import CheckpointInfo, load_model, read_config, resolve
from corpus_aligner.decode import decode_words
from corpus_aligner.errors import AlignerError, AudioError, TooLongError
from corpus_aligner.frontend import log_mel
from corpus_aligner.mlx_threads import worker_threads
from corpus_aligner.model import ForcedAligner, bf16_matmul
from corpus_aligner.model.device_arrays import send
from corpus_aligner.model.encoder import EncoderPlan, audio_token_count, plan_batch
from corpus_aligner.model_processes import ModelProcesses, ProcessSpec
from corpus_aligner.normalize import split_words
from corpus_aligner.prefetch import ordered_map
from corpus_aligner.prompt import Prompt, PromptBuilder, SpecialIds, load_tokenizer, pad_prompts
from corpus_aligner.records import AlignedWord

log = logging.getLogger(__name__)

AudioInput = str | Path | tuple[np.ndarray, int]
Batch = tuple[Sequence[np.ndarray], Sequence[Sequence[str]]]
T = TypeVar("T")
# CPU: 4096 as the main job (conf/batch/cpu.yaml); two workers need several batches to share (32 utterances:
# 10.7 audio-s/s at 4096, 10.3 at 8192, 10.1 at 2048).
DEFAULT_BATCH_POSITIONS = {"cpu": 4096, "gpu": 131072}
# What one more batch costs in the packing objective, as a share of the budget (`batching.pack_batches`). GPU:
# 2 % cuts the bench's 1x corpus (1,000 utterances, 12,143 s) into 12 batches with 8.3 % of computed decoder
# positions padding, rows and width rounded as `Shapes` pads them; at 3 %, 8 batches and 12.1 %.
BATCH_OVERHEAD_SHARE = {"cpu": OVERHEAD_SHARE, "gpu": 0.02}


@dataclass(frozen=True)
class Shapes:
    """Batch dimensions rounded up to these multiples, so that a GPU sees few distinct shapes (MLX builds
    kernels, cuDNN plans and CUDA graphs per shape); the padding is masked and never read back.
    conv_piece: chunks per convolution call (0: all), which also bounds the first conv's memory."""

    chunks: int = 1
    windows: int = 1
    positions: int = 1
    rows: int = 1
    conv_piece: int = 0


@dataclass(frozen=True)
class ModelInputs:
    """What one pass of the model takes, on the host (numpy)."""

    plan: EncoderPlan
    prompts: list[Prompt]
    input_ids: np.ndarray  # (rows, S) right-padded
    audio_src: np.ndarray  # (rows, S) encoder-output row of each <|audio_pad|>, -1 elsewhere
    slots: np.ndarray  # (rows, K) position of each <timestamp>


@dataclass(frozen=True)
class BatchInputs:
    """One batch as `Aligner.prepare_batch` leaves it: its words and the model's inputs (None when no utterance
    has a word: there is no timestamp slot to read, so no pass)."""

    words: list[list[str]]
    model: ModelInputs | None


DEFAULT_SHAPES = {
    "cpu": Shapes(conv_piece=8),  # bf16 convs: 8 chunks of columns are 55 MB (64: 1.04 vs 1.23 s per 45 chunks)
    "gpu": Shapes(chunks=64, windows=16, positions=32, rows=8, conv_piece=256),
}


# MLX throttles a thread's evaluation (waits for its queued kernels) once active memory passes its limit, by
# default 80 % of the GPU, and trims its buffer cache to stay below it. The host queues a whole batch ahead of
# the device and every queued kernel keeps its inputs alive, so two lanes went past that limit by 11+ GiB (peak
# 75 GiB of an H100's 80) and once ran out (4x corpus). So the limit leaves GPU_MEMORY_HEADROOM free for that
# overshoot: half an H100 (80 GB), 101 of an H200's 141 GB. Kept at least half the device and at most MLX's
# 80 %. A tighter limit costs speed where memory is plenty: on an H200, model-only 7,317 audio-s/s on average
# at half the device against 8,069 at 80 % (5 and 4 fresh processes alternating, peaks 43-60 GiB either way).
GPU_MEMORY_HEADROOM = 40 << 30
GPU_MEMORY_SHARE = (0.5, 0.8)  # the limit's bounds, as shares of the device


def gpu_memory_target(total: int) -> int:
    """The memory limit for a GPU of `total` bytes: all but the headroom, within `GPU_MEMORY_SHARE`."""
    low, high = GPU_MEMORY_SHARE
    return int(max(low * total, min(high * total, total - GPU_MEMORY_HEADROOM)))


def limit_gpu_memory(fraction: float | None = None) -> int | None:
    """Lower MLX's memory limit to `fraction` of the device's memory, by default `gpu_memory_target` (never
    raise it); returns the limit in force, or None where MLX reports no device memory (the CPU)."""
    info = mx.device_info()
    total = info.get("total_memory") or info.get("memory_size")
    if not isinstance(total, int):
        return None
    limit = gpu_memory_target(total) if fraction is None else int(total * fraction)
    current = mx.set_memory_limit(limit)
    if current < limit:
        mx.set_memory_limit(current)
    return min(current, limit)


def default_workers(device: str) -> int:
    """Batches in flight at once: two. On the CPU each worker gets half the cores for its BLAS calls,
    and one batch's single-threaded MLX element-wise work overlaps the other's products (2 cores, 16
    utterances, 217 s of audio, bf16 products: 10.3-10.7 audio-s/s with two workers, 7.2 with one; float32
    products: 5.0 vs 4.8). On a GPU one batch's host-side preparation overlaps the other's kernels."""
    return 2 if device == "gpu" or (os.cpu_count() or 1) >= 2 else 1


class Aligner:
    def __init__(
        self,
        model: ForcedAligner,
        prompts: PromptBuilder,
        checkpoint: CheckpointInfo,
        encoder_attention: str = "windowed",
        batch_positions: int | None = None,
        workers: int | None = None,
        shapes: Shapes | None = None,
    ):
        self.model = model
        self.prompts = prompts
        self.checkpoint = checkpoint
        self.encoder_attention = encoder_attention
        self.device = "gpu" if mx.default_device() == mx.gpu else "cpu"
        self.batch_positions = batch_positions or DEFAULT_BATCH_POSITIONS[self.device]
        self.processes: ModelProcesses | None = None  # `from_pretrained(processes=N)`
        self.workers = workers or default_workers(self.device)
        self.shapes = shapes or DEFAULT_SHAPES[self.device]
        self.memory_limit = None if self.device == "cpu" else limit_gpu_memory()
        if self.device == "cpu":
            cpu_blas.set_threads(max(1, (os.cpu_count() or 1) // self.workers))
        self.args = model.args
        self._warm_lock = threading.Lock()
        self._warm = False

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        *,
        encoder_attention: str = "windowed",
        dtype: str | None = None,
        quantized: bool | None = None,
        revision: str | None = None,
        pretokenizer: str = "qwen2",
        batch_positions: int | None = None,
        workers: int | None = None,
        shapes: Shapes | None = None,
        cpu_matmul: str | None = None,
        processes: int = 1,
    ) -> Aligner:
        """Load a local folder as is, or download a repo id with `huggingface_hub.snapshot_download`.

        encoder_attention: "windowed" (8-s windows, how the model is served; default) or "full" (what the
        official code does on the CPU). dtype: None picks per device (float32 on the CPU), or one of
        "float32", "float16", "bfloat16"; quantized: keep a 4-bit checkpoint's layers quantized (True),
        dequantize them (False) or choose per device (None; see `checkpoint.load_model`).
        pretokenizer: "qwen2" (default) or "mistral" (model.md §10 D2).
        batch_positions: decoder positions per batch, padding included (default per device); workers:
        batches in flight at once (`align_batches`; default per device, see `default_workers`); shapes:
        how batch dimensions are rounded (default per device, `DEFAULT_SHAPES`). cpu_matmul: "float32",
        "bfloat16" or "auto", the precision of float32 matrix products on the CPU, process-wide
        (`model.bf16_matmul`; None leaves it as set, "auto" by default). processes: above 1, the model
        passes run in that many spawned processes, each loading the weights (`model_processes`; `close`
        stops them).
        """
        if encoder_attention not in ("windowed", "full"):
            raise ValueError(f"encoder_attention must be 'windowed' or 'full', got {encoder_attention!r}")
        cpu_blas.ensure_fast_blas()
        if cpu_matmul is not None:
            bf16_matmul.set_precision(cpu_matmul)
        info = resolve(path_or_repo_id, revision)
        config = read_config(info.path)
        model = load_model(info.path, dtype=dtype, quantized=quantized)
        a = model.args
        ids = SpecialIds(a.audio_start_token_id, a.audio_token_id, a.audio_end_token_id, a.timestamp_token_id)
        if "timestamp_token_id" not in config:
            raise ValueError(f"{info.path}/config.json has no timestamp_token_id: not a forced-aligner checkpoint")
        prompts = PromptBuilder(load_tokenizer(info.path, pretokenizer), ids)
        aligner = cls(model, prompts, info, encoder_attention, batch_positions, workers, shapes)
        if processes > 1:
            total = mx.device_info().get("total_memory")
            share = (
                aligner.memory_limit / total / processes if aligner.memory_limit and isinstance(total, int) else None
            )
            spec = ProcessSpec(
                str(info.path), encoder_attention, dtype, quantized, pretokenizer, aligner.shapes,
                bf16_matmul.resolved_precision() if aligner.device == "cpu" else None, aligner.device, share,
                max(1, (os.cpu_count() or 1) // processes),
            )  # fmt: skip
            aligner.processes = ModelProcesses(spec, processes)
            aligner.workers = workers or processes + 1  # callers' threads: one batch per process and one queued
        return aligner

    def close(self) -> None:
        """Stop the model processes, if any (the aligner then runs its passes in this process)."""
        if self.processes is not None:
            self.processes.close()
            self.processes = None

    def __enter__(self) -> Aligner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- sizes -------------------------------------------------------------------------------
    @property
    def feature_dtype(self) -> type:
        """The dtype loaders should give the log-mel in: float16 where the encoder computes in float16 (a GPU's
        default), since its first step rounds the features to that (round to nearest even, as numpy), so the
        result is the same with half the bytes from loader processes and to the device; float32 otherwise."""
        return np.float16 if self.model.audio_tower.conv2d1.weight.dtype == mx.float16 else np.float32

    @property
    def max_duration_s(self) -> float:
        """Last representable time: classify_num ticks of 80 ms (400 s for the released model)."""
        return self.args.classify_num * self.args.timestamp_segment_time_ms / 1000.0

    def audio_tokens(self, n_frames: int) -> int:
        return audio_token_count(n_frames, self.args.encoder.chunk_frames)

    def sequence_length(self, n_frames: int, tokens: Sequence[str]) -> int:
        """Decoder positions one utterance costs: use it as the batch-packing length."""
        return self.prompts.sequence_length(self.audio_tokens(n_frames), tokens)

    def pack(
        self, lengths: Sequence[float], budget: int | None = None, max_items: int | None = None
    ) -> list[list[int]]:
        """Indices grouped into batches of at most `budget` decoder positions (default `batch_positions`),
        counted as `align_features` pads them: rows and width rounded up to this aligner's `shapes`."""
        budget = budget or self.batch_positions
        overhead = budget * BATCH_OVERHEAD_SHARE[self.device]
        return pack_batches(lengths, budget, max_items, overhead, self.shapes.rows, self.shapes.positions)

    def padding_fraction(self, lengths: Sequence[float], batches: Sequence[Sequence[int]]) -> float:
        """Share of the decoder positions computed for `batches` that are padding (shape rounding included)."""
        return padding_fraction(lengths, batches, self.shapes.rows, self.shapes.positions)

    # ----- alignment ---------------------------------------------------------------------------
    def warm_up(self) -> float:
        """Build every GPU kernel a pass uses with two one-utterance passes, in the calling thread, before batch
        threads would each meet them at once; returns the seconds it took (0 once done, on the CPU, or with
        model processes).

        MLX compiles each custom CUDA kernel (`model.cuda_kernels`) with NVRTC on its first call, ~1.3 s
        apiece, 17-23 s for a pass on an H200, in every process (they are not cached on disk), and keeps them in
        one process-wide map that has no lock: two batch threads that start at once would both compile into
        it. One pass has a clip shorter than a 1-s chunk (the length-masked conv kernels), one a clip of two."""
        with self._warm_lock:
            if self._warm or self.device != "gpu" or self.processes is not None:
                return 0.0
            start = perf_counter()
            enc = self.args.encoder
            for frames in (enc.chunk_frames // 2, enc.chunk_frames * 3 // 2):
                feats = np.random.default_rng(frames).standard_normal((frames, enc.num_mel_bins))
                feats = feats.astype(self.feature_dtype)
                self.align_features([feats], [["warm", "up"]])
            self._warm = True
            return perf_counter() - start

    def align_features(self, features: Sequence[np.ndarray], words: Sequence[Sequence[str]]) -> list[list[AlignedWord]]:
        """Align exactly these utterances in one forward pass.

        features: log-mel (n_frames, 128) per utterance (`frontend.log_mel`); words: the cleaned words
        (`normalize.split_words`). Returns the aligned words of each utterance, in order.
        """
        if self.processes is not None:
            return self.processes.align(features, words)
        inputs = self.prepare_batch(features, words)
        return self.decode_batch(inputs, self.run_batch(inputs))

    def prepare_batch(self, features: Sequence[np.ndarray], words: Sequence[Sequence[str]]) -> BatchInputs:
        """The host side of a pass (checks, encoder plan, prompts, padded ids): numpy only, so `align_batches`
        builds it in a thread of its own ahead of the batch threads. Raises AudioError / TooLongError."""
        if len(features) != len(words):
            raise ValueError(f"{len(features)} feature arrays but {len(words)} word lists")
        for feat in features:
            if feat.shape[0] < 1:
                raise AudioError("audio shorter than one mel frame (10 ms): nothing to align")
            if feat.shape[0] * 0.01 > self.max_duration_s:
                raise TooLongError(
                    f"audio of {feat.shape[0] / 100:.1f} s is longer than the model's {self.max_duration_s:.0f} s"
                )
        words = [list(w) for w in words]
        if not any(words):
            return BatchInputs(words, None)
        sh = self.shapes
        plan = plan_batch(
            list(features), self.args.encoder, self.encoder_attention, sh.chunks, sh.windows, sh.conv_piece
        )
        prompts = [self.prompts.build(n, w) for n, w in zip(plan.tokens_per_clip, words)]
        padded = pad_prompts(prompts, self.args.audio_end_token_id, sh.positions, sh.rows)
        return BatchInputs(words, ModelInputs(plan, prompts, *padded))

    def run_batch(self, inputs: BatchInputs) -> tuple[np.ndarray, np.ndarray]:
        """The model's pass: the argmax class and its probability at every timestamp slot, (rows, K) each
        (both empty for a batch without words). All of it is MLX: graph building and evaluation."""
        m = inputs.model
        if m is None:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
        *sent, ids, src, slots = send([*m.plan.device_inputs(), m.input_ids, m.audio_src, m.slots])  # one copy
        logits = self.model(ids, src, slots, m.plan, sent)
        logits = logits.astype(mx.float32)
        classes = mx.argmax(logits, axis=-1)
        top = mx.max(logits, axis=-1, keepdims=True)
        probs = mx.reciprocal(mx.sum(mx.exp(logits - top), axis=-1))
        mx.eval(classes, probs)
        return np.array(classes), np.array(probs)

    def decode_batch(self, inputs: BatchInputs, outputs: tuple[np.ndarray, np.ndarray]) -> list[list[AlignedWord]]:
        """`run_batch`'s classes and probabilities -> the aligned words of each utterance (`decode_words`)."""
        if inputs.model is None:
            return [[] for _ in inputs.words]
        classes, probs = outputs
        ms = self.args.timestamp_segment_time_ms
        return [
            decode_words(w, classes[b, : len(p.slots)], probs[b, : len(p.slots)], ms)
            for b, (w, p) in enumerate(zip(inputs.words, inputs.model.prompts))
        ]

    def align(
        self,
        audio: AudioInput | Sequence[AudioInput],
        text: str | Sequence[str],
        language: str | Sequence[str | None] | None = None,
    ) -> list[list[AlignedWord]]:
        """Align utterances; a bare item is one utterance. `language` may be one value for all.

        Audio items are a path or `(samples, sample_rate)`; any rate and channel count. Returns, per
        utterance, its words with `.text`, `.start_s`, `.end_s` (seconds) in order.
        """
        audios = [audio] if _is_single_audio(audio) else list(audio)  # type: ignore[arg-type]
        texts = [text] if isinstance(text, str) else list(text)
        if len(audios) != len(texts):
            raise ValueError(f"{len(audios)} audio items but {len(texts)} texts")
        languages = [language] * len(texts) if language is None or isinstance(language, str) else list(language)
        if len(languages) != len(texts):
            raise ValueError(f"{len(languages)} languages but {len(texts)} texts")
        features = [log_mel(load_audio(a)) for a in audios]  # type: ignore[arg-type]
        words = [split_words(t, lang) for t, lang in zip(texts, languages)]
        lengths = [self.sequence_length(f.shape[0], w) for f, w in zip(features, words)]
        results: list[list[AlignedWord]] = [[] for _ in texts]
        batches = self.pack(lengths)
        jobs = (([features[i] for i in b], [words[i] for i in b]) for b in batches)
        for batch, out in zip(batches, self.align_batches(jobs)):
            if isinstance(out, AlignerError):
                raise out
            for i, res in zip(batch, out):
                results[i] = res
        return results

    def align_batches(self, batches: Iterable[Batch]) -> Iterator[list[list[AlignedWord]] | AlignerError]:
        """`align_features` over (features, words) batches, `self.workers` at a time, results in order.

        Each worker thread evaluates on its own MLX stream (`mlx_threads`), so batches overlap: on a GPU
        one batch's host work hides behind another's kernels (the CPU default is one worker). With several
        workers the three parts of a pass run in three places: `prepare_batch` (numpy) in a thread of its
        own ahead of them, `run_batch` in the workers, `decode_batch` here in the caller's thread; a worker
        then goes from one evaluation to the next with only the graph to build, while the GPU still has the
        other worker's kernels queued. At most `2 * workers + 1` batches are taken from `batches` ahead of
        the one being returned, so memory stays bounded. A batch that fails with one of our errors yields
        that error (the caller may retry its utterances one by one); other exceptions propagate.
        """
        if self.processes is not None:  # each batch whole in a model process; one queued beyond them
            procs = self.processes
            yield from ordered_map(lambda batch: procs.submit(*batch), batches, procs.count + 1)
            return
        if self.workers == 1:
            yield from (self._align_or_error(f, w) for f, w in batches)
            return
        lanes = worker_threads(self.workers)
        lanes.submit(self.warm_up).result()  # in a lane: a thread that lives as long as MLX's state does
        host = ThreadPoolExecutor(1, thread_name_prefix="batch-inputs")  # numpy only: no MLX state
        prepared = ordered_map(
            lambda batch: host.submit(_or_error, self.prepare_batch, *batch), batches, self.workers + 1
        )
        passes = ordered_map(lambda inputs: lanes.submit(self._run_or_error, inputs), prepared, self.workers)
        try:
            for done in passes:
                yield done if isinstance(done, AlignerError) else self.decode_batch(*done)
        finally:  # a caller that stops early: what has not started is cancelled
            passes.close()
            prepared.close()
            host.shutdown(wait=False, cancel_futures=True)

    def _run_or_error(
        self, inputs: BatchInputs | AlignerError
    ) -> tuple[BatchInputs, tuple[np.ndarray, np.ndarray]] | AlignerError:
        if isinstance(inputs, AlignerError):
            return inputs
        outputs = _or_error(self.run_batch, inputs)
        return outputs if isinstance(outputs, AlignerError) else (inputs, outputs)

    def _align_or_error(
        self, features: Sequence[np.ndarray], words: Sequence[Sequence[str]]
    ) -> list[list[AlignedWord]] | AlignerError:
        return _or_error(self.align_features, features, words)


def _or_error(fn: Callable[..., T], *args: Any) -> T | AlignerError:
    """fn(*args), or the AlignerError it raised (returned, so that one batch fails alone)."""
    try:
        return fn(*args)
    except AlignerError as exc:
        return exc


def _is_single_audio(audio: Any) -> bool:
    if isinstance(audio, (str, Path)):
        return True
    return isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[0], np.ndarray)
