"""Start-up overlapped with reading: the model loads on a thread while the data set is indexed and its first
images are decoded.

A fresh ``cxr-tui predict`` spends seconds before its first image (on 2 cores here: torch 1.7 s, timm 2 s, building
the model and folding its BatchNorms), and 621 NIH films then take 11 s to predict: the start was a third of the
command. Indexing a folder and decoding a PNG need neither torch nor the model, only the model's input size, which
the checkpoint's safetensors header gives without torch (:func:`peek_input_size`). So :func:`predict_root_loading`

1. indexes the root (SQLite and the file system, no torch) before anything else runs in the process: alone it
   takes 0.09 s for 621 files here, beside the thread importing torch 1.2 s (the import holds the GIL);
2. starts loading the predictor on a thread (:class:`BackgroundLoad`: importing torch, reading the checkpoint,
   building, folding);
3. with the input size read from the header, decodes and letterboxes the first images in order on the spare cores until the
   predictor is ready (:class:`AheadDecoder`: helper processes started before anything else, running the same
   :func:`~cxr_core.data.preprocess.load_letterboxed` every prediction uses, so the pixels are identical; a file
   that fails there is simply decoded again by the engine, which reports it its own way);
4. predicts with those pixels already made (``predict_root(..., pixels=...)``).

Nothing is decoded ahead when the training image cache already holds the root at that size (prediction reads it
then), for a single image file, or under torchrun (every rank loads and indexes in step with the others).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cxr_core.data.sources import SourceOptions
    from cxr_core.infer.engine import Predictor, Progress
    from cxr_core.infer.studies import RootPredictions
    from cxr_core.store.index import StudyIndex

AHEAD_BYTES = 512 << 20  # at most this much decoded ahead (2,300 images at 224 px when the model is slow to load)


class BackgroundLoad:
    """``make(checkpoint_path)`` on a daemon thread, after the checkpoint is resolved and its model config read.

    :meth:`input_size` waits for the config only; :meth:`result` for the predictor (re-raising what loading raised,
    a ``CxrError`` for a bad checkpoint, in the caller's thread). ``ready`` is set when loading has ended either way.
    """

    def __init__(self, ref: str | os.PathLike[str], make: Callable[[Path], Predictor]):
        self.ref, self._make = ref, make
        self.ready = threading.Event()
        self._configured = threading.Event()
        self._size: int | None = None
        self._predictor: Predictor | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._load, name="cxr-load-model", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            from cxr_core.checkpoint import read_metadata
            from cxr_core.infer.loading import resolve_checkpoint
            from cxr_core.models.config import ModelConfig

            path = resolve_checkpoint(self.ref)
            try:
                self._size = ModelConfig.from_dict(read_metadata(path)["model_config"]).input_size
            except (TypeError, ValueError, KeyError):
                pass  # the loader says what is wrong with the config, in its own words
            self._configured.set()
            self._predictor = self._make(path)
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc
        finally:
            self._configured.set()
            self.ready.set()

    def input_size(self) -> int | None:
        """The model's input size once the checkpoint's header is read (None when loading failed before)."""
        self._configured.wait()
        return self._size

    def result(self) -> Predictor:
        self.ready.wait()
        if self._error is not None:
            raise self._error
        assert self._predictor is not None
        return self._predictor


def peek_input_size(ref: str | os.PathLike[str]) -> int | None:
    """The model's input size straight from a checkpoint file's (or run directory's) safetensors header, importing
    no torch; None when it is not that simple (a run id, an odd file): the loader's own reading then decides."""
    import json
    import struct

    from cxr_core.runs.rundir import CHECKPOINT_NAMES

    try:
        path = Path(ref).expanduser()
        if path.is_dir():
            path = next(folder / name for folder in (path / "checkpoints", path) for name in CHECKPOINT_NAMES
                        if (folder / name).is_file())
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 64 << 20:
                return None
            header = json.loads(fh.read(length))
        size = json.loads(header["__metadata__"]["cxr"])["model_config"]["input_size"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, StopIteration, struct.error):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= 4096 else None


def _letterboxed(path: str, size: int) -> np.ndarray | None:
    from cxr_core.data.preprocess import load_letterboxed

    try:
        return load_letterboxed(path, size)
    except Exception:  # noqa: BLE001 - the engine decodes it again and reports it its own way
        return None


def _ready() -> None:
    import cxr_core.data.preprocess  # noqa: F401 - a started helper has what decoding needs loaded


class AheadDecoder:
    """Helpers that decode images in order while the model loads.

    ``processes=True``: ``workers`` spawned processes (NumPy and Pillow only, no torch: ~0.3 s to start, started at
    once so they are ready when the paths are), because the thread importing torch and timm holds the GIL so much of
    the time that a decoding *thread* beside it managed 20-40 img/s where one core decodes 110 (68 vs 315 images in
    the same 3.6 s of loading efficientnet_b0 here). Spawned, not forked, so any thread the caller has is harmless.
    ``processes=False``: threads (for callers that may not start processes).
    """

    def __init__(self, workers: int, *, processes: bool = True):
        self.workers = max(1, workers)
        if processes:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool: Executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            for _ in range(self.workers):
                self._pool.submit(_ready)
        else:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cxr-ahead")

    def decode(self, paths: Sequence[str], size: int, until: threading.Event, *,
               max_bytes: int = AHEAD_BYTES) -> dict[str, np.ndarray]:
        """Letterboxed uint8 images for the first of ``paths``, in order, until ``until`` is set (or all are done,
        or ``max_bytes`` is reached). Files that fail are left out. Images finished when ``until`` is set are kept;
        the rest are not waited for."""
        made: dict[str, np.ndarray] = {}
        limit = min(len(paths), max(1, max_bytes // (size * size)))
        pending: dict[Future, str] = {}
        queued = 0
        try:
            while not until.is_set():
                while queued < limit and len(pending) < 4 * self.workers:
                    pending[self._pool.submit(_letterboxed, paths[queued], size)] = paths[queued]
                    queued += 1
                if not pending:
                    break
                done, _ = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
                for future in done:
                    path = pending.pop(future)
                    pixels = future.result()
                    if pixels is not None:
                        made[path] = pixels
        except BrokenExecutor:  # a helper died (killed, out of memory): what it did not decode, prediction will
            pending = {}
        for future, path in pending.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                pixels = future.result()
                if pixels is not None:
                    made[path] = pixels
        return {path: made[path] for path in paths[:queued] if path in made}  # in the order of ``paths``

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> AheadDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_ahead(paths: Sequence[str], size: int, until: threading.Event, *, threads: int,
                 max_bytes: int = AHEAD_BYTES) -> dict[str, np.ndarray]:
    """:meth:`AheadDecoder.decode` with ``threads`` threads (no processes)."""
    with AheadDecoder(threads, processes=False) as decoder:
        return decoder.decode(paths, size, until, max_bytes=max_bytes)


def spare_cores() -> int:
    """Decoding helpers beside the loading thread: every other core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def predict_root_loading(ref: str | os.PathLike[str], make: Callable[[Path], Predictor],
                         root: str | os.PathLike[str], *, fmt: str | None = None, split: str | None = None,
                         options: SourceOptions | None = None, index: StudyIndex | None = None,
                         progress: Progress | None = None, processes: bool = True) -> tuple[Predictor, RootPredictions]:
    """:func:`~cxr_core.infer.studies.predict_root` with the predictor ``make(path)`` loading meanwhile (see the
    module's doc). Returns the predictor and the predictions; ``RootPredictions.premade`` counts the images
    decoded before the model was ready. ``processes=False`` decodes ahead in threads (slower beside the loading
    thread, see :class:`AheadDecoder`)."""
    from cxr_core.data.image_cache import training_cache_pixels
    from cxr_core.data.sources import SourceOptions
    from cxr_core.data.study import image_base
    from cxr_core.images import is_single_image
    from cxr_core.store.index import StudyIndex

    if fmt is None and is_single_image(Path(root)):
        from cxr_core.infer.studies import predict_root

        predictor = BackgroundLoad(ref, make).result()
        return predictor, predict_root(predictor, root, progress=progress)
    with AheadDecoder(spare_cores(), processes=processes) as decoder:  # helpers start first, in the background
        own = index is None
        index = index or StudyIndex()
        try:  # before the loading thread: see the module's doc
            indexed = index.load(root, fmt, options or SourceOptions(), split=split)
        finally:
            if own:
                index.close()
        loading = BackgroundLoad(ref, make)
        size = peek_input_size(ref) or loading.input_size()
        ahead: dict[str, np.ndarray] = {}
        if size is not None and not loading.ready.is_set():
            base = image_base(indexed.root)
            studies = [s for s in indexed.studies if split is None or s.split == split]
            relpaths = [image.path for s in studies for image in s.images]
            if training_cache_pixels(base, relpaths, size) is None:  # else prediction reads that cache: no decoding
                ahead = decoder.decode([str(base / rel) for rel in relpaths], size, loading.ready)
    predictor = loading.result()
    from cxr_core.infer.studies import predict_root

    return predictor, predict_root(predictor, indexed, split=split, progress=progress, pixels=ahead or None)
