"""The CLI's one error boundary (``cxr_tui.cli.main.run``): one line on stderr, and with ``--json`` a JSON object on
stdout too, so a script reading the JSON always gets one."""

from __future__ import annotations

import json
import sys

import pytest

from cxr_tui.cli.main import run


@pytest.mark.parametrize("json_out", [False, True])
def test_a_mistake_is_one_line_and_json_when_asked(json_out, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope"
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "argv", ["cxr-tui", "data", "index", str(missing), *(["--json"] if json_out else [])])
    with pytest.raises(SystemExit) as exit_:
        run()
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert err.strip() == f"error: {missing}: no such file or directory"
    if json_out:
        assert json.loads(out) == {"error": f"{missing}: no such file or directory", "exit_code": 1}
    else:
        assert out == ""


def test_json_after_a_double_dash_is_an_argument_not_the_option(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "argv", ["cxr-tui", "data", "index", "--", str(tmp_path / "--json")])
    with pytest.raises(SystemExit):
        run()
    assert capsys.readouterr().out == ""


def test_labels_option_reads_a_relative_path_from_the_current_folder_first(tmp_path, monkeypatch):
    from pathlib import Path

    from cxr_tui.cli.options import _labels_path

    monkeypatch.chdir(tmp_path)
    assert _labels_path(None) is None
    assert _labels_path(Path("labels.csv")) == Path("labels.csv")  # not here: ROOT/labels.csv, as before
    Path("alt.csv").write_text("image,labels\n")
    assert _labels_path(Path("alt.csv")) == tmp_path / "alt.csv"  # was looked for under ROOT: "not found"
