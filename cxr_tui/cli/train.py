"""``cxr-tui train``: train a model, in the foreground, detached (``--detach``), or under torchrun.

The training settings' options are not written here: :data:`SETTINGS` (TrainConfig's fields) become typer options
through the command's signature (``train.__signature__``), each with the help text, flag name and display hints of
its field's metadata (:func:`cxr_core.train.config.setting`). A new TrainConfig field is a new option.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from copy import copy
from pathlib import Path
from typing import Annotated, Any

import typer

from cxr_core.runs import RunDir
from cxr_core.train import TrainConfig, load_config, read_run_config
from cxr_tui.cli.options import DeviceOpt, FormatOpt, IUMappingOpt, JsonOpt, RunsDirOpt, UncertainOpt
from cxr_tui.cli.output import print_json, stdout

SHARED = {"format": FormatOpt, "uncertainty": UncertainOpt, "iu_mapping": IUMappingOpt, "device": DeviceOpt}
"""Settings whose option other commands have too: the flag and its help are declared once, in options.py (the type,
default and validation stay the setting's)."""

SETTINGS = tuple(f for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal"))
"""The settings that are options of ``train``; the others are set by cxr itself (``cv_fold``)."""

_TYPES = typing.get_type_hints(TrainConfig)
_KIND = inspect.Parameter.KEYWORD_ONLY


def flag(setting: dataclasses.Field) -> str:
    """The option of a setting: ``--image-size`` for ``image_size``, unless the metadata names another."""
    return setting.metadata.get("flag", "--" + setting.name.replace("_", "-"))


def _value_type(setting: dataclasses.Field) -> type:
    """bool, int, float or str; a list setting is comma-separated text on the command line."""
    if _is_list(setting):
        return str
    hint = _TYPES[setting.name]  # int, or int | None
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def _shown_default(setting: dataclasses.Field, kind: type) -> str | bool:
    """The default ``--help`` shows: the dataclass default, or what a None default means (``default_text``)."""
    default = setting.default
    if default is None:
        return setting.metadata.get("default_text", False)
    if kind is bool:
        return flag(setting)[2:] if default else "no-" + flag(setting)[2:]
    if default is dataclasses.MISSING or default == "":
        return False  # an empty list or text: the help says what that means
    return str(default)


def _setting_parameters(setting: dataclasses.Field) -> list[inspect.Parameter]:
    """The typer option(s) of one setting, None by default: only what the command line gives overrides the
    ``--config`` file and the defaults."""
    kind = _value_type(setting)
    shared = SHARED.get(setting.name)
    if shared is not None:
        option = copy(typing.get_args(shared)[1])
    else:
        name = flag(setting)
        option = typer.Option(f"{name}/--no-{name[2:]}" if kind is bool else name, help=setting.metadata["help"])
    option.show_default = _shown_default(setting, kind)
    option.hidden = bool(setting.metadata.get("hidden"))
    parameters = [inspect.Parameter(setting.name, _KIND, default=None, annotation=Annotated[kind | None, option])]
    if "alias" in setting.metadata:  # the old name: accepted, not listed
        alias = typer.Option(setting.metadata["alias"], hidden=True, help=f"Old name of {flag(setting)}.")
        parameters.append(inspect.Parameter(_alias(setting), _KIND, default=None, annotation=Annotated[kind | None, alias]))
    return parameters


def _alias(setting: dataclasses.Field) -> str:
    return f"{setting.name}_alias"


def train_config(options: dict[str, Any], config_file: Path | None = None) -> TrainConfig:
    """The settings of a new run, resolved and validated: an option given on the command line wins over the
    ``--config`` file, which wins over the defaults. ``options`` are the command's parameters by name (None: not
    given); a setting's new name wins over its old one (``--findings`` over ``--labels``)."""
    given: dict[str, Any] = {}
    for setting in SETTINGS:
        value = options.get(setting.name)
        if value is None:
            value = options.get(_alias(setting))
        if value is None or (value == "" and _is_list(setting)):
            continue
        if _is_list(setting):  # comma-separated, read the way config.toml reads a list given as one string
            value = getattr(TrainConfig.from_dict({setting.name: value}, flag(setting)), setting.name)
        given[setting.name] = value
    base = load_config(config_file) if config_file else TrainConfig()
    config = base.replace(**given)
    paths = {s.name: str(Path(getattr(config, s.name)).expanduser().resolve())
             for s in SETTINGS if s.metadata.get("path") and getattr(config, s.name)}
    return config.replace(**paths).resolve().validate()


def _is_list(setting: dataclasses.Field) -> bool:
    return typing.get_origin(_TYPES[setting.name]) is list


def _run_options(
    *,
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file with any of these settings; options override it.")] = None,
    runs_dir: RunsDirOpt = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue RUN (id or path) from its last checkpoint.")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Run as a background job that survives the terminal; print the run id.")] = False,
    list_models_: Annotated[bool, typer.Option("--list-models", help="List registered models and exit.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The options of ``train`` that are not training settings (their signature is the command's tail)."""


def train(**options: Any) -> None:
    """Train a multi-label classifier; the run directory holds config, status, metrics, log and checkpoints."""
    config_file, runs_dir, resume = options.pop("config_file"), options.pop("runs_dir"), options.pop("resume")
    detach, list_models_, json_out = options.pop("detach"), options.pop("list_models_"), options.pop("json_out")
    if list_models_:
        from cxr_core.models import list_models

        names = list_models()
        if json_out:
            print_json(names)
        else:
            stdout.print("\n".join(names))
        return
    if resume:
        run = RunDir.open(resume, runs_dir)
        if detach:
            from cxr_core.train import resume_job

            pid = resume_job(run, options["gpus"])
            _report({"run": run.id, "path": str(run.path), "pid": pid, "state": "queued"}, json_out)
            return
        config = read_run_config(run)
    else:
        config = train_config(options, config_file)
        run = None

    if run is None and detach and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # not under torchrun
        from cxr_core.train import start_job

        run, pid = start_job(config, runs_dir)
        _report({"run": run.id, "path": str(run.path), "pid": pid, "state": "queued"}, json_out)
        return
    # torch: imported only now, not for a mistake in the settings nor for --detach
    from cxr_core.distributed import init_distributed, shutdown_distributed
    from cxr_core.train import create_run, run_training

    dist = init_distributed()
    try:
        if run is None:
            run = RunDir(Path(dist.broadcast(str(create_run(config, runs_dir).path) if dist.is_main else None)))
        if config.cv:
            from cxr_core.train import run_crossval

            result = run_crossval(run, dist=dist, echo=not json_out)
        else:
            state = run_training(run, resume=bool(resume), dist=dist, echo=not json_out)
            result = {"state": state}
    finally:
        shutdown_distributed()
    if dist.is_main:
        status = run.read_status()
        _report({"run": run.id, "path": str(run.path), "state": status.state, "epoch": status["epoch"],
                 "best_metric": status["best_metric"], "best_epoch": status["best_epoch"], **result}, json_out)


def _report(data: dict, json_out: bool) -> None:
    if json_out:
        print_json(data)
        return
    for key, value in data.items():
        stdout.print(f"{key}: {value}")


train.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    *(parameter for setting in SETTINGS for parameter in _setting_parameters(setting)),
    *inspect.signature(_run_options, eval_str=True).parameters.values(),
])
