"""The ``cxr-tui`` command: no subcommand opens the app; subcommands do the same work for scripts."""

from __future__ import annotations

import gc
import os
import sqlite3
import sys
import warnings
from typing import Annotated

import typer

from cxr_core import __version__
from cxr_core.errors import CxrError, database_error_text, os_error_text
from cxr_core.text import visible
from cxr_tui.cli import cam, data, demo, evaluate, jobs, open, predict, reviews, thresholds, train, worklist
from cxr_tui.cli.output import error_line, print_json

ENV_COLOR = "CXR_COLOR"  # cxr_tui.terminal.ENV_VAR (not imported here: the light commands stay light)

app = typer.Typer(
    name="cxr-tui",
    help="cxr: a chest X-ray workbench. Review what a model flags, tune thresholds, train and evaluate.\n\n"
         "cxr-tui [ROOT] [--model RUN] opens the app on a data set root (see `cxr-tui open --help`); the commands "
         "below do the same work for scripts.",
    no_args_is_help=False,
    subcommand_metavar="[ROOT] | COMMAND [ARGS]...",  # `cxr-tui [ROOT]` opens the app (the implied `open`)
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
app.command("cam")(cam.cam_cmd)
app.command("worklist")(worklist.worklist_cmd)
app.add_typer(thresholds.app, name="thresholds")
app.add_typer(reviews.app, name="reviews")
app.command("open", help="Open the app (what `cxr-tui [ROOT]` with no subcommand does).")(open.open_app)


def _version(value: bool) -> None:
    if value:
        print(f"cxr-tui {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    color: Annotated[str | None, typer.Option("--color", help="Colours for every command that opens the app (open, demo): auto | truecolor | 256 | 16; the same as CXR_COLOR.", show_default=False)] = None,
) -> None:
    if color is not None:
        from cxr_tui.cli.open import check_color

        os.environ[ENV_COLOR] = check_color(color)  # read by cxr_tui.terminal when a command opens the app
    if ctx.invoked_subcommand is None:  # only reachable programmatically: run() implies `open`
        print(ctx.get_help())


def with_default_command(args: list[str]) -> list[str]:
    """``cxr-tui``, ``cxr-tui ROOT`` and ``cxr-tui --model X`` open the app: the ``open`` command is implied.
    A leading global ``--color X`` stays in front (``cxr-tui --color 256 demo``)."""
    front: list[str] = []
    while args and (args[0] == "--color" or args[0].startswith("--color=")):
        take = 1 if "=" in args[0] else 2
        front, args = front + args[:take], args[take:]
    commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    if args and (args[0] in commands or args[0] in ("--version", "-h", "--help")):
        return [*front, *args]
    return [*front, "open", *args]


def _failure_printer(json_out: bool):
    """How a failure ends the command: one line on stderr, and with ``--json`` also ``{"error": ...}`` on stdout, so
    a script reading the JSON gets an object either way (the exit code says which)."""

    def fail(message: str, code: int) -> None:
        error_line(message)
        if json_out:
            try:
                print_json({"error": visible(message), "exit_code": code})
            except OSError:  # the reader went away (`| head`): the line on stderr said it
                pass
        sys.exit(code)

    return fail


def run() -> None:
    """Console-script entry point, and the CLI's one error boundary: a user mistake or a fault of the world (a
    full disk, a read-only folder, a database another process holds or that is damaged) becomes one line on
    stderr naming the file and the cause, and exit code 1; only a bug is a traceback."""
    # pydicom warns about odd header text (an unknown character-set escape in a PatientID) with the bytes in the
    # message and its own file path: noise on a user's terminal, and the value is outside text. Files it cannot
    # read are reported by cxr itself.
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    args = sys.argv[1:]
    fail = _failure_printer("--json" in args[: args.index("--")] if "--" in args else "--json" in args)
    try:
        app(args=with_default_command(args))
    except CxrError as exc:
        fail(str(exc), 1)
    except OSError as exc:
        fail(os_error_text(exc), 1)
    except sqlite3.Error as exc:
        fail(database_error_text(None, exc), 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    finally:
        # Everything left is about to go with the process: out of the collector's way, so the interpreter's
        # last collections do not walk torch's and timm's objects (a second of exit after a prediction here,
        # 0.2 s frozen). Files and databases are closed by then; only cycles' finalizers are skipped.
        gc.freeze()
