"""``cxr-tui jobs``: list, follow, stop and resume training runs (they outlive the terminal)."""

from __future__ import annotations

import codecs
import sys
import time
from typing import Annotated

import typer
from rich.table import Table

from cxr_core.runs import ACTIVE, RunDir, list_runs, summarize
from cxr_core.text import visible
from cxr_core.train import resume_job, stop_job
from cxr_tui.cli.options import JsonOpt, RunsDirOpt
from cxr_tui.cli.output import print_json, stdout

app = typer.Typer(help="Training jobs: list, logs, stop, resume.", no_args_is_help=True)

RunArg = Annotated[str, typer.Argument(help="Run id (or a unique prefix of one) or run directory.", show_default=False)]


@app.command("list")
def list_cmd(runs_dir: RunsDirOpt = None, json_out: JsonOpt = False) -> None:
    """Every run, newest first; a run whose process died shows as interrupted."""
    rows = [summarize(r) for r in list_runs(runs_dir)]
    if runs_dir is not None and not runs_dir.is_dir() and not json_out:  # a typo showed an empty table, unexplained
        stdout.print(visible(f"no runs: {runs_dir} does not exist (yet)"))
        return
    if json_out:
        print_json([row.to_dict() for row in rows])
        return
    table = Table(title="Training runs", title_justify="left")
    for column in ("run", "state", "epoch", "best AUC", "model"):
        table.add_column(column)
    for row in rows:
        best = f"{row.best_metric:.4f}" if row.best_metric is not None else "—"
        table.add_row(row.run, row.state, f"{row.epoch}/{row.epochs or '?'}", best, row.model or "?")
    stdout.print(table)


@app.command("logs")
def logs_cmd(run: RunArg, follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")] = False,
             runs_dir: RunsDirOpt = None) -> None:
    """Print the run's log (``-f``: follow it while the run is active)."""
    rundir = RunDir.open(run, runs_dir)
    position = 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        try:
            with open(rundir.log_path, "rb") as fh:
                fh.seek(position)
                chunk = fh.read()
                position = fh.tell()
        except FileNotFoundError:
            chunk = b""
        if chunk:  # the job's stderr lands here too (library warnings quoting outside text): shown, never replayed
            sys.stdout.write(visible(decoder.decode(chunk), lines=True))
            sys.stdout.flush()
        if not follow or (not chunk and rundir.read_status().state not in ACTIVE):
            return
        time.sleep(0.5)


@app.command("stop")
def stop_cmd(run: RunArg, runs_dir: RunsDirOpt = None, json_out: JsonOpt = False) -> None:
    """Ask the run to stop: it checkpoints and ends `stopped` (waits up to 30 s)."""
    rundir = RunDir.open(run, runs_dir)
    status = stop_job(rundir)
    epoch = status["epoch"] if isinstance(status["epoch"], int) and not isinstance(status["epoch"], bool) else None
    result = {"run": rundir.id, "state": status.state, "epoch": epoch}
    if json_out:
        print_json(result)
    else:
        stdout.print(f"{result['run']}: {result['state']}" + (f" at epoch {epoch}" if epoch is not None else ""))


@app.command("resume")
def resume_cmd(run: RunArg, gpus: Annotated[str | None, typer.Option("--gpus", help="GPUs, e.g. 0,1.")] = None,
               runs_dir: RunsDirOpt = None, json_out: JsonOpt = False) -> None:
    """Continue a stopped or interrupted run from its last checkpoint, detached."""
    rundir = RunDir.open(run, runs_dir)
    pid = resume_job(rundir, gpus)
    if json_out:
        print_json({"run": rundir.id, "pid": pid, "state": "queued"})
    else:
        stdout.print(f"{rundir.id}: resumed (pid {pid})")
