"""``cxr-tui data``: index a data set root, show its statistics, write synthetic phantoms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxr_core.data import DatasetReport, SourceOptions
from cxr_core.labels import UncertaintyPolicy
from cxr_core.store import ScanResult, StudyIndex
from cxr_tui.cli.options import (
    DbOpt,
    FormatOpt,
    IUMappingOpt,
    JsonOpt,
    LabelsOpt,
    OutsideOpt,
    RootArg,
    UncertainOpt,
    VerifyOpt,
)
from cxr_tui.cli.output import print_json, progress_bar, say, stdout

app = typer.Typer(help="Index data sets, show their statistics, generate phantoms.", no_args_is_help=True)

LIST_LIMIT = 50



def scan(root: Path, fmt: str | None, options: SourceOptions, verify: bool, db: Path | None,
         show_progress: bool) -> ScanResult:
    with StudyIndex(db) as index, progress_bar(show_progress) as progress:
        return index.scan(root, fmt, options, verify=verify, progress=progress)


def summary_json(result: ScanResult) -> dict:
    data = result.report.to_dict()
    data["scan"] = {"changed": result.changed, "files_probed": result.files_probed,
                    "files_reused": result.files_reused, "seconds": round(result.seconds, 3),
                    "detected": result.detected_because}
    return data


def print_problems(report: DatasetReport) -> None:
    if report.unreadable_files:
        say("\n", ("Unreadable files", "bold"), f" ({len(report.unreadable_files)}):")
        for item in report.unreadable_files:
            stdout.print(f"  {item['path']}: {item['reason']}")
    for severity, title in (("error", "Skipped"), ("warning", "Warnings")):
        items = [p for p in report.problems if p["severity"] == severity]
        if not items:
            continue
        say("\n", (title, "bold"), f" ({len(items)}):")
        for p in items[:LIST_LIMIT]:
            stdout.print(f"  {p['path']}: {p['reason']}")
        if len(items) > LIST_LIMIT:
            stdout.print(f"  … and {len(items) - LIST_LIMIT} more (--json lists all)")


def print_summary(result: ScanResult) -> None:
    r = result.report
    how = f" ({result.detected_because})" if result.detected_because else ""
    say((r.format, "bold"), f"  {r.root}{how}")
    present = ""
    if r.studies_present is not None and r.studies_present != r.studies:
        present = f" ({r.studies_present:,} with an image present)"
    stdout.print(
        f"studies {r.studies:,}{present} · images {r.images:,} · missing {r.images_missing:,} · "
        f"unreadable {r.unreadable:,} · patients {r.patients:,}"
    )
    splits = " · ".join(f"{k} {v:,}" for k, v in r.splits.items()) or "none"
    say(f"splits (images present): {splits}  ", (r.split_source or "", "dim"))
    state = "re-scanned" if result.changed else "unchanged since the last scan"
    say((f"{state}: {result.files_probed} files probed, {result.files_reused} reused, {result.seconds:.2f} s", "dim"))


def print_labels(report: DatasetReport) -> None:
    table = Table(title=f"Labels ({report.label_space})", title_justify="left")
    table.add_column("label")
    partial = report.studies_present is not None and report.studies_present != report.studies
    if partial:  # a partial download: what this copy holds first, the whole table beside it
        table.add_column("present", justify="right")
    table.add_column("table rows" if partial else "studies", justify="right")
    table.add_column("% of rows" if partial else "%", justify="right")
    per_image = report.labels_by_image != report.labels
    if per_image:
        table.add_column("images", justify="right")
    if report.labels_uncertain:
        table.add_column("uncertain", justify="right")
    order = report.labels_present if partial else report.labels
    for label, count in sorted(report.labels.items(), key=lambda kv: (-order.get(kv[0], 0), -kv[1])):
        row = [label, *([f"{report.labels_present.get(label, 0):,}"] if partial else []), f"{count:,}",
               f"{100 * report.label_fraction.get(label, 0):.2f}"]
        if per_image:
            row.append(f"{report.labels_by_image.get(label, 0):,}")
        if report.labels_uncertain:
            row.append(f"{report.labels_uncertain.get(label, 0):,}")
        table.add_row(*row)
    stdout.print(table)
    if report.imbalance_ratio is not None:
        stdout.print(f"imbalance (most / least frequent finding): {report.imbalance_ratio:,.1f} : 1")
    if report.labels_without_positives:
        stdout.print(f"findings without positives: {', '.join(report.labels_without_positives)}")


@app.command("index")
def index_cmd(root: RootArg, fmt: FormatOpt = None, labels: LabelsOpt = None,
              uncertainty: UncertainOpt = UncertaintyPolicy.IGNORE, allow_outside_root: OutsideOpt = False,
              iu_mapping: IUMappingOpt = "published", verify: VerifyOpt = False, db: DbOpt = None,
              json_out: JsonOpt = False) -> None:
    """Index ROOT into the study index (incremental: unchanged files are not read again)."""
    options = SourceOptions(labels_csv=labels, uncertainty=uncertainty, allow_outside_root=allow_outside_root,
                            iu_mapping=iu_mapping)
    result = scan(root, fmt, options, verify, db, not json_out)
    if json_out:
        print_json(summary_json(result))
        return
    print_summary(result)
    print_problems(result.report)


@app.command("stats")
def stats_cmd(root: RootArg, fmt: FormatOpt = None, labels: LabelsOpt = None,
              uncertainty: UncertainOpt = UncertaintyPolicy.IGNORE, allow_outside_root: OutsideOpt = False,
              iu_mapping: IUMappingOpt = "published", db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Per-label counts and %, imbalance, missing and unreadable files of ROOT (indexing it if needed)."""
    options = SourceOptions(labels_csv=labels, uncertainty=uncertainty, allow_outside_root=allow_outside_root,
                            iu_mapping=iu_mapping)
    result = scan(root, fmt, options, False, db, not json_out)
    if json_out:
        print_json(summary_json(result))
        return
    print_summary(result)
    print_labels(result.report)
    if result.report.missing_examples:
        shown = ", ".join(result.report.missing_examples[:5])
        stdout.print(f"\nmissing images: {result.report.images_missing:,} (e.g. {shown})")
    print_problems(result.report)


@app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the phantom set into.", show_default=False)],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 1000,
    size: Annotated[int, typer.Option("--size", min=32, max=2048, help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same images).")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Write N synthetic chest X-ray phantoms with labels and NIH-format boxes into OUT."""
    from cxr_core.phantoms import write_phantoms

    with progress_bar(not json_out) as progress:
        made = write_phantoms(out, n, size, seed, progress=(lambda d, t: progress("phantoms", d, t)) if progress else None)
    if json_out:
        print_json({"out": str(made.out), "n": made.n, "size": made.size, "seed": made.seed, "counts": made.counts})
        return
    stdout.print(f"wrote {made.n:,} phantoms ({made.size} px, seed {made.seed}) to {made.out}")
