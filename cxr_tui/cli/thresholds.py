"""``cxr-tui thresholds``: tune per-class thresholds on labelled predictions, and show a thresholds file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from cxr_core.atomic import check_writable
from cxr_core.eval import (
    OperatingPoints,
    ThresholdsFile,
    load_thresholds,
    parse_mode,
    save_tuning,
    thresholds_from_choices,
    tune,
    tuning_rows,
)
from cxr_core.predictions import Predictions
from cxr_tui.cli.options import JsonOpt
from cxr_tui.cli.output import print_json, stderr, stdout

app = typer.Typer(help="Per-class thresholds: tune them on labelled predictions, show a thresholds file.",
                  no_args_is_help=True)



@app.command("tune")
def tune_cmd(
    preds: Annotated[Path, typer.Option("--preds", help="Predictions file with truth columns (CSV or JSON).",
                                        show_default=False)],
    mode: Annotated[str, typer.Option("--mode", help="f1 | youden | sens=X (screening: highest threshold with "
                                      "sensitivity >= X) | spec=X (lowest with specificity >= X) | fixed=X.")] = "f1",
    out: Annotated[Path | None, typer.Option("--out", help="Thresholds file to write (its history is kept if it "
                                             "exists). Without it nothing is written.")] = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="Rows to tune on: a split name (val, train, test, ...), several joined by +, or all. "
                        "Default: the validation split when the predictions have one, else every split but test; "
                        "test only when asked (its evaluation is then optimistic, and eval says so).",
        show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Choose each class's threshold by MODE, exactly, and print its metrics there."""
    chosen_mode = parse_mode(mode)  # a bad mode fails before the predictions are read
    if out is not None:
        check_writable(out, "thresholds file")
    predictions, tuned_on = tuning_rows(Predictions.read(preds), split)
    points = OperatingPoints.from_predictions(predictions)
    choices = tune(points, chosen_mode)
    if out is not None:
        result = save_tuning(out, choices, predictions=str(preds.resolve()), n=len(predictions), tuned_on=tuned_on)
    else:
        result = thresholds_from_choices(choices, predictions=str(preds.resolve()), n=len(predictions),
                                         tuned_on=tuned_on)
    if json_out:
        print_json({**result.to_json(), "path": None if out is None else str(out)})
        return
    stdout.print(_table(result, f"Thresholds ({chosen_mode}) on {preds.name}: {len(predictions):,} rows"))
    stdout.print(f"tuned on: {tuned_on.describe()}")
    if tuned_on.includes_test:
        stderr.print("warning: these thresholds were tuned on the test split; an evaluation on it will be optimistic "
                     "(and `eval` will say so)")
    stdout.print(f"wrote {out}" if out is not None else "not written (add --out FILE to save)")


@app.command("show")
def show_cmd(
    file: Annotated[Path, typer.Argument(help="A thresholds JSON file.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Print a thresholds file: each class's threshold, how it was chosen, its metrics, and the history."""
    data = load_thresholds(file)
    if json_out:
        print_json({**data.to_json(), "path": str(file)})
        return
    stdout.print(_table(data, f"Thresholds in {file}"))
    if data.tuned_on is not None:
        stdout.print(f"tuned on: {data.tuned_on.describe()}" + (f" of {data.tuned_on.root}" if data.tuned_on.root else "")
                     + (f", model {data.tuned_on.model}" if data.tuned_on.model else ""))
    if data.predictions:
        stdout.print(f"predictions: {data.predictions} ({data.n:,} rows)")
    for row in data.history[-5:]:
        changes = row.get("changes") or {}
        stdout.print(f"{row.get('when', '?')}  {row.get('who', '?')}  {row.get('action', 'change')}: "
                     f"{len(changes)} label{'s' if len(changes) != 1 else ''} ({', '.join(map(str, changes))})")
    if len(data.history) > 5:
        stdout.print(f"... {len(data.history) - 5} earlier changes (see --json)")


def _table(data: ThresholdsFile, title: str) -> Table:
    """Fits 80 columns for NIH's labels: one shared mode goes in the title, per-class modes and reasons in
    the last column, which folds."""
    modes = {entry.mode for entry in data.labels.values()}
    if len(modes) == 1:
        title = f"{title} — mode {next(iter(modes))}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    table.add_column("label", no_wrap=True, min_width=min(max((len(n) for n in data.labels), default=5), 24))
    for column, width in (("threshold", 9), ("sens", 5), ("spec", 5), ("PPV", 5), ("NPV", 5), ("F1", 5),
                          ("flagged", 7), ("support", 7)):
        table.add_column(column, justify="right", no_wrap=True, min_width=width)
    notes = len(modes) > 1 or any(entry.reason for entry in data.labels.values())
    if notes:
        table.add_column("mode / note" if len(modes) > 1 else "note", overflow="fold", min_width=8)
    for name, entry in data.labels.items():
        m = entry.metrics
        cells = [name, _fmt(entry.threshold, 4), _fmt(m.get("sensitivity")), _fmt(m.get("specificity")),
                 _fmt(m.get("ppv")), _fmt(m.get("npv")), _fmt(m.get("f1")), _int(m.get("flagged")),
                 _int(m.get("support"))]
        if notes:
            cells.append("; ".join(x for x in (entry.mode if len(modes) > 1 else "", entry.reason or "") if x))
        table.add_row(*cells)
    return table


def _fmt(value: Any, digits: int = 3) -> str:
    """A metric as the table shows it; a value that is not a number (a file edited by hand) shows as ``?``."""
    if value is None:
        return "—"
    return f"{float(value):.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def _int(value: Any) -> str:
    return _fmt(value, 0)
