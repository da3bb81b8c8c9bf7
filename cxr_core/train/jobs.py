"""Training jobs that outlive the terminal: start detached, list, stop, resume.

A detached job is ``python -m cxr_core.train RUN`` (``torch.distributed.run`` for several GPUs) in its own
session (``start_new_session``), so closing the terminal or losing SSH does not reach it; its output goes to
the run's log.txt. Stopping sends SIGTERM to the job's launcher process only (never the process group: the
loader workers must not die under the trainer); the trainer checkpoints and ends ``stopped``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from cxr_core.atomic import check_writable_dir
from cxr_core.errors import CxrError
from cxr_core.runs import ACTIVE, RunDir, RunStatus, default_runs_dir, detach, pid_alive, process_start_time
from cxr_core.train.config import RULES, ConfigError, TrainConfig, read_run_config, write_run_config

STOP_TIMEOUT_S = 30.0


class JobError(CxrError):
    """A job cannot be started, stopped or resumed in its current state."""


def gpu_list(gpus: str | None) -> list[str]:
    return [g.strip() for g in (gpus or "").split(",") if g.strip()]


def create_run(config: TrainConfig, runs_dir: Path | None = None) -> RunDir:
    """Check what can fail before training starts (settings, model name, weights, data root), then create the run
    directory and save the config. A mistake is one CxrError and leaves no run behind: a run that never
    started needs no directory (nor a ``failed`` row in ``jobs list``)."""
    from cxr_core.models import check_available

    config.validate()
    check_available(config.model, pretrained=config.pretrained, weights=config.weights,
                    image_size=config.image_size, unfreeze_layers=config.unfreeze_layers)
    if config.data and not Path(config.data).expanduser().exists():
        raise CxrError(f"{config.data}: no such data set root")
    _check_labels(config)
    check_writable_dir(runs_dir or default_runs_dir(), "runs folder")
    if config.with_reviews and config.reviews_upto is None:  # the decisions this run trains on, fixed now
        from cxr_core.store import ReviewStore

        with ReviewStore(Path(config.reviews_db) if config.reviews_db else None) as store:
            config = config.replace(reviews_upto=store.last_action_id())
    run = RunDir.create(runs_dir, config.name)
    write_run_config(run, config)
    return run


def _check_labels(config: TrainConfig) -> None:
    """``--findings`` against the label space of the data set (a detached job found out only after it started,
    leaving a failed run). Only for a root indexed before: re-scanning it is quick (unchanged files are not read)
    and sees a labels CSV edited since; a new root is indexed, and checked, by the job."""
    if not config.labels or not config.data:
        return
    from cxr_core.errors import DataError
    from cxr_core.store import StudyIndex
    from cxr_core.train.data import resolve_labels, source_options

    with StudyIndex() as index:
        try:
            index.label_space(config.data)
        except DataError:
            return  # not indexed yet
        scan = index.scan(config.data, config.format, source_options(config))
        space = index.label_space(scan.report.root)
    if len(space):
        resolve_labels(space, config.labels)


def start(config: TrainConfig, runs_dir: Path | None = None) -> tuple[RunDir, int]:
    """Create a run for ``config`` (checked first: see :func:`create_run`) and start it detached; what
    ``cxr-tui train --detach`` and the TUI's launch form both do. Returns the run and the launcher's pid."""
    run = create_run(config, runs_dir)
    return run, launch(run, gpus=config.gpus)


def job_command(run: RunDir, *, resume: bool = False, gpus: str | None = None) -> list[str]:
    tail = ["-m", "cxr_core.train", str(run.path)] + (["--resume"] if resume else [])
    devices = gpu_list(gpus)
    if len(devices) > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(devices)}", *tail]
    return [sys.executable, *tail]


def launch(run: RunDir, *, resume: bool = False, gpus: str | None = None) -> int:
    """Start the run detached; returns the launcher pid (also written to status.json).

    The check that nothing runs the run yet, writing ``queued`` and recording the started process happen under
    the run's lock, so of two launches (or resumes) at the same moment exactly one starts a job."""
    _check_gpus(gpus)
    with run.lock():
        _refuse_if_owned(run)
        return _spawn(run, resume=resume, gpus=gpus)


def _check_gpus(gpus: str | None) -> None:
    """``--gpus`` of a launch or resume, by the config's rule (``abc`` trained on the CPU without a word)."""
    rule, allowed = RULES["gpus"]
    if gpus is not None and not rule(gpus):
        raise ConfigError(f"--gpus {gpus!r}: {allowed}")


def _refuse_if_owned(run: RunDir) -> None:
    owner = run.owner()
    if owner is not None:
        state = run.read_status().state
        raise JobError(f"run {run.id} is already {state if state in ACTIVE else 'running'} (pid {owner})")


def _spawn(run: RunDir, *, resume: bool, gpus: str | None) -> int:
    """Write ``queued`` and start the job; the caller holds the run's lock."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_list(gpus))
    run.update_status(state="queued", pid=None, pid_start=None, launcher_pid=None, launcher_start=None, error=None,
                      phase=None, finished_at=None, detached=True, gpus=gpus)
    try:
        pid = detach(job_command(run, resume=resume, gpus=gpus), run.log_path, env)
    except OSError as exc:
        run.update_status(state="failed", error=f"could not start the job ({exc.strerror or exc})")
        raise JobError(f"{run.path}: could not start the job ({exc.strerror or exc})") from None
    # Only the launcher's identity: the trainer records its own pid and state when it starts.
    run.update_status(launcher_pid=pid, launcher_start=process_start_time(pid))
    return pid


def stop(run: RunDir, timeout: float = STOP_TIMEOUT_S, wait: bool = True) -> RunStatus:
    """SIGTERM the job and (``wait``) until its status leaves running/queued; the trainer checkpoints first.

    A job stopped while still starting (the signal can arrive before the trainer has its handler, and end the
    process at once) is recorded here as ``stopped``, with a line in its log, instead of reading ``interrupted``."""
    with run.lock():
        status = run.read_status()
        if status.state not in ACTIVE:
            why = f" ({status['error']})" if status.state == "failed" and status["error"] else ""
            raise JobError(f"run {run.id} is {status.state}{why}, not running")
        pid = status["launcher_pid"] or status["pid"]
        start = status["launcher_start"] if status["launcher_pid"] else status["pid_start"]
        if not pid_alive(pid, start):
            raise JobError(f"run {run.id}: its process {pid} is gone (the run is interrupted; resume it)")
        os.kill(pid, signal.SIGTERM)
    if not wait:
        return run.read_status()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run.read_status()
        if status.state not in ACTIVE:
            return _stopped_while_starting(run, pid) if status.state == "interrupted" else status
        time.sleep(0.2)
    raise JobError(f"run {run.id} did not stop within {timeout:.0f} s (pid {pid}); it may be writing a checkpoint")


def _stopped_while_starting(run: RunDir, pid: int) -> RunStatus:
    """The job we signalled is gone and its status still says ``queued`` (its trainer never reported): it ended
    of the signal during start-up. That was the stop asked for: record it as one."""
    with run.lock():
        status = run.read_status()
        if status.state != "interrupted" or status["state"] != "queued" or status["launcher_pid"] != pid:
            return status
        run.update_status(state="stopped", phase=None, error=None, finished_at=time.time())
        line = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} INFO stopped by request while starting (pid {pid} ended "
                "before training began)\n")
        try:
            fd = os.open(run.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError:
            pass  # the status says it; the log line is a courtesy
        return run.read_status()


def resume(run: RunDir, gpus: str | None = None) -> int:
    """Continue a stopped, interrupted or failed run from its last checkpoint, detached; a run that never wrote
    one (killed during its first epoch) starts again from the beginning with the same config. Under the run's
    lock (see :func:`launch`): of several resumes at once, one starts the job and the others are refused."""
    _check_gpus(gpus)
    with run.lock():
        _refuse_if_owned(run)
        status = run.read_status()
        if status.state == "finished":
            raise JobError(f"run {run.id} already finished")
        read_run_config(run)  # a directory without a config is not a run to start
        resumable = run.last_checkpoint.is_file()
        if not resumable:  # the aborted first epoch's step lines describe training no checkpoint kept
            run.metrics_path.unlink(missing_ok=True)
        gpus = gpus if gpus is not None else status["gpus"]
        return _spawn(run, resume=resumable, gpus=gpus if isinstance(gpus, str) else None)
