"""Epoch-deterministic samplers: plain shuffling, and oversampling of images with rare positive labels.

Each epoch's order is a pure function of ``(seed, epoch)`` (numpy's ``default_rng([seed, epoch])``), not of
how many epochs ran in this process, so a run resumed at epoch ``e`` draws exactly the order an
uninterrupted run would have drawn. Call :meth:`set_epoch` before iterating each epoch.

Distributed training: give every rank the same ``seed`` with ``num_replicas=world_size`` and its ``rank``,
and call ``set_epoch(epoch)`` on every rank, as with ``torch.utils.data.DistributedSampler``. Every rank
draws the same global order (padded to a multiple of ``num_replicas`` by wrapping around) and keeps the
positions ``rank, rank + num_replicas, ...``, so the ranks see disjoint positions of one draw and equal
numbers of batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class _EpochSampler(Sampler[int]):
    def __init__(self, n: int, num_samples: int, seed: int, num_replicas: int, rank: int):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.n = n
        self.num_samples = num_samples
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The global order of ``epoch`` (default: the current one), before sharding across replicas."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        return self._draw(rng)

    def __iter__(self) -> Iterator[int]:
        indices = self.order()
        total = len(self) * self.num_replicas
        if len(indices) and total > len(indices):
            indices = np.resize(indices, total)  # wraps around, as DistributedSampler pads
        return iter(indices[self.rank : total : self.num_replicas].tolist())

    def __len__(self) -> int:
        """Samples this replica yields per epoch."""
        return math.ceil(self.num_samples / self.num_replicas)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "seed": self.seed, "epoch": self.epoch, "n": self.n,
                "num_samples": self.num_samples}

    def same_data(self, state: dict[str, Any]) -> bool:
        """Whether ``state`` came from a sampler of this kind over data of this size (its order then continues)."""
        mine = self.state_dict()
        return all(state.get(key) == mine[key] for key in ("kind", "n", "num_samples"))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore seed and epoch; refuse a state from another sampler kind or data set size."""
        mine = self.state_dict()
        for key in ("kind", "n", "num_samples"):
            if state.get(key) != mine[key]:
                raise ValueError(f"sampler state has {key}={state.get(key)!r}, this sampler has {mine[key]!r}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])


class ShuffleSampler(_EpochSampler):
    """A permutation of ``range(n)`` per epoch, without replacement."""

    def __init__(self, n: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        super().__init__(n, n, seed, num_replicas, rank)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.n)


def sample_weights(targets: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Per-image weights: the largest ``(1 / freq_k) ** power`` over the image's positive labels.

    Images with no positive label count as one more class, "no positive", with its own frequency, so a data
    set of mostly normals does not drown (nor over-draw) them. ``power`` 0 gives uniform weights, 1 makes
    every label's images about equally likely (with noise from co-occurring labels); 0.5 is between.
    """
    positive = np.asarray(targets) > 0.5
    if positive.ndim != 2:
        raise ValueError(f"targets must be (N, K), got shape {positive.shape}")
    n = len(positive)
    if n == 0:
        return np.zeros(0)
    counts = positive.sum(axis=0)
    label_weight = np.where(counts > 0, (n / np.maximum(counts, 1)) ** power, 0.0)
    weights = (positive * label_weight).max(axis=1, initial=0.0)
    none = ~positive.any(axis=1)
    if none.any():
        weights[none] = (n / none.sum()) ** power
    return weights


class RareLabelSampler(_EpochSampler):
    """Draws ``num_samples`` images (default N) per epoch with replacement, weighted by :func:`sample_weights`."""

    def __init__(self, targets: np.ndarray, num_samples: int | None = None, power: float = 0.5, seed: int = 0, *,
                 num_replicas: int = 1, rank: int = 0):
        weights = sample_weights(targets, power)
        super().__init__(len(weights), len(weights) if num_samples is None else num_samples, seed, num_replicas, rank)
        self.power = power
        self.probabilities = weights / weights.sum() if len(weights) else weights

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.n == 0:
            return np.zeros(0, np.int64)
        return rng.choice(self.n, size=self.num_samples, replace=True, p=self.probabilities)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "power": self.power}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("power") != self.power:
            raise ValueError(f"sampler state has power={state.get('power')!r}, this sampler has {self.power!r}")
        super().load_state_dict(state)
