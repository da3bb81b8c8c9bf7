"""``cxr-tui eval`` and ``cxr-tui cam``: how good is the model per disease, and why did it flag this image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.table import Table

from cxr_core.atomic import check_writable, check_writable_dir
from cxr_core.data.sources import SourceOptions
from cxr_core.errors import CxrError
from cxr_core.eval.thresholds_file import load_thresholds, split_check, threshold_values, thresholds_path_for
from cxr_core.imaging import read_xray
from cxr_core.store.index import StudyIndex, image_base
from cxr_core.text import filename_part

if TYPE_CHECKING:
    from cxr_core.eval.predictions import Predictions
    from cxr_core.infer.engine import Predictor
from cxr_tui.cli.data import DbOpt, FormatOpt, JsonOpt, LabelsOpt
from cxr_tui.cli.output import print_json, progress_bar, stdout, warn
from cxr_tui.cli.predict import BatchOpt, DeviceOpt, NoCacheOpt, TtaOpt, WorkersOpt, make_predictor


def _fmt(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} ({ci[0]:.2f}–{ci[1]:.2f})" if ci else f"{value:.2f}"


def default_out(checkpoint: Path, split: str | None) -> Path:
    """A run's ``eval/<split>/`` when the checkpoint lives in a run directory, else ``./cxr-eval/<split>``."""
    name = split or "all"
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "eval" / name
    return Path("cxr-eval") / name


def eval_cmd(
    model: Annotated[str, typer.Argument(help="Run directory, run id or checkpoint file.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="Labelled data set root.", show_default=False)],
    fmt: FormatOpt = None,
    labels_csv: LabelsOpt = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate: test, val, train, ... or all (every split).")] = "test",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report directory (default: the run's eval/<split>/, "
                                             "or ./cxr-eval/<split>/ for a checkpoint outside a run).")] = None,
    thresholds: Annotated[Path | None, typer.Option(
        "--thresholds", help="Thresholds JSON (default: the model's own — its run's thresholds.json, or the file "
                             "the TUI saved for it — else 0.5 for every label).", show_default=False)] = None,
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
    no_cache: NoCacheOpt = False,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Per-class AUC (95% CI by patient), AP, sensitivity/specificity/PPV/NPV/F1, calibration; report + plots."""
    from cxr_core.eval.evaluate import evaluate
    from cxr_core.eval.report import write_report
    from cxr_core.infer.studies import predict_root

    if n_boot < 0:
        raise CxrError(f"--n-boot must be 0 or more, got {n_boot}")
    if out is not None:  # an unwritable report folder is said now, not after every image was predicted
        check_writable_dir(out, "report folder")
    predictor = make_predictor(model, device, batch_size, workers, tta, False, no_cache)
    checkpoint = predictor.loaded.path
    with StudyIndex(db) as index, progress_bar(not json_out) as progress:
        result = predict_root(predictor, data, fmt=fmt, split=None if split == "all" else split,
                              options=SourceOptions(labels_csv=labels_csv), index=index,
                              progress=(lambda d, t: progress("predicting", d, t)) if progress else None)
    preds = result.predictions
    if not predictor.dist.is_main:
        return
    if not preds.has_truth:
        raise CxrError(f"{data}: the data set labels none of the model's findings ({', '.join(preds.labels)})")
    if thresholds is None:  # the model's own: its run's thresholds.json, or what the TUI saved for it
        candidate = thresholds_path_for(checkpoint, predictor.fingerprint)
        thresholds = candidate if candidate.is_file() else None
    tuned = load_thresholds(thresholds) if thresholds is not None else None
    values = threshold_values(tuned, preds.labels)
    same_split = split_check(tuned.tuned_on if tuned else None, preds.splits, allowed=allow_same_split)
    metrics = evaluate(preds, values, n_boot=n_boot, seed=seed)
    localisation = None
    if boxes is not None:
        with progress_bar(not json_out) as progress:
            localisation = localise(predictor, preds, Path(preds.meta["root"]), boxes,
                                    (lambda d, t: progress("Grad-CAM", d, t)) if progress else None)
    target = out or default_out(checkpoint, split)
    target.mkdir(parents=True, exist_ok=True)
    preds.meta.update({"thresholds": str(thresholds) if thresholds else "0.5 for every label"})
    if tuned is not None:
        preds.meta["thresholds_tuned_on"] = tuned.tuned_on.describe() if tuned.tuned_on else "not recorded"
    warnings = list(result.warnings)
    if same_split and not allow_same_split:
        warnings.insert(0, same_split)
    files = [preds.write(target / "predictions.csv", values)]
    files += write_report(metrics, preds, target, title=f"{checkpoint.parent.parent.name if checkpoint.parent.name == 'checkpoints' else checkpoint.name} on {Path(preds.meta['root']).name} ({split})",
                          localisation=localisation, caveats=[same_split] if same_split else [])
    if json_out:
        print_json({**metrics, "localisation": localisation, "pointing_game_overall": overall_pointing(localisation), "unreadable": result.errors,
                    "unlabelled_findings": result.unmatched_labels, "warnings": warnings,
                    "thresholds_tuned_on": tuned.tuned_on.to_json() if tuned and tuned.tuned_on else None,
                    "same_split": same_split, "files": [str(f) for f in files], "out": str(target),
                    "model": str(checkpoint)})
        return
    if same_split:
        stdout.print(("note: " if allow_same_split else "warning: ") + same_split)
    _print(metrics, localisation, result.errors, result.unmatched_labels, result.warnings)
    stdout.print(f"\nreport: {target / 'report.md'}  (predictions.csv, per_class.csv and plots beside it)")


def _print(metrics: dict, localisation: dict | None, errors: dict, unmatched: list[str], warnings: list[str]) -> None:
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
        stdout.print(f"pointing game over all boxed findings: {overall_pointing(localisation):.3f}")
        stdout.print("localisation (Grad-CAM vs boxes): " + " · ".join(
            f"{label} PG {v['pointing_game']:.2f} IoU {v['iou']:.2f} (n={v['n']})" for label, v in localisation.items()))
    for warning in warnings:
        warn(warning)
    if errors:
        stdout.print(f"unreadable ({len(errors)}): " + "; ".join(f"{p}: {r}" for p, r in list(errors.items())[:10]))


def overall_pointing(table: dict | None) -> float | None:
    """Hits over all boxed findings (each finding weighted by its number of boxed images)."""
    if not table:
        return None
    n = sum(v["n"] for v in table.values())
    return sum(v["pointing_game"] * v["n"] for v in table.values()) / n if n else None


def localise(predictor: Predictor, preds: Predictions, root: Path, boxes_path: Path, progress=None) -> dict:
    """Grad-CAM of each boxed finding on each predicted image it boxes: pointing game and IoU per finding."""
    from cxr_core.eval.localisation import POINTING_TOLERANCE, localisation_table, read_boxes, score_image
    from cxr_core.infer.cam import cam_for_image

    boxes = read_boxes(boxes_path)
    base = image_base(root)
    known = {label.casefold(): label for label in preds.labels}
    jobs = []
    for image in dict.fromkeys(preds.image):
        found = [b._replace(label=known[b.label.casefold()]) for b in boxes.get(Path(image).name, [])
                 if b.label.casefold() in known]
        if found:
            jobs.append((image, found))
    if not jobs:
        raise CxrError(f"{boxes_path}: no box names an image and a finding of this evaluation")
    results = []
    for done, (image, found) in enumerate(jobs, start=1):
        pixels = read_xray(base / image).as_uint8()
        cams = {label: cam_for_image(predictor.model, predictor.config, pixels, label)
                for label in dict.fromkeys(b.label for b in found)}
        results += score_image(cams, found, image, tolerance=POINTING_TOLERANCE * max(pixels.shape))
        if progress:
            progress(done, len(jobs))
    return localisation_table(results)


def cam_cmd(
    image: Annotated[Path, typer.Argument(help="An image file (PNG, JPEG, DICOM).", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Checkpoint file, run directory or run id.", show_default=False)],
    finding: Annotated[str | None, typer.Option("--finding", help="Finding to explain (default: the most probable).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Overlay PNG to write (default: IMAGE-cam-FINDING.png here).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the colour map over the image.")] = 0.4,
    colormap: Annotated[str, typer.Option("--colormap", help="matplotlib colour map (jet, turbo, inferno, ...).")] = "jet",
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Grad-CAM of one finding over one image, written as a PNG overlay."""
    from cxr_core.infer.cam import cam_for_image, cam_is_empty, class_index, save_overlay

    check_writable(out if out is not None else Path("cam.png"), "overlay")  # before the model is even loaded
    predictor = make_predictor(model, device, 1, 0, None, False, True)
    pixels = read_xray(image).as_uint8()
    probs = predictor.predict([str(image)], use_cache=False)
    if probs.errors:
        raise CxrError(f"{image}: {next(iter(probs.errors.values()))}")
    row = probs.probs[0]
    label = predictor.labels[int(np.argmax(row))] if finding is None else predictor.labels[class_index(predictor.config, finding)]
    heat = cam_for_image(predictor.model, predictor.config, pixels, label)
    target = out or Path(f"{filename_part(image.stem)}-cam-{filename_part(label)}.png")
    save_overlay(target, pixels, heat, alpha=alpha, colormap=colormap)
    empty = cam_is_empty(heat)
    peak = None if empty else np.unravel_index(int(np.argmax(heat)), heat.shape)
    summary = {"image": str(image), "finding": label, "probability": float(row[predictor.labels.index(label)]),
               "out": str(target), "empty": empty, "peak": None if peak is None else {"x": int(peak[1]), "y": int(peak[0])},
               "size": list(heat.shape[::-1])}
    if json_out:
        print_json(summary)
        return
    where = ("the Grad-CAM map is empty (nothing in the CAM layer raises this score here; the film is written "
             "without an overlay)" if peak is None else f"Grad-CAM peak at x={peak[1]}, y={peak[0]}")
    stdout.print(f"{label}: p = {summary['probability']:.3f}; {where}; wrote {target}")
