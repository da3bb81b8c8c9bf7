"""The training loop: data, model, AMP, accumulation, mixup, validation, checkpoints, resume, DDP.

The trainer writes only through its RunDir (metrics, status, checkpoints) and calls named hooks
(``on_train_start``, ``on_train_batch_end`` (with the step's loss as a detached device tensor: reading it
syncs the host), ``on_validation_epoch_end``, ``on_train_end``) so a caller can
watch it without the core knowing who listens. ``stop_event`` asks it to stop cleanly: it finishes the
current step, writes a checkpoint that records where in the epoch it was, and returns ``"stopped"``;
``fit(resume=True)`` continues from exactly there (same optimizer, scheduler, sampler order and epoch).
A run that finishes adds statistics of a sample of its training images to its checkpoints (:mod:`cxr_core.ood`),
once, so prediction can say when it is asked about images far from them.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, Subset

from cxr_core.atomic import atomic_write_text
from cxr_core.checkpoint import add_ood_stats, load_checkpoint, read_metadata, save_checkpoint
from cxr_core.data.augment import train_transform
from cxr_core.data.dataset import XRayDataset
from cxr_core.data.image_cache import ImageCache
from cxr_core.distributed import Dist
from cxr_core.errors import CxrError
from cxr_core.eval.metrics import ranking_metrics
from cxr_core.models import build_model, create_model
from cxr_core.ood import MIN_IMAGES, TRAIN_SAMPLE, sample_indices, stats_for_model
from cxr_core.runs import RunDir
from cxr_core.train.config import TrainConfig
from cxr_core.train.data import TrainData, prepare_data
from cxr_core.train.losses import make_loss, pos_weight
from cxr_core.train.optim import build_optimizer, build_scheduler
from cxr_core.train.sampling import RareLabelSampler, ShuffleSampler

log = logging.getLogger("cxr.train")
STEP_LINES_PER_EPOCH = 10


class TrainingFailed(CxrError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """Loader processes when the config leaves it open: feed a GPU from every spare core; on a CPU the model
    needs those cores itself and reading the uint8 cache costs ~2 ms an image, so load in-process."""
    if device.type == "cpu":
        return 0
    return max(1, _cores() - 1)


# Images per batch on one GPU by model at 224 px (bf16, 80 GB class): what fits with room for the optimizer
# and keeps the tensor cores busy; scaled by pixel count at other sizes. On a CPU 32 (the step is the cost).
GPU_BATCH_AT_224 = {"densenet121": 128, "efficientnet_b3": 128, "convnext_tiny": 128, "resnet50": 192,
                    "vit_base_patch16_224": 128, "biomedclip": 128, "xrv_densenet121_all": 128,
                    "xrv_resnet50_all": 96}
GPU_BATCH_DEFAULT = 256
CPU_BATCH = 32
MIN_GPU_STEPS = 50
"""Optimiser steps an epoch should have at least, when a GPU's batch size is chosen for a small data set."""


def default_batch_size(model: str, image_size: int, device: torch.device, train_images: int | None = None) -> int:
    """The batch size when the config leaves it open (``--batch-size`` overrides): by device, model and size; on a
    GPU also small enough that an epoch of ``train_images`` has :data:`MIN_GPU_STEPS` optimiser steps (on 1,600
    images a batch of 256 is 6 steps an epoch: efficientnet_b0 reached 0.715 val AUC in 10 epochs, 0.77 at 32)."""
    if device.type != "cuda":
        return CPU_BATCH
    at_224 = GPU_BATCH_AT_224.get(model, GPU_BATCH_DEFAULT)
    scaled = at_224 * (224 / max(image_size, 1)) ** 2
    batch = int(min(512, max(8, scaled // 8 * 8)))
    if train_images is not None:
        batch = min(batch, max(CPU_BATCH, train_images // MIN_GPU_STEPS // 8 * 8))
    return batch


class _SkipFirst(Sampler[int]):
    """The training order of an epoch; after a resume (``skip`` > 0) the same order as the interrupted epoch
    without the samples already trained on. One object for the whole run, so the loader (and its workers)
    can persist across epochs."""

    def __init__(self, sampler: Sampler[int], skip: int = 0):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


class Trainer:
    def __init__(self, config: TrainConfig, run: RunDir | None, *, dist: Dist = Dist(), callbacks: Iterable[Any] = ()):
        self.config = config.resolve().validate()
        self.run = run if dist.is_main else None
        self.dist = dist
        self.callbacks = list(callbacks)
        self.stop_event = threading.Event()
        self.device = pick_device(config.device, dist.local_rank)
        self.workers = config.workers if config.workers is not None else default_workers(self.device)
        self.epoch = 0  # epochs completed (so also the 0-based index of the epoch in progress)
        self.global_step = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self._partial_loss: tuple[float, int] = (0.0, 0)  # loss sum and batches of the epoch a stop interrupted

    # -- setup -------------------------------------------------------------------------------------

    def _hook(self, name: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, name, None)
            if method is not None:
                method(self, *args)

    def _seed(self) -> None:
        seed = self.config.seed + self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _setup(self, resume: bool = False) -> None:
        cfg, dist = self.config, self.dist
        self._seed()
        if dist.is_main:
            self.data = prepare_data(cfg)
        dist.barrier()
        if not dist.is_main:
            self.data = prepare_data(cfg)
        data: TrainData = self.data
        self.model = create_model(cfg.model, labels=data.labels, pretrained=cfg.pretrained, weights=cfg.weights,
                                  image_size=cfg.image_size, unfreeze_layers=cfg.unfreeze_layers)
        self.model_config = self.model.cxr_config
        size = self.model_config.input_size
        # a resumed run keeps the batch size it chose (its sampler position and schedule are counted in it)
        self.batch_size = (cfg.batch_size or (self._chosen_batch_size() if resume else None)
                           or default_batch_size(cfg.model, size, self.device, len(data.train)))
        log.info("batch size %d%s, %d loader workers on %s", self.batch_size,
                 "" if cfg.batch_size else " (chosen for the device; --batch-size overrides)", self.workers,
                 self.device)
        log.info("data %s: %d train / %d val images, labels %s; %s", data.root, len(data.train), len(data.val),
                 ", ".join(data.labels), data.split_note)
        if self.run is not None:
            data.save_split(self.run.path / "split.json")
            if data.reviews is not None:  # which decisions, by whom, up to which action: the labels' provenance
                atomic_write_text(self.run.path / "reviews.json", json.dumps(data.reviews.to_dict(), indent=2) + "\n")
        cache = None
        if cfg.cache:
            relpaths = [i.relpath for i in itertools.chain(data.train, data.val)]
            if dist.is_main:
                cache = ImageCache.open_or_build(data.base, relpaths, size, workers=_cores(),  # nothing else runs yet
                                                 progress=self._cache_progress, cancel=self.stop_event)
            dist.barrier()
            if not dist.is_main:
                cache = ImageCache.open_or_build(data.base, relpaths, size)
            if cache.failures:
                log.warning("%d images could not be read and are left out (e.g. %s)", len(cache.failures),
                            "; ".join(f"{p}: {r}" for p, r in list(cache.failures.items())[:3]))
                data.train = [i for i in data.train if i.relpath in cache]
                data.val = [i for i in data.val if i.relpath in cache]
        spec = self.model_config
        # raw: workers hand over uint8 pixels; batches are normalised on the training device (_images)
        self.train_set = XRayDataset(data.train, cache=cache, base=data.base, size=size, preprocess=spec,
                                     transform=train_transform(size, hflip=cfg.hflip) if cfg.augment else None,
                                     raw=True)
        val_set = XRayDataset(data.val, cache=cache, base=data.base, size=size, preprocess=spec, raw=True)
        self.normalizer = self.train_set.normalizer
        self.val_set = Subset(val_set, range(dist.rank, len(val_set), dist.world))
        targets = np.stack([i.target for i in data.train])
        masks = np.stack([i.mask for i in data.train])
        common = dict(seed=cfg.seed, num_replicas=dist.world, rank=dist.rank)
        if cfg.sampler == "oversample":
            self.sampler = RareLabelSampler(targets, **common)
        else:
            self.sampler = ShuffleSampler(len(self.train_set), **common)
        loss_params: dict[str, Any] = {}
        if cfg.loss == "bce-posweight":
            loss_params["pos_weight"] = pos_weight(targets, masks)
        elif cfg.loss == "focal":
            loss_params.update(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
        self.loss_fn = make_loss(cfg.loss, **loss_params).to(self.device)
        self.model.to(self.device)
        cuda = self.device.type == "cuda"
        # channels_last helps convolutions on CUDA (tensor cores) and on CPU (oneDNN): 1.5x for efficientnet_b0 here.
        self.channels_last = cfg.channels_last and self.device.type in ("cuda", "cpu")
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = None
        if cuda and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.optimizer = build_optimizer(self.model, cfg)
        batches = math.ceil(len(self.sampler) / self.batch_size)
        if cfg.max_steps_per_epoch:
            batches = min(batches, cfg.max_steps_per_epoch)
        self.batches_per_epoch = batches
        self.scheduler, self.per_step = build_scheduler(self.optimizer, cfg, math.ceil(batches / cfg.grad_accum))
        self.net = self.model
        if dist.enabled:
            ids = [self.device.index] if cuda else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)  # checkpoints still save self.model's own state dict
        self._epoch_order = _SkipFirst(self.sampler)
        self._train_generator = torch.Generator()
        self.train_loader = self._loader(self.train_set, sampler=self._epoch_order, generator=self._train_generator,
                                         persistent=True)

    def _cache_progress(self, done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            log.info("preprocessing images: %d / %d", done, total)
        if self.run is not None:
            self.run.update_status(phase=f"preprocessing images {done}/{total}")

    def _loader(self, dataset, sampler=None, seed: int | None = None, generator: torch.Generator | None = None,
                persistent: bool = False) -> DataLoader:
        """A loader with its own generator (``seed``, or one the caller reseeds each epoch), so starting it draws
        nothing from the global RNG (a resumed epoch then continues the interrupted one's random stream exactly,
        with workers=0). ``persistent``: its worker processes live across epochs (no re-spawn, no cold start)."""
        workers = self.workers
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        cuda = self.device.type == "cuda"
        extra = dict(persistent_workers=persistent, prefetch_factor=4 if cuda else 2) if workers else {}
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=workers,
                          pin_memory=cuda, generator=generator, worker_init_fn=_quiet_worker if workers else None,
                          **extra)

    # -- checkpoints -------------------------------------------------------------------------------

    def _train_state(self, step_in_epoch: int) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
            "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            # the interrupted epoch's running train loss, so its epoch line covers the whole epoch after a resume
            "epoch_loss_sum": self._partial_loss[0] if step_in_epoch else 0.0,
            "epoch_loss_steps": self._partial_loss[1] if step_in_epoch else 0,
        }

    def _save(self, step_in_epoch: int, metrics: dict[str, Any], best: bool) -> None:
        if self.run is None:
            return
        weights = self.model.state_dict()
        train_config = {**self.config.to_dict(), "batch_size": self.batch_size}  # what it trained with, as chosen
        common = dict(model_config=self.model_config.to_dict(), train_config=train_config, metrics=metrics)
        # best first: `last`'s training state names the best epoch, so it must never be on disk before that best
        # is (a kill between the two writes then leaves an older `last`, which resume redoes, not a wrong best)
        if best:
            save_checkpoint(self.run.best_checkpoint, weights, epoch=self.epoch, **common)
        save_checkpoint(self.run.last_checkpoint, weights, epoch=self.epoch,
                        train_state=self._train_state(step_in_epoch), **common)
        self.run.remove_checkpoint_leftovers()  # temporary files of writes killed earlier in this run's life

    def _chosen_batch_size(self) -> int | None:
        """The batch size the run's last checkpoint trained with (None: no checkpoint, or it does not say)."""
        value = None
        if self.run is not None and self.run.last_checkpoint.is_file():
            try:
                value = (read_metadata(self.run.last_checkpoint).get("train_config") or {}).get("batch_size")
            except CxrError:
                value = None
        value = self.dist.broadcast(value if isinstance(value, int) and value > 0 else None)
        return value

    def _restore(self) -> int:
        """Load the last checkpoint; returns the batches of the current epoch already done."""
        path = self.dist.broadcast(str(self.run.last_checkpoint) if self.run else None)
        ckpt = load_checkpoint(path, train_state=True)
        state = ckpt.train_state or {}
        self.model.load_state_dict(ckpt.weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        saved = state["sampler"]
        step = int(state["step_in_epoch"])
        if not self.sampler.same_data(saved):
            # The data set changed since the checkpoint (images deleted or added): the interrupted epoch's order
            # no longer exists. Keep the weights, optimizer and epoch; start that epoch again on the data as it is.
            log.warning("the training data changed since the checkpoint (%s -> %d images): epoch %d starts again "
                        "on the data as it is now", saved.get("n"), self.sampler.n, int(state["epoch"]) + 1)
            saved = {**saved, **{k: v for k, v in self.sampler.state_dict().items() if k in ("n", "num_samples")}}
            step = 0
        self.sampler.load_state_dict(saved)
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.best, self.best_epoch, self.bad_epochs = state["best"], int(state["best_epoch"]), int(state["bad_epochs"])
        if step and int(state.get("epoch_loss_steps", 0)):
            self._partial_loss = (float(state["epoch_loss_sum"]), int(state["epoch_loss_steps"]))
        if self.run is not None:
            self.run.remove_checkpoint_leftovers()
            self._check_best(ckpt, step)
            damaged = self.run.truncate_metrics(self.epoch)
            if damaged:
                log.warning("metrics.jsonl: %d damaged line%s skipped and dropped (not a JSON object of a "
                            "metrics row)", damaged, "" if damaged == 1 else "s")
        log.info("resumed from %s: epoch %d, step %d", path, self.epoch + 1, step)
        return step

    def _check_best(self, last: Any, step: int) -> None:
        """``best.safetensors`` must hold the epoch the training state calls best. A run written before best was
        saved ahead of last, killed between the two writes, has a best of an older epoch: rewrite it from
        ``last`` when that holds the best epoch's weights, else take the best file's own epoch and metric."""
        run = self.run
        meta: dict[str, Any] = {}
        try:
            meta = read_metadata(run.best_checkpoint) if run.best_checkpoint.is_file() else {}
            held = int(meta.get("epoch", 0)) if meta else None
        except (CxrError, TypeError, ValueError) as exc:
            log.warning("%s", exc)
            held = None
        if held == self.best_epoch or self.best_epoch <= 0:
            return
        if step == 0 and last.epoch == self.best_epoch:
            log.warning("%s holds epoch %s but the best is epoch %d: rewritten from %s", run.best_checkpoint,
                        held if held is not None else "none", self.best_epoch, run.last_checkpoint)
            save_checkpoint(run.best_checkpoint, last.weights, last.model_config, train_config=last.train_config,
                            metrics=last.metrics, epoch=last.epoch)
            return
        if held is None:
            log.warning("%s is missing or unreadable; the next better epoch writes it", run.best_checkpoint)
            self.best, self.best_epoch = None, 0
        else:
            metric = (meta.get("metrics") or {}).get("val_auc_macro")
            log.warning("%s holds epoch %d, not the recorded best epoch %d (whose weights are gone): epoch %d is "
                        "the best", run.best_checkpoint, held, self.best_epoch, held)
            self.best = metric if isinstance(metric, int | float) and not isinstance(metric, bool) else None
            self.best_epoch = held
        run.update_status(best_metric=self.best, best_epoch=self.best_epoch)

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> str:
        """Train to the end (``"finished"``), or until asked to stop (``"stopped"``)."""
        cfg = self.config
        self._setup(resume)
        skip = self._restore() if resume else 0
        self._hook("on_train_start")
        if self.run is not None:
            self.run.mark_running(epoch=self.epoch, epochs=cfg.epochs, phase="training")
        while self.epoch < cfg.epochs:
            done = self._train_epoch(skip)
            skip = 0
            if done is not None:  # stopped mid-epoch after `done` batches
                self._save(done, {}, best=False)
                self._finish("stopped")
                return "stopped"
            validation_started = time.perf_counter()
            row = self._validate()
            row["val_s"] = round(time.perf_counter() - validation_started, 3)  # its own figure, not in images_per_s
            self.epoch += 1
            row["epoch"] = self.epoch
            improved = self._track_best(row)
            if not self.per_step:
                self.scheduler.step(row["val_auc_macro"] if row["val_auc_macro"] is not None else 0.0)
            if self.run is not None:
                self.run.append_metrics(row)
                self._save(0, row, best=improved)
                self.run.update_status(epoch=self.epoch, best_metric=self.best, best_epoch=self.best_epoch,
                                       phase="training")
            self._hook("on_validation_epoch_end", row)
            log.info("epoch %d/%d: train loss %.4f, val loss %s, val macro AUC %s (%.0f img/s)", self.epoch,
                     cfg.epochs, row["train_loss"], _fmt(row["val_loss"]), _fmt(row["val_auc_macro"]),
                     row["images_per_s"])
            if cfg.early_stopping and self.bad_epochs >= cfg.early_stopping:
                log.info("early stopping: no better val macro AUC for %d epochs (best %s at epoch %d)",
                         self.bad_epochs, _fmt(self.best), self.best_epoch)
                break
            if self.dist.all_true(self.stop_event.is_set()):
                self._finish("stopped")
                return "stopped"
        self._add_training_stats()
        self._finish("finished")
        return "finished"

    def _add_training_stats(self) -> None:
        """Statistics of up to TRAIN_SAMPLE training images (intensity, and the model's pooled features) into the
        last and best checkpoints, once at the end of the run: one forward pass over the sample per checkpoint
        (one when best is last). Optional: a failure is logged and the run still finishes."""
        if self.run is None or not self.run.last_checkpoint.is_file():
            return
        started = time.perf_counter()
        self.run.update_status(phase="training-image statistics")
        try:
            pixels = []
            for index in sample_indices(len(self.train_set), TRAIN_SAMPLE, self.config.seed):
                try:
                    pixels.append(np.array(self.train_set.pixels(int(index))))
                except CxrError:
                    continue  # unreadable since the cache was built: the others describe the data as well
            if len(pixels) < MIN_IMAGES:
                log.info("no training-image statistics: %d training images (at least %d needed)", len(pixels),
                         MIN_IMAGES)
                return
            sample = np.stack(pixels)
            options = dict(device=self.device, batch_size=self.batch_size, amp_dtype=self.amp_dtype,
                           channels_last=self.channels_last, seed=self.config.seed)
            last = stats_for_model(self.model, self.model_config, sample, **options)
            add_ood_stats(self.run.last_checkpoint, last)
            best = last
            if self.run.best_checkpoint.is_file() and self.best_epoch != self.epoch:
                model = build_model(self.model_config)
                model.load_state_dict(load_checkpoint(self.run.best_checkpoint).weights)
                model.to(self.device)
                if self.channels_last:
                    model.to(memory_format=torch.channels_last)
                best = stats_for_model(model, self.model_config, sample, **options)
            if self.run.best_checkpoint.is_file():
                add_ood_stats(self.run.best_checkpoint, best)
        except (CxrError, OSError, RuntimeError, ValueError, np.linalg.LinAlgError) as err:
            log.warning("no training-image statistics in the checkpoints (%s): predictions will not say when "
                        "images lie far from the training images", err)
            return
        measures = ", ".join(f"{m} p99 {best.thresholds()[m][1]:.3g}" for m in best.measures)
        log.info("training-image statistics of %d images in the checkpoints (%s; %.1f s)", best.n_images, measures,
                 time.perf_counter() - started)

    def _finish(self, state: str) -> None:
        self._hook("on_train_end", state)
        if self.run is not None:
            self.run.update_status(state=state, epoch=self.epoch, best_metric=self.best, best_epoch=self.best_epoch,
                                   phase=None, finished_at=time.time())

    def _track_best(self, row: dict[str, Any]) -> bool:
        metric = row["val_auc_macro"]
        if metric is None:  # no validation (or no class with both outcomes): keep the latest as best
            self.best_epoch = self.epoch
            return True
        if self.best is None or metric > self.best:
            self.best, self.best_epoch, self.bad_epochs = metric, self.epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def _train_epoch(self, skip: int) -> int | None:
        """One epoch; None when it ran to the end, else the number of batches done when asked to stop.

        The loss stays on the device: it is summed there and read once per logged step (and at the end), so the
        host never waits for the GPU inside the loop. A non-finite loss is caught at that read, naming the step it
        first happened at (the weights are not kept: training stops with the last checkpoint intact)."""
        cfg = self.config
        self.net.train()
        self.sampler.set_epoch(self.epoch)
        self._epoch_order.skip = skip * self.batch_size
        self._train_generator.manual_seed(cfg.seed * 100_003 + self.epoch)
        every = max(1, self.batches_per_epoch // STEP_LINES_PER_EPOCH)
        zero = torch.zeros((), device=self.device)
        epoch_sum, window_sum, window = zero.clone(), zero.clone(), 0
        first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        bad_loss = zero.clone()
        seen = steps = 0
        if skip and self._partial_loss[1]:  # resumed mid-epoch: the batches before the stop count too
            epoch_sum += self._partial_loss[0]
            steps = self._partial_loss[1]
        self._partial_loss = (0.0, 0)
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        step = skip
        for step, batch in enumerate(self.train_loader, start=skip + 1):
            loss = self._train_step(batch, step)
            bad = ~torch.isfinite(loss) & (first_bad < 0)
            first_bad = torch.where(bad, step, first_bad)
            bad_loss = torch.where(bad, loss, bad_loss)
            epoch_sum += loss
            window_sum += loss
            window += 1
            steps += 1
            seen += len(batch["target"])
            self._hook("on_train_batch_end", step, loss)
            if step % every == 0 or step >= self.batches_per_epoch:
                self._check_finite(first_bad, bad_loss)  # the one host sync of `every` steps
                if self.run is not None and step % every == 0:
                    self.run.append_metrics({"type": "step", "epoch": self.epoch + 1, "step": self.global_step,
                                             "train_loss": float(window_sum.item()) / window,
                                             "lr": self.optimizer.param_groups[0]["lr"]})
                window_sum.zero_()
                window = 0
            if step >= self.batches_per_epoch:
                break
            if self.dist.all_true(self.stop_event.is_set()):
                self._check_finite(first_bad, bad_loss)
                self._partial_loss = (float(epoch_sum.item()), steps)
                return step
        self._check_finite(first_bad, bad_loss)
        mean_loss = float(epoch_sum.item()) / steps if steps else float("nan")
        self._epoch_stats = {"train_loss": mean_loss,
                             "images_per_s": seen * self.dist.world / max(1e-9, time.perf_counter() - started),
                             "lr": self.optimizer.param_groups[0]["lr"], "batch_size": self.batch_size}
        return None

    def _check_finite(self, first_bad: torch.Tensor, bad_loss: torch.Tensor) -> None:
        step = int(first_bad.item())
        if step >= 0:
            raise TrainingFailed(f"the loss became {float(bad_loss.item())} at epoch {self.epoch + 1}, step {step}: "
                                 "lower --lr, or try --no-amp")

    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        """A batch's uint8 pixels, moved to the device and normalised there (channels_last when it pays)."""
        images = self.normalizer.batch(batch["pixels"].to(self.device, non_blocking=True))
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _train_step(self, batch: dict[str, Any], step: int) -> torch.Tensor:
        cfg = self.config
        images = self._images(batch)
        target = batch["target"].to(self.device, non_blocking=True)
        mask = batch["mask"].to(self.device, non_blocking=True)
        if cfg.mixup > 0:
            lam = float(np.random.default_rng([cfg.seed, self.dist.rank, self.global_step, step]).beta(cfg.mixup, cfg.mixup))
            perm = torch.randperm(images.shape[0], device=images.device)
            images = lam * images + (1 - lam) * images[perm]
            target = lam * target + (1 - lam) * target[perm]
            mask = mask * mask[perm]
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = self.net(images)
        loss = self.loss_fn(logits.float(), target, mask)
        self.scaler.scale(loss / cfg.grad_accum).backward()
        if step % cfg.grad_accum == 0 or step >= self.batches_per_epoch:
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            if self.per_step:
                self.scheduler.step()
        return loss.detach()

    @torch.no_grad()
    def _validate(self) -> dict[str, Any]:
        self.net.eval()
        probs, targets, masks, losses = [], [], [], []
        for batch in self._loader(self.val_set, seed=0):
            images = self._images(batch)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.model(images).float()
            target, mask = batch["target"].to(self.device), batch["mask"].to(self.device)
            losses.append(float(self.loss_fn(logits, target, mask).item()) * len(target))
            probs.append(torch.sigmoid(logits).cpu().numpy())
            targets.append(batch["target"].numpy())
            masks.append(batch["mask"].numpy())
        k = len(self.data.labels)
        part = (_stack(probs, k), _stack(targets, k), _stack(masks, k), sum(losses))
        parts = self.dist.gather(part)
        p = np.concatenate([x[0] for x in parts])
        y = np.concatenate([x[1] for x in parts])
        m = np.concatenate([x[2] for x in parts])
        n = len(y)
        scores = ranking_metrics(y, p, m, self.data.labels) if n else {"auc": {}, "ap": {}, "auc_macro": None,
                                                                         "ap_macro": None}
        if n > 10 and float(p.std(axis=0).max()) < 1e-3:
            log.warning("validation predictions barely vary across images (max std %.1e): check the input "
                        "normalisation and the learning rate", float(p.std(axis=0).max()))
        return {"type": "epoch", "epoch": self.epoch + 1, **self._epoch_stats,
                "val_loss": (sum(x[3] for x in parts) / n) if n else None,
                "val_auc_macro": scores["auc_macro"], "val_ap_macro": scores["ap_macro"],
                "val_auc": scores["auc"], "val_ap": scores["ap"], "time": time.time()}


def _quiet_worker(_: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the trainer, which stops cleanly; they exit with their parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stack(chunks: list[np.ndarray], k: int) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros((0, k), np.float32)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
