"""Running a training run in this process: logging into the run, clean stop on SIGTERM/SIGINT, status on failure.

Used by ``cxr-tui train`` in the foreground, by detached jobs (``python -m cxr_core.train RUN``), and by
every rank under ``torchrun``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from contextlib import contextmanager

from cxr_core.distributed import Dist
from cxr_core.errors import CxrError
from cxr_core.runs import RunDir
from cxr_core.text import visible
from cxr_core.train.config import read_run_config
from cxr_core.train.trainer import Trainer

log = logging.getLogger("cxr.train")


@contextmanager
def run_logging(run: RunDir | None, echo: bool):
    """Log lines go to the run's log.txt (rank 0) and, when ``echo``, to stderr."""
    handlers: list[logging.Handler] = []
    if run is not None:
        os.close(os.open(run.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # owner-only, like the run
        handlers.append(logging.FileHandler(run.log_path, encoding="utf-8"))
    if echo:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = _VisibleFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    previous = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(previous)


class _VisibleFormatter(logging.Formatter):
    """Log lines name outside things (data roots, label names): controls in them are written as escapes, so
    ``jobs logs`` and the TUI's log pane never replay them to a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record), lines=True)


def run_training(run: RunDir, *, resume: bool = False, dist: Dist = Dist(), echo: bool = False,
                 callbacks: tuple = ()) -> str:
    """Train the run described by ``run/config.toml``; returns ``finished`` or ``stopped``.

    A CxrError (or any other failure) marks the run ``failed`` with a one-line reason and is re-raised.
    """
    config = read_run_config(run)
    own = run if dist.is_main else None
    with run_logging(own, echo):
        trainer = Trainer(config, own, dist=dist, callbacks=callbacks)

        def request_stop(signum, _frame) -> None:
            log.info("received %s: stopping after the current step", signal.Signals(signum).name)
            trainer.stop_event.set()

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        if own is not None:
            own.mark_running(phase="starting", resumed=resume)
        try:
            return trainer.fit(resume=resume)
        except CxrError as exc:
            _failed(own, str(exc))
            raise
        except Exception as exc:
            log.error("%s", traceback.format_exc())
            _failed(own, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _failed(run: RunDir | None, reason: str) -> None:
    log.error("run failed: %s", reason)
    if run is not None:
        run.update_status(state="failed", error=reason, phase=None)
