"""Grad-CAM for every registered model (CNNs and ViTs), mapped back to the original film, and overlays.

The Grad-CAM math comes from torchcam (``torchcam.methods.GradCAM``): it hooks ``config.cam_layer``, takes the
gradient of the chosen logits with ``torch.autograd.grad`` (so nothing accumulates in ``param.grad``), weights
each channel by its mean gradient and keeps the ReLU of the weighted sum. torchcam imports in a few
milliseconds once torch is loaded and pulls in neither scikit-learn nor rich; pytorch-grad-cam does both
(~6.5 s, and cxr_core must never load rich), so it is not used.

ViTs. torchcam expects the hooked output to be (B, C, H, W); a ViT block's ``norm1`` gives tokens
(B, prefix + h * w, C). torchcam 0.5 accepts a ``reshape_transform`` that it applies to the activations *and*
to the gradients, so the token path is: drop the prefix (class/register) tokens, reshape to the patch grid,
move channels first (:func:`tokens_to_grid`). ``tests/unit/test_cam.py`` checks the result against a
hand-written Grad-CAM on the raw tokens, for a CNN and for a ViT, so a torchcam change that breaks the
reshape path fails a test rather than a picture. A token count that does not match the grid (wrong
``prefix_tokens``, register tokens, another patch size) raises a :class:`CxrError` naming the numbers
(pytorch-grad-cam #483/#511 fail with an opaque reshape error instead).

Hooks (torchcam's memory leak class of bug, pytorch-grad-cam #78): :class:`CamExtractor` registers them on
``__enter__`` and removes them on ``__exit__``; between calls they are disabled and the stored activations,
gradients and graph references are dropped, so a model used for plain predictions in between keeps nothing.

Geometry: :func:`cam_for_image` letterboxes and normalises exactly as training did
(:func:`cxr_core.data.preprocess.letterbox` and the dataset normaliser), then crops the letterbox padding off the
map and resizes it to the original (H, W), so the map lines up with the film and with NIH box coordinates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxr_core.data.preprocess import Normalizer, letterbox, letterbox_geometry
from cxr_core.errors import CxrError
from cxr_core.models.config import ModelConfig
from cxr_core.outputs import write_cam_png

__all__ = [
    "CamExtractor",
    "cam_for_image",
    "class_index",
    "letterbox_geometry",
    "overlay",
    "save_overlay",
    "to_uint8",
    "tokens_to_grid",
    "unletterbox",
]


def tokens_to_grid(tokens: Tensor, prefix_tokens: int, grid: tuple[int, int]) -> Tensor:
    """ViT tokens (B, prefix + h * w, C) -> (B, C, h, w): the prefix tokens are dropped, patches laid out row-major."""
    if tokens.ndim != 3:
        raise CxrError(f"expected ViT tokens (batch, tokens, channels) at the CAM layer, got shape {tuple(tokens.shape)}")
    batch, count, channels = tokens.shape
    rows, cols = grid
    if count - prefix_tokens != rows * cols:
        raise CxrError(f"the CAM layer gives {count} tokens; {prefix_tokens} prefix tokens + a {rows}x{cols} patch grid "
                       f"would be {prefix_tokens + rows * cols} (check prefix_tokens and the input size)")
    return tokens[:, prefix_tokens:, :].reshape(batch, rows, cols, channels).permute(0, 3, 1, 2)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block, every submodule's previous mode restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class CamExtractor:
    """Grad-CAM maps for batches, for a model built by :func:`cxr_core.models.create_model` (or any model + config).

    Use as a context manager: hooks exist only inside the ``with`` block::

        with CamExtractor(model) as cams:
            maps = cams.compute(batch, [2, 0, 5])   # (B, H, W) float32 in [0, 1], one finding per image

    ``batch`` is preprocessed the way the config says (letterboxed, normalised, ``in_chans`` channels).
    Each call runs the model once in eval mode with gradients enabled, then one backward pass per class
    requested; every module's train/eval mode is restored and no parameter gradient is left behind.
    After a call, :attr:`scores` holds the logits (B, K) of that forward pass, so a caller that also wants
    predictions needs no second pass.

    Hooks see every forward of the model while :meth:`compute` runs: do not run the same model in another
    thread at the same time (hold the lock that guards the model, if it is shared).
    """

    def __init__(self, model: nn.Module, config: ModelConfig | None = None):
        config = config if config is not None else getattr(model, "cxr_config", None)
        if not isinstance(config, ModelConfig):
            raise CxrError("CamExtractor needs the model's ModelConfig (model.cxr_config or the config argument)")
        if not config.cam_layer:
            raise CxrError(f"{config.name}: its config names no CAM layer")
        try:
            model.get_submodule(config.cam_layer)
        except AttributeError:
            raise CxrError(f"{config.name}: the model has no layer {config.cam_layer!r} for Grad-CAM") from None
        self.model = model
        self.config = config
        self.scores: Tensor | None = None
        self._grid = config.vit_tokens
        self._cam: Any = None

    @property
    def is_vit(self) -> bool:
        return self.config.vit_tokens is not None

    def __enter__(self) -> CamExtractor:
        from torchcam.methods import GradCAM

        if self._cam is not None:
            raise RuntimeError("CamExtractor is already entered")
        reshape = (lambda tokens: tokens_to_grid(tokens, self.config.prefix_tokens, self._grid)) if self.is_vit else None
        self._cam = GradCAM(self.model, self.config.cam_layer, enable_hooks=False, reshape_transform=reshape)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._cam is not None:
            try:
                self._cam.remove_hooks()
            finally:
                self._cam.reset_hooks()
                self._cam = None
        self.scores = None

    def compute(self, batch: Tensor, classes: Sequence[int] | int) -> np.ndarray:
        """One map per image: (B, H, W) float32 in [0, 1] at the batch's spatial size.

        ``classes`` is one class index for the whole batch or one per image (a batch may explain different
        findings). Maps are normalised per image to [0, 1]; an image with no positive evidence gets zeros.
        """
        size = batch.shape[0]
        if isinstance(classes, (int, np.integer)):
            index: int | list[int] = self._check_class(int(classes))
        else:
            index = [self._check_class(int(c)) for c in classes]
            if len(index) != size:
                raise CxrError(f"{len(index)} class indices for a batch of {size} images")
        return self._run(batch, [index])[:, 0]

    def compute_many(self, batch: Tensor, classes: Sequence[int]) -> np.ndarray:
        """Maps of several classes for every image: (B, len(classes), H, W), one forward, one backward per class."""
        indices = [self._check_class(int(c)) for c in classes]
        if not indices:
            raise CxrError("no classes to explain")
        return self._run(batch, list(indices))

    def _check_class(self, index: int) -> int:
        if not 0 <= index < self.config.num_classes:
            raise CxrError(f"{self.config.name}: class index {index} is outside 0..{self.config.num_classes - 1}")
        return index

    def _run(self, batch: Tensor, targets: list[int | list[int]]) -> np.ndarray:
        if self._cam is None:
            raise RuntimeError("use CamExtractor as a context manager: `with CamExtractor(model) as cams: ...`")
        if batch.ndim != 4:
            raise CxrError(f"expected a batch (B, C, H, W), got shape {tuple(batch.shape)}")
        height, width = batch.shape[-2:]
        if self.is_vit:
            assert self.config.vit_tokens is not None
            patch = self.config.input_size // self.config.vit_tokens[0]
            self._grid = (height // patch, width // patch)
        parameter = next(self.model.parameters(), None)
        device = parameter.device if parameter is not None else batch.device
        maps = []
        cam = self._cam
        try:
            # Callers may sit in no_grad or inference_mode (the predictor does): both are lifted here only.
            with _eval_mode(self.model), torch.inference_mode(False), torch.enable_grad():
                # The input requires grad so the graph reaches the CAM layer even when every parameter is frozen
                # (BiomedCLIP with unfreeze_layers=0); gradients go through autograd.grad, never into .grad.
                # clone(): an inference-mode tensor cannot take part in autograd.
                x = batch.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
                cam.enable_hooks()
                scores = self.model(x)
                cam.disable_hooks()
                if not isinstance(scores, Tensor) or scores.ndim != 2:
                    raise CxrError(f"{self.config.name}: expected logits (B, K) from the model for Grad-CAM")
                for n, target in enumerate(targets):
                    raw = cam(class_idx=target, scores=scores, normalized=False, retain_graph=n + 1 < len(targets))[0]
                    maps.append(raw.float())
                self.scores = scores.detach()
        finally:
            cam.disable_hooks()
            cam.reset_hooks()
        with torch.no_grad():
            stacked = torch.stack(maps, dim=1)  # (B, T, h, w)
            up = F.interpolate(stacked, size=(height, width), mode="bilinear", align_corners=False)
            return _normalise(up).cpu().numpy().astype(np.float32, copy=False)


def _normalise(maps: Tensor) -> Tensor:
    """Min-max per map over the last two axes; maps with no spread (all zero, constant, NaN) become zeros."""
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    spread = maps.amax(dim=(-2, -1), keepdim=True) - low
    ok = spread > 1e-12
    return torch.where(ok, (maps - low) / torch.where(ok, spread, torch.ones_like(spread)), torch.zeros_like(maps))


def unletterbox(square: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (S, S) map on the letterboxed image -> (height, width) on the original: padding cropped, resized bilinearly."""
    size = square.shape[-1]
    if square.ndim != 2 or square.shape[0] != size:
        raise ValueError(f"expected a square (S, S) map, got shape {square.shape}")
    top, left, new_h, new_w = letterbox_geometry(height, width, size)
    inner = torch.from_numpy(np.ascontiguousarray(square[top:top + new_h, left:left + new_w], dtype=np.float32))
    out = F.interpolate(inner[None, None], size=(height, width), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A grayscale image as uint8: uint8 unchanged, uint16 keeps its top 8 bits (as ``XRay.as_uint8``),
    floats are read as [0, 1] (clipped)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise CxrError(f"expected a grayscale (H, W) image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)
    raise CxrError(f"unsupported image dtype {image.dtype} (use uint8, uint16 or float in [0, 1])")


def class_index(config: ModelConfig, finding: str | int) -> int:
    """The output index of ``finding`` (exact name, else ignoring case, spaces and underscores)."""
    if isinstance(finding, (int, np.integer)):
        if not 0 <= int(finding) < config.num_classes:
            raise CxrError(f"{config.name}: class index {finding} is outside 0..{config.num_classes - 1}")
        return int(finding)
    if finding in config.labels:
        return config.labels.index(finding)

    def key(name: str) -> str:
        return " ".join(name.replace("_", " ").split()).casefold()

    matches = [i for i, label in enumerate(config.labels) if key(label) == key(finding)]
    if len(matches) == 1:
        return matches[0]
    raise CxrError(f"{config.name} does not predict {finding!r}; its labels: {', '.join(config.labels)}")


def cam_for_image(model: nn.Module, config: ModelConfig | None, image: np.ndarray, finding: str | int) -> np.ndarray:
    """The Grad-CAM of ``finding`` for one grayscale image, in the image's own geometry: (H, W) float32 in [0, 1].

    The image is preprocessed as in training (letterbox to ``config.input_size``, scale, replicate to
    ``in_chans``, normalise); the map is cropped to the letterbox's image area and resized to (H, W), then
    normalised again (the maximum may have been in the padding). ``config`` defaults to ``model.cxr_config``.
    """
    config = config if config is not None else getattr(model, "cxr_config", None)
    if not isinstance(config, ModelConfig):
        raise CxrError("cam_for_image needs the model's ModelConfig")
    pixels = to_uint8(image)
    index = class_index(config, finding)
    batch = Normalizer(config)(letterbox(pixels, config.input_size))[None]
    with CamExtractor(model, config) as cams:
        square = cams.compute(batch, index)[0]
    height, width = pixels.shape
    mapped = unletterbox(square, height, width)
    return _normalise(torch.from_numpy(mapped)).numpy()


def cam_is_empty(cam: np.ndarray) -> bool:
    """True for a map with nothing on it (all zero after normalisation: the class score does not rise with any
    activation of the layer here, or the map had no spread). Such a map is reported, never drawn as a tint."""
    return not bool(np.any(np.nan_to_num(np.asarray(cam, dtype=np.float32)) > 0.0))


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """The grayscale image with ``cam`` (values in [0, 1]) blended over it as a colour map: (H, W, 3) uint8; an
    empty map (:func:`cam_is_empty`) leaves the image untinted.

    ``cam`` is resized (bilinear) to the image when their shapes differ. ``alpha`` is the colour map's weight.
    Colour maps are matplotlib's (``matplotlib.colormaps``; pyplot is never imported).
    """
    import matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise CxrError(f"overlay alpha must be between 0 and 1, got {alpha}")
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise CxrError(f"unknown colour map {colormap!r} (e.g. jet, turbo, inferno, viridis)") from None
    gray = to_uint8(image)
    heat = np.asarray(cam, dtype=np.float32)
    if heat.ndim != 2:
        raise CxrError(f"expected a (H, W) CAM, got shape {heat.shape}")
    if heat.shape != gray.shape:
        resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(heat))[None, None], size=gray.shape,
                                mode="bilinear", align_corners=False)
        heat = resized[0, 0].numpy()
    heat = np.clip(np.nan_to_num(heat), 0.0, 1.0)
    if cam_is_empty(heat):  # an empty map would paint the whole film in the colour map's lowest colour
        return np.repeat(gray[..., None], 3, axis=2)
    colour = cmap(heat)[..., :3].astype(np.float32)  # (H, W, 3) in [0, 1]
    base = (gray.astype(np.float32) / 255.0)[..., None]
    blended = (1.0 - alpha) * base + alpha * colour
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_overlay(path: str | os.PathLike[str], image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.4,
                 colormap: str = "jet") -> Path:
    """Write :func:`overlay` as a PNG, atomically (a reader never sees half a file) and marked as cam's own (so
    a later ``cam --out`` may replace it: :mod:`cxr_core.outputs`); returns the path."""
    return write_cam_png(path, overlay(image, cam, alpha=alpha, colormap=colormap))
