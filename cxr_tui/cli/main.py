"""The ``cxr-tui`` command: no subcommand opens the app; subcommands do the same work for scripts."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cxr_core import __version__
from cxr_core.errors import CxrError
from cxr_tui.cli import data, demo, evaluate, jobs, predict, reviews, thresholds, train
from cxr_tui.cli.output import error_line

app = typer.Typer(
    name="cxr-tui",
    help="cxr: a chest X-ray workbench. Review what a model flags, tune thresholds, train and evaluate.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data")
app.add_typer(jobs.app, name="jobs")
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.command("predict")(predict.predict)
app.command("eval")(evaluate.eval_cmd)
app.command("cam")(evaluate.cam_cmd)
app.add_typer(thresholds.app, name="thresholds")
app.add_typer(reviews.app, name="reviews")


def _version(value: bool) -> None:
    if value:
        print(f"cxr-tui {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())


def run() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 1."""
    try:
        app()
    except CxrError as exc:
        error_line(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        error_line("interrupted")
        sys.exit(130)
