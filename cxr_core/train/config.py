"""The training configuration: one flat dataclass, read from TOML and/or options, saved resolved in the run.

Flat on purpose: every field is a key of the run's ``config.toml``, so a run can be re-created from its directory
alone, and a command-line option of the same name (``image_size`` <-> ``--image-size``) that ``cxr-tui train``
builds from the field: its help text and how the option is shown live in the field's metadata (:func:`setting`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from cxr_core.atomic import atomic_write_text
from cxr_core.errors import CxrError
from cxr_core.runs.rundir import RunDir, RunError
from cxr_core.text import name_from_text, name_text

LOSSES = ("bce", "bce-posweight", "focal", "asl")
SAMPLERS = ("none", "oversample")
SCHEDULERS = ("cosine", "cosine-restarts", "plateau")
UNCERTAINTY = ("ones", "zeros", "ignore")
SCRATCH_LR = 2e-3  # AdamW from random init: with warmup, converges in few epochs (resnet10t on phantoms)
FINE_TUNE_LR = 3e-4  # from ImageNet / BiomedCLIP / local weights: keep the features


class ConfigError(CxrError):
    """A configuration value or file is not usable."""


def setting(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING, **cli: Any) -> Any:
    """A :class:`TrainConfig` field with its help text in the field's metadata, where every front-end reads it.

    ``cli`` says how the command line shows the setting: ``flag`` (the option's name when it is not ``--`` and the
    field name with dashes), ``alias`` (an older name still accepted, not listed), ``hidden`` (accepted, not
    listed), ``path`` (a file or folder: made absolute, as a detached job does not run in the current folder),
    ``default_text`` (what a ``None`` default means) and ``internal`` (set by cxr itself: no option at all)."""
    return field(default=default, default_factory=factory, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    # data
    data: str = setting("", help="Data set root (as for `data index`).", path=True)
    format: str | None = setting(None, help="Data set layout; detected when omitted.")
    labels_csv: str | None = setting(None, help="Labels CSV for the folder layout (default: ROOT/labels.csv).",
                                     path=True)
    uncertainty: str = setting("ignore", help="CheXpert uncertain labels become: ones, zeros, or ignore (masked).")
    iu_mapping: str = setting("published", help="IU MeSH mapping: published (reproduces the published IU-35 counts) "
                                                "or clinical (docs/iu-labels.md).")
    labels: list[str] = setting(factory=list, flag="--findings", alias="--labels",
                                help="Comma-separated findings to train (default: every finding of the data set's "
                                     "label space).")
    val_fraction: float = setting(0.1, help="Validation patients carved from training when the data set has no val "
                                            "split.")
    split_seed: int = setting(0, help="Seed of the patient split that carves validation and of --subset.")
    subset: int | None = setting(None, help="Train on a label-stratified subset of N training images.")
    cache: bool = setting(True, help="Read a preprocessed uint8 cache instead of decoding images every epoch.")
    with_reviews: bool = setting(False, help="Overlay reviewers' decisions on the data set's labels (accept = "
                                             "positive, reject = negative, uncertain = masked; adjudicated, then "
                                             "majority, then latest); test-split studies never.")
    reviews_db: str | None = setting(None, help="With --with-reviews: the reviews database (default: the user data "
                                                "dir's).", path=True)
    reviews_upto: int | None = setting(None, help="With --with-reviews: decisions up to this action id (set when "
                                                  "the run is created, so a resumed run trains on the same labels).",
                                       internal=True)
    workers: int | None = setting(None, help="Data loader and preprocessing processes.",
                                  default_text="every spare core on a GPU, 0 on a CPU")
    # model
    model: str = setting("resnet10t", help="Registered model name (see `cxr-tui train --list-models`); the default "
                                           "learns from scratch in minutes (efficientnet_b0 or densenet121 "
                                           "with --pretrained for NIH-scale work).")
    image_size: int | None = setting(None, help="Input side in pixels.", default_text="the model's own")
    pretrained: bool = setting(False, help="Start from published ImageNet / hub weights (needs them cached or "
                                           "online).")
    weights: str | None = setting(None, help="Local weights file to start from (.safetensors, .pth, .bin); wins "
                                             "over --pretrained.", path=True)
    unfreeze_layers: int | None = setting(None, help="BiomedCLIP / ViT: the last transformer blocks to train.",
                                          default_text="the model's")
    # optimisation
    epochs: int = setting(10, help="Passes over the training set.")
    batch_size: int | None = setting(None, help="Images per batch (per process under torchrun).",
                                     default_text="32 on a CPU; on a GPU by model and image size, e.g. 256 for "
                                                  "efficientnet_b0 at 224, less on a small data set (50 steps "
                                                  "an epoch)")
    lr: float | None = setting(None, help="Peak learning rate (AdamW).",
                               default_text="2e-3 from scratch, 3e-4 from pretrained weights")
    weight_decay: float = setting(1e-4, help="AdamW weight decay (not on norms and biases).")
    loss: str = setting("bce", help=" | ".join(LOSSES))
    focal_alpha: float = setting(0.25, help="With --loss focal: the weight of positives, from 0 to 1.")
    focal_gamma: float = setting(2.0, help="With --loss focal: the focusing exponent (0 is plain BCE).")
    sampler: str = setting("none", help=f"{' | '.join(SAMPLERS)} (draw images with rare findings more often).")
    mixup: float = setting(0.0, help="Mixup Beta(a, a); 0 turns it off.")
    hflip: bool = setting(False, help="Random horizontal flips.")
    augment: bool = setting(False, help="Small affine and exposure jitter while training (slows the convergence "
                                        "of short runs).")
    scheduler: str = setting("cosine", help=" | ".join(SCHEDULERS))
    warmup_epochs: float = setting(1.0, help="With --scheduler cosine: linear warmup, in epochs (fractions allowed).")
    restart_epochs: int = setting(10, help="With --scheduler cosine-restarts: epochs per cycle.")
    grad_clip: float = setting(0.0, help="Max gradient norm; 0 turns clipping off (ViT fine-tuning usually wants "
                                         "1.0).")
    grad_accum: int = setting(1, help="Batches whose gradients add up to one optimiser step.")
    early_stopping: int = setting(0, help="Patience in epochs on val macro AUC; 0 turns it off.")
    amp: bool = setting(True, help="bf16 (or fp16) autocast on CUDA; ignored on CPU.")
    channels_last: bool = setting(True, help="channels_last memory layout on CUDA and CPU (faster convolutions).")
    compile: bool = setting(False, help="torch.compile the model (a minute of compiling first; pays on long GPU "
                                        "runs).")
    max_steps_per_epoch: int | None = setting(None, help="End every epoch after N steps (quick checks).",
                                              hidden=True)
    # run
    seed: int = setting(0, help="Seed of initialisation, sampling and augmentation.")
    device: str = setting("auto", help="auto | cpu | cuda | cuda:N | mps")
    gpus: str | None = setting(None, help="GPUs for a detached job, e.g. 0,1 (two or more: DDP).")
    name: str | None = setting(None, help="Appended to the run id.")
    cv: int = setting(0, help="k-fold cross-validation by patient: the number of folds (0: off).")
    epochs_grid: list[int] = setting(factory=list, help="With --cv: epoch counts to compare, e.g. 30,50,75.")
    cv_fold: int | None = setting(None, help="Validate on this fold (set by cross-validation on its fold runs).",
                                  internal=True)

    def validate(self) -> TrainConfig:
        """Check every setting against :data:`RULES` (its type and its range): the one schema that options,
        TOML files and the TUI's form all go through. A wrong value is one ConfigError naming the setting, the
        value and what is allowed."""
        hints = _hints()
        for f in fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value, hints[f.name])
            rule = RULES.get(f.name)
            if rule is not None and value is not None and not rule[0](value):
                raise ConfigError(f"invalid training config: {f.name} = {_shown(value)}: {rule[1]}")
        checks = [
            (bool(self.data), "data: a data set root is required (--data ROOT)"),
            (self.cv == 0 or bool(self.epochs_grid), "cv needs --epochs-grid, e.g. 30,50,75"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid training config: {message}")
        problem = device_problem(self.device)
        if problem:
            raise ConfigError(f"invalid training config: device = {self.device}: {problem}")
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
        """From a TOML table: unknown keys and values of the wrong type are one ConfigError naming ``source``;
        a list setting given as one string (``labels = "Effusion"``) is read as a comma-separated list."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            flags = {f.metadata["flag"].lstrip("-").replace("-", "_"): f.name for f in fields(cls) if "flag" in f.metadata}
            hints = [f" (in a config file --{k.replace('_', '-')} is `{flags[k]}`)" for k in unknown if k in flags]
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}{''.join(hints)}")
        hints = _hints()
        values = {}
        for name, value in data.items():
            if isinstance(value, str) and hints[name].startswith("list["):
                value = [part.strip() for part in value.split(",") if part.strip()]
                if hints[name] == "list[int]":
                    value = [_whole(name, part, source) for part in value]
            try:
                _check_type(name, value, hints[name])
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            values[name] = float(value) if hints[name].startswith("float") and isinstance(value, int) else value
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with the non-None ``changes`` applied (command-line options over a TOML file)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def device_problem(name: str) -> str | None:
    """Why the device ``name`` cannot train here (no CUDA GPU, fewer GPUs than its index, no MPS), or None. torch is
    imported only for a GPU name, so a settings mistake or ``cpu`` stays quick."""
    if name in ("auto", "cpu") or _DEVICE.fullmatch(name) is None:
        return None
    import torch

    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else "no Apple GPU (MPS) is available here"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible here (use cpu or auto)"
    count, index = torch.cuda.device_count(), int(name.partition(":")[2] or 0)
    if index >= count:
        return f"this machine has {count} CUDA GPU{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})"
    return None


def _finite(low: float, *, above: bool = False, high: float | None = None, below: bool = False):
    def ok(value: float) -> bool:
        if not math.isfinite(value) or value < low or (above and value == low):
            return False
        return high is None or value < high or (not below and value == high)
    return ok


MAX_EPOCHS = 100_000
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")

RULES: dict[str, tuple[Any, str]] = {
    "loss": (lambda v: v in LOSSES, f"one of {', '.join(LOSSES)}"),
    "sampler": (lambda v: v in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
    "scheduler": (lambda v: v in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
    "uncertainty": (lambda v: v in UNCERTAINTY, f"one of {', '.join(UNCERTAINTY)}"),
    "epochs": (lambda v: 1 <= v <= MAX_EPOCHS, f"a whole number from 1 to {MAX_EPOCHS:,}"),
    "batch_size": (lambda v: v >= 1, "a whole number >= 1"),
    "lr": (_finite(0.0, above=True), "a finite number > 0"),
    "weight_decay": (_finite(0.0), "a finite number >= 0"),
    "focal_alpha": (_finite(0.0, high=1.0), "a number from 0 to 1"),
    "focal_gamma": (_finite(0.0), "a finite number >= 0"),
    "mixup": (_finite(0.0), "a finite number >= 0 (0 turns mixup off)"),
    "warmup_epochs": (_finite(0.0), "a finite number of epochs >= 0"),
    "restart_epochs": (lambda v: v >= 1, "a whole number >= 1"),
    "grad_clip": (_finite(0.0), "a finite number >= 0 (0 turns clipping off)"),
    "grad_accum": (lambda v: v >= 1, "a whole number >= 1"),
    "early_stopping": (lambda v: v >= 0, "a whole number of epochs >= 0 (0 turns it off)"),
    "max_steps_per_epoch": (lambda v: v >= 1, "a whole number >= 1"),
    "val_fraction": (_finite(0.0, high=1.0, below=True), "a number from 0 up to (not including) 1"),
    "subset": (lambda v: v >= 1, "a whole number of images >= 1"),
    "workers": (lambda v: v >= 0, "a whole number >= 0 (0: load in the training process)"),
    "image_size": (lambda v: 16 <= v <= 2048, "a whole number of pixels from 16 to 2048"),
    "unfreeze_layers": (lambda v: v >= 0, "a whole number >= 0"),
    "seed": (lambda v: v >= 0, "a whole number >= 0"),
    "split_seed": (lambda v: v >= 0, "a whole number >= 0"),
    "cv": (lambda v: v == 0 or v >= 2, "0 (off) or a number of folds >= 2"),
    "epochs_grid": (lambda v: all(e >= 1 for e in v), "whole numbers of epochs >= 1"),
    "labels": (lambda v: all(name.strip() for name in v), "finding names, none empty"),
    "device": (lambda v: _DEVICE.fullmatch(v) is not None, "auto, cpu, cuda, cuda:N or mps"),
    "gpus": (lambda v: re.fullmatch(r"\s*\d{1,3}(\s*,\s*\d{1,3})*\s*", v) is not None,
             "GPU numbers separated by commas, e.g. 0,1"),
}
"""The range of every bounded setting (types come from the dataclass annotations): predicate, what is allowed."""


@functools.cache
def _hints() -> dict[str, str]:
    return {f.name: str(f.type).replace(" ", "") for f in fields(TrainConfig)}


_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _check_type(name: str, value: Any, hint: str) -> None:
    """``value`` against an annotation like ``int``, ``float|None`` or ``list[str]`` (bool is never a number)."""
    options = hint.split("|")
    if value is None:
        if "None" in options:
            return
        raise ConfigError(f"invalid training config: {name} needs a value")
    for option in options:
        if option.startswith("list["):
            inner = _TYPES[option[5:-1]]
            if isinstance(value, list) and all(isinstance(v, inner) and not isinstance(v, bool) for v in value):
                return
        elif option in _TYPES and isinstance(value, _TYPES[option]) and (option == "bool" or not isinstance(value, bool)):
            return
    words = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false",
             "list[str]": "a list of names", "list[int]": "a list of whole numbers", "None": "empty"}
    allowed = " or ".join(words.get(o, o) for o in options if o != "None")
    raise ConfigError(f"invalid training config: {name} = {_shown(value)}: expected {allowed}")


def _whole(name: str, text: str, source: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{source}: invalid training config: {name}: {text!r} is not a whole number") from None


def _shown(value: Any) -> str:
    from cxr_core.text import visible

    return visible(repr(value))


def load_config(path: Path) -> TrainConfig:
    """Read a TOML config; a ``[train]`` table is accepted as well as top-level keys. Path settings are read with
    :func:`~cxr_core.text.name_from_text` (how :func:`dump_config` writes a path that is not UTF-8)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    table = data.get("train", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [train] is not a table")
    paths = _path_settings()
    table = {k: name_from_text(v) if k in paths and isinstance(v, str) else v for k, v in table.items()}
    return TrainConfig.from_dict(table, str(path))


def dump_config(config: TrainConfig) -> str:
    """The config as TOML. TOML is UTF-8 text, so a path that is not UTF-8 (a hospital folder named in Latin-1) is
    written as :func:`~cxr_core.text.name_text` (its odd bytes as ``\\xNN``), which :func:`load_config` reads back."""
    paths = _path_settings()
    return tomli_w.dumps({k: name_text(v) if k in paths and isinstance(v, str) else v
                          for k, v in config.to_dict().items()})


def _path_settings() -> frozenset[str]:
    return frozenset(f.name for f in fields(TrainConfig) if f.metadata.get("path"))


def write_run_config(run: RunDir, config: TrainConfig) -> None:
    """Save the resolved config as the run's config.toml (atomically)."""
    atomic_write_text(run.config_path, dump_config(config))


def read_run_config(run: RunDir) -> TrainConfig:
    """The run's config.toml as a TrainConfig; a directory without one is not a run."""
    if not run.config_path.is_file():
        raise RunError(f"{run.path}: not a run directory (no config.toml)")
    return load_config(run.config_path)
