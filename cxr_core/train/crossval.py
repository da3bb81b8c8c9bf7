"""k-fold cross-validation by patient with an epoch search, then a retrain with the best epoch count.

Each fold trains once for the largest value of the grid and is scored at every grid epoch (an epoch-count
learning curve: 5 trainings rather than 5 x len(grid)); the cosine schedule of those fold runs spans the
largest value. The table gives mean ± std of val macro AUC per epoch count; the best count is then trained
on the whole training pool with its own full schedule, in the parent run directory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import numpy as np

from cxr_core.atomic import atomic_write_text
from cxr_core.distributed import Dist
from cxr_core.runs import RunDir
from cxr_core.train.config import read_run_config, write_run_config
from cxr_core.train.runner import run_training

log = logging.getLogger("cxr.train")


class _Scores:
    """Collects val macro AUC per epoch from the trainer's hook."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, float | None] = {}

    def on_validation_epoch_end(self, trainer, row: dict[str, Any]) -> None:
        self.by_epoch[int(row["epoch"])] = row["val_auc_macro"]


def epoch_table(scores: list[dict[int, float | None]], grid: list[int]) -> list[dict[str, Any]]:
    rows = []
    for epochs in grid:
        values = [s.get(epochs) for s in scores]
        present = [v for v in values if v is not None]
        rows.append({"epochs": epochs, "folds": len(present),
                     "auc_mean": float(np.mean(present)) if present else None,
                     "auc_std": float(np.std(present, ddof=1)) if len(present) > 1 else None,
                     "auc_by_fold": values})
    return rows


def run_crossval(run: RunDir, *, dist: Dist = Dist(), echo: bool = False) -> dict[str, Any]:
    config = read_run_config(run)
    grid = sorted(set(config.epochs_grid))
    scores = []
    for k in range(config.cv):
        fold_run = RunDir(run.path / "cv" / f"fold{k + 1}")
        if dist.is_main:
            fold_run.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            fold_run.checkpoints.mkdir(exist_ok=True, mode=0o700)
            write_run_config(fold_run, replace(config, epochs=grid[-1], cv_fold=k, early_stopping=0))
        dist.barrier()
        collector = _Scores()
        run_training(fold_run, dist=dist, echo=echo, callbacks=[collector])
        scores.append(collector.by_epoch)
    table = epoch_table(scores, grid)
    ranked = [r for r in table if r["auc_mean"] is not None]
    best = max(ranked, key=lambda r: r["auc_mean"])["epochs"] if ranked else grid[-1]
    if dist.is_main:
        atomic_write_text(run.path / "cv.json", json.dumps({"folds": config.cv, "table": table, "best_epochs": best},
                                                           indent=2) + "\n")
        for row in table:
            log.info("cv %d epochs: macro AUC %s ± %s over %d folds", row["epochs"], row["auc_mean"], row["auc_std"],
                     row["folds"])
        write_run_config(run, replace(config, epochs=best, cv=0, cv_fold=None))
    dist.barrier()
    state = run_training(run, dist=dist, echo=echo)
    return {"state": state, "cv_table": table, "best_epochs": best}
