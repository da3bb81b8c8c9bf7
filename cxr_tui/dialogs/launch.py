"""LaunchForm: the settings of a new training run, validated into a TrainConfig before the job starts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from cxr_core.data import SOURCES
from cxr_core.errors import CxrError
from cxr_core.models import list_models
from cxr_core.text import visible
from cxr_core.train import LOSSES, ConfigError, TrainConfig


class LaunchForm(ModalScreen[TrainConfig | None]):
    """The settings of a new training run; dismisses with a resolved, validated TrainConfig (or None)."""

    DEFAULT_CSS = """
    LaunchForm { align: center middle; }
    LaunchForm > Vertical { width: 76; max-width: 100%; height: auto; max-height: 100%;
                            border: round $primary; background: $surface; padding: 0 1; }
    LaunchForm #launch-title { text-style: bold; height: 1; }
    LaunchForm Grid { grid-size: 2; grid-columns: 14 1fr; grid-rows: 1; grid-gutter: 0 1; height: auto; }
    LaunchForm #launch-error { color: $error; height: auto; min-height: 1; }
    LaunchForm #launch-buttons { height: 1; align-horizontal: right; }
    LaunchForm Button { margin-left: 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel"),
                                             Binding("ctrl+s", "submit", "Start run")]

    def __init__(self, root: Path | None = None, models: Sequence[str] | None = None):
        super().__init__()
        self.root = root
        self.models = list(models) if models else list_models(include_tiny=False)

    def compose(self) -> ComposeResult:
        defaults = TrainConfig()
        model = defaults.model if defaults.model in self.models else self.models[0]
        with Vertical():
            yield Static("New training run", id="launch-title")
            with Grid():
                yield Label("data root")
                yield Input(str(self.root or ""), placeholder="data set root (as for `data index`)", id="data",
                            compact=True)
                yield Label("format")
                yield Select([("detect", "auto"), *((name, name) for name in SOURCES)], value="auto",
                             allow_blank=False, id="format", compact=True)
                yield Label("model")
                yield Select([(name, name) for name in self.models], value=model, allow_blank=False, id="model",
                             compact=True)
                yield Label("image size")
                yield Input(placeholder="the model's own", type="integer", id="image-size", compact=True)
                yield Label("epochs")
                yield Input(str(defaults.epochs), type="integer", id="epochs", compact=True)
                yield Label("batch size")
                yield Input("" if defaults.batch_size is None else str(defaults.batch_size),
                            placeholder="auto (32 on a CPU; by model on a GPU)", type="integer", id="batch-size",
                            compact=True)
                yield Label("learning rate")
                yield Input(placeholder="auto (2e-3 from scratch, 3e-4 from weights)", type="number", id="lr",
                            compact=True)
                yield Label("loss")
                yield Select([(name, name) for name in LOSSES], value=defaults.loss, allow_blank=False, id="loss",
                             compact=True)
                yield Label("weights file")
                yield Input(placeholder="optional: .safetensors / .pth / .bin", id="weights", compact=True)
                yield Label("GPUs")
                yield Input("1", type="integer", id="gpus", compact=True,
                            tooltip="0: CPU; 1: one GPU; more: one process per GPU (torchrun, DDP)")
                yield Label("name")
                yield Input(placeholder="optional: appended to the run id", id="name", compact=True)
                yield Label("reviews")
                yield Checkbox("train on reviewers' decisions too", value=False, id="with-reviews", compact=True,
                               tooltip="accept = positive, reject = negative, uncertain = masked; never test studies")
            yield Static("", id="launch-error", markup=False)
            with Horizontal(id="launch-buttons"):
                yield Button("Start", id="start", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def config(self) -> TrainConfig:
        """The form as a resolved, validated config; a ConfigError says which field is wrong."""
        data = self._text("data")
        if not data:
            raise ConfigError("data: a data set root is required")
        root = Path(data).expanduser().resolve()
        if not root.exists():
            raise ConfigError(f"data: {root} does not exist")
        weights = self._text("weights")
        if weights:
            weights = str(Path(weights).expanduser().resolve())
            if not Path(weights).is_file():
                raise ConfigError(f"weights: {weights} is not a file")
        gpus = self._number("gpus", int)
        gpus = 1 if gpus is None else gpus
        if gpus < 0:
            raise ConfigError("GPUs must be 0 (CPU) or more")
        fmt, model = self.query_one("#format", Select).value, self.query_one("#model", Select).value
        config = TrainConfig(
            data=str(root), format=None if fmt == "auto" else str(fmt), model=str(model),
            image_size=self._number("image-size", int), epochs=self._number("epochs", int, required=True),
            batch_size=self._number("batch-size", int), lr=self._number("lr", float),
            loss=str(self.query_one("#loss", Select).value), weights=weights or None,
            device="cpu" if gpus == 0 else "auto", gpus=",".join(map(str, range(gpus))) if gpus > 1 else None,
            name=self._text("name") or None, with_reviews=self.query_one("#with-reviews", Checkbox).value,
        )
        return config.resolve().validate()

    def _text(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value.strip()

    def _number(self, field: str, kind: type, required: bool = False) -> Any:
        text = self._text(field)
        label = field.replace("-", " ")
        if not text:
            if required:
                raise ConfigError(f"{label}: a value is required")
            return None
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{label}: {text!r} is not a {'whole ' if kind is int else ''}number") from None

    def show_error(self, message: str) -> None:
        self.query_one("#launch-error", Static).update(visible(f"⚠ {message}"))

    def action_submit(self) -> None:
        try:
            config = self.config()
        except CxrError as exc:
            self.show_error(str(exc))
            return
        self.dismiss(config)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#start")
    def _start(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.action_cancel()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_submit()
