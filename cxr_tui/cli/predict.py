"""``cxr-tui predict``: probabilities for every image of a data set (or single files), cached, flagged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxr_core.atomic import check_writable
from cxr_core.data import SourceOptions
from cxr_core.errors import CxrError
from cxr_core.outputs import check_predictions_out
from cxr_core.store import StudyIndex
from cxr_core.text import visible

if TYPE_CHECKING:  # torch and the model zoo load only when a command runs, not for --help or --version
    from cxr_core.eval import ThresholdsFile
    from cxr_core.infer import Predictor, RootPredictions

from cxr_tui.cli.options import (
    BatchOpt,
    CompileOpt,
    DbOpt,
    DeviceOpt,
    FormatOpt,
    Fp32Opt,
    JsonOpt,
    LabelsOpt,
    ModelOpt,
    NoCacheOpt,
    ThresholdsOpt,
    TtaOpt,
    WorkersOpt,
)
from cxr_tui.cli.output import print_json, progress_bar, say, stdout, warn

LIST_LIMIT = 20


def make_predictor(model: str, device: str, batch_size: int | None, workers: int | None, tta: str | None,
                   compile: bool, no_cache: bool, fp32: bool = False) -> Predictor:
    from cxr_core.infer import Predictor

    return Predictor.from_checkpoint(model, device=device, batch_size=batch_size, workers=workers,
                                     tta=[t.strip() for t in (tta or "").split(",") if t.strip()],
                                     compile=compile, cache=not no_cache, amp=not fp32)


def predict(
    root: Annotated[Path, typer.Argument(help="Data set root (any layout `data index` reads) or an image file.", show_default=False)],
    model: ModelOpt,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="preds.csv or preds.json (one row per image).")] = None,
    thresholds: ThresholdsOpt = None,
    fmt: FormatOpt = None,
    labels_csv: LabelsOpt = None,
    split: Annotated[str | None, typer.Option("--split", help="Only this split (e.g. test).")] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    tta: TtaOpt = None,
    compile: CompileOpt = False,
    fp32: Fp32Opt = False,
    no_cache: NoCacheOpt = False,
    db: DbOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out even when it exists and is not a predictions file (without it, only a "
                        "predictions file is replaced).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Predict every readable image; unreadable files are listed with their reason and the rest go on."""
    if not root.exists():
        raise CxrError(f"{root}: no such file or folder")
    if out is not None:  # said now, not after every image was predicted
        check_writable(out, "predictions file")
        check_predictions_out(out, force=force)  # never the data set's labels.csv or another file of the user's
    given = None
    if thresholds is not None:  # read now: a damaged file is said before every image is predicted, not after
        from cxr_core.eval import load_thresholds

        given = load_thresholds(thresholds)
    try:
        if _torchrun():
            predictor = make_predictor(model, device, batch_size, workers, tta, compile, no_cache, fp32)
            _predict_and_report(predictor, root, out, given, fmt, labels_csv, split, db, json_out)
            predictor.dist.barrier()  # torchrun: every rank is done (rank 0 has written) before the group goes
        else:  # the model loads on a thread while the root is indexed and its first images decoded
            _predict_and_report(lambda path: make_predictor(str(path), device, batch_size, workers, tta, compile,
                                                            no_cache, fp32),
                                root, out, given, fmt, labels_csv, split, db, json_out, model)
    finally:
        from cxr_core.distributed import shutdown_distributed

        # Torn down explicitly, as PyTorch asks, not left to interpreter exit (where one loaded CI run saw a
        # gloo rank abort with SIGABRT after its results were gathered).
        shutdown_distributed()


def _torchrun() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _predict_and_report(predictor: Predictor | Callable[[Path], Predictor], root: Path, out: Path | None,
                        given: ThresholdsFile | None, fmt: str | None, labels_csv: Path | None, split: str | None,
                        db: Path | None, json_out: bool, model: str | None = None) -> None:
    """``predictor``: loaded, or (with ``model``) how to load it from the checkpoint path, on a thread."""
    if not callable(predictor) and not predictor.dist.is_main:  # torchrun: the other ranks compute their shard
        _predict(predictor, root, fmt, labels_csv, split, db, None)
        return
    with progress_bar(not json_out) as progress:
        report = (lambda d, t: progress("predicting", d, t)) if progress else None
        if callable(predictor):
            from cxr_core.infer import predict_root_loading

            with StudyIndex(db) as index:
                predictor, result = predict_root_loading(model, predictor, root, fmt=fmt, split=split,
                                                         options=SourceOptions(labels_csv=labels_csv), index=index,
                                                         progress=report)
        else:
            result = _predict(predictor, root, fmt, labels_csv, split, db, report)
    from cxr_core.eval import load_thresholds, threshold_mismatch, threshold_values, thresholds_path_for

    file = given
    if file is None:  # the model's own (its run's thresholds.json, or what the TUI saved for it), as eval does
        own = thresholds_path_for(predictor.loaded.path, predictor.fingerprint)
        file = load_thresholds(own) if own.is_file() else None
    thresholds = file.path if file is not None else None
    values = threshold_values(file, predictor.labels)
    mismatch = threshold_mismatch(file, predictor.labels, thresholds or "")
    if mismatch:
        result.warnings.append(mismatch)
    preds = result.predictions
    if out is not None:
        preds.write(out, values)
    flags = preds.flagged(values)
    summary = {"images": len(preds), "cached": result.cached, "computed": result.computed,
               "seconds": round(result.seconds, 3), "unreadable": len(result.errors), "errors": result.errors,
               "warnings": result.warnings, "notes": result.notes, "decoded_while_loading": result.premade,
               "model": str(predictor.loaded.path), "device": str(predictor.device), "compute_dtype": predictor.precision,
               "out": str(out) if out else None, "thresholds": str(thresholds) if thresholds else None,
               "flagged": {label: sum(label in f for f in flags) for label in preds.labels}}
    if result.ood is not None:  # distance from the training images; its message is among the warnings when far
        summary["ood"] = result.ood.to_json()
    if json_out:
        if out is None:
            summary["predictions"] = preds.to_json(values)["predictions"]
        print_json(summary)
        return
    rate = result.computed / result.seconds if result.seconds and result.computed else 0.0
    stdout.print(f"{len(preds):,} images predicted ({result.cached:,} from the cache, {result.computed:,} computed"
                 f"{f', {rate:.0f} img/s' if rate else ''}) on {predictor.device}"
                 f"{f' ({predictor.precision})' if predictor.precision != 'fp32' else ''}")
    stdout.print(visible(f"thresholds: {thresholds or '0.5 for every finding (the model has no saved thresholds)'}"))
    for warning in result.warnings:
        warn(warning)
    for note in result.notes:
        stdout.print(visible(note), markup=False, highlight=False)
    if out is not None:
        stdout.print(f"wrote {out}")
    else:
        for study, image, flag in list(zip(preds.study, preds.image, flags, strict=True))[:LIST_LIMIT]:
            stdout.print(f"  {study}  {image}  {', '.join(flag) or '—'}")
        if len(preds) > LIST_LIMIT:
            stdout.print(f"  … {len(preds) - LIST_LIMIT} more (use --out)")
    if result.errors:
        say("\n", ("Unreadable", "bold"), f" ({len(result.errors)}):")
        for path, reason in list(result.errors.items())[:LIST_LIMIT]:
            stdout.print(f"  {path}: {reason}")


def _predict(predictor: Predictor, root: Path, fmt: str | None, labels_csv: Path | None, split: str | None,
             db: Path | None, progress) -> RootPredictions:
    from cxr_core.infer import predict_root

    with StudyIndex(db) as index:
        return predict_root(predictor, root, fmt=fmt, split=split, options=SourceOptions(labels_csv=labels_csv),
                            index=index, progress=progress)
