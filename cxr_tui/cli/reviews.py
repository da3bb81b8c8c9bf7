"""``cxr-tui reviews``: export and list reviewer decisions (the TUI records them; these read them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxr_core.errors import CxrError
from cxr_core.outputs import check_reviews_out
from cxr_core.store import EXPORT_COLUMNS, ReviewStore
from cxr_core.text import name_text, visible
from cxr_tui.cli.options import JsonOpt, ReviewsDbOpt
from cxr_tui.cli.output import plain, print_json, stdout

app = typer.Typer(help="Reviewer decisions: export them as CSV or DICOM SR, list the latest.", no_args_is_help=True)

RootOpt = Annotated[str | None, typer.Option("--root", help="Only this data set root (default: every root).")]
NOTE_WIDTH = 40


@app.command("export")
def export_cmd(
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="CSV file to write (replaced atomically; an existing file only when it is a reviews "
                            "export). Default reviews.csv; with --dicom-sr only when given.")] = None,
    root: RootOpt = None,
    db: ReviewsDbOpt = None,
    history: Annotated[bool, typer.Option("--history", help="Every action, not only the current decisions.")] = False,
    raw_text: Annotated[bool, typer.Option(
        "--raw-text", help="Write text cells exactly as stored. By default a cell starting with = + - @ gets a "
                           "leading ' so a spreadsheet shows it instead of running it as a formula.")] = False,
    dicom_sr: Annotated[Path | None, typer.Option(
        "--dicom-sr", metavar="OUTDIR",
        help="Also (or instead of the CSV) write one DICOM Structured Report per study read from DICOM into OUTDIR "
             "(TID 1500: each reader's and adjudicator's decisions, the model as observer device, the source images "
             "referenced, the patient as the source names them). Needs the dicom-sr extra (highdicom).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out even when it exists and is not a reviews export.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write the current decision of every (study, finding) as CSV: study, finding, decision, note, reviewer, at, ...
    or, with --dicom-sr, as DICOM SR files a PACS can file beside the images."""
    if dicom_sr is not None and history:
        raise CxrError("--history is for the CSV: a DICOM SR holds the current decisions")
    if dicom_sr is None and out is None:
        out = Path("reviews.csv")
    if out is not None:  # before the database is opened: never a spreadsheet of the user's
        check_reviews_out(out, force=force)
    result: dict = {}
    with ReviewStore(db) as store:
        if out is not None:
            rows = store.export_csv(out, root, history=history, raw_text=raw_text)
            result = {"path": str(out), "rows": rows, "columns": list(EXPORT_COLUMNS), "history": history}
        if dicom_sr is not None:
            from cxr_core.store import export_dicom_sr

            reports = export_dicom_sr(dicom_sr, root, store=store)
            result["dicom_sr"] = reports.to_dict()
    # Nothing of what was asked for written, only errors: exit 1 (a partial export lists its problems, exit 0).
    failed = dicom_sr is not None and out is None and not reports.written and any(
        p.severity == "error" for p in reports.problems)
    if json_out:
        print_json(result)
        raise typer.Exit(1 if failed else 0)
    if out is not None:
        what = "actions" if history else "decisions"
        stdout.print(f"wrote {result['rows']} {what} to {out}")
    if dicom_sr is not None:
        for problem in reports.problems:
            stdout.print(f"{problem.severity}: {problem.path}: {problem.reason}")
        stdout.print(reports.summary())
    if failed:
        raise typer.Exit(1)


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


def _kappa(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


@app.command("agreement")
def agreement_cmd(
    root: RootOpt = None,
    db: ReviewsDbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Agreement between readers per finding: Cohen's kappa for each pair, Fleiss' kappa for three or more."""
    from cxr_core.eval import reader_agreement

    with ReviewStore(db) as store:
        reviews = store.reviews(root, role="reader")
    tables = reader_agreement(reviews)
    readers = sorted({r.reviewer for r in reviews})
    if json_out:
        print_json({"readers": readers, "findings": [t.to_dict() for t in tables.values()]})
        return
    if len(readers) < 2:
        stdout.print(f"{len(readers)} reader{'s' if len(readers) != 1 else ''} so far: agreement needs two "
                     "(cxr-tui ROOT --reader NAME records under another name)")
        return
    pairs = [f"{a}~{b}" for a, b in next(iter(tables.values())).pairs] if tables else []
    table = Table(title=plain(f"Agreement between {len(readers)} readers: {', '.join(readers)}"), title_justify="left")
    table.add_column("finding")
    table.add_column("items", justify="right")
    table.add_column("disagree", justify="right")
    if len(readers) >= 3:
        table.add_column("Fleiss κ (n)", justify="right")
    for pair in pairs:
        table.add_column(plain(f"Cohen κ {pair}"), justify="right")
    for finding, t in tables.items():
        cells = [finding, str(t.called), str(t.disagreements)]
        if len(readers) >= 3:
            cells.append(f"{_kappa(t.fleiss)} ({t.fleiss_items})")
        cells += [f"{_kappa(p.kappa)} ({p.n})" for p in t.pairs.values()]
        table.add_row(*(plain(c) for c in cells))
    stdout.print(table)


@app.command("disagreements")
def disagreements_cmd(
    root: RootOpt = None,
    db: ReviewsDbOpt = None,
    unsettled: Annotated[bool, typer.Option("--unsettled", help="Only those no adjudicator has decided yet.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The findings readers called both ways (accept and reject), with each reader's call and any adjudication."""
    from cxr_core.eval import disagreements

    with ReviewStore(db) as store:
        found = disagreements(store.reviews(root), unsettled_only=unsettled)
    if json_out:
        print_json([d.to_dict() for d in found])
        return
    if not found:
        stdout.print("no disagreements" + (" left to adjudicate" if unsettled else ""))
        return
    table = Table(title=f"{len(found)} disagreements", title_justify="left")
    for column in ("study", "finding", "calls", "adjudicated"):
        table.add_column(column)
    for d in found:
        calls = ", ".join(f"{reader}: {call}" for reader, call in d.calls.items())
        table.add_row(*(plain(c) for c in (name_text(d.study), name_text(d.finding), calls, d.adjudicated_text)))
    stdout.print(table)


@app.command("adjudicate")
def adjudicate_cmd(
    root: Annotated[str, typer.Option("--root", help="The data set root the studies belong to.")],
    study: Annotated[str, typer.Option("--study", help="Study id.")],
    finding: Annotated[str, typer.Option("--finding", help="Finding name.")],
    decision: Annotated[str, typer.Option("--decision", help="accept | reject | uncertain | clear")],
    reader: Annotated[str | None, typer.Option("--reader", help="Who adjudicates (default: your login name).")] = None,
    note: Annotated[str | None, typer.Option("--note", help="Why (kept with the decision).")] = None,
    db: ReviewsDbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Store an adjudicated decision for a (study, finding): it settles the readers' disagreement and is what
    training with --with-reviews takes first."""
    with ReviewStore(db) as store:
        readers = [r for r in store.reviews(root, role="reader") if r.study == study]
        if not readers:  # a typo in --root or --study would store a decision nothing ever reads
            known = "no reader has decided anything there" if not store.reviews(root) else "no reader decided it"
            raise CxrError(f"{visible(root)}: study {visible(study)} has no readers' decisions to adjudicate ({known}; "
                           "check --root and --study)")
        findings = sorted({r.finding for r in readers})
        if finding not in findings:
            raise CxrError(f"{visible(study)}: no reader decided {visible(finding)} (decided: "
                           f"{', '.join(visible(f) for f in findings)})")
        review = store.record(root, study, finding, decision, note=note, reviewer=reader, role="adjudicator")
    if json_out:
        print_json(review.to_dict())
    else:
        stdout.print(plain(f"adjudicated {review.study} {review.finding}: {review.decision} ({review.reviewer})"))
