"""How much a model's answer moves when the image is shown slightly differently (TTA) or its dropout is left on
(MC dropout): the epistemic part of its uncertainty, for choosing what a reviewer labels next.

:func:`view_probabilities` runs the model on each image under several views: the image as given, shrunk to 90 %
on the letterbox background (the engine's ``scale`` augmentation), shifted by 4 % of its side up-left and
down-right, optionally mirrored (``hflip``: anatomy is not left-right symmetric, so it is not a default), and, when
the model has dropout, ``mc_samples`` samples of the plain view with it sampling: dropout modules with p > 0 put in
training mode alone (BatchNorm stays in inference mode), or, for a timm classifier whose head drops out
functionally (``drop_rate > 0``), the features computed once and the head sampled (last-layer MC dropout). cxr
builds its timm models without dropout (timm's defaults), so for them this is TTA; a model trained with dropout
gets both. :func:`cxr_core.eval.uncertainty.mutual_information` turns
the (views, images, findings) probabilities into the BALD score per image and finding (Houlsby et al. 2011: the
entropy of the mean minus the mean entropy, in bits), which the ``disagreement`` ordering ranks.

Computed on request, never cached: a pool of a few thousand images at the model's size is seconds on a GPU and
a minute or two on a CPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cxr_core.data.dataset import PredictDataset
from cxr_core.errors import CxrError
from cxr_core.infer.engine import Predictor, _cores

if TYPE_CHECKING:
    from cxr_core.predictions import Predictions

VIEWS = ("identity", "scale", "shift")  # the default views; "hflip" when asked
VIEW_CHOICES = ("identity", "scale", "shift", "hflip")
SHIFT = 0.04  # of the image side
MC_SAMPLES = 8


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The model's dropout modules that drop something (p > 0)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def head_dropout(model: nn.Module) -> float:
    """A timm classifier's functional head dropout rate (0 when it has none or is not such a model)."""
    rate = getattr(model, "drop_rate", 0.0)
    if isinstance(rate, int | float) and rate > 0 and callable(getattr(model, "forward_features", None)) \
            and callable(getattr(model, "forward_head", None)):
        return float(rate)
    return 0.0


def has_dropout(model: nn.Module) -> bool:
    return bool(dropout_layers(model)) or head_dropout(model) > 0


@contextlib.contextmanager
def _sampling(layers: Sequence[nn.Module]) -> Iterator[None]:
    before = [layer.training for layer in layers]
    try:
        for layer in layers:
            layer.train(True)
        yield
    finally:
        for layer, mode in zip(layers, before, strict=True):
            layer.train(mode)


def _shifted(x: torch.Tensor, background: torch.Tensor, d: int) -> torch.Tensor:
    """``x`` moved by ``d`` pixels down-right (negative: up-left), the uncovered strip the letterbox background."""
    out = background.expand(x.shape[0], -1, x.shape[-2], x.shape[-1]).clone()
    if d > 0:
        out[..., d:, d:] = x[..., :-d, :-d]
    elif d < 0:
        out[..., :d, :d] = x[..., -d:, -d:]
    else:
        out.copy_(x)
    return out


def view_probabilities(predictor: Predictor, paths: Sequence[str], *, views: Sequence[str] = VIEWS,
                       mc_samples: int = MC_SAMPLES, cancel: threading.Event | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       lock: threading.Lock | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """``(probs, errors)``: probs (S, N, K) float32, one slice per view / dropout sample (NaN rows for unreadable
    images, whose reasons are in ``errors`` by index). MC dropout samples are added only when the model has dropout.
    ``lock``: held around each batch's forwards (not the whole run), so others sharing the model (the TUI's
    Grad-CAM) wait a batch, not the measurement."""
    unknown = [v for v in views if v not in VIEW_CHOICES]
    if unknown or not views:
        raise CxrError(f"unknown view {', '.join(unknown) or '(none given)'} (choose from {', '.join(VIEW_CHOICES)})")
    model = predictor.inference_model
    layers = dropout_layers(model) if mc_samples > 0 else []
    head = head_dropout(model) if mc_samples > 0 and not layers else 0.0
    sampled = bool(layers) or head > 0
    samples = sum(2 if view == "shift" else 1 for view in views) + (mc_samples if sampled else 0)
    n, k = len(paths), len(predictor.labels)
    out = np.full((samples, n, k), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    dataset = PredictDataset(list(paths), size=predictor.config.input_size, preprocess=predictor.config)
    normalizer = dataset.normalizer
    background = predictor._background
    d = max(1, round(SHIFT * predictor.config.input_size))
    batch = predictor.batch_size
    with ThreadPoolExecutor(min(8, _cores()), thread_name_prefix="cxr-views") as pool, torch.inference_mode():
        for start in range(0, n, batch):
            if cancel is not None and cancel.is_set():
                break
            items = dataset.batch(range(start, min(start + batch, n)), pool.map)
            good = [m for m, reason in enumerate(items["error"]) if not reason]
            for m, reason in enumerate(items["error"]):
                if reason:
                    errors[start + m] = reason
            if good:
                with lock or contextlib.nullcontext():
                    _views_of_batch(predictor, model, normalizer.batch(items["pixels"][good].to(predictor.device)),
                                    views, background, d, layers, head, mc_samples, out,
                                    np.array([start + m for m in good]))
            if progress:
                progress(min(start + batch, n), n)
    return out, errors


def _views_of_batch(predictor: Predictor, model: nn.Module, x: torch.Tensor, views: Sequence[str],
                    background: torch.Tensor, d: int, layers: Sequence[nn.Module], head: float, mc_samples: int,
                    out: np.ndarray, rows: np.ndarray) -> None:
    """One batch's probabilities under every view and dropout sample, into ``out[:, rows]``."""
    if predictor.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    shown: list[torch.Tensor] = []
    for view in views:
        if view == "identity":
            shown.append(x)
        elif view == "scale":
            shown.append(predictor._rescale(x))
        elif view == "hflip":
            shown.append(torch.flip(x, dims=[-1]))
        else:
            shown += [_shifted(x, background, d), _shifted(x, background, -d)]
    for s, view in enumerate(shown):
        out[s, rows] = _sigmoid(predictor, model, view)
    if layers:
        with _sampling(layers):
            for t in range(mc_samples):
                out[len(shown) + t, rows] = _sigmoid(predictor, model, x)
    elif head:
        with predictor.autocast():
            features = model.forward_features(x)
        was = model.training
        try:
            model.training = True  # the top module only: its head's F.dropout samples, nothing else changes
            for t in range(mc_samples):
                out[len(shown) + t, rows] = _sigmoid(predictor, model.forward_head, features)
        finally:
            model.training = was


def _sigmoid(predictor: Predictor, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    with predictor.autocast():
        return torch.sigmoid(model(x).float()).cpu().numpy()


def study_disagreement(predictor: Predictor, predictions: Predictions, studies: Sequence[str], base: Path, *,
                       cancel: threading.Event | None = None, progress: Callable[[int, int], None] | None = None,
                       lock: threading.Lock | None = None) -> tuple[np.ndarray, dict[str, str]]:
    """``(information, errors)``: (len(studies), K) BALD mutual information of each study under the model's
    views, a study's value for a finding the highest over its images (NaN for a study without readable images);
    ``errors``: image path (relative to ``base``) -> why it could not be read. Only the images of ``studies``
    (taken from ``predictions``, the model's predictions of the root at ``base``) are run."""
    from cxr_core.eval.uncertainty import mutual_information
    from cxr_core.predictions import Predictions

    if list(predictor.labels) != list(predictions.labels):
        raise CxrError("the model's findings are not those of the predictions: give the model that made them")
    wanted = set(studies)
    rows = [i for i, study in enumerate(predictions.study) if study in wanted]
    images = [predictions.image[i] for i in rows]
    views, failed = view_probabilities(predictor, [str(Path(base) / image) for image in images], cancel=cancel,
                                       progress=progress, lock=lock)
    information = mutual_information(views).astype(np.float32)
    per_image = Predictions(predictions.labels, information, [predictions.study[i] for i in rows], images,
                            [predictions.patient[i] for i in rows])
    return per_image.study_scores(list(studies)), {images[i]: reason for i, reason in failed.items()}
