"""ThresholdsScreen: set each disease's threshold while its sensitivity, specificity, ROC point and agreement move.

Everything slow happens once, when the screen is built: :class:`~cxr_core.eval.operating_points.OperatingPoints`
sorts every class's scores, and a worker reads the reviewer decisions and each reviewed study's highest
probability per class. After that a key press is arithmetic: three binary searches per class,
one vectorised comparison over the reviewed studies, and an update of that class's row of cells. Nothing is
re-predicted, re-sorted or re-read.

The screen keeps its own working copy of the thresholds and tells the app about every change with
:class:`~cxr_tui.messages.ThresholdsChanged` (``saved_to`` set when it wrote the file), so the worklist's flags
follow; it never writes the workspace itself.

Predictions without truth still get a table, with a notice: no rates (they need labels), but the number and
share of images each threshold flags, exactly, so thresholds can be set by hand; the chart then shows the
distribution of the scores with the threshold on it instead of a ROC curve.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Static

from cxr_core.errors import CxrError
from cxr_core.eval import (
    UNKNOWN_SPLIT,
    OperatingPoints,
    ReviewedStudies,
    ThresholdStats,
    TunedOn,
    load_thresholds,
    reader_agreement,
    save_review,
    thresholds_path_for,
    tune,
    tuning_choices,
    tuning_rows,
)
from cxr_core.paths import data_dir, ensure_private_dir
from cxr_core.predictions import Predictions
from cxr_core.text import visible
from cxr_tui.messages import ThresholdsChanged
from cxr_tui.screens.base import CxrScreen, PaletteCommand
from cxr_tui.widgets.agreement import AgreementPanel
from cxr_tui.widgets.roc import RocChart

if TYPE_CHECKING:
    from cxr_tui.state import Workspace

FINE_STEP = 0.01
COARSE_STEP = 0.05
MANUAL = "manual"
"""The mode recorded for a threshold set with the arrow / bracket keys."""

AUTO_MODES: dict[str, tuple[str, str]] = {
    "f1": ("f1", "max F1"),
    "sens": ("sens=0.8", "sensitivity ≥ 0.80"),
    "youden": ("youden", "Youden's J"),
}
"""Action parameter -> (tune mode, words for notifications)."""

COLUMNS: tuple[tuple[str, str], ...] = (
    ("label", "Disease"),
    ("threshold", "Thresh"),
    ("sensitivity", "Sens"),
    ("specificity", "Spec"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("f1", "F1"),
    ("flagged", "Flagged"),
    ("support", "Pos"),
)
"""Table columns with labelled predictions: key (a ThresholdStats field, or label/threshold) and header."""
UNLABELLED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("label", "Disease"),
    ("threshold", "Thresh"),
    ("flagged", "Flagged"),
    ("share", "% flagged"),
)
"""Table columns without truth: only what a threshold does to the counts."""

RATE_KEYS = ("sensitivity", "specificity", "ppv", "npv", "f1")
LABEL_WIDTH = 16
MIN_CHART_ROWS = 10
MIN_TABLE_ROWS = 6
AGREEMENT_ROWS = 6
MIN_CHART_WIDTH = 60
UNDEFINED = "—"
UNSAVED_MARK = "*"
NO_PREDICTIONS = "No predictions yet: choose a model and a data set, then come back to tune thresholds."
NO_TRUTH = ("These predictions carry no labels: sensitivity, specificity, PPV, NPV and F1 need labelled data. "
            "Thresholds can still be set by hand; the table shows how many images each flags.")
FINE = Binding.Group("±0.01", compact=True)
COARSE = Binding.Group("±0.05", compact=True)
ARMED_NOTICE = "All diseases: press 1 (max F1), 2 (sensitivity ≥ 0.80) or 3 (Youden); a or esc cancels."


def format_rate(value: float) -> str:
    """A rate as the table shows it: three decimals, ``—`` when undefined (NaN)."""
    return UNDEFINED if value is None or math.isnan(value) else f"{value:.3f}"


def format_threshold(value: float, unsaved: bool = False) -> str:
    """A threshold as the table shows it, with ``*`` when it differs from the saved value."""
    return f"{value:.3f}" + (UNSAVED_MARK if unsaved else " ")


def default_thresholds_path(workspace: Workspace) -> Path:
    """Where thresholds are saved when the workspace names no file: :func:`thresholds_path_for` the model (where
    the app finds them on the next start and ``eval`` takes them by default)."""
    preds = workspace.predictions
    fingerprint = preds.meta.get("fingerprint") if preds is not None else None
    return thresholds_path_for(workspace.model or Path("unnamed"), fingerprint)


PALETTE = (
    PaletteCommand("Thresholds: max F1 (selected disease)", "auto('f1')", "Threshold that maximises F1"),
    PaletteCommand("Thresholds: sensitivity 0.80 (selected disease)", "auto('sens')",
                   "Highest threshold whose sensitivity is at least 0.80"),
    PaletteCommand("Thresholds: Youden's J (selected disease)", "auto('youden')",
                   "Maximise sensitivity + specificity - 1"),
    PaletteCommand("Thresholds: max F1 (all diseases)", "auto('f1', True)", "Every disease at its max-F1 threshold"),
    PaletteCommand("Thresholds: sensitivity 0.80 (all diseases)", "auto('sens', True)",
                   "Every disease at the highest threshold with sensitivity ≥ 0.80"),
    PaletteCommand("Thresholds: Youden's J (all diseases)", "auto('youden', True)",
                   "Every disease at its Youden threshold"),
    PaletteCommand("Thresholds: save", "save", "Write the thresholds file (with who and when)"),
    PaletteCommand("Thresholds: revert", "revert", "Back to the last saved or loaded thresholds"),
)
"""What the command palette offers beyond the keys: each automatic choice for one or every disease."""


class ThresholdsScreen(CxrScreen[None]):
    """Per-disease thresholds with their operating points, ROC curve and agreement with the reviewer."""

    HELP = """
## Thresholds

A study is flagged for a disease when its probability is **at or above** the threshold.

- **↑/↓** or **j/k**: choose a disease
- **←/→** or **-/+**: threshold down / up by 0.01
- **[ / ]** or **shift+←/→**: down / up by 0.05
- **1** max F1, **2** sensitivity ≥ 0.80 (the highest such threshold), **3** Youden's J
- **a** then **1/2/3**: the same for every disease (**a** or **esc** again cancels)
- **v** the split to tune on: validation by default, then the other splits, all, and test (marked in red,
  and recorded in the file: an evaluation on that split will say its thresholds were tuned there)
- **s** save (the file keeps who changed what, when, and on which split); **r** revert to the saved values

The chart is the ROC curve of the selected disease (x: 1 - specificity, y: sensitivity) with the current
threshold's point marked; without labels it shows the distribution of the scores and the threshold.
`*` marks a threshold that differs from the saved one. Sens, Spec, PPV, NPV and F1 are over the labelled
images; *Flagged* counts every image with a score; *Pos* is the number of labelled positives.
Agreement compares the model's flags per study (any image at or above the threshold) with the reviewer's
accept/reject decisions; uncertain ones are left out.
"""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left,minus", "step(-0.01)", "Threshold -0.01", group=FINE, priority=True, id="thresholds.down"),
        Binding("right,plus,equals_sign", "step(0.01)", "Threshold +0.01", group=FINE, priority=True,
                id="thresholds.up"),
        Binding("left_square_bracket,shift+left", "step(-0.05)", "Threshold -0.05", group=COARSE, priority=True,
                id="thresholds.coarse_down"),
        Binding("right_square_bracket,shift+right", "step(0.05)", "Threshold +0.05", group=COARSE, priority=True,
                id="thresholds.coarse_up"),
        Binding("1", "auto('f1')", "Max F1", id="thresholds.f1"),
        Binding("2", "auto('sens')", "Sens .8", id="thresholds.sens"),
        Binding("3", "auto('youden')", "Youden", id="thresholds.youden"),
        Binding("a", "arm_all", "Apply 1/2/3 to all diseases", show=False, id="thresholds.all"),
        Binding("v", "next_split", "Split", id="thresholds.split"),
        Binding("s", "save", "Save", id="thresholds.save"),
        Binding("r", "revert", "Revert", id="thresholds.revert"),
        Binding("escape", "back", "Back", id="thresholds.back"),
        Binding("j", "cursor(1)", "Next disease", show=False, id="thresholds.next"),
        Binding("k", "cursor(-1)", "Previous disease", show=False, id="thresholds.previous"),
    ]

    DEFAULT_CSS = """
    ThresholdsScreen {
        layout: vertical;
    }
    ThresholdsScreen #thresholds-status {
        height: 1;
        padding: 0 1;
        background: $panel;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    ThresholdsScreen #thresholds-notice {
        height: auto;
        max-height: 3;
        padding: 0 1;
        color: $text-warning;
        background: $warning-muted;
        display: none;
    }
    ThresholdsScreen #thresholds-notice.-shown {
        display: block;
    }
    ThresholdsScreen #thresholds-table {
        height: auto;
    }
    ThresholdsScreen #thresholds-detail {
        height: 1;
        padding: 0 1;
        color: $text-muted;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    ThresholdsScreen #thresholds-lower {
        height: 1fr;
    }
    ThresholdsScreen #thresholds-roc {
        width: 1fr;
        height: 1fr;
    }
    ThresholdsScreen #thresholds-agreement {
        width: 38;
        height: 1fr;
        padding: 0 1;
        border-left: vkey $panel;
    }
    ThresholdsScreen.-no-chart #thresholds-agreement {
        width: 1fr;
        border-left: none;
    }
    ThresholdsScreen.-no-chart #thresholds-roc {
        display: none;
    }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.predictions: Predictions | None = None
        """The rows tuned on (the chosen split of the workspace's predictions)."""
        self.split: str | None = None
        """The chosen split (None: the default of :func:`tuning_choices`); ``v`` moves through them."""
        self.tuned_on: TunedOn | None = None
        self.points: OperatingPoints | None = None
        self.thresholds: dict[str, float] = {}
        """The working thresholds, label -> value (what the table shows and ThresholdsChanged carries)."""
        self.saved: dict[str, float] = {}
        """The last saved (or, before any save, loaded) values: what ``r`` goes back to."""
        self.modes: dict[str, str] = {}
        """How each working threshold was chosen (``manual`` or a tune mode), recorded on save."""
        self.save_path: Path | None = None
        self.selected: str | None = None
        self.apply_to_all = False
        """Armed by ``a``: the next automatic choice applies to every disease."""
        self.reviewed: ReviewedStudies | None = None
        self.readers: dict = {}
        """finding -> ReaderAgreement among every reader of the root (the panel's readers line)."""
        self._notice: str | None = None
        self._stats: ThresholdStats | None = None
        self._source: tuple[int, Path | None] | None = None
        self._widths: dict[str, int] = {}

    @property
    def workspace(self) -> Workspace:
        return self.app.workspace

    def palette_commands(self) -> tuple[PaletteCommand, ...]:
        return PALETTE

    @property
    def has_truth(self) -> bool:
        return self.predictions is not None and self.predictions.truth is not None

    def compose(self) -> ComposeResult:
        yield Static(id="thresholds-status", markup=False)
        yield Static(id="thresholds-notice", markup=False)
        table: DataTable[Text] = DataTable(id="thresholds-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="thresholds-detail", markup=False)
        with Horizontal(id="thresholds-lower"):
            yield RocChart(id="thresholds-roc")
            yield AgreementPanel(id="thresholds-agreement")
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        self.watch(self.app, "predictions_version", lambda _: self.reload(), init=False)  # another model or root

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_layout)

    def _fit_layout(self) -> None:
        """Give the table the rows it needs, leaving the chart at least MIN_CHART_ROWS or hiding it.

        Below MIN_CHART_WIDTH columns, or when the chart would get too few rows, the chart is hidden and the
        agreement panel takes the space; the table then scrolls if it still does not fit.
        """
        if not self.is_attached:
            return
        table = self.query_one("#thresholds-table", DataTable)
        fixed = sum(self.query_one(selector).outer_size.height
                    for selector in ("#thresholds-status", "#thresholds-notice", "#thresholds-detail", Footer))
        space = self.size.height - fixed
        wanted = table.row_count + 1 + (1 if table.virtual_size.width > table.size.width > 0 else 0)
        chart = self.size.width >= MIN_CHART_WIDTH and space >= MIN_CHART_ROWS + MIN_TABLE_ROWS
        self.set_class(not chart, "-no-chart")
        table.styles.height = max(3, min(wanted, space - (MIN_CHART_ROWS if chart else AGREEMENT_ROWS)))

    def on_screen_resume(self) -> None:
        """Coming back (e.g. from a study): rebuild if the predictions or the file changed; re-read reviews."""
        if self._source is not None and self._source != self._workspace_source():
            self.reload()
        elif self.predictions is not None:
            self.load_reviews()

    def _workspace_source(self) -> tuple[int, Path | None]:
        return id(self.workspace.predictions), self.workspace.thresholds_path

    # -- building ------------------------------------------------------------------------------------------

    def reload(self) -> None:
        """Build everything from the workspace: operating points, working and saved thresholds, the table."""
        ws = self.workspace
        self._source = self._workspace_source()
        preds = ws.predictions
        if preds is not None:
            if self.split not in tuning_choices(preds):
                self.split = None
            choice = self.split or tuning_choices(preds)[0]
            preds, self.tuned_on = tuning_rows(preds, None if choice == UNKNOWN_SPLIT else choice)
            self.split = self.tuned_on.split
        self.predictions = preds
        self.reviewed = None
        table = self.query_one("#thresholds-table", DataTable)
        table.clear(columns=True)
        if preds is None:
            self.points = None
            self.query_one(RocChart).set_data(None, None)
            self.thresholds, self.saved, self.modes = {}, {}, {}
            self.selected = None
            self._set_notice(NO_PREDICTIONS)
            self._update_status()
            self._update_selection()
            return
        if preds.truth is not None:
            self.points = OperatingPoints.from_predictions(preds)
        else:
            self.points = OperatingPoints(preds.probs, None, labels=preds.labels)
        self.save_path = ws.thresholds_path or default_thresholds_path(ws)
        self.thresholds = {label: ws.threshold(label) for label in preds.labels}
        self.saved, self.modes = self._saved_values()
        self._stats = self.points.at(self.thresholds)
        self.query_one(RocChart).set_data(self.points, preds.probs)
        self._set_notice(None if self.has_truth else NO_TRUTH)
        width = min(LABEL_WIDTH, max(len(label) for label in preds.labels)) if preds.labels else LABEL_WIDTH
        # Fixed widths (a column first filled with "—" must still fit "0.160"), numbers padded to the right edge.
        self._widths = {key: width if key == "label" else self._column_width(key, header, len(preds))
                        for key, header in self.columns}
        for key, header in self.columns:
            table.add_column(Text(header if key == "label" else header.rjust(self._widths[key])), key=key,
                             width=self._widths[key])
        for k, label in enumerate(preds.labels):
            table.add_row(*self._row_cells(k), key=label)
        self.selected = preds.labels[0] if preds.labels else None
        table.move_cursor(row=0)
        table.focus()
        self.call_after_refresh(self._fit_layout)
        self._update_status()
        self._update_selection()
        self.load_reviews()

    def _saved_values(self) -> tuple[dict[str, float], dict[str, str]]:
        """The file's thresholds (where it has one for a label) over the working ones, and their modes."""
        saved = dict(self.thresholds)
        modes = dict.fromkeys(self.thresholds, MANUAL)
        if self.save_path is not None and self.save_path.is_file():
            try:
                stored = load_thresholds(self.save_path)
            except CxrError as err:
                self.notify(str(err), title="Thresholds file", severity="warning")
                return saved, modes
            for label, entry in stored.labels.items():
                if label in saved and entry.threshold is not None:
                    saved[label] = entry.threshold
                    if entry.threshold == self.thresholds[label]:
                        modes[label] = entry.mode or MANUAL
        return saved, modes

    @staticmethod
    def _column_width(key: str, header: str, n: int) -> int:
        """Cell width for any value the column can take: rates ``0.000``, thresholds ``0.000*``, counts up to n."""
        widest = {"threshold": len(format_threshold(0.0, True)), "share": len("100.0%")}.get(key)
        if widest is None:
            widest = len(str(n)) if key in ("flagged", "support") else len(format_rate(0.0))
        return max(len(header), widest)

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        return COLUMNS if self.has_truth else UNLABELLED_COLUMNS

    def _row_cells(self, k: int) -> list[Text]:
        """Row ``k``'s cells for the current columns, from the current stats."""
        label, stats = self.points.labels[k], self._stats
        unsaved = self.thresholds[label] != self.saved[label]
        scored = int(self.points.n - self.points.missing[k])
        values = {
            "threshold": format_threshold(self.thresholds[label], unsaved),
            "flagged": str(int(stats.flagged[k])),
            "support": str(int(stats.support[k])),
            "share": f"{100 * int(stats.flagged[k]) / scored:.1f}%" if scored else UNDEFINED,
        }
        values.update({key: format_rate(float(getattr(stats, key)[k])) for key in RATE_KEYS})
        cells = []
        for key, _ in self.columns:
            if key == "label":
                cells.append(Text(visible(label), overflow="ellipsis", no_wrap=True))
            else:
                cells.append(Text(values[key].rjust(self._widths[key]),
                                  style="bold" if key == "threshold" and unsaved else ""))
        return cells

    # -- changing thresholds -------------------------------------------------------------------------------

    def set_thresholds(self, values: dict[str, float], mode: str = MANUAL) -> None:
        """Set some labels' thresholds: recompute their stats (binary searches), update their rows, tell the app."""
        if self.points is None or not values:
            return
        for label, value in values.items():
            self.thresholds[label] = float(value)
            self.modes[label] = mode
        self._refresh_rows(list(values))
        self.app.post_message(ThresholdsChanged(dict(self.thresholds)))

    def _refresh_rows(self, labels: list[str]) -> None:
        self._stats = self.points.at(self.thresholds)
        table = self.query_one("#thresholds-table", DataTable)
        for label in labels:
            k = self.points.index(label)
            for (key, _), cell in zip(self.columns, self._row_cells(k), strict=True):
                if key != "label":
                    table.update_cell(label, key, cell)
        self._update_status()
        if self.selected in labels:
            self._update_selection()

    def action_step(self, delta: float) -> None:
        """Move the selected disease's threshold by ``delta``, kept within [0, 1]."""
        if self.selected is None:
            return
        value = min(1.0, max(0.0, round(self.thresholds[self.selected] + delta, 6)))
        self.set_thresholds({self.selected: value})

    def action_auto(self, which: str, everyone: bool = False) -> None:
        """Choose thresholds by a tuning mode, for the selected disease (or all when armed / ``everyone``)."""
        if self.points is None or self.selected is None:
            return
        mode, words = AUTO_MODES[which]
        everyone = everyone or self.apply_to_all
        self._arm(False)
        labels = list(self.points.labels) if everyone else [self.selected]
        choices = tune(self.points, mode, labels=labels)
        chosen = {c.label: c.threshold for c in choices if c.threshold is not None}
        skipped = [f"{c.label}: {c.reason}" for c in choices if c.threshold is None]
        self.set_thresholds(chosen, mode)
        if skipped:
            kept = "; ".join(skipped[:4]) + (f"; {len(skipped) - 4} more" if len(skipped) > 4 else "")
            self.notify(f"{words}: kept the current threshold ({kept})", title="Thresholds", severity="warning")
        elif everyone:
            self.notify(f"{words}: set for {len(chosen)} diseases", title="Thresholds")

    def action_arm_all(self) -> None:
        """Toggle "apply the next automatic choice to every disease"."""
        self._arm(not self.apply_to_all)

    def _arm(self, on: bool) -> None:
        self.apply_to_all = on
        self._show_notice()
        self.refresh_bindings()

    def action_revert(self) -> None:
        """Back to the last saved (or loaded) values."""
        changed = {label: value for label, value in self.saved.items() if self.thresholds.get(label) != value}
        if not changed:
            self.notify("Nothing to revert", title="Thresholds")
            return
        self.set_thresholds(changed)
        if self.save_path is not None and self.save_path.is_file():
            self.modes.update(self._saved_values()[1])
        self.notify(f"Reverted {len(changed)} threshold{'s' if len(changed) != 1 else ''}", title="Thresholds")

    def action_save(self) -> None:
        """Write the thresholds file (one history row per mode used, with the reviewer), then tell the app."""
        if self.points is None or self.save_path is None:
            return
        path = self.save_path
        ws = self.workspace
        try:
            if path.parent == data_dir() / "thresholds":
                ensure_private_dir(path.parent)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
            before = len(load_thresholds(path).history) if path.is_file() else -1
            source = str(self.predictions.meta.get("source") or ws.root or "")
            result = save_review(path, self.thresholds, self.points, mode=self.modes, who=ws.reviewer,
                                 predictions=source, tuned_on=self.tuned_on)
        except (CxrError, OSError) as err:
            self.notify(str(err), title="Thresholds not saved", severity="error", timeout=10)
            return
        self.saved = dict(self.thresholds)
        self._refresh_rows(list(self.thresholds))
        self.app.post_message(ThresholdsChanged(dict(self.thresholds), saved_to=path))
        if result is not None and len(result.history) > before:
            self.notify(f"Saved to {path}", title="Thresholds")
        else:
            self.notify(f"Unchanged: {path} already holds these thresholds", title="Thresholds")

    def action_next_split(self) -> None:
        """Tune on the next split (validation, the others, all, test), keeping the working thresholds."""
        preds = self.workspace.predictions
        if preds is None:
            return
        choices = tuning_choices(preds)
        if len(choices) < 2:
            self.notify("These predictions do not say which split each image is in", title="Thresholds")
            return
        working, modes, selected = dict(self.thresholds), dict(self.modes), self.selected
        self.split = choices[(choices.index(self.split) + 1) % len(choices)] if self.split in choices else choices[0]
        self.reload()
        self.thresholds.update({k: v for k, v in working.items() if k in self.thresholds})
        self.modes.update({k: v for k, v in modes.items() if k in self.modes})
        self._refresh_rows(list(self.thresholds))
        if selected in self.thresholds:
            self.query_one("#thresholds-table", DataTable).move_cursor(row=self.points.index(selected))
        if self.tuned_on is not None and self.tuned_on.includes_test:
            self.notify("Tuning on the test split: an evaluation on it will be optimistic, and the saved file says so",
                        title="Thresholds", severity="warning")

    def action_cursor(self, delta: int) -> None:
        table = self.query_one("#thresholds-table", DataTable)
        if table.row_count:
            table.move_cursor(row=max(0, min(table.row_count - 1, table.cursor_row + delta)))

    def action_back(self) -> None:
        if self.apply_to_all:
            self._arm(False)
        elif len(self.app.screen_stack) > 1:
            self.dismiss()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":  # let escape reach the app when there is nothing to cancel or pop
            return self.apply_to_all or (self.is_attached and len(self.app.screen_stack) > 1)
        if action in ("step", "auto", "arm_all", "save", "revert", "next_split"):
            return self.points is not None
        return True

    # -- selection: detail line, chart, agreement -------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#thresholds-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        label = event.row_key.value
        if label is not None and label != self.selected:
            self.selected = label
            self._update_selection()

    def _update_selection(self) -> None:
        self._update_detail()
        self._update_chart()
        self._update_agreement()

    def _update_detail(self) -> None:
        detail = self.query_one("#thresholds-detail", Static)
        if self.selected is None or self._stats is None:
            detail.update("")
            return
        k = self.points.index(self.selected)
        s = self._stats
        scored = int(self.points.n - self.points.missing[k])
        share = f" ({100 * int(s.flagged[k]) / scored:.1f}%)" if scored else ""
        text = (f"{visible(self.selected)} ≥ {self.thresholds[self.selected]:.3f}: flags {int(s.flagged[k])} of "
                f"{scored} images{share}")
        if s.labelled[k]:
            text += f" · TP {int(s.tp[k])} FP {int(s.fp[k])} TN {int(s.tn[k])} FN {int(s.fn[k])}"
        detail.update(text)

    def _update_chart(self) -> None:
        chart = self.query_one(RocChart)
        if self.selected is None or self.points is None or self._stats is None:
            chart.clear()
            return
        k = self.points.index(self.selected)
        chart.show(self.selected, self.thresholds[self.selected], float(self._stats.sensitivity[k]),
                   float(self._stats.specificity[k]), has_truth=self.has_truth)

    def _update_agreement(self) -> None:
        panel = self.query_one(AgreementPanel)
        if self.selected is None or self.points is None:
            panel.show(None, any_reviews=True)
            return
        if self.reviewed is None or self.reviewed.total == 0:
            panel.show(None, any_reviews=False)
            return
        label = self.selected
        panel.show(self.reviewed.agreement(label, self.points.index(label), self.thresholds[label]), any_reviews=True,
                   readers=self.readers.get(label))

    # -- reviews -------------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="thresholds-reviews", exit_on_error=False)
    def load_reviews(self) -> None:
        """Read the reviewer's current decisions for the workspace root and pair them with study flags."""
        preds, root = self.workspace.predictions, self.workspace.root  # reviewed studies of every split
        if preds is None:
            return
        reviewed = ReviewedStudies.empty(len(preds.labels))
        readers: dict = {}
        if root is not None:
            try:  # the app's own store: one connection to the reviews database per process
                every = self.app.reviews.reviews(root, role="reader")
                mine = [r for r in every if r.reviewer == self.workspace.reviewer]
                reviewed = ReviewedStudies.build(preds, mine)
                readers = reader_agreement(every)
            except CxrError as err:
                self.app.call_from_thread(self.notify, str(err), title="Reviews", severity="warning")
        self.app.call_from_thread(self._reviews_loaded, preds, reviewed, readers)

    def _reviews_loaded(self, preds: Predictions, reviewed: ReviewedStudies, readers: dict) -> None:
        if preds is self.workspace.predictions:
            self.reviewed = reviewed
            self.readers = readers
            self._update_agreement()

    # -- status lines --------------------------------------------------------------------------------------

    def _set_notice(self, text: str | None) -> None:
        """The standing notice (no predictions, no labels); ``a`` shows its prompt over it while armed."""
        self._notice = text
        self._show_notice()

    def _show_notice(self) -> None:
        text = ARMED_NOTICE if self.apply_to_all else self._notice
        notice = self.query_one("#thresholds-notice", Static)
        notice.update(text or "")
        notice.set_class(bool(text), "-shown")
        self.call_after_refresh(self._fit_layout)

    def _update_status(self) -> None:
        status = self.query_one("#thresholds-status", Static)
        preds = self.predictions
        if preds is None or self.points is None:
            status.update("Thresholds")
            return
        labelled = int((self.points.labelled > 0).sum())
        what = (f"{len(preds)} images, {len(preds.labels)} diseases ({labelled} with labels)" if self.has_truth
                else f"{len(preds)} images, {len(preds.labels)} diseases, no labels")
        unsaved = sum(self.thresholds[label] != self.saved[label] for label in self.thresholds)
        text = Text.assemble(("Thresholds", "bold"), " · ")
        tuned_on = self.tuned_on
        if tuned_on is not None and tuned_on.split != UNKNOWN_SPLIT:
            if tuned_on.includes_test:
                text.append(f" TUNING ON {tuned_on.split.upper()} ", style="bold white on red")
                text.append(" · ")
            else:
                text.append(f"on {tuned_on.split}", style="bold")
                text.append(" · ")
        text.append(f"{what} · ")
        if unsaved:
            text.append(f"{unsaved} unsaved", style="bold")
            text.append(" · ")
        text.append(f"s saves to {visible(self.save_path)}")
        status.update(text)

