"""``cxr-tui reviews``: export and list reviewer decisions (the TUI records them; these read them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxr_core.store import EXPORT_COLUMNS, ReviewStore
from cxr_tui.cli.options import JsonOpt, ReviewsDbOpt
from cxr_tui.cli.output import plain, print_json, stdout

app = typer.Typer(help="Reviewer decisions: export them as CSV, list the latest.", no_args_is_help=True)

RootOpt = Annotated[str | None, typer.Option("--root", help="Only this data set root (default: every root).")]
NOTE_WIDTH = 40


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write (replaced atomically).")] = Path("reviews.csv"),
    root: RootOpt = None,
    db: ReviewsDbOpt = None,
    history: Annotated[bool, typer.Option("--history", help="Every action, not only the current decisions.")] = False,
    raw_text: Annotated[bool, typer.Option(
        "--raw-text", help="Write text cells exactly as stored. By default a cell starting with = + - @ gets a "
                           "leading ' so a spreadsheet shows it instead of running it as a formula.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write the current decision of every (study, finding) as CSV: study, finding, decision, note, reviewer, at, ..."""
    with ReviewStore(db) as store:
        rows = store.export_csv(out, root, history=history, raw_text=raw_text)
    result = {"path": str(out), "rows": rows, "columns": list(EXPORT_COLUMNS), "history": history}
    if json_out:
        print_json(result)
    else:
        what = "actions" if history else "decisions"
        stdout.print(f"wrote {rows} {what} to {out}")


@app.command("list")
def list_cmd(
    root: RootOpt = None,
    db: ReviewsDbOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=0,
                                              help="Most recent N decisions (default: 30 in the table, all with --json; 0 = all).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The current decisions, most recent first (cleared ones left out)."""
    with ReviewStore(db) as store:
        reviews = store.reviews(root)
    reviews.reverse()
    total = len(reviews)
    if limit is None:
        limit = 0 if json_out else 30
    if limit:
        reviews = reviews[:limit]
    if json_out:
        print_json([r.to_dict() for r in reviews])
        return
    if not reviews:
        stdout.print("no reviews yet" + (f" for {root}" if root else ""))
        return
    roots = {r.root for r in reviews}
    table = Table(title=plain("Reviews" + (f" — {next(iter(roots))}" if len(roots) == 1 else "")), title_justify="left")
    columns = ["study", "finding", "decision", "model", "reviewer", "when", "note"]
    if len(roots) > 1:
        columns.append("root")
    for column in columns:
        table.add_column(column, overflow="fold" if column == "note" else "ellipsis")
    for r in reviews:
        model = "—" if r.flagged is None else ("flagged" if r.flagged else "not flagged")
        if r.probability is not None:
            model += f" {r.probability:.2f}"
        note = r.note or ""
        if len(note) > NOTE_WIDTH:
            note = note[:NOTE_WIDTH - 1] + "…"
        cells = [r.study, r.finding, r.decision, model, r.reviewer, r.when, note]
        if len(roots) > 1:
            cells.append(r.root)
        table.add_row(*(plain(c) for c in cells))  # user text: never read as markup
    stdout.print(table)
    if total > len(reviews):
        stdout.print(f"{total - len(reviews)} more: --limit 0 for all, or `reviews export`")
