"""``cxr-tui worklist``: the studies of a predictions file in the order to review them, for scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxr_core.text import name_text
from cxr_tui.cli.options import JsonOpt, ReviewsDbOpt
from cxr_tui.cli.output import plain, print_json, progress_bar, stdout, warn

ORDER_CHOICES = ("uncertain", "margin", "entropy", "disagreement", "max_prob")


def worklist_cmd(
    preds: Annotated[Path, typer.Option("--preds", "-p", help="Predictions file (from `cxr-tui predict`).")],
    order: Annotated[str, typer.Option("--order", help="uncertain (logit distance to the threshold, smallest first), "
                                                       "entropy (highest first), disagreement (the model's "
                                                       "answers moving across views of the image and MC-dropout "
                                                       "samples; needs --model) or max_prob (the triage order).")
                 ] = "uncertain",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Checkpoint, run directory or run id that made "
                                                                    "the predictions (for --order disagreement).",
                                              show_default=False)] = None,
    thresholds: Annotated[Path | None, typer.Option("--thresholds", help="Thresholds JSON (default 0.5 each).",
                                                    show_default=False)] = None,
    unreviewed: Annotated[bool, typer.Option("--unreviewed", help="Leave out studies the reader has reviewed.")] = False,
    reader: Annotated[str | None, typer.Option("--reader", help="Whose reviews --unreviewed means (default: yours).",
                                               show_default=False)] = None,
    root: Annotated[Path | None, typer.Option("--root", help="The data set root the reviews are of (default: the "
                                                             "one a JSON predictions file names).",
                                              show_default=False)] = None,
    db: ReviewsDbOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="First N studies (0: all).")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """Studies in the order to review them: most informative for the next model first (as the TUI's worklist
    sorts them with `o`, and opens the first with `n`)."""
    from cxr_core.errors import CxrError
    from cxr_core.eval import load_thresholds, review_order, threshold_mismatch
    from cxr_core.predictions import Predictions

    if order not in ORDER_CHOICES:
        raise CxrError(f"--order {order!r}: choose from {', '.join(ORDER_CHOICES)}")
    predictions = Predictions.read(preds)
    file = load_thresholds(thresholds) if thresholds else None
    values = dict(file.thresholds) if file is not None else {}
    mismatch = threshold_mismatch(file, predictions.labels, thresholds or "")
    if mismatch:
        warn(mismatch)
    studies = list(dict.fromkeys(predictions.study))
    scores = predictions.study_scores(studies)
    information = None
    if order == "disagreement":
        information = _disagreement(predictions, studies, model, root, preds)
    if order == "max_prob":
        import numpy as np

        top = np.fmax.reduce(scores, axis=1) if scores.size else np.zeros(len(studies))
        ranked = sorted(zip(studies, top.tolist(), strict=True), key=lambda kv: (np.isnan(kv[1]), -np.nan_to_num(kv[1])))
    else:
        ranked = review_order(studies, scores, predictions.labels, values, order, information)
    if unreviewed:
        from cxr_core.store import ReviewStore

        root = root or predictions.meta.get("root")
        if not root:
            raise CxrError(f"{preds}: the predictions do not name their data set root; --unreviewed needs --root")
        with ReviewStore(db) as store:
            status = store.status_by_study(root, reviewer=reader)
        ranked = [(study, score) for study, score in ranked if status.get(study, "") in ("", "partial")]
    shown = ranked[:limit] if limit else ranked
    if json_out:
        print_json({"order": order, "predictions": str(preds), "studies": len(ranked),
                    "worklist": [{"study": s, "score": None if score != score else round(score, 6)}
                                 for s, score in shown]})
        return
    table = Table(title=f"{len(ranked)} studies, {order} first", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("study")
    table.add_column("score", justify="right")
    for rank, (study, score) in enumerate(shown, start=1):
        table.add_row(str(rank), plain(name_text(study)), "—" if score != score else f"{score:.4f}")
    stdout.print(table)


def _disagreement(predictions, studies: list[str], model: str | None, root: Path | None, preds: Path):
    """(studies, K) mutual information of each study's images under the model's views (the highest per finding)."""
    from cxr_core.data import image_base
    from cxr_core.errors import CxrError
    from cxr_core.infer import Predictor, study_disagreement

    if model is None:
        raise CxrError("--order disagreement runs the model on each image under several views: give it with --model")
    root = root or predictions.meta.get("root")
    if not root:
        raise CxrError(f"{preds}: the predictions do not name their data set root; --order disagreement needs --root")
    predictor = Predictor.from_checkpoint(model, cache=False)
    if list(predictor.labels) != list(predictions.labels):
        raise CxrError(f"{model}: its findings are not those of {preds}; give the model that made the predictions")
    with progress_bar(True) as progress:
        information, errors = study_disagreement(
            predictor, predictions, studies, image_base(Path(root)),
            progress=(lambda d, t: progress("views", d, t)) if progress else None)
    for image, reason in list(errors.items())[:5]:
        warn(f"{image}: {reason}")
    return information
