"""Out of distribution: how far the images a model is asked about lie from the images it was trained on.

A checkpoint carries :class:`TrainingStats` of a sample of its training images (up to 512), two measures:

* ``feature``: the mean and Ledoit-Wolf shrunk covariance of the model's pooled features (the input of its
  classification head: every timm, BiomedCLIP and torchxrayvision model here has one); an image's distance is
  its Mahalanobis distance to them. Prediction taps the same forward pass that makes the probabilities.
* ``intensity``: the mean 32-bin histogram of the letterboxed uint8 images (what the model sees before its
  normalisation); an image's distance is the 1-D Wasserstein (earth mover's) distance of its histogram to that
  mean, in fractions of the grey range. The only measure when a model exposes no pooled features.

Each measure is calibrated, not a magic number: the stats keep the same distance for every image of the
training sample, each scored against stats fitted without it (5-fold cross-fitting, so the reference is what
unseen images from the training distribution score), and a new image is "beyond" when it lies past their
99th percentile. A batch of images is *far* when at least half of them lie beyond on some measure: images
from the training distribution put about 1 % there, so a majority is no accident. :class:`OodReport` gives
the per-image distances, the share beyond, the verdict and a one-line message naming the measure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

FEATURE = "feature"
INTENSITY = "intensity"
MEASURES = (FEATURE, INTENSITY)
DESCRIPTIONS = {
    FEATURE: "Mahalanobis distance of the model's pooled features",
    INTENSITY: "Wasserstein distance of the intensity histogram",
}
BINS = 32
FOLDS = 5
PERCENTILE = 99.0
FAR_SHARE = 0.5  # a batch is far when at least this share of its images lies beyond the training 99th percentile
MIN_IMAGES = 20  # fewer training images than this give no stats (a 99th percentile of 10 numbers means little)
TRAIN_SAMPLE = 512  # training images the stats are computed on
PREDICT_SAMPLE = 64  # images decoded again when cached predictions lack distances
FORMAT_VERSION = 1
MAX_FEATURES = 16_384


# -- the two distances ------------------------------------------------------------------------------------


def histograms(pixels: np.ndarray | torch.Tensor, bins: int = BINS) -> np.ndarray:
    """(B, bins) float64 normalised grey-level histograms of uint8 images (B, ...), on the device they are on."""
    if 256 % bins:
        raise ValueError(f"bins must divide 256, got {bins}")
    tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8)) if isinstance(pixels, np.ndarray) \
        else pixels
    n = len(tensor)
    if not n:
        return np.zeros((0, bins))
    flat = tensor.reshape(n, -1)
    if flat.device.type == "cpu":  # one bincount per image straight on uint8: no int64 copy (50x faster here)
        parts = [torch.bincount(row, minlength=256) for row in flat]
    else:  # on a GPU one kernel for many images (image index * 256 + value), a few million int64 at a time
        step = max(1, (1 << 22) // max(1, flat.shape[1]))
        parts = []
        for start in range(0, n, step):
            chunk = flat[start:start + step]
            offsets = torch.arange(len(chunk), device=chunk.device).unsqueeze(1) * 256
            parts.append(torch.bincount((chunk.long() + offsets).reshape(-1), minlength=len(chunk) * 256))
    counts = torch.cat(parts).reshape(n, bins, 256 // bins).sum(-1).double().cpu().numpy()
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def wasserstein(hists: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1-D earth mover's distance of each histogram (B, bins) to ``reference``, in fractions of the grey range."""
    cdf = np.cumsum(hists - reference, axis=-1)
    return np.abs(cdf[..., :-1]).sum(axis=-1) / hists.shape[-1]


def mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = np.asarray(features, dtype=np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, precision, centred), 0.0))


# -- the pooled features: the classification head's input -------------------------------------------------


def head_layer(model: nn.Module, config: Any) -> str:
    """The name of the module whose input is the model's pooled features (its classification head), or ""."""
    extra = getattr(config, "extra", None) or {}
    names = list(extra.get("head") or [])
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if not isinstance(module, nn.Identity):
            return name
    return ""


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(B, D) from whatever a head takes: (B, D) as is, token (B, T, D) or map (B, C, H, W) inputs averaged."""
    if features.dim() == 4:
        features = features.mean(dim=(2, 3))
    elif features.dim() == 3:
        features = features.mean(dim=1)
    return features.reshape(features.shape[0], -1)


class FeatureTap:
    """Keeps the input of a model's head during :meth:`capture`: the pooled features of a forward that runs anyway.

    Only the first forward inside a capture counts (test-time augmentation runs more views; the plain one comes
    first). ``always=True`` keeps the tap armed for good, for a ``torch.compile``d model (arming it per batch
    would recompile): then whatever ran since the last :meth:`take` is dropped at the next capture.
    """

    def __init__(self, model: nn.Module, config: Any, *, always: bool = False):
        self.layer = head_layer(model, config)
        self.always = always
        self.armed = always
        self.captured: list[torch.Tensor] = []
        self._handle = model.get_submodule(self.layer).register_forward_pre_hook(self._hook) if self.layer else None

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if self.armed and args and isinstance(args[0], torch.Tensor):
            self.captured.append(args[0].detach())

    @contextlib.contextmanager
    def capture(self) -> Iterator[FeatureTap]:
        self.captured.clear()
        self.armed = True
        try:
            yield self
        finally:
            self.armed = self.always

    def take(self, n: int) -> torch.Tensor | None:
        """The first forward's (n, D) features since :meth:`capture` began (float32), or None."""
        first = self.captured[0] if self.captured else None
        self.captured.clear()
        if first is None or first.shape[0] < n:
            return None
        return pooled(first[:n]).float()

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def image_features(model: nn.Module, config: Any, pixels: np.ndarray, *, device: torch.device | str = "cpu",
                   batch_size: int = 32, amp_dtype: torch.dtype | None = None,
                   channels_last: bool = False) -> tuple[np.ndarray | None, str]:
    """Pooled features (N, D) of letterboxed uint8 images (N, S, S) at the model's input size, and the layer they
    are the input of; ``(None, "")`` when the model has no head to tap."""
    from cxr_core.data.preprocess import Normalizer

    tap = FeatureTap(model, config)
    if not tap.layer:
        return None, ""
    device = torch.device(device)
    normalizer = Normalizer(config)
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(pixels), batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(pixels[start:start + batch_size], dtype=np.uint8))
                x = normalizer.batch(chunk.to(device))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                with tap.capture(), autocast:
                    model(x)
                features = tap.take(len(chunk))
                if features is None:
                    return None, ""
                out.append(features.cpu().numpy())
    finally:
        tap.remove()
        model.train(was_training)
    return (np.concatenate(out) if out else None), tap.layer


# -- the stats a checkpoint carries -----------------------------------------------------------------------


@dataclass
class TrainingStats:
    """Statistics of a model's training images, and the reference distribution of each distance."""

    histogram: np.ndarray  # (bins,) mean normalised intensity histogram
    intensity_reference: np.ndarray  # sorted cross-fitted intensity distances of the training sample
    feature_mean: np.ndarray | None = None  # (D,)
    feature_cov: np.ndarray | None = None  # (D, D), Ledoit-Wolf shrunk
    feature_reference: np.ndarray | None = None  # sorted cross-fitted Mahalanobis distances
    feature_layer: str = ""  # the module whose input the features are
    n_images: int = 0
    shrinkage: float | None = None
    _precision: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_features(self) -> bool:
        return self.feature_mean is not None and self.feature_cov is not None and self.feature_reference is not None

    @property
    def measures(self) -> tuple[str, ...]:
        """The distances an image gets, in the column order of :meth:`distances`."""
        return MEASURES if self.has_features else (INTENSITY,)

    def reference(self, measure: str) -> np.ndarray:
        ref = self.feature_reference if measure == FEATURE else self.intensity_reference
        if ref is None:
            raise KeyError(measure)
        return ref

    def thresholds(self) -> dict[str, tuple[float, float]]:
        """measure -> (95th, 99th percentile) of the training sample's distances."""
        return {m: (float(np.percentile(self.reference(m), 95)), float(np.percentile(self.reference(m), PERCENTILE)))
                for m in self.measures}

    def precision(self) -> np.ndarray:
        if "numpy" not in self._precision:
            cov = np.asarray(self.feature_cov, dtype=np.float64)
            try:
                self._precision["numpy"] = np.linalg.inv(cov)
            except np.linalg.LinAlgError:
                self._precision["numpy"] = np.linalg.pinv(cov, hermitian=True)
        return self._precision["numpy"]

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._precision:
            self._precision[key] = (torch.as_tensor(self.feature_mean, dtype=torch.float32, device=device),
                                    torch.as_tensor(self.precision(), dtype=torch.float32, device=device))
        return self._precision[key]

    def distances(self, pixels: np.ndarray | torch.Tensor, features: np.ndarray | torch.Tensor | None = None,
                  ) -> np.ndarray:
        """(B, len(measures)) float32 distances of uint8 images (B, S, S) and, when the stats have them, their
        pooled features (B, D) (None: the feature column is NaN). Runs on the device the inputs are on."""
        n = len(pixels)
        out = np.full((n, len(self.measures)), np.nan, dtype=np.float32)
        if not n:
            return out
        out[:, self.measures.index(INTENSITY)] = wasserstein(histograms(pixels, len(self.histogram)), self.histogram)
        if self.has_features and features is not None:
            if isinstance(features, np.ndarray):
                features = torch.from_numpy(features)
            features = features.float()
            if features.shape != (n, len(self.feature_mean)):
                return out
            mean, precision = self._on(features.device)
            centred = features - mean
            d2 = ((centred @ precision) * centred).sum(dim=1).clamp_min(0).sqrt()
            out[:, self.measures.index(FEATURE)] = d2.cpu().numpy()
        return out

    def report(self, distances: np.ndarray) -> OodReport:
        return build_report(self.measures, distances, self.thresholds())

    # -- inside a checkpoint: small numbers as JSON, arrays as tensors -------------------------------------

    def to_checkpoint(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta: dict[str, Any] = {"version": FORMAT_VERSION, "n_images": self.n_images, "bins": len(self.histogram),
                                "percentile": PERCENTILE, "feature_layer": self.feature_layer,
                                "shrinkage": self.shrinkage, "measures": list(self.measures),
                                "descriptions": {m: DESCRIPTIONS[m] for m in self.measures},
                                "thresholds": self.thresholds()}
        tensors = {"histogram": torch.from_numpy(np.asarray(self.histogram, dtype=np.float32)),
                   "intensity_reference": torch.from_numpy(np.asarray(self.intensity_reference, dtype=np.float32))}
        if self.has_features:
            cov = np.asarray(self.feature_cov, dtype=np.float32)
            upper = np.triu_indices(len(cov))
            tensors.update(feature_mean=torch.from_numpy(np.asarray(self.feature_mean, dtype=np.float32)),
                           feature_cov_upper=torch.from_numpy(np.ascontiguousarray(cov[upper])),  # symmetric: half
                           feature_reference=torch.from_numpy(np.asarray(self.feature_reference, dtype=np.float32)))
        return meta, tensors

    @classmethod
    def from_checkpoint(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> TrainingStats | None:
        """The stats back; None for a format this version does not know. ValueError when they are malformed."""
        if meta.get("version") != FORMAT_VERSION:
            return None
        try:
            arrays = {k: v.float().numpy().astype(np.float64) for k, v in tensors.items()}
            histogram = arrays["histogram"]
            intensity = arrays["intensity_reference"]
            if histogram.ndim != 1 or len(histogram) < 2 or 256 % len(histogram) or intensity.ndim != 1 \
                    or len(intensity) < 1:
                raise ValueError("intensity histogram or reference has the wrong shape")
            stats = cls(histogram, np.sort(intensity), n_images=int(meta.get("n_images", 0)),
                        feature_layer=str(meta.get("feature_layer") or ""),
                        shrinkage=None if meta.get("shrinkage") is None else float(meta["shrinkage"]))
            if "feature_mean" in arrays:
                mean, upper, ref = arrays["feature_mean"], arrays["feature_cov_upper"], arrays["feature_reference"]
                d = len(mean)
                if mean.ndim != 1 or not 1 <= d <= MAX_FEATURES or upper.shape != (d * (d + 1) // 2,) \
                        or ref.ndim != 1 or len(ref) < 1:
                    raise ValueError("feature mean, covariance or reference has the wrong shape")
                cov = np.zeros((d, d))
                cov[np.triu_indices(d)] = upper
                cov = cov + np.triu(cov, 1).T
                stats.feature_mean, stats.feature_cov, stats.feature_reference = mean, cov, np.sort(ref)
            checks = [stats.histogram, stats.intensity_reference, *(
                [stats.feature_mean, stats.feature_cov, stats.feature_reference] if stats.has_features else [])]
            if not all(np.isfinite(a).all() for a in checks):
                raise ValueError("non-finite values")
        except KeyError as err:
            raise ValueError(f"missing {err}") from None
        return stats


def compute_stats(pixels: np.ndarray, features: np.ndarray | None = None, *, layer: str = "", bins: int = BINS,
                  folds: int = FOLDS, seed: int = 0) -> TrainingStats:
    """Stats of training images: letterboxed uint8 (N, S, S) as the image cache holds them, and optionally their
    pooled features (N, D) (:func:`image_features`). The reference distances are cross-fitted over ``folds``."""
    pixels = np.asarray(pixels)
    n = len(pixels)
    if n < MIN_IMAGES:
        raise ValueError(f"{n} images: at least {MIN_IMAGES} are needed for out-of-distribution stats")
    folds = max(2, min(folds, n // 4))
    fold = np.random.default_rng(seed).permutation(n) % folds
    hists = histograms(pixels, bins)
    intensity = np.empty(n)
    for f in range(folds):
        held = fold == f
        intensity[held] = wasserstein(hists[held], hists[~held].mean(axis=0))
    stats = TrainingStats(hists.mean(axis=0), np.sort(intensity), n_images=n)
    if features is None:
        return stats
    features = np.asarray(features, dtype=np.float64).reshape(n, -1)
    if not np.isfinite(features).all() or features.shape[1] > MAX_FEATURES:
        return stats
    from sklearn.covariance import LedoitWolf

    distance = np.empty(n)
    for f in range(folds):
        held = fold == f
        fit = LedoitWolf().fit(features[~held])
        distance[held] = mahalanobis(features[held], fit.location_, fit.precision_)
    fit = LedoitWolf().fit(features)
    stats.feature_mean, stats.feature_cov, stats.feature_reference = fit.location_, fit.covariance_, np.sort(distance)
    stats.feature_layer, stats.shrinkage = layer, float(fit.shrinkage_)
    return stats


def stats_for_model(model: nn.Module, config: Any, pixels: np.ndarray, *, device: torch.device | str = "cpu",
                    batch_size: int = 32, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                    seed: int = 0) -> TrainingStats:
    """:func:`compute_stats` of training images with the model's own pooled features (intensity only when the
    model has no head to tap)."""
    features, layer = image_features(model, config, pixels, device=device, batch_size=batch_size,
                                     amp_dtype=amp_dtype, channels_last=channels_last)
    return compute_stats(pixels, features, layer=layer, seed=seed)


def sample_indices(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Up to ``k`` of ``range(n)``, sorted, drawn without replacement (all of them when ``n <= k``)."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


# -- the verdict -------------------------------------------------------------------------------------------


@dataclass
class OodMeasure:
    name: str  # "feature" or "intensity"
    description: str  # what the distance is, in words
    distances: np.ndarray  # (N,) per image; NaN where the image was not scored
    p95: float  # of the training sample's distances
    p99: float
    n: int  # images scored
    beyond: int  # of them, beyond p99

    @property
    def share_beyond(self) -> float:
        return self.beyond / self.n if self.n else 0.0

    @property
    def median(self) -> float | None:
        scored = self.distances[np.isfinite(self.distances)]
        return float(np.median(scored)) if len(scored) else None

    @property
    def far(self) -> bool:
        return self.n > 0 and self.share_beyond >= FAR_SHARE

    def to_json(self, per_image: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"measure": self.name, "description": self.description, "n": self.n,
                               "beyond_p99": self.beyond, "share_beyond_p99": round(self.share_beyond, 4),
                               "median": _round(self.median), "train_p95": _round(self.p95),
                               "train_p99": _round(self.p99), "far": self.far}
        if per_image:
            out["distances"] = [None if not np.isfinite(d) else round(float(d), 4) for d in self.distances]
        return out


@dataclass
class OodReport:
    """How far a batch of images lies from the training images; ``measure`` is the one the verdict rests on."""

    measures: dict[str, OodMeasure]
    measure: str
    far: bool
    message: str

    @property
    def n_images(self) -> int:
        return self.measures[self.measure].n

    @property
    def distances(self) -> np.ndarray:
        """Per image (row order of the predictions), the distance on :attr:`measure` (NaN: not scored)."""
        return self.measures[self.measure].distances

    @property
    def share_beyond(self) -> float:
        return self.measures[self.measure].share_beyond

    @property
    def description(self) -> str:
        return self.measures[self.measure].description

    def subset(self, rows: np.ndarray) -> OodReport:
        """The report over some of the images (a boolean mask or index array), same thresholds."""
        names = tuple(self.measures)
        return build_report(names, np.stack([self.measures[m].distances[rows] for m in names], axis=1),
                            {m: (self.measures[m].p95, self.measures[m].p99) for m in names})

    def to_json(self, per_image: bool = False) -> dict[str, Any]:
        return {"far": self.far, "measure": self.measure, "message": self.message, "n_images": self.n_images,
                "share_beyond_p99": round(self.share_beyond, 4),
                "measures": {m: v.to_json(per_image) for m, v in self.measures.items()}}


def build_report(names: Sequence[str], distances: np.ndarray, thresholds: Mapping[str, tuple[float, float]],
                 ) -> OodReport:
    distances = np.asarray(distances, dtype=np.float64).reshape(-1, len(names))
    measures = {}
    for k, name in enumerate(names):
        column = distances[:, k]
        scored = np.isfinite(column)
        p95, p99 = thresholds[name]
        measures[name] = OodMeasure(name, DESCRIPTIONS.get(name, name), column, p95, p99, int(scored.sum()),
                                    int((column[scored] > p99).sum()))
    far = [m for m in measures.values() if m.far]
    if far:
        primary = max(far, key=lambda m: (m.share_beyond, m.name == FEATURE)).name
    else:
        primary = next((m for m in names if measures[m].n), names[0])
    return OodReport(measures, primary, bool(far), _message(measures[primary]))


def _message(m: OodMeasure) -> str:
    verdict = "out of distribution" if m.far else "in distribution"
    where = f"the {PERCENTILE:.0f}th percentile of the training images' {m.name} distance ({m.description})"
    if m.n == 1:
        return f"{verdict}: the image lies {'beyond' if m.beyond else 'within'} {where}"
    return f"{verdict}: {m.share_beyond:.0%} of {m.n:,} images lie beyond {where}"


def _round(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)
