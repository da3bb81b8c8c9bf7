"""Following a growing log file like ``tail -f`` (a run's log.txt, from ``jobs logs -f`` and the Training screen)."""

from __future__ import annotations

import codecs
from pathlib import Path

LOG_LINES = 200
"""Lines a follower starts with."""

TAIL_BYTES = 256 * 1024
"""How far back from the end of the file the first read looks for its last lines."""


class LogTail:
    """Follows a growing text file like ``tail -f``: its last lines first, then the lines appended since.

    Only complete lines are returned (a line still being written waits for its newline). A file that was
    replaced or got shorter is read again from its last lines, as is one that grew by more than TAIL_BYTES.
    """

    def __init__(self, path: Path, lines: int = LOG_LINES):
        self.path = path
        self.lines = lines
        self.offset = 0
        self.inode: int | None = None
        self.partial = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self) -> tuple[bool, list[str]]:
        """``(start over, lines)``: with start over the lines replace what was shown, else they follow it."""
        try:
            st = self.path.stat()
        except OSError:
            st = None
        inode, size = (st.st_ino, st.st_size) if st else (None, 0)
        try:
            if inode != self.inode or size < self.offset or size - self.offset > TAIL_BYTES:
                self.inode, self.offset, self.partial = inode, 0, ""
                self.decoder.reset()
                if st is None:
                    return True, []
                start = max(0, size - TAIL_BYTES)
                lines = self._read_from(start)
                return True, (lines[1:] if start else lines)[-self.lines:]  # the first may be cut
            if size == self.offset:
                return False, []
            return False, self._read_from(self.offset)
        except OSError:
            return False, []

    def _read_from(self, start: int) -> list[str]:
        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = fh.read()
        self.offset = start + len(data)
        *lines, self.partial = (self.partial + self.decoder.decode(data)).split("\n")
        return [line.rstrip("\r") for line in lines]
