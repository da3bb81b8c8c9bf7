"""Colour capability detection (cxr_tui.terminal): the environment, tmux's answer (mocked), the terminal's own
answer (a pseudo-terminal plays the terminal), the explicit choices, and how Textual is told."""

from __future__ import annotations

import os
import pty
import threading

import pytest

from cxr_tui import terminal
from cxr_tui.terminal import (
    ColorSupport,
    apply_color_system,
    detect_color_system,
    parse_choice,
    parse_query_answer,
    query_terminal,
    resolve_color,
    tmux_support,
)


def no_tmux(args: list[str]) -> str | None:
    raise AssertionError(f"tmux asked outside tmux: {args}")


def no_query() -> ColorSupport | None:
    raise AssertionError("the terminal was asked")


def detect(env: dict[str, str], tmux=no_tmux, query=no_query) -> ColorSupport:
    return detect_color_system(env, tmux=tmux, query=query)


@pytest.mark.parametrize(("env", "system"), [
    ({"COLORTERM": "truecolor", "TERM": "xterm-256color"}, "truecolor"),
    ({"COLORTERM": "24bit", "TERM": "xterm"}, "truecolor"),
    ({"TERM": "xterm-direct"}, "truecolor"),
    ({"TERM": "xterm-truecolor"}, "truecolor"),
    ({"TERM": "xterm-kitty"}, "truecolor"),
    ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, "truecolor"),
    ({"TERM": "xterm-256color", "WT_SESSION": "abc"}, "truecolor"),
])
def test_the_environment_says_truecolor(env, system):
    assert detect(env).system == system


def test_without_evidence_rich_s_rule_stands():
    assert detect({"TERM": "xterm-256color"}, query=lambda: None).system == "256"
    assert detect({"TERM": "xterm"}, query=lambda: None).system == "16"
    assert detect({"TERM": "linux"}).system == "16"  # the Linux console is never asked
    assert detect({"TERM": "dumb"}).system == "16"


def test_the_terminal_s_answer_is_used_outside_multiplexers():
    answer = ColorSupport("truecolor", "asked")
    assert detect({"TERM": "xterm-256color"}, query=lambda: answer) is answer
    assert detect({"TERM": "xterm-256color"}, query=None).system == "256"  # query=None: never ask


TMUX_ENV = {"TMUX": "/tmp/tmux-1000/default,123,0", "TMUX_PANE": "%3", "TERM": "screen-256color"}


def tmux_answers(features: str = "", termname: str = "xterm-256color", overrides: str = "",
                 terminal_features: str = "xterm*:clipboard:ccolour:cstyle:focus:title\nscreen*:title\n"):
    asked: list[list[str]] = []

    def run(args: list[str]) -> str | None:
        asked.append(args)
        if args[0] == "display-message":
            assert args[-1] == "#{client_termname}\t#{client_termfeatures}" and ["-t", "%3"] == args[2:4]
            return f"{termname}\t{features}\n"
        if args[:2] == ["show", "-sv"]:
            return {"terminal-features": terminal_features, "terminal-overrides": overrides}[args[2]]
        raise AssertionError(args)

    return run, asked


def test_inside_tmux_the_client_s_rgb_feature_means_truecolor():
    run, asked = tmux_answers(features="256,RGB,bpaste,clipboard,mouse,strikethrough,title")
    found = detect(TMUX_ENV, tmux=run)
    assert found.system == "truecolor" and "RGB" in found.reason
    assert len(asked) == 1


def test_inside_tmux_an_override_matching_the_client_means_truecolor():
    run, _ = tmux_answers(features="256,bpaste", overrides="xterm-256color:Tc\n")
    assert detect(TMUX_ENV, tmux=run).system == "truecolor"
    run, _ = tmux_answers(features="", overrides="*:RGB\n", termname="")
    assert detect(TMUX_ENV, tmux=run).system == "truecolor"
    run, _ = tmux_answers(terminal_features="xterm*:clipboard\nxterm-256*:RGB\n")
    assert detect(TMUX_ENV, tmux=run).system == "truecolor"


def test_inside_tmux_without_rgb_it_is_256_and_the_terminal_is_not_asked():
    run, asked = tmux_answers(features="256,bpaste,clipboard", overrides="rxvt*:Tc\n")
    assert detect(TMUX_ENV, tmux=run).system == "256"
    assert [a[:3] for a in asked[1:]] == [["show", "-sv", "terminal-features"], ["show", "-sv", "terminal-overrides"]]
    assert detect(TMUX_ENV, tmux=lambda args: None).system == "256"  # tmux missing or failing
    # The outer terminal's variables are not evidence inside tmux; COLORTERM (what tmux passes on) is.
    assert detect({**TMUX_ENV, "TERM_PROGRAM": "iTerm.app"}, tmux=lambda args: None).system == "256"
    assert detect({**TMUX_ENV, "COLORTERM": "truecolor"}).system == "truecolor"


def test_tmux_is_asked_only_inside_tmux():
    assert tmux_support({"TERM": "screen-256color"}, no_tmux) is None


@pytest.mark.parametrize(("answer", "system"), [
    (b"\x1bP1+r524742\x1b\\\x1b[?62;22c", "truecolor"),
    (b"\x1bP1$r0;48:2::1:2:3m\x1b\\\x1bP0+r524742\x1b\\\x1b[?64;1c", "truecolor"),
    (b"\x1bP1$r48;2;1;2;3m\x1b\\\x1b[?62c", "truecolor"),
    (b"\x1bP1$r0;48;5;16m\x1b\\\x1b[?62c", "256"),
    (b"\x1bP0$r\x1b\\\x1bP0+r524742\x1b\\\x1b[?62c", None),
    (b"\x1b[?1;2c", None),
    (b"", None),
])
def test_the_terminal_s_answer_is_read(answer, system):
    found = parse_query_answer(answer)
    assert (found.system if found else None) == system


def _fake_terminal(answer: bytes, after: bytes = b""):
    """A pseudo-terminal whose far end answers the probe with ``answer`` (then sends ``after``)."""
    master, slave = pty.openpty()
    seen = bytearray()

    def play():
        while not seen.endswith(b"\x1b[c"):
            seen.extend(os.read(master, 1024))
        if answer:
            os.write(master, answer + after)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return master, slave, seen, thread


def test_query_terminal_reads_up_to_the_da1_answer_and_no_further():
    master, slave, seen, thread = _fake_terminal(b"\x1bP1$r48:2::1:2:3m\x1b\\\x1b[?62;4c", after=b"j")
    try:
        found = query_terminal(slave, slave, timeout=2.0)
        thread.join(2)
        assert found is not None and found.system == "truecolor"
        assert bytes(seen) == terminal.PROBE.encode()
        assert os.read(slave, 1) == b"j"  # a key typed after the answer stays for the app
    finally:
        os.close(master)
        os.close(slave)


def test_query_terminal_gives_up_on_a_silent_terminal():
    master, slave, _, thread = _fake_terminal(b"")
    try:
        assert query_terminal(slave, slave, timeout=0.2) is None
    finally:
        os.close(master)
        os.close(slave)


def test_query_terminal_needs_a_terminal(tmp_path):
    with open(tmp_path / "f", "w+b") as f:
        assert query_terminal(f.fileno(), f.fileno()) is None


def test_explicit_choices_win_in_order():
    env = {"COLORTERM": "truecolor", "CXR_COLOR": "256", "TEXTUAL_COLOR_SYSTEM": "standard"}
    assert resolve_color("16", env, tmux=no_tmux, query=no_query).system == "16"
    assert resolve_color("auto", env, tmux=no_tmux, query=no_query).system == "256"
    assert resolve_color(None, {**env, "CXR_COLOR": "auto"}, tmux=no_tmux, query=no_query).system == "16"
    assert resolve_color("auto", {"COLORTERM": "truecolor", "TEXTUAL_COLOR_SYSTEM": "auto"}, tmux=no_tmux,
                         query=no_query).system == "truecolor"
    assert resolve_color("24bit", {}, tmux=no_tmux, query=no_query).reason == "--color=24bit"
    with pytest.raises(ValueError, match="CXR_COLOR"):
        resolve_color("auto", {"CXR_COLOR": "purple"}, tmux=no_tmux, query=no_query)


def test_parse_choice():
    assert [parse_choice(v) for v in ("auto", None, "TrueColor", "24bit", "8bit", "256", "standard", "16")] == [
        "auto", "auto", "truecolor", "truecolor", "256", "256", "16", "16"]
    with pytest.raises(ValueError):
        parse_choice("65536")


def test_apply_tells_textual(monkeypatch):
    import textual.constants
    from textual.app import App

    monkeypatch.setattr(textual.constants, "COLOR_SYSTEM", "auto")
    for name in ("TEXTUAL_COLOR_SYSTEM", "COLORTERM"):  # set, then removed: monkeypatch restores what was there
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("TERM", "screen-256color")
    assert App().console.color_system == "256"
    apply_color_system(ColorSupport("truecolor", "test"))
    assert os.environ["TEXTUAL_COLOR_SYSTEM"] == "truecolor" and os.environ["COLORTERM"] == "truecolor"
    assert App().console.color_system == "truecolor"
    apply_color_system(ColorSupport("256", "test"))
    assert "COLORTERM" not in os.environ and App().console.color_system == "256"
    apply_color_system(ColorSupport("16", "test"))
    assert App().console.color_system == "standard"


def test_apply_to_another_mapping_leaves_the_process_alone(monkeypatch):
    import textual.constants

    monkeypatch.setattr(textual.constants, "COLOR_SYSTEM", "auto")
    env: dict[str, str] = {}
    apply_color_system(ColorSupport("truecolor", "test"), env)
    assert env == {"TEXTUAL_COLOR_SYSTEM": "truecolor", "COLORTERM": "truecolor"}
    assert textual.constants.COLOR_SYSTEM == "auto"


def test_the_cli_option_reaches_the_environment(monkeypatch):
    from typer.testing import CliRunner

    from cxr_tui.cli.main import app, with_default_command

    monkeypatch.setenv("CXR_COLOR", "auto")
    assert CliRunner().invoke(app, ["--color", "8bit", "jobs", "--help"]).exit_code == 0
    assert os.environ["CXR_COLOR"] == "256"  # what `open` and `demo` resolve when they start the app
    result = CliRunner().invoke(app, ["--color", "purple", "jobs", "--help"])
    assert result.exit_code != 0

    assert with_default_command(["--color", "256", "demo"]) == ["--color", "256", "demo"]
    assert with_default_command(["--color=16"]) == ["--color=16", "open"]
    assert with_default_command(["/data", "--color", "16"]) == ["open", "/data", "--color", "16"]
