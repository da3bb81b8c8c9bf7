"""``cxr-tui [ROOT] [--model ... | --predictions ...]``: open the app (the default when no subcommand is given).

``--predictions preds.csv`` reviews a file ``cxr-tui predict --out`` wrote, on a machine without a GPU: nothing on
that path (index, predictions file, worklist, study view, thresholds) imports torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cxr_core.errors import CxrError
from cxr_tui.cli.options import ReaderOpt

PROTOCOLS = ("auto", "kitty", "sixel", "halfcell", "unicode")


def check_color(color: str | None) -> str:
    """``--color``'s value, normalised (``auto | truecolor | 256 | 16``); CxrError for anything else."""
    from cxr_tui.terminal import parse_choice

    try:
        return parse_choice(color)
    except ValueError as exc:
        raise CxrError(f"--color: {exc}") from None


def choose_colors(color: str | None = "auto") -> None:
    """Decide the colour system (``--color``, CXR_COLOR, else what the terminal shows: cxr_tui.terminal) and make
    Textual use it. Before the app starts: the terminal may be asked, and Textual reads the choice at start."""
    from cxr_tui.terminal import apply_color_system, resolve_color

    try:
        support = resolve_color(color)
    except ValueError as exc:
        raise CxrError(str(exc)) from None
    apply_color_system(support)


def launch(root: Path | None, model: Path | None, thresholds: Path | None, *, image_protocol: str = "auto",
           show_phi: bool = False, runs_dir: Path | None = None, color: str | None = "auto",
           reader: str | None = None, predictions: Path | None = None) -> None:
    if image_protocol not in PROTOCOLS:
        raise CxrError(f"--image-protocol {image_protocol!r}: choose from {', '.join(PROTOCOLS)}")
    check_color(color)
    reader = check_reader(reader)
    if predictions is not None:
        check_predictions(predictions, root, model)
    if root is not None:
        from cxr_core.data import detect_format

        if not root.exists():
            raise CxrError(f"{root}: no such file or folder")
        detect_format(root)  # a folder with nothing cxr can read: the same one line as `data index`, exit 1
    if model is not None:
        from cxr_core.infer import resolve_checkpoint

        model = resolve_checkpoint(model)
    choose_colors(color)  # before cxr_tui.app: Textual (and textual-image's terminal queries) come with it
    from cxr_tui.image_support import prepare

    prepare(image_protocol)  # a named protocol: no graphics queries (tmux showed one as the pane title)
    from cxr_tui.app import CxrApp

    app = CxrApp(root, model, thresholds, image_protocol=image_protocol, show_phi=show_phi, runs_dir=runs_dir,
                 reader=reader, predictions=predictions)
    app.run()
    if app.startup_error is not None:  # the predictions file does not fit the root: one line, exit 1
        raise CxrError(app.startup_error)


def check_predictions(predictions: Path, root: Path | None, model: Path | None) -> None:
    """``--predictions``: not with ``--model``, on a root, and a file that looks like predictions (its first line;
    the app reads it all and says how its rows match the root's studies)."""
    from cxr_core.predictions import Predictions

    if model is not None:
        raise CxrError("--predictions and --model: choose one (--predictions reviews a predictions file without a "
                       "model; --model predicts, with Grad-CAM)")
    if root is None:
        raise CxrError("--predictions needs the data set root its predictions were made on: "
                       "cxr-tui ROOT --predictions preds.csv")
    Predictions.check(predictions)


def check_reader(reader: str | None) -> str | None:
    """``--reader`` (or ``CXR_READER``): the name decisions are recorded under; default the login name."""
    from cxr_core.text import visible

    reader = reader if reader is not None else os.environ.get("CXR_READER") or None
    if reader is None:
        return None
    if not reader.strip() or visible(reader) != reader or len(reader) > 100:
        raise CxrError(f"--reader {visible(reader)!r}: a name of printable characters, at most 100 of them")
    return reader.strip()


def open_app(
    root: Annotated[Path | None, typer.Argument(help="Data set root to review (default: the last one used).", show_default=False)] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Checkpoint file or run directory (default: the last one used).")] = None,
    thresholds: Annotated[Path | None, typer.Option("--thresholds", help="Thresholds JSON (default: the run's thresholds.json, else 0.5).")] = None,
    image_protocol: Annotated[str, typer.Option("--image-protocol", help="auto | kitty | sixel | halfcell | unicode")] = "auto",
    show_phi: Annotated[bool, typer.Option("--show-phi", help="Show DICOM patient identifiers (hidden by default).")] = False,
    runs_dir: Annotated[Path | None, typer.Option("--runs-dir", help="Where training runs live (default: the user data dir).")] = None,
    color: Annotated[str, typer.Option("--color", help="auto | truecolor | 256 | 16 (default: CXR_COLOR, else what the terminal shows, tmux asked).")] = "auto",
    reader: ReaderOpt = None,
    predictions: Annotated[Path | None, typer.Option("--predictions", help="Review this predictions file (`cxr-tui predict --out`) instead of a model: no GPU, no torch, no Grad-CAM. Not with --model.", show_default=False)] = None,
) -> None:
    """Open the app: worklist, study viewer with Grad-CAM, thresholds, training."""
    from cxr_tui.state import load_session

    if root is None and model is None and predictions is None:
        session = load_session()
        if session.get("root") and os.path.exists(session["root"]):
            root = Path(session["root"])
            model = Path(session["model"]) if session.get("model") and os.path.exists(session["model"]) else None
            if thresholds is None and session.get("thresholds") and os.path.exists(session["thresholds"]):
                thresholds = Path(session["thresholds"])
    launch(root, model, thresholds, image_protocol=image_protocol, show_phi=show_phi, runs_dir=runs_dir, color=color,
           reader=reader, predictions=predictions)
