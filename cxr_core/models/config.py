"""ModelConfig: everything needed to rebuild a model and feed it correctly, as JSON-safe data.

The config travels inside checkpoints, so preprocessing (size, channels, normalisation) and Grad-CAM hooks
are decided by the model that was trained, never guessed at inference time (torchxrayvision #89/#152:
wrong normalisation gives near-identical predictions for every image).

Normalisation is always expressed on pixels scaled to [0, 1]: ``x_net = (x - mean) / std`` per channel.
Models trained on other scalings state them in those terms; torchxrayvision's ``x * 2048 - 1024`` (its
[-1024, 1024] range) is ``mean = 0.5, std = 1 / 2048``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from cxr_core.errors import CxrError

FAMILIES = ("timm", "biomedclip", "xrv")
MAX_INPUT_SIZE = 4096
MAX_LABELS = 10_000


@dataclass(frozen=True)
class ModelConfig:
    """An architecture with its label order, input geometry, normalisation and CAM hook.

    ``cam_layer`` is a dotted path from the model returned by ``create_model`` (``model.get_submodule``):
    the last spatial stage for CNNs; for ViTs the last block's ``norm1``, as pytorch-grad-cam's ViT recipe
    does, because the class token that is classified mixes all patch tokens only in that block's attention.
    ViT activations there are ``(B, prefix_tokens + h * w, C)``: drop ``prefix_tokens`` and reshape to
    ``vit_tokens = (h, w)``.
    """

    name: str
    family: str
    arch: str
    labels: tuple[str, ...]
    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    cam_layer: str = ""
    vit_tokens: tuple[int, int] | None = None
    prefix_tokens: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.vit_tokens is not None:
            object.__setattr__(self, "vit_tokens", (int(self.vit_tokens[0]), int(self.vit_tokens[1])))
        object.__setattr__(self, "extra", dict(self.extra))
        problem = self._problem()
        if problem:
            raise CxrError(f"model config {self.name!r}: {problem}")

    def _problem(self) -> str:
        if self.family not in FAMILIES:
            return f"unknown family {self.family!r} (known: {', '.join(FAMILIES)})"
        if not self.labels:
            return "no labels"
        duplicates = sorted({label for label in self.labels if self.labels.count(label) > 1})
        if duplicates:
            return f"duplicate labels: {', '.join(duplicates)}"
        # Bounds on every shape the metadata declares: a checkpoint from elsewhere must not make cxr allocate
        # 100000² images or a million-way head before anything is checked.
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or not 8 <= self.input_size <= MAX_INPUT_SIZE:
            return f"input_size must be a whole number from 8 to {MAX_INPUT_SIZE}, got {self.input_size!r}"
        if isinstance(self.in_chans, bool) or not isinstance(self.in_chans, int) or not 1 <= self.in_chans <= 4:
            return f"in_chans must be 1 to 4, got {self.in_chans!r}"
        if len(self.labels) > MAX_LABELS:
            return f"{len(self.labels)} labels (at most {MAX_LABELS})"
        if self.vit_tokens is not None and not all(1 <= t <= MAX_INPUT_SIZE for t in self.vit_tokens):
            return f"vit_tokens out of range: {self.vit_tokens}"
        if not 0 <= self.prefix_tokens <= 64:
            return f"prefix_tokens must be 0 to 64, got {self.prefix_tokens}"
        if not len(self.mean) == len(self.std) == self.in_chans:
            return f"mean/std need {self.in_chans} values (in_chans), got {len(self.mean)}/{len(self.std)}"
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or any(s <= 0 for s in self.std):
            return "mean must be finite and std values finite and positive"
        try:
            json.dumps(self.extra)
        except (TypeError, ValueError) as err:
            return f"extra is not JSON-safe ({err})"
        return ""

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists); ``from_dict`` restores an equal config."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CxrError(f"model config has unknown fields {', '.join(unknown)} (written by a newer cxr?)")
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise CxrError(f"model config lacks {', '.join(missing)}")
        return cls(**dict(data))

