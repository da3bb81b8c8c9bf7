"""detach(): start a command that outlives the terminal (training, evaluation) writing to a log of its own.

The process gets its own session (a closed SSH session's SIGHUP does not reach it), no stdin, the log
(owner-only, appended) as stdout and stderr, unbuffered Python output, and the home folder as its working
directory so it does not pin a mount the user was in.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def detach(command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> int:
    """Start ``command`` detached, appending its output to ``log_path``; returns its pid."""
    environment = dict(os.environ if env is None else env)
    environment.setdefault("PYTHONUNBUFFERED", "1")
    home = Path.home()
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log_file:
        proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env=environment, close_fds=True,
                                cwd=str(home) if home.is_dir() else None)
    return proc.pid
