"""``cxr-tui demo``: the embedded default — phantoms in the user data dir, indexed, opened with the bundled model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_core.data import SourceOptions, read_manifest
from cxr_core.demo import DEMO_N, demo_model_path, demo_root, ensure_demo_set
from cxr_tui.cli import data
from cxr_tui.cli.options import DbOpt, JsonOpt, ReaderOpt
from cxr_tui.cli.output import print_json, progress_bar, stdout


def demo(
    db: DbOpt = None,
    json_out: JsonOpt = False,
    out: Annotated[Path | None, typer.Option("--out", help="Where the demo phantoms live (default: the user data dir).")] = None,
    open_app: Annotated[bool, typer.Option("--open/--no-open", help="Open the app on the demo (default), or only prepare it.")] = True,
    image_protocol: Annotated[str, typer.Option("--image-protocol", help="auto | kitty | sixel | halfcell | unicode")] = "auto",
    reader: ReaderOpt = None,
) -> None:
    """Generate the demo phantom set (once), index it, and open the app on it with the bundled model."""
    from cxr_tui.cli.open import check_reader

    reader = check_reader(reader)  # a bad name is one line before minutes of phantoms
    root = out or demo_root()
    if not read_manifest(root) and not json_out:
        stdout.print(f"generating {DEMO_N} demo phantoms in {root} …")
    with progress_bar(not json_out) as progress:
        ensure_demo_set(root, (lambda d, t: progress("phantoms", d, t)) if progress else None)
    result = data.scan(root, "synthetic", SourceOptions(), False, db, not json_out)
    if json_out:
        print_json({**data.summary_json(result), "model": str(demo_model_path())})
        return
    if open_app:
        from cxr_tui.cli.open import launch

        launch(root, demo_model_path(), None, image_protocol=image_protocol, reader=reader)
        return
    data.print_summary(result)
    data.print_labels(result.report)
    data.print_problems(result.report)
    stdout.print(f"model: {demo_model_path()}")
