"""What to review next for the model to learn most: orderings of studies by how unsure the model is.

Both work on a study's scores (the maximum over its images, :meth:`cxr_core.predictions.Predictions.study_scores`,
the same numbers the worklist flags), so the worklist's order and ``cxr-tui worklist --order`` agree:

* ``uncertain``: the distance to the decision threshold in logit space, ``|logit(p_k) - logit(t_k)|``, taken
  finding by finding in turn: each finding's closest study, then each finding's second closest, and so on (a
  study's rank is its best rank over the findings). A study one finding of which sits on its threshold is the
  one a reviewer's answer moves most; taking findings in turn keeps a common finding whose scores crowd its
  threshold from filling the whole budget (on phantoms plain ``min_k`` distance lost to random picks). Logits,
  not probabilities: 0.50 vs 0.55 is a smaller step for the model than 0.95 vs 0.999. Ranks, not distances,
  so a threshold left at 0.5 for a rare finding still gets its share.
* ``margin``: the plain smallest logit distance over findings, smallest first.
* ``entropy``: the mean binary entropy over findings (bits), highest first: unsure about many findings at once.
* ``disagreement``: how much the model's answer moves across views of the image and MC-dropout samples
  (:func:`cxr_core.infer.disagreement.view_probabilities`), as the BALD mutual information per finding
  (:func:`mutual_information`: entropy of the mean minus mean entropy), findings taken in turn as ``uncertain``
  takes them. Epistemic, not aleatoric: a film that is equivocal however it is shown scores low. It needs the
  model and the images (``review_order(..., disagreement=...)``), not only the scores.

Studies without scores (not predicted) sort last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

ORDERS = ("uncertain", "margin", "entropy")  # from the scores alone
VIEW_ORDERS = ("disagreement",)  # from the model's answers under several views
EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def threshold_margin(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N,) smallest logit distance of each row's scores to their thresholds (NaN: nothing scored)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] == 0:
        return np.full(len(probs), np.nan)
    distance = np.abs(_logit(probs) - _logit(np.asarray(thresholds, dtype=np.float64))[None, :])
    distance[np.isnan(probs)] = np.nan
    with np.errstate(all="ignore"):
        out = np.nanmin(np.where(np.isnan(distance), np.inf, distance), axis=1)
    out[np.isinf(out)] = np.nan
    return out


def balanced_rank(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N,) each row's best rank over findings by logit distance to the threshold (0 = some finding's closest),
    plus its smallest distance scaled into (0, 1) to order rows of equal rank; NaN where nothing is scored."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if probs.ndim != 2 or probs.shape[1] == 0 or n == 0:
        return np.full(n, np.nan)
    distance = np.abs(_logit(probs) - _logit(np.asarray(thresholds, dtype=np.float64))[None, :])
    distance[np.isnan(probs)] = np.inf
    distance[:, np.isnan(np.asarray(thresholds, dtype=np.float64))] = np.inf
    return _in_turn(distance)


def mutual_information(view_probs: np.ndarray) -> np.ndarray:
    """(N, K) BALD score from (S, N, K) probabilities under S views / samples: H(mean p) - mean H(p), bits, >= 0
    (NaN where a row has no finite sample)."""
    p = np.asarray(view_probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"view probabilities must be (views, N, K), got shape {p.shape}")
    finite = np.isfinite(p)
    count = finite.sum(axis=0)
    with np.errstate(all="ignore"):
        mean = np.where(finite, p, 0.0).sum(axis=0) / count
        h = _entropy(np.where(finite, p, 0.5))
        out = _entropy(mean) - np.where(finite, h, 0.0).sum(axis=0) / count
    out = np.maximum(out, 0.0)
    out[count == 0] = np.nan
    return out


def disagreement_rank(information: np.ndarray) -> np.ndarray:
    """(N,) findings in turn by mutual information, highest first: as :func:`balanced_rank` (lower = sooner)."""
    info = np.asarray(information, dtype=np.float64)
    if info.ndim != 2 or info.shape[1] == 0 or len(info) == 0:
        return np.full(len(info), np.nan)
    return _in_turn(np.where(np.isnan(info), np.inf, 1.0 / (1.0 + info)))  # in (0, 1]: higher information first


def _in_turn(distance: np.ndarray) -> np.ndarray:
    """Each row's best rank over columns by ``distance`` (smaller first; inf = not scored), plus its smallest
    distance scaled into (0, 1) to order rows of equal rank; NaN for rows with nothing scored."""
    ranks = np.full(distance.shape, np.inf)
    for k in range(distance.shape[1]):
        scored = np.isfinite(distance[:, k])
        order = np.argsort(distance[scored, k], kind="stable")
        ranks[np.flatnonzero(scored)[order], k] = np.arange(order.size)
    best = ranks.min(axis=1)
    margin = np.min(distance, axis=1)
    with np.errstate(invalid="ignore"):  # inf / inf for rows with nothing scored: NaN below anyway
        out = best + margin / (1.0 + margin)  # margin / (1 + margin) in [0, 1): orders rows of equal rank
    out[~np.isfinite(best)] = np.nan
    return out


def _entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    h[np.isnan(np.asarray(probs, dtype=np.float64))] = np.nan
    return h


def mean_entropy(probs: np.ndarray) -> np.ndarray:
    """(N,) mean binary entropy in bits over each row's scored findings (NaN: nothing scored)."""
    h = _entropy(probs)
    with np.errstate(all="ignore"):
        scored = (~np.isnan(h)).sum(axis=1)
        out = np.where(scored > 0, np.nansum(h, axis=1) / np.maximum(scored, 1), np.nan)
    return out


def informativeness(probs: np.ndarray, thresholds: np.ndarray, order: str,
                    disagreement: np.ndarray | None = None) -> np.ndarray:
    """(N,) a score where higher = review sooner (NaN for rows without scores). ``disagreement``: (N, K) mutual
    information (:func:`mutual_information`), needed by the ``disagreement`` order."""
    if order == "disagreement":
        if disagreement is None:
            raise ValueError("the disagreement order needs the model's answers under several views")
        return -disagreement_rank(disagreement)
    if order == "uncertain":
        return -balanced_rank(probs, thresholds)
    if order == "margin":
        return -threshold_margin(probs, thresholds)
    if order == "entropy":
        return mean_entropy(probs)
    raise ValueError(f"unknown order {order!r}: choose from {', '.join(ORDERS + VIEW_ORDERS)}")


def review_order(studies: Sequence[str], probs: np.ndarray, labels: Sequence[str],
                 thresholds: Mapping[str, float | None], order: str,
                 disagreement: np.ndarray | None = None) -> list[tuple[str, float]]:
    """Studies (with their score) most informative first; unscored studies last, then by id. A label missing
    from ``thresholds`` is at 0.5; one mapped to None has no threshold and does not count (as in the worklist).
    ``disagreement``: the studies' (N, K) mutual information, for the ``disagreement`` order."""
    values = [thresholds.get(label, 0.5) for label in labels]
    t = np.array([np.nan if v is None else float(v) for v in values])
    score = informativeness(probs, t, order, disagreement)
    keyed = sorted(range(len(studies)), key=lambda i: (np.isnan(score[i]), -np.nan_to_num(score[i]), studies[i]))
    return [(studies[i], float(score[i])) for i in keyed]
