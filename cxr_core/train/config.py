"""The training configuration: one flat dataclass, read from TOML and/or options, saved resolved in the run.

Flat on purpose: every field is a command-line option of the same name (``image_size`` <-> ``--image-size``)
and a key of the run's ``config.toml``, so a run can be re-created from its directory alone.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from cxr_core.errors import CxrError

LOSSES = ("bce", "bce-posweight", "focal", "asl")
SAMPLERS = ("none", "oversample")
SCHEDULERS = ("cosine", "cosine-restarts", "plateau")
UNCERTAINTY = ("ones", "zeros", "ignore")
SCRATCH_LR = 2e-3  # AdamW from random init: with warmup, converges in few epochs (resnet10t on phantoms)
FINE_TUNE_LR = 3e-4  # from ImageNet / BiomedCLIP / local weights: keep the features


class ConfigError(CxrError):
    """A configuration value or file is not usable."""


@dataclass
class TrainConfig:
    # data
    data: str = ""
    format: str | None = None
    labels_csv: str | None = None
    uncertainty: str = "ignore"
    iu_mapping: str = "published"
    labels: list[str] = field(default_factory=list)  # empty: every finding of the data set's label space
    val_fraction: float = 0.1  # carved from the training part by patient when the data set has no val split
    split_seed: int = 0
    subset: int | None = None  # train on a label-stratified subset of this many training images
    cache: bool = True  # read the preprocessed uint8 cache instead of decoding images every epoch
    workers: int | None = None  # loader/preprocessing processes; None: one per spare core on GPU, 0 on CPU
    # model
    model: str = "efficientnet_b0"
    image_size: int | None = None  # None: the model's own input size
    pretrained: bool = False
    weights: str | None = None
    unfreeze_layers: int | None = None
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None  # None: 2e-3 from scratch, 3e-4 when starting from pretrained weights
    weight_decay: float = 1e-4
    loss: str = "bce"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    sampler: str = "none"
    mixup: float = 0.0  # Beta(a, a) mixing; 0 turns it off
    hflip: bool = False
    augment: bool = False  # small affine + exposure jitter; off by default: it slows convergence of short runs
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    restart_epochs: int = 10
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off (ViT fine-tuning usually wants 1.0)
    grad_accum: int = 1
    early_stopping: int = 0  # patience in epochs on val macro AUC; 0 turns it off
    amp: bool = True  # bf16 (or fp16) autocast on CUDA; ignored on CPU
    channels_last: bool = True
    max_steps_per_epoch: int | None = None
    # run
    seed: int = 0
    device: str = "auto"
    gpus: str | None = None
    name: str | None = None
    cv: int = 0
    epochs_grid: list[int] = field(default_factory=list)
    cv_fold: int | None = None  # set by cross-validation on its fold runs: validate on this fold

    def validate(self) -> TrainConfig:
        checks = [
            (bool(self.data), "data: a data set root is required (--data ROOT)"),
            (self.loss in LOSSES, f"loss: {self.loss!r} is not one of {', '.join(LOSSES)}"),
            (self.sampler in SAMPLERS, f"sampler: {self.sampler!r} is not one of {', '.join(SAMPLERS)}"),
            (self.scheduler in SCHEDULERS, f"scheduler: {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}"),
            (self.uncertainty in UNCERTAINTY, f"uncertainty: {self.uncertainty!r} is not one of {', '.join(UNCERTAINTY)}"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr is None or self.lr > 0, "lr must be > 0"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.mixup >= 0, "mixup must be >= 0"),
            (self.image_size is None or 16 <= self.image_size <= 2048, "image_size must be between 16 and 2048"),
            (self.cv == 0 or self.cv >= 2, "cv must be 0 (off) or >= 2 folds"),
            (self.cv == 0 or bool(self.epochs_grid), "cv needs --epochs-grid, e.g. 30,50,75"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid training config: {message}")
        return self

    def resolve(self) -> TrainConfig:
        """Fill the settings whose default depends on others; the run saves the resolved values."""
        if self.lr is None:
            from_weights = self.pretrained or bool(self.weights)
            return dataclasses.replace(self, lr=FINE_TUNE_LR if from_weights else SCRATCH_LR)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-safe: None values are left out (TOML has no null), defaults fill them back in."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with the non-None ``changes`` applied (command-line options over a TOML file)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config(path: Path) -> TrainConfig:
    """Read a TOML config; a ``[train]`` table is accepted as well as top-level keys."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return TrainConfig.from_dict(data.get("train", data), str(path))


def dump_config(config: TrainConfig) -> str:
    return tomli_w.dumps(config.to_dict())
