"""``cxr-tui train``'s options are built from TrainConfig's fields: every setting is an option with help, the
findings option and its old name, and the command line winning over a --config file. In-process, no training."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from cxr_core.train import TrainConfig
from cxr_tui.cli.main import app
from cxr_tui.cli.train import train_config

NOT_OPTIONS = {"cv_fold", "reviews_upto"}  # set by cross-validation on its fold runs, and by create_run
RUN_OPTIONS = {"--config", "--runs-dir", "--resume", "--detach", "--list-models", "--json"}


@pytest.fixture(scope="module")
def command():
    return typer.main.get_command(app).commands["train"]


def _config(command, *args: str) -> TrainConfig:
    """The TrainConfig ``train ARGS`` would run with: its options parsed as the command does, then merged."""
    params = dict(command.make_context("train", list(args)).params)
    return train_config(params, params.pop("config_file"))


def test_every_setting_is_an_option_with_help(command):
    by_name = {p.name: p for p in command.params}
    for field in dataclasses.fields(TrainConfig):
        if field.name in NOT_OPTIONS:
            assert field.name not in by_name
            continue
        assert field.name in by_name, f"{field.name} has no option"
        assert field.metadata["help"].strip(), f"{field.name} has no help in its metadata"
    for param in command.params:
        assert param.help and param.help.strip(), f"{param.opts} has no help"
    flags = {flag for p in command.params for flag in p.opts}
    assert RUN_OPTIONS <= flags
    assert {"--image-size", "--findings", "--epochs-grid", "--amp", "--max-steps-per-epoch"} <= flags


def test_findings_and_its_old_name_both_set_the_findings(command):
    assert _config(command, "--data", ".", "--findings", "Effusion, Mass").labels == ["Effusion", "Mass"]
    assert _config(command, "--data", ".", "--labels", "Nodule").labels == ["Nodule"]
    assert _config(command, "--data", ".").labels == []


def test_help_lists_every_option_but_the_old_and_hidden_ones():
    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert out.exit_code == 0, out.output
    assert "--findings" in out.output and "--labels " not in out.output and "--max-steps-per-epoch" not in out.output
    for flag in ("--image-size", "--epochs-grid", "--focal-gamma", "--channels-last", "--config", "--json"):
        assert flag in out.output
    assert "(resnet10t)" in out.output and "(0.25)" in out.output  # defaults shown


def test_command_line_wins_over_the_config_file_which_wins_over_defaults(command, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 7\nbatch_size = 8\nlabels = ["Mass"]\namp = false\n')
    config = _config(command, "--data", str(tmp_path), "--config", str(path), "--epochs", "3", "--findings", "Effusion")
    assert (config.epochs, config.labels) == (3, ["Effusion"])  # command line
    assert (config.batch_size, config.amp) == (8, False)  # file
    assert config.model == TrainConfig.model and config.lr == 2e-3  # default, resolved
    assert _config(command, "--data", str(tmp_path), "--config", str(path), "--amp").amp is True


def test_a_bad_list_value_is_one_line(tmp_path, monkeypatch, capsys):
    from cxr_tui.cli.main import run

    monkeypatch.setattr("sys.argv", ["cxr-tui", "train", "--data", str(tmp_path), "--cv", "2", "--epochs-grid", "30,x",
                                     "--runs-dir", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as done:
        run()
    err = capsys.readouterr().err
    assert done.value.code == 1 and "--epochs-grid" in err and "'x' is not a whole number" in err
    assert err.strip().count("\n") == 0 and not (tmp_path / "runs").exists()
