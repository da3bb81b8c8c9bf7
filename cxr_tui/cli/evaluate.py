"""``cxr-tui eval``: how good is the model per disease (the work is :func:`cxr_core.eval.evaluate_run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cxr_core.atomic import check_writable_dir
from cxr_core.data import SourceOptions
from cxr_core.outputs import check_eval_out
from cxr_core.store import StudyIndex
from cxr_tui.cli.options import (
    BatchOpt,
    DbOpt,
    DeviceOpt,
    FormatOpt,
    Fp32Opt,
    JsonOpt,
    LabelsOpt,
    NoCacheOpt,
    ThresholdsOpt,
    TtaOpt,
    WorkersOpt,
)
from cxr_tui.cli.output import print_json, progress_bar, stdout, warn
from cxr_tui.cli.predict import make_predictor


def eval_cmd(
    model: Annotated[str, typer.Argument(help="Run directory, run id or checkpoint file.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="Labelled data set root.", show_default=False)],
    fmt: FormatOpt = None,
    labels_csv: LabelsOpt = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate: test, val, train, ... or all (every split).")] = "test",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report directory (default: the run's eval/<split>/ for the "
                                             "data set it trained on, eval/<split>-<data set>-<hash>/ for another; "
                                             "./cxr-eval/ outside a run). An existing one must be empty or hold an "
                                             "earlier eval report.")] = None,
    thresholds: ThresholdsOpt = None,
    allow_same_split: Annotated[bool, typer.Option(
        "--allow-same-split", help="Evaluating on the split the thresholds were tuned on is intended (the report "
                                   "records it; without this flag it is a warning).")] = False,
    boxes: Annotated[Path | None, typer.Option("--boxes", help="NIH BBox_List-format boxes: adds a Grad-CAM localisation table.")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples (by patient) for the 95% CIs; 0 turns them off.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    tta: TtaOpt = None,
    fp32: Fp32Opt = False,
    no_cache: NoCacheOpt = False,
    db: DbOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Write the report into --out even when it holds other files (report.md, per_class.csv, "
                        "predictions.csv and the plots are replaced).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Per-class AUC (95% CI by patient), AP, sensitivity/specificity/PPV/NPV/F1, calibration; report + plots."""
    if out is not None:  # before the model loads: never a folder of the user's files
        check_writable_dir(out, "report folder")
        check_eval_out(out, force=force)
    from cxr_core.eval import evaluate_run, overall_pointing

    predictor = make_predictor(model, device, batch_size, workers, tta, False, no_cache, fp32)
    with StudyIndex(db) as index, progress_bar(not json_out) as progress:
        result = evaluate_run(predictor, data, split=split, fmt=fmt, options=SourceOptions(labels_csv=labels_csv),
                              out=out, thresholds=thresholds, allow_same_split=allow_same_split, boxes=boxes,
                              n_boot=n_boot, seed=seed, index=index, progress=progress)
    if result is None:  # another torchrun rank: rank 0 reports
        return
    if json_out:
        print_json(result.to_json())
        return
    if result.same_split:
        stdout.print(("note: " if result.allowed_same_split else "warning: ") + result.same_split)
    _print(result.metrics, result.localisation, result.errors, result.unmatched_labels,
           [w for w in result.warnings if w != result.same_split], overall_pointing(result.localisation))
    stdout.print(f"\nreport: {result.out / 'report.md'}  (predictions.csv, per_class.csv and plots beside it)")


def _fmt(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} ({ci[0]:.2f}–{ci[1]:.2f})" if ci else f"{value:.2f}"


def _print(metrics: dict, localisation: dict | None, errors: dict, unmatched: list[str], warnings: list[str],
           pointing: float | None) -> None:
    table = Table(title=f"{metrics['n_images']:,} images, {metrics['n_patients']:,} patients", title_justify="left")
    for column in ("finding", "AUC", "95% CI", "AP", "sens (95% CI)", "spec (95% CI)", "PPV", "F1", "pos"):
        table.add_column(column, justify="left" if column == "finding" else "right")
    for label, auc in metrics["auc"].items():
        ci = metrics["ci"].get(label)
        at = metrics["threshold_metrics"].get(label, {})
        table.add_row(label, _fmt(auc), f"{ci[0]:.2f}–{ci[1]:.2f}" if ci else "—", _fmt(metrics["ap"].get(label)),
                      _with_ci(at.get("sensitivity"), metrics.get("ci_sensitivity", {}).get(label)),
                      _with_ci(at.get("specificity"), metrics.get("ci_specificity", {}).get(label)),
                      _fmt(at.get("ppv")), _fmt(at.get("f1")), str(metrics["support"].get(label, 0)))
    stdout.print(table)
    ci = metrics.get("ci_auc_macro")
    stdout.print(f"macro AUC {_fmt(metrics['auc_macro'])}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
                 + f" · micro AUC {_fmt(metrics['auc_micro'])} · ECE {_fmt(metrics['ece'])}")
    for label, reason in metrics["excluded"].items():
        stdout.print(f"  {label}: not scored ({reason})")
    if unmatched:
        stdout.print(f"  not labelled in this data set: {', '.join(unmatched)}")
    if localisation:
        stdout.print(f"pointing game over all boxed findings: {pointing:.3f}")
        stdout.print("localisation (Grad-CAM vs boxes): " + " · ".join(
            f"{label} PG {v['pointing_game']:.2f} IoU {v['iou']:.2f} (n={v['n']})" for label, v in localisation.items()))
    for warning in warnings:
        warn(warning)
    if errors:
        stdout.print(f"unreadable ({len(errors)}): " + "; ".join(f"{p}: {r}" for p, r in list(errors.items())[:10]))


