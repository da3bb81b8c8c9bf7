"""How many colours the terminal shows, decided once, before the app owns the terminal.

Textual draws through a rich ``Console`` whose colour system comes from ``TEXTUAL_COLOR_SYSTEM`` (read when
``textual.constants`` is imported, ``auto`` by default) or, when that is ``auto``, from ``COLORTERM`` and the
suffix of ``TERM`` (rich's ``Console._detect_color_system``). Over SSH and inside tmux ``COLORTERM`` is
usually missing, so a terminal that shows 24-bit colour is driven in 256: a film of ~26 greys. This module looks
further, in this order, and the first answer wins:

1. an explicit choice: ``--color``, then ``CXR_COLOR``, then a ``TEXTUAL_COLOR_SYSTEM`` other than ``auto``;
2. the environment: ``COLORTERM=truecolor|24bit``, a ``TERM`` ending in ``-direct`` / ``truecolor`` / ``24bit``,
   or a terminal known to draw 24-bit colour (kitty, WezTerm, iTerm2, Ghostty, VS Code, Windows Terminal...);
3. inside tmux, tmux itself: the client's features (``#{client_termfeatures}`` has ``RGB``), else the
   ``terminal-features`` (``RGB``) / ``terminal-overrides`` (``Tc`` / ``RGB``) entries matching the client's
   ``TERM``;
4. outside tmux and screen, the terminal's own answer (:func:`query_terminal`): XTGETTCAP for ``RGB`` and a
   DECRQSS read-back of a 24-bit background, closed by a DA1 query every terminal answers, so nothing waits on a
   terminal that stays silent and no late answer is left for Textual to read as key presses;
5. otherwise rich's rule (``TERM`` ``*-256color`` -> 256, else 16).

:func:`apply_color_system` then makes Textual use the answer (``TEXTUAL_COLOR_SYSTEM``, also patched into
``textual.constants`` when Textual was imported already; ``COLORTERM=truecolor`` for truecolor).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

SYSTEMS = ("truecolor", "256", "16")
CHOICES = ("auto", *SYSTEMS)
ENV_VAR = "CXR_COLOR"

# Names people write for each system (``--color``, CXR_COLOR, TEXTUAL_COLOR_SYSTEM's own names).
_ALIASES = {"auto": "auto", "truecolor": "truecolor", "24bit": "truecolor", "24-bit": "truecolor", "rgb": "truecolor",
            "direct": "truecolor", "256": "256", "8bit": "256", "8-bit": "256", "eight_bit": "256", "16": "16",
            "standard": "16", "ansi": "16", "windows": "16"}
# What Textual (rich) calls each system.
TEXTUAL_NAMES = {"truecolor": "truecolor", "256": "256", "16": "standard"}

# Terminals that draw 24-bit colour, by the variables they set (these survive where COLORTERM was not set).
_TRUECOLOR_TERM_PROGRAMS = {"iterm.app", "wezterm", "ghostty", "vscode", "hyper", "tabby", "rio", "warpterminal",
                            "kitty", "alacritty", "contour", "konsole"}
_TRUECOLOR_TERMS = ("xterm-kitty", "xterm-ghostty", "wezterm", "alacritty", "foot", "foot-extra", "contour", "rio")
_TRUECOLOR_MARKERS = ("KITTY_WINDOW_ID", "WEZTERM_PANE", "GHOSTTY_RESOURCES_DIR", "WT_SESSION", "ALACRITTY_WINDOW_ID",
                      "KONSOLE_VERSION")


@dataclass(frozen=True)
class ColorSupport:
    """The colour system to drive the terminal in, and why (shown in logs / the help screen)."""

    system: str  # "truecolor" | "256" | "16"
    reason: str

    @property
    def textual_name(self) -> str:
        return TEXTUAL_NAMES[self.system]


def parse_choice(value: str | None) -> str:
    """``auto | truecolor | 256 | 16`` (and the usual other names: 24bit, 8bit, standard...); ValueError else."""
    key = (value or "auto").strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown colour system {value!r} (choose from {', '.join(CHOICES)})")
    return _ALIASES[key]


def from_environment(environ: Mapping[str, str]) -> ColorSupport | None:
    """Truecolor when the environment says so (COLORTERM, TERM, a known terminal); None when it does not tell."""
    colorterm = environ.get("COLORTERM", "").strip().lower()
    if colorterm in ("truecolor", "24bit"):
        return ColorSupport("truecolor", f"COLORTERM={colorterm}")
    term = environ.get("TERM", "").strip().lower()
    if term.endswith(("-direct", "truecolor", "24bit")) or term in _TRUECOLOR_TERMS:
        return ColorSupport("truecolor", f"TERM={term}")
    if in_multiplexer(environ):
        return None  # the outer terminal's variables say nothing about what tmux / screen passes on
    program = environ.get("TERM_PROGRAM", "").strip().lower()
    if program in _TRUECOLOR_TERM_PROGRAMS:
        return ColorSupport("truecolor", f"TERM_PROGRAM={environ['TERM_PROGRAM']}")
    for name in _TRUECOLOR_MARKERS:
        if environ.get(name):
            return ColorSupport("truecolor", f"{name} is set")
    return None


def in_multiplexer(environ: Mapping[str, str]) -> bool:
    term = environ.get("TERM", "").lower()
    return bool(environ.get("TMUX")) or bool(environ.get("STY")) or term.startswith(("screen", "tmux"))


# -- tmux ---------------------------------------------------------------------------------------------------------

TmuxRunner = Callable[[list[str]], "str | None"]


def run_tmux(args: list[str]) -> str | None:
    """``tmux ARGS`` on the server of this pane ($TMUX); its stdout, or None when tmux is missing or fails."""
    tmux = shutil.which("tmux")
    if tmux is None:
        return None
    try:
        done = subprocess.run([tmux, *args], capture_output=True, text=True, timeout=1.0, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def tmux_support(environ: Mapping[str, str], run: TmuxRunner = run_tmux) -> ColorSupport | None:
    """Inside tmux: truecolor when tmux passes 24-bit colour on to the client's terminal; None when it does not
    say (no client attached, tmux older than 3.2 without a matching override) or this is not tmux."""
    if not environ.get("TMUX"):
        return None
    target = ["-t", environ["TMUX_PANE"]] if environ.get("TMUX_PANE") else []
    answer = run(["display-message", "-p", *target, "#{client_termname}\t#{client_termfeatures}"])
    termname, features = "", ""
    if answer is not None:
        termname, _, features = answer.strip("\r\n").partition("\t")
    if "RGB" in _split_features(features):
        return ColorSupport("truecolor", f"tmux client {termname or '?'} has the RGB feature")
    for option, caps in (("terminal-features", {"RGB"}), ("terminal-overrides", {"Tc", "RGB"})):
        for entry in (run(["show", "-sv", option]) or "").splitlines():
            pattern, *names = entry.strip().strip("'\"").split(":")
            if not pattern or not caps & {name.split("=")[0] for name in names}:
                continue
            if pattern == "*" or (termname and fnmatch.fnmatchcase(termname, pattern)):
                return ColorSupport("truecolor", f"tmux {option} {entry.strip()}")
    return None


def _split_features(features: str) -> set[str]:
    return {part.strip() for part in re.split(r"[,:]", features) if part.strip()}


# -- asking the terminal ----------------------------------------------------------------------------------------

# A 24-bit background, read back with DECRQSS; XTGETTCAP for the RGB capability; DA1, answered by every terminal,
# closes the exchange. The SGR is reset at once and nothing is printed in between.
PROBE = "\x1b[48;2;1;2;3m\x1bP$qm\x1b\\\x1b[0m\x1bP+q524742\x1b\\\x1b[c"
_DA1 = re.compile(rb"\x1b\[\?[0-9;]*c")
_DECRQSS = re.compile(rb"\x1bP1\$r([0-9:;]*)m")
_XTGETTCAP = re.compile(rb"\x1bP([01])\+r524742")


def parse_query_answer(answer: bytes) -> ColorSupport | None:
    """What the terminal's answer to :data:`PROBE` says: truecolor, 256 (it stored our colour as a palette
    index), or None (it did not say)."""
    tcap = _XTGETTCAP.search(answer)
    if tcap and tcap.group(1) == b"1":
        return ColorSupport("truecolor", "the terminal reports the RGB capability (XTGETTCAP)")
    sgr = _DECRQSS.search(answer)
    if sgr:
        params = sgr.group(1).decode().replace(":", ";")
        if re.search(r"(^|;)48;2;(\d*;)?1;2;3($|;)", params):
            return ColorSupport("truecolor", "the terminal keeps a 24-bit colour (DECRQSS)")
        if re.search(r"(^|;)48;5;\d+", params):
            return ColorSupport("256", "the terminal turned a 24-bit colour into a palette index (DECRQSS)")
    return None


def query_terminal(in_fd: int | None = None, out_fd: int | None = None, timeout: float = 0.5) -> ColorSupport | None:
    """Ask the terminal on ``in_fd`` / ``out_fd`` (default: this process's stdin / stdout, when both are
    terminals) whether it keeps 24-bit colours. Waits for the DA1 answer at most ``timeout`` seconds and reads
    no byte past it, so keys typed meanwhile stay for the app. Only before the app owns the terminal."""
    if os.name != "posix":
        return None
    import select
    import termios
    import tty

    if in_fd is None or out_fd is None:
        stdin, stdout = sys.__stdin__, sys.__stdout__
        if stdin is None or stdout is None or stdin.closed or stdout.closed:
            return None
        in_fd, out_fd = stdin.fileno(), stdout.fileno()
    if not (os.isatty(in_fd) and os.isatty(out_fd)):
        return None
    try:
        saved = termios.tcgetattr(in_fd)
    except termios.error:
        return None
    answer = b""
    try:
        tty.setcbreak(in_fd, termios.TCSANOW)  # no echo of the answer, no waiting for a newline
        os.write(out_fd, PROBE.encode())
        deadline = time.monotonic() + timeout
        while not _DA1.search(answer):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([in_fd], [], [], left)[0]:
                break
            byte = os.read(in_fd, 1)
            if not byte:
                break
            answer += byte
    except OSError:
        return None
    finally:
        termios.tcsetattr(in_fd, termios.TCSANOW, saved)
    return parse_query_answer(answer)


def _may_query(environ: Mapping[str, str]) -> bool:
    term = environ.get("TERM", "").lower()
    return not in_multiplexer(environ) and term not in ("", "dumb", "linux", "cons25") and not environ.get("INSIDE_EMACS")


# -- the decision ---------------------------------------------------------------------------------------------------


def rich_guess(environ: Mapping[str, str]) -> ColorSupport:
    """What rich would choose from TERM alone (``*-256color`` -> 256, ``*-16color`` -> 16, else 16)."""
    term = environ.get("TERM", "").strip().lower()
    colors = term.rpartition("-")[2]
    if colors == "256color":
        return ColorSupport("256", f"TERM={term}")
    return ColorSupport("16", f"TERM={term or '(unset)'}")


def detect_color_system(environ: Mapping[str, str] | None = None, *, tmux: TmuxRunner = run_tmux,
                        query: Callable[[], ColorSupport | None] | None = query_terminal) -> ColorSupport:
    """The colour system the terminal can show (steps 2-5 of the module's order). ``query=None`` never asks
    the terminal itself."""
    environ = os.environ if environ is None else environ
    found = from_environment(environ) or tmux_support(environ, tmux)
    if found is None and query is not None and _may_query(environ):
        found = query()
    return found or rich_guess(environ)


def resolve_color(option: str | None = "auto", environ: Mapping[str, str] | None = None, *,
                  tmux: TmuxRunner = run_tmux,
                  query: Callable[[], ColorSupport | None] | None = query_terminal) -> ColorSupport:
    """``--color`` (``auto`` or None: not given), then CXR_COLOR, then TEXTUAL_COLOR_SYSTEM, then detection.
    ValueError for a name that is not a colour system."""
    environ = os.environ if environ is None else environ
    for source, value in (("--color", option), (ENV_VAR, environ.get(ENV_VAR)),
                          ("TEXTUAL_COLOR_SYSTEM", environ.get("TEXTUAL_COLOR_SYSTEM"))):
        if value is None or not value.strip():
            continue
        try:
            choice = parse_choice(value)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        if choice != "auto":
            return ColorSupport(choice, f"{source}={value.strip()}")
    return detect_color_system(environ, tmux=tmux, query=query)


def apply_color_system(support: ColorSupport, environ: dict[str, str] | None = None) -> None:
    """Make the next Textual App draw in ``support.system``: TEXTUAL_COLOR_SYSTEM in the environment (Textual
    reads it when ``textual.constants`` is imported), the constant itself when that import happened already,
    and COLORTERM=truecolor for truecolor (what rich's own detection and child processes look at)."""
    environ = os.environ if environ is None else environ
    environ["TEXTUAL_COLOR_SYSTEM"] = support.textual_name
    if support.system == "truecolor":
        environ["COLORTERM"] = "truecolor"
    elif environ.get("COLORTERM", "").lower() in ("truecolor", "24bit"):
        environ.pop("COLORTERM")  # a forced 256 / 16 is not undone by rich's detection anywhere else
    constants = sys.modules.get("textual.constants")
    if constants is not None and environ is os.environ:
        constants.COLOR_SYSTEM = support.textual_name  # type: ignore[attr-defined, misc]
