"""``cxr-tui train``: train a model, in the foreground, detached (``--detach``), or under torchrun."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cxr_core.runs import RunDir
from cxr_core.train import LOSSES, SAMPLERS, SCHEDULERS, TrainConfig, load_config, read_run_config
from cxr_tui.cli.output import print_json, stdout


def _ints(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of whole numbers") from None


def _labels(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def train(
    data: Annotated[str | None, typer.Option("--data", help="Data set root (as for `data index`).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="Data set layout; detected when omitted.")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file with any of these settings; options override it.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Registered model name (see `cxr-tui train --list-models`).")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Input side in pixels (default: the model's).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (AdamW); default 2e-3 from scratch, 3e-4 from pretrained weights.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay")] = None,
    loss: Annotated[str | None, typer.Option("--loss", help=" | ".join(LOSSES))] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help=" | ".join(SAMPLERS))] = None,
    mixup: Annotated[float | None, typer.Option("--mixup", help="Mixup Beta(a, a); 0 is off.")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help=" | ".join(SCHEDULERS))] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="bf16/fp16 autocast on CUDA.")] = None,
    hflip: Annotated[bool | None, typer.Option("--hflip/--no-hflip", help="Random horizontal flips.")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help="Small affine and exposure jitter while training.")] = None,
    labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated labels to train (default: every finding).")] = None,
    uncertainty: Annotated[str | None, typer.Option("--uncertainty", help="ones | zeros | ignore (CheXpert -1 labels).")] = None,
    val_fraction: Annotated[float | None, typer.Option("--val-fraction", help="Validation patients carved from training when the data has no val split.")] = None,
    subset: Annotated[int | None, typer.Option("--subset", help="Train on a label-stratified subset of N images.")] = None,
    pretrained: Annotated[bool | None, typer.Option("--pretrained/--no-pretrained", help="ImageNet / hub weights (needs them cached or online).")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="Local weights file (.safetensors, .pth, .bin).")] = None,
    unfreeze_layers: Annotated[int | None, typer.Option("--unfreeze-layers", help="BiomedCLIP: transformer blocks to train.")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum")] = None,
    grad_clip: Annotated[float | None, typer.Option("--grad-clip")] = None,
    early_stopping: Annotated[int | None, typer.Option("--early-stopping", help="Patience in epochs on val macro AUC (0: off).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Data loader and preprocessing processes.")] = None,
    cache: Annotated[bool | None, typer.Option("--cache/--no-cache", help="Read a preprocessed uint8 cache instead of decoding every epoch.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps-per-epoch", hidden=True)] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="GPUs for a detached job, e.g. 0,1 (two: DDP).")] = None,
    cv: Annotated[int | None, typer.Option("--cv", help="k-fold cross-validation by patient.")] = None,
    epochs_grid: Annotated[str | None, typer.Option("--epochs-grid", help="With --cv: epoch counts to compare, e.g. 30,50,75.")] = None,
    runs_dir: Annotated[Path | None, typer.Option("--runs-dir", help="Where runs live (default: the user data dir).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Appended to the run id.")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue RUN (id or path) from its last checkpoint.")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Run as a background job that survives the terminal; print the run id.")] = False,
    list_models_: Annotated[bool, typer.Option("--list-models", help="List registered models and exit.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object with the result.")] = False,
) -> None:
    """Train a multi-label classifier; the run directory holds config, status, metrics, log and checkpoints."""
    from cxr_core.distributed import init_distributed, shutdown_distributed
    from cxr_core.train import create_run, resume_job, run_training, start_job

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
            pid = resume_job(run, gpus)
            _report({"run": run.id, "path": str(run.path), "pid": pid, "state": "queued"}, json_out)
            return
        config = read_run_config(run)
    else:
        base = load_config(config_file) if config_file else TrainConfig()
        config = base.replace(
            data=data, format=fmt, model=model, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, loss=loss, sampler=sampler, mixup=mixup, scheduler=scheduler, amp=amp,
            hflip=hflip, augment=augment, labels=_labels(labels), uncertainty=uncertainty, val_fraction=val_fraction, subset=subset,
            pretrained=pretrained, weights=weights, unfreeze_layers=unfreeze_layers, grad_accum=grad_accum,
            grad_clip=grad_clip, early_stopping=early_stopping, workers=workers, cache=cache,
            max_steps_per_epoch=max_steps, seed=seed, device=device, gpus=gpus, cv=cv,
            epochs_grid=_ints(epochs_grid), name=name,
        )
        if config.data:
            config = config.replace(data=str(Path(config.data).expanduser().resolve()))
        config = config.resolve().validate()
        run = None

    if run is None and detach and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # not under torchrun
        run, pid = start_job(config, runs_dir)
        _report({"run": run.id, "path": str(run.path), "pid": pid, "state": "queued"}, json_out)
        return
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
