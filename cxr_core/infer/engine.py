"""The batched inference engine: ``Predictor.from_checkpoint(path).predict(paths)``.

Decoding runs in DataLoader workers overlapped with the model on CUDA, and on a CPU in a thread pool
that takes turns with the model (both then use every core instead of fighting over them); AMP (bf16, or
fp16 where bf16 is not supported) on CUDA, bf16 on a CPU that computes it natively (AVX512-BF16 or AMX:
:func:`cpu_runs_bf16`; 1.3-1.6x, probabilities within 0.02 of float32; ``amp=False`` / ``--fp32`` for float32);
channels_last on CUDA and CPU; on a CPU the model's BatchNorms folded
into its convolutions (:func:`fold_batchnorms`) and glibc told to keep freed memory for the next batch
(:func:`keep_freed_memory`): efficientnet_b0 @224 on 2 cores, 1.3x and 1.4x faster; ``torch.compile`` on request
(on a CPU it pays only over thousands of images: a cold compile took 25-55 s here, for 1.1-1.3x);
optional test-time augmentation (horizontal flip, a light rescale) averaged in probability space. Results come from the
:class:`~cxr_core.infer.prediction_cache.PredictionCache` when the same image content was already seen by the same
model, so reopening a folder costs nothing. ``cancel`` (a ``threading.Event``) stops between batches and
``progress(done, total)`` streams — the TUI runs this in a worker and draws a bar. Under ``torchrun`` the
images still to compute are sharded across ranks and the results gathered, so every GPU of a node works.

A file that cannot be read is reported with its reason (``errors``) and gets a NaN row; the rest go on.

When the checkpoint carries statistics of its training images (:mod:`cxr_core.ood`), every computed image also
gets its distances to them: the intensity histogram from the uint8 batch, the pooled features from a hook on the
model's head during the forward that makes the probabilities (no second pass). They are cached beside the
probabilities (``PredictionCache.get_distances``); cached images stored before that are scored on a sample of at most
:data:`~cxr_core.ood.PREDICT_SAMPLE` decoded again. ``PredictResult.ood`` says whether the images lie far.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cxr_core.data.dataset import PredictDataset, PredictPixels
from cxr_core.data.preprocess import Normalizer
from cxr_core.distributed import Dist, init_distributed
from cxr_core.errors import CxrError
from cxr_core.infer.loading import LoadedModel, load_model
from cxr_core.infer.prediction_cache import PredictionCache
from cxr_core.ood import PREDICT_SAMPLE, FeatureTap, OodReport, sample_indices
from cxr_core.text import visible

TTA_CHOICES = ("hflip", "scale")
RESCALE = 0.9  # the light rescale: the image shrunk to 90 % and re-centred on the letterbox background
FLAT_STD = 1e-4  # per-class std of probabilities below which a batch "barely varies"

FOLD_PROBE_SIZE = 64  # side of the image that shows which convolution feeds which BatchNorm
Progress = Callable[[int, int], None]


def auto_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, else Apple's MPS, else CPU; anything else is passed to ``torch.device``."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise CxrError(f"device {name!r}: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CxrError(f"device {name!r}: CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_workers(device: torch.device, n_images: int, batch_size: int) -> int:
    """DataLoader decoding processes (CUDA, or a CPU run given ``workers``): none for a handful of images
    (forking costs more), else spare cores (max 8). A CPU run by default decodes in threads instead."""
    if n_images <= batch_size:
        return 0
    cores = _cores()
    spare = cores - 1 if device.type == "cpu" else cores
    return max(0, min(8, spare))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class PredictResult:
    labels: list[str]
    paths: list[str]
    probs: np.ndarray  # (N, K) float32; NaN rows where the image could not be read (or was cancelled)
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    warnings: list[str] = field(default_factory=list)
    ood_distances: np.ndarray | None = None  # (N, measures): distances to the training images (NaN: not scored)
    ood: OodReport | None = None  # None when the checkpoint has no training stats
    premade: int = 0  # computed images whose pixels were handed over (``predict(pixels=...)``), not decoded

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.probs).any(axis=1)

    def flagged(self, thresholds: Mapping[str, float]) -> list[list[str]]:
        out = []
        for row in self.probs:
            out.append([name for name, p in zip(self.labels, row, strict=True)
                        if name in thresholds and not np.isnan(p) and p >= thresholds[name]])
        return out

    def as_dict(self, thresholds: Mapping[str, float] | None = None) -> dict[str, dict]:
        """``{path: {"probs": {label: p}, "flagged": [...]}}`` for the images that were predicted."""
        flags = self.flagged(thresholds) if thresholds else [[] for _ in self.paths]
        return {path: {"probs": dict(zip(self.labels, map(float, row), strict=True)), "flagged": flag}
                for path, row, flag in zip(self.paths, self.probs, flags, strict=True) if not np.isnan(row).any()}


def cpu_runs_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, as oneDNN sees it): there bf16 autocast runs
    CNNs 1.3-1.6x faster than float32 (efficientnet_b0 and resnet10t on a 2-core Zen 4 here); elsewhere it is
    emulated and slower. ``CXR_CPU_BF16=0`` or ``1`` overrides the detection."""
    forced = os.environ.get("CXR_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN, or the private hook moved
        return False


class Predictor:
    def __init__(self, loaded: LoadedModel, *, device: torch.device | str = "auto", batch_size: int | None = None,
                 workers: int | None = None, processes: bool = True, amp: bool = True, compile: bool = False,
                 tta: Sequence[str] = (), cache: PredictionCache | bool | None = True, dist: Dist | None = None):
        unknown = [t for t in tta if t not in TTA_CHOICES]
        if unknown:
            raise CxrError(f"unknown test-time augmentation {', '.join(unknown)} (choose from {', '.join(TTA_CHOICES)})")
        if batch_size is not None and batch_size < 1:
            raise CxrError(f"batch size must be positive, got {batch_size}")
        self.dist = dist or Dist()
        self.device = torch.device(f"cuda:{self.dist.local_rank}") if (
            self.dist.enabled and torch.cuda.is_available()) else (
            device if isinstance(device, torch.device) else auto_device(device))
        self.loaded = loaded
        self.config = loaded.config
        self.labels = list(loaded.config.labels)
        # CPU: 8 is where batching stops paying for these CNNs (efficientnet_b0 @224: 21 img/s at 1, 27-38 at 8,
        # 32 at 32 on 2 cores); CUDA wants big batches.
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 8)
        # ``workers`` decoding processes (None: threads on a CPU, spare cores on CUDA). ``processes=False`` never
        # forks: for callers running threads of their own (the TUI), decoding then always happens in threads.
        self.workers = workers
        self.processes = processes
        self.tta = tuple(dict.fromkeys(tta))
        self.variant = "tta=" + "+".join(self.tta) if self.tta else "plain"
        self.model = loaded.model.to(self.device).eval()
        on_cuda = self.device.type == "cuda"
        # channels_last pays on CPU too: oneDNN's NHWC convolutions run efficientnet_b0 @224 1.4x faster at
        # batch 8 on 2 cores (22 -> 31 img/s eager, 40 -> 47 compiled); ViTs are indifferent.
        self.channels_last = self.device.type in ("cuda", "cpu")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # What predicts: on a CPU a copy with each BatchNorm folded into the convolution before it (one pass over
        # the activations less per BatchNorm; the same numbers to float rounding, checked before it is used).
        # ``self.model`` stays as loaded, for Grad-CAM and anyone who trains or inspects it.
        self.inference_model, self.folded = self.model, 0
        if self.device.type == "cpu":
            keep_freed_memory()
            self.inference_model, self.folded = fold_batchnorms(self.model, self.config.input_size,
                                                                self.config.in_chans, channels_last=self.channels_last)
        self.amp_dtype = None
        if amp and on_cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif amp and self.device.type == "cpu" and cpu_runs_bf16():
            self.amp_dtype = torch.bfloat16
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")
        if self.amp_dtype is not None:  # the cache never hands float32 results to a bf16 run, or back
            self.variant += f"@{self.precision}"
        self.compiled = compile
        self.forward = torch.compile(self.inference_model) if compile else self.inference_model
        if cache is True:
            cache = PredictionCache()
        self.cache: PredictionCache | None = cache or None
        background = -torch.tensor(self.config.mean) / torch.tensor(self.config.std)  # letterbox black, normalised
        self._background = background.view(1, -1, 1, 1).to(self.device)
        self.ood_stats = loaded.ood
        self._tap = FeatureTap(self.inference_model, self.config, always=compile) if (
            self.ood_stats is not None and self.ood_stats.has_features) else None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, device: str = "auto", **kwargs) -> Predictor:
        """Everything comes from the checkpoint (architecture, labels, input size, normalisation)."""
        dist = kwargs.pop("dist", None) or init_distributed()
        target = torch.device(f"cuda:{dist.local_rank}") if dist.enabled and torch.cuda.is_available() else auto_device(device)
        return cls(load_model(path, target), device=target, dist=dist, **kwargs)

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    # -- the model on one batch --------------------------------------------------------------------------

    @torch.inference_mode()
    def predict_batch(self, images: torch.Tensor) -> np.ndarray:
        """Probabilities (B, K) for a batch already preprocessed the way the model config says."""
        n = images.shape[0]
        if self.compiled and n < self.batch_size:  # one compiled shape: pad the last batch instead of recompiling
            images = torch.cat([images, images.new_zeros((self.batch_size - n, *images.shape[1:]))])
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = [x]
        if "hflip" in self.tta:
            views.append(torch.flip(x, dims=[-1]))
        if "scale" in self.tta:
            views.append(self._rescale(x))
        with self.autocast():
            probs = torch.stack([torch.sigmoid(self.forward(v).float()) for v in views]).mean(0)
        return probs[:n].cpu().numpy().astype(np.float32)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision the model runs at (:attr:`precision`): autocast to :attr:`amp_dtype`, or nothing."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _rescale(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        inner = max(1, round(size * RESCALE))
        small = F.interpolate(x, size=(inner, inner), mode="bilinear", align_corners=False, antialias=True)
        out = self._background.expand(x.shape[0], -1, size, size).clone()
        top = (size - inner) // 2
        out[..., top:top + inner, top:top + inner] = small
        return out

    # -- many files -----------------------------------------------------------------------------------------

    def predict(self, paths: Sequence[str | os.PathLike[str]], *, cancel: threading.Event | None = None,
                progress: Progress | None = None, use_cache: bool = True,
                pixels: Mapping[str, np.ndarray] | None = None) -> PredictResult:
        """Probabilities for ``paths`` (cached, or computed in batches).

        ``pixels``: path -> its letterboxed uint8 image at this model's input size, already made (the training
        image cache, :func:`cxr_core.data.image_cache.training_cache_pixels`); those files are not decoded. Its
        ``get(path)`` returns None for a path it does not hold.
        """
        started = time.perf_counter()
        paths = [str(p) for p in paths]
        n, k = len(paths), len(self.labels)
        probs = np.full((n, k), np.nan, dtype=np.float32)
        result = PredictResult(self.labels, paths, probs)
        cache = self.cache if use_cache else None
        stats = self.ood_stats
        measures = list(stats.measures) if stats is not None else []
        distances = np.full((n, len(measures)), np.nan, dtype=np.float32) if stats is not None else None
        hashes: list[str | None] = [None] * n
        todo = list(range(n))
        if cache is not None and n:
            hashes = cache.hashes(paths)
            known = [h for h in hashes if h]
            stored = cache.get(known, self.fingerprint, self.variant, self.labels)
            far = cache.get_distances(known, self.fingerprint, measures) if distances is not None else {}
            todo = []
            for i, digest in enumerate(hashes):
                if digest is not None and digest in stored:
                    probs[i] = stored[digest]
                    if digest in far:
                        distances[i] = far[digest]
                else:
                    todo.append(i)
            result.cached = n - len(todo)
        if progress:
            progress(result.cached, n)

        def keep(rows: dict[int, np.ndarray], far: dict[int, np.ndarray]) -> None:
            # each batch cached as it completes: a kill loses one batch
            if cache is not None:
                if rows:
                    cache.put(((hashes[i], row) for i, row in rows.items() if hashes[i]), self.fingerprint,
                              self.variant, self.labels)
                if far:
                    cache.put_distances(((hashes[i], row) for i, row in far.items() if hashes[i]), self.fingerprint,
                                        measures)

        computed, errors, cancelled, scored = self._sharded(paths, todo, cancel, progress, result.cached, n, keep,
                                                            pixels=pixels)
        for i, row in computed.items():
            probs[i] = row
        if stats is not None and distances is not None:
            for i, row in scored.items():
                distances[i] = row
            predicted = ~np.isnan(probs).any(axis=1)
            # Predictions cached before their distances were: score a sample of those images (decoded again).
            unscored = np.flatnonzero(predicted & np.isnan(distances).all(axis=1))
            wanted = bool(len(unscored)) and not cancelled
            if self.dist.enabled:  # every rank takes part in the gather, or none does
                wanted = not self.dist.all_true(not wanted)
            if wanted:
                sample = unscored[sample_indices(len(unscored), PREDICT_SAMPLE)].tolist()
                _, _, _, more = self._sharded(paths, sample, cancel, None, 0, 0,
                                              lambda rows, far: keep({}, far), scores_only=True, pixels=pixels)
                for i, row in more.items():
                    distances[i] = row
            distances[~predicted] = np.nan  # a cancelled run's images, unreadable files: not scored
            result.ood_distances = distances
            if np.isfinite(distances).any():
                result.ood = stats.report(distances)  # per image in row order; NaN where not scored
        result.errors = {paths[i]: reason for i, reason in sorted(errors.items())}
        result.computed = len(computed)
        result.premade = sum(1 for i in computed if paths[i] in pixels) if pixels is not None else 0
        result.cancelled = cancelled
        result.warnings = flat_warning(np.stack(list(computed.values())) if computed else probs[:0], self.labels)
        result.seconds = time.perf_counter() - started
        return result

    def _sharded(self, paths: list[str], todo: list[int], cancel: threading.Event | None,
                 progress: Progress | None, done: int, total: int,
                 keep: Callable[[dict[int, np.ndarray], dict[int, np.ndarray]], None] | None,
                 scores_only: bool = False, pixels: Mapping[str, np.ndarray] | None = None,
                 ) -> tuple[dict[int, np.ndarray], dict[int, str], bool, dict[int, np.ndarray]]:
        """:meth:`_run` on this rank's share of ``todo`` (all of it without torchrun), gathered from every rank."""
        mine = todo[self.dist.rank::self.dist.world] if self.dist.enabled else todo
        out = self._run(paths, mine, cancel, progress, done, total, len(todo), keep, scores_only, pixels)
        if self.dist.enabled:
            parts = self.dist.gather(out)
            out = ({i: p for part in parts for i, p in part[0].items()},
                   {i: e for part in parts for i, e in part[1].items()},
                   any(part[2] for part in parts),
                   {i: d for part in parts for i, d in part[3].items()})
        return out

    def _run(self, paths: list[str], indices: list[int], cancel: threading.Event | None, progress: Progress | None,
             done: int, total: int, todo: int,
             keep: Callable[[dict[int, np.ndarray], dict[int, np.ndarray]], None] | None = None,
             scores_only: bool = False, pixels: Mapping[str, np.ndarray] | None = None,
             ) -> tuple[dict[int, np.ndarray], dict[int, str], bool, dict[int, np.ndarray]]:
        computed: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        scored: dict[int, np.ndarray] = {}
        if not indices:
            return computed, errors, False, scored
        mine = [paths[i] for i in indices]
        made = pixels is not None and all(p in pixels for p in mine)  # nothing to decode at all
        dataset = (PredictDataset(mine, size=self.config.input_size, preprocess=self.config) if pixels is None else
                   _MadePixels(mine, size=self.config.input_size, preprocess=self.config, made=pixels))
        scale = self.dist.world if self.dist.enabled else 1  # progress counts every rank's share
        with contextlib.ExitStack() as stack:
            if made or not self.processes or (self.workers is None and self.device.type == "cpu"):
                threads = 1 if made else min(8, _cores())  # copying rows out of a memmap needs no helpers
                pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="cxr-decode"))
                batches: Iterable[dict[str, Any]] = _decoded_in_turn(dataset, self.batch_size, pool)
            else:
                workers = default_workers(self.device, len(indices), self.batch_size) if self.workers is None \
                    else self.workers
                batches = DataLoader(PredictPixels(dataset), batch_size=self.batch_size, shuffle=False, num_workers=workers,
                                     pin_memory=self.device.type == "cuda", persistent_workers=False,
                                     prefetch_factor=4 if workers else None)
            done, cancelled = self._consume(batches, dataset.normalizer, indices, computed, errors, cancel, progress,
                                            done, total, scale, keep, paths, scored)
        if scores_only:
            computed = {}
        return computed, errors, cancelled, scored

    def _consume(self, batches: Iterable[dict[str, Any]], normalizer: Normalizer, indices: list[int],
                 computed: dict[int, np.ndarray], errors: dict[int, str], cancel: threading.Event | None,
                 progress: Progress | None, done: int, total: int, scale: int,
                 keep: Callable[[dict[int, np.ndarray], dict[int, np.ndarray]], None] | None, paths: list[str],
                 scored: dict[int, np.ndarray]) -> tuple[int, bool]:
        for batch in batches:
            if cancel is not None and cancel.is_set():
                return done, True
            rows = [indices[j] for j in batch["index"].tolist()]
            good = [m for m, reason in enumerate(batch["error"]) if not reason]
            for m, reason in enumerate(batch["error"]):
                if reason:
                    errors[rows[m]] = reason
            if good:
                pixels = batch["pixels"].to(self.device, non_blocking=True)  # uint8, pinned on CUDA
                if len(good) < len(rows):
                    pixels = pixels[good]
                with self._tap.capture() if self._tap is not None else contextlib.nullcontext():
                    out = self.predict_batch(normalizer.batch(pixels))
                far: dict[int, np.ndarray] = {}
                if self.ood_stats is not None:
                    features = self._tap.take(len(good)) if self._tap is not None else None
                    far = {rows[m]: row for m, row in zip(good, self.ood_stats.distances(pixels, features),
                                                            strict=True)}
                    scored.update(far)
                if not np.isfinite(out).all():  # never a silent "0 images predicted"
                    first = rows[good[int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])]]
                    raise CxrError(f"{visible(self.loaded.path)}: the model gives NaN or infinite scores (first on "
                                   f"{visible(paths[first])}); it cannot predict (its weights or training diverged?)")
                fresh = {rows[m]: row for m, row in zip(good, out, strict=True)}
                computed.update(fresh)
                if keep is not None:
                    keep(fresh, far)
            done += len(rows) * scale
            if progress:
                progress(min(done, total), total)
        return done, False


class _MadePixels(PredictDataset):
    """A :class:`PredictDataset` that takes each image from ``made`` (path -> letterboxed uint8) when it is there."""

    def __init__(self, paths: Sequence[str], *, size: int, preprocess: Any, made: Mapping[str, np.ndarray]):
        super().__init__(paths, size=size, preprocess=preprocess)
        self.made = made

    def pixels(self, index: int) -> tuple[np.ndarray, str]:
        row = self.made.get(self.paths[index])
        if row is not None and row.shape == (self.size, self.size):
            return np.array(row, dtype=np.uint8), ""  # a copy: out of the memmap, writable
        return super().pixels(index)


def _decoded_in_turn(dataset: PredictDataset, batch_size: int, pool: ThreadPoolExecutor) -> Iterator[dict[str, Any]]:
    """Batches decoded by every core in turn with the model, for CPU inference.

    On a CPU the model's threads and decoding processes fight for the same cores, and a parallel region of
    the forward waits for whichever of its threads was preempted: overlapping them ran efficientnet_b0's
    forward at 27 img/s instead of 47 on 2 cores. Decoding a batch with every core (Pillow and zlib release
    the GIL, 1.8-2.2x on 2 threads), then running the model with every core, wastes nothing. The threads
    only decode (NumPy, Pillow); normalising is one batched torch op here, so no thread but this one starts
    an OpenMP team of its own.
    """
    for start in range(0, len(dataset), batch_size):
        yield dataset.batch(range(start, min(start + batch_size, len(dataset))), pool.map)


def flat_warning(probs: np.ndarray, labels: Sequence[str]) -> list[str]:
    """A warning when predictions barely vary across images: the classic sign of wrong input normalisation."""
    if probs.shape[0] < 16:
        return []
    spread = probs.std(axis=0)
    if float(spread.max()) < FLAT_STD:
        return [f"predictions barely vary across {probs.shape[0]} images (max per-class std {spread.max():.1e}): "
                "check that the images are chest X-rays and that the model's normalisation matches its training"]
    return []


_MALLOC_SET = False
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
KEEP_FREED_BYTES = 512 << 20  # freed heap memory glibc keeps for the next batch instead of handing back
MMAP_THRESHOLD_BYTES = 128 << 20  # allocations below this come from the heap (reused), not fresh mmaps


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for the next batch (once per process, Linux/glibc only; True when set).

    A CPU forward allocates and frees the same activation buffers every batch (tens of MB each). glibc's defaults
    hand memory above 128 KB back to the kernel on free (trim) and serve large blocks by mmap, so every batch
    page-faults its activations in again: efficientnet_b0 @224 spent a third of its forward there (batch 8, 2
    cores: 57-61 img/s; 78-88 with these settings, same run). The cost is up to ``KEEP_FREED_BYTES`` of freed
    memory kept by the process. Skipped when the user set glibc's malloc variables (or GLIBC_TUNABLES) themselves.
    """
    global _MALLOC_SET
    if _MALLOC_SET:
        return True
    if not sys.platform.startswith("linux") or any(os.environ.get(k) for k in _MALLOC_ENV) or \
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        _MALLOC_SET = bool(libc.mallopt(m_trim_threshold, KEEP_FREED_BYTES)) and \
            bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl, macOS): its own allocator, left alone
        return False
    return _MALLOC_SET


def fold_batchnorms(model: nn.Module, size: int, channels: int = 3, *,
                    channels_last: bool = False) -> tuple[nn.Module, int]:
    """An inference copy of ``model`` with every BatchNorm that directly follows a convolution folded into it.

    Eval-mode BatchNorm is a per-channel affine map, so ``bn(conv(x)) == conv'(x)`` with the convolution's weights
    and bias scaled and shifted; the BatchNorm's own pass over the activations goes (timm's ``BatchNormAct2d``
    keeps its activation). Which convolution feeds which BatchNorm is seen, not guessed: one forward on a random
    image (64 px, or the model's own size where it needs it) records each convolution's output tensor and each
    BatchNorm's input. Only plain ``nn.Conv2d`` / timm's ``Conv2dSame`` into plain ``nn.BatchNorm2d`` /
    ``BatchNormAct2d`` qualify, each pair seen once. The copy is then checked against ``model`` on that image; any
    difference beyond float rounding (a convolution output also used elsewhere) keeps ``model``. Returns (module to
    predict with, pairs folded). efficientnet_b0 @224, batch 8, 2 cores: the forward 1.3-1.4x faster.
    """
    if model.training or not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model, 0
    for side in dict.fromkeys((min(size, FOLD_PROBE_SIZE), size)):  # small first: two forwards cost little
        try:
            return _fold_batchnorms(model, side, channels, channels_last)
        except Exception:  # a model that wants its own size, or an architecture this cannot follow
            continue
    return model, 0


def _bn_without_norm(bn: nn.Module) -> nn.Module | None:
    """What replaces a folded BatchNorm: nothing, or what follows the norm inside it (timm: dropout + activation)."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return None
    if type(bn) is BatchNormAct2d:
        return nn.Sequential(bn.drop, bn.act)
    return None


def _foldable_conv(module: nn.Module) -> bool:
    if type(module) is nn.Conv2d:
        return True
    try:
        from timm.layers import Conv2dSame
    except ImportError:
        return False
    return type(module) is Conv2dSame


@torch.no_grad()
def _fold_batchnorms(model: nn.Module, size: int, channels: int, channels_last: bool) -> tuple[nn.Module, int]:
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    seen: list[tuple[nn.Module, nn.Module]] = []

    def conv_hook(module: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            produced[id(out)] = (module, out)  # the tensor kept alive: its id stays unique

    def bn_hook(module: nn.Module, args: tuple) -> None:
        hit = produced.get(id(args[0])) if args else None
        if hit is not None and hit[1] is args[0]:
            seen.append((hit[0], module))

    handles = []
    for module in model.modules():
        if _foldable_conv(module):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.BatchNorm2d) and _bn_without_norm(module) is not None:
            handles.append(module.register_forward_pre_hook(bn_hook))
    device = next(model.parameters()).device
    probe = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    if channels_last:
        probe = probe.contiguous(memory_format=torch.channels_last)
    try:
        expected = model(probe)
    finally:
        for handle in handles:
            handle.remove()
    produced.clear()
    per_conv: dict[nn.Module, int] = {}
    per_bn: dict[nn.Module, int] = {}
    for conv, bn in seen:
        per_conv[conv] = per_conv.get(conv, 0) + 1
        per_bn[bn] = per_bn.get(bn, 0) + 1
    pairs = [(names[conv], names[bn]) for conv, bn in seen
             if per_conv[conv] == 1 and per_bn[bn] == 1 and bn.running_mean is not None
             and bn.running_var is not None and conv.out_channels == bn.num_features]
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        if channels_last:
            weight = weight.contiguous(memory_format=torch.channels_last)
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.weight = nn.Parameter(weight, requires_grad=False)
        conv.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
        parent, _, attr = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, attr, _bn_without_norm(bn))
    got = folded(probe)
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor) or got.shape != expected.shape \
            or not torch.allclose(got, expected, rtol=1e-3, atol=1e-3):
        return model, 0
    return folded, len(pairs)

