"""``cxr-tui demo``: the embedded default — a phantom data set in the user data dir, indexed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_core.data.sources import SourceOptions
from cxr_core.data.sources.synthetic import read_manifest
from cxr_core.paths import data_dir
from cxr_tui.cli import data
from cxr_tui.cli.output import print_json, progress_bar, stdout

DEMO_N = 600
DEMO_SIZE = 256
DEMO_SEED = 0


def demo(
    db: data.DbOpt = None,
    json_out: data.JsonOpt = False,
    out: Annotated[Path | None, typer.Option("--out", help="Where the demo phantoms live (default: the user data dir).")] = None,
) -> None:
    """Generate the demo phantom set (once), index it and print its statistics."""
    from cxr_core.phantoms import write_phantoms

    root = out or data_dir() / "demo" / "phantoms"
    manifest = read_manifest(root)
    if not manifest or (manifest.get("n"), manifest.get("size"), manifest.get("seed")) != (DEMO_N, DEMO_SIZE, DEMO_SEED):
        if not json_out:
            stdout.print(f"generating {DEMO_N} demo phantoms in {root} …", markup=False)
        with progress_bar(not json_out) as progress:
            write_phantoms(root, DEMO_N, DEMO_SIZE, DEMO_SEED,
                           progress=(lambda d, t: progress("phantoms", d, t)) if progress else None)
    result = data.scan(root, "synthetic", SourceOptions(), False, db, not json_out)
    if json_out:
        print_json(data.summary_json(result))
        return
    data.print_summary(result)
    data.print_labels(result.report)
    data.print_problems(result.report)
