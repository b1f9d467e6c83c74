"""Retrieval metrics from positive positions, with bootstrap confidence intervals.

Inputs come from :func:`nia_jax.ranking.rerank`: for each query and each of
its positives (padded with -1), ``neg_above`` counts the negatives ranked at or
above that positive (ties count against it) and ``position`` is its 0-based
place in the final ranking.

* R@K: percentage of queries whose best positive has fewer than K negatives at
  or above it (so a constant score matrix gives R@1 = 0).
* median rank: median over queries of 1 + that count (1 is a hit at R@1).
* mAP@R (Musgrave et al., 2020, as used by ECCV Caption): with R positives,
  AP@R = (1/R) sum over positives at positions < R of
  (positives at or before it) / (position + 1).
* R-Precision: (positives at positions < R) / R.
"""

from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10)


def best_rank(neg_above: np.ndarray) -> np.ndarray:
    """Return each query's 0-based rank: the negatives at or above its best positive."""
    masked = np.where(neg_above >= 0, neg_above, np.iinfo(np.int64).max)
    return masked.min(axis=1)


def per_query(neg_above: np.ndarray, position: np.ndarray) -> dict[str, np.ndarray]:
    """Return per-query values (percentages for hits and precisions) keyed by metric name."""
    neg_above = np.asarray(neg_above, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    rank = best_rank(neg_above)
    values = {f"R@{k}": 100.0 * (rank < k) for k in RECALL_KS}
    values["rank"] = rank + 1.0

    valid = position >= 0
    n_pos = valid.sum(axis=1)
    pos_sorted = np.sort(np.where(valid, position, np.iinfo(np.int64).max), axis=1)
    order = np.arange(1, position.shape[1] + 1)[None, :]
    within = (pos_sorted < n_pos[:, None]) & (order <= n_pos[:, None])
    precision = np.where(within, order / (pos_sorted + 1.0), 0.0)
    values["mAP@R"] = 100.0 * precision.sum(axis=1) / n_pos
    values["R-Precision"] = 100.0 * within.sum(axis=1) / n_pos
    return values


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 statistic=np.mean) -> tuple[float, float]:
    """Return the percentile bootstrap interval of ``statistic`` over queries."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    stats = statistic(values[idx], axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return float(low), float(high)


def summarise(neg_above: np.ndarray, position: np.ndarray, *, n_boot: int = 1000, seed: int = 0
              ) -> dict[str, float | list[float]]:
    """Return every metric of one direction, with 95% bootstrap intervals.

    Keys: ``R@1``, ``R@5``, ``R@10``, ``rsum`` (R@1 + R@5 + R@10 of this
    direction), ``medr``, ``meanr``, ``mAP@R``, ``R-Precision``, ``n_queries``
    and ``<metric>_ci95`` for the recalls, ``mAP@R`` and ``R-Precision``
    (omitted when ``n_boot`` is 0, which sweeps use to save time).
    """
    values = per_query(neg_above, position)
    out: dict[str, float | list[float]] = {}
    for name in [f"R@{k}" for k in RECALL_KS]:
        out[name] = round(float(values[name].mean()), 4)
    out["rsum"] = round(sum(out[f"R@{k}"] for k in RECALL_KS), 4)
    out["medr"] = float(np.median(values["rank"]))
    out["meanr"] = round(float(values["rank"].mean()), 4)
    out["mAP@R"] = round(float(values["mAP@R"].mean()), 4)
    out["R-Precision"] = round(float(values["R-Precision"].mean()), 4)
    out["n_queries"] = int(values["rank"].size)
    if n_boot == 0:
        return out
    for name in [f"R@{k}" for k in RECALL_KS] + ["mAP@R", "R-Precision"]:
        low, high = bootstrap_ci(values[name], n_boot=n_boot, seed=seed)
        out[f"{name}_ci95"] = [round(low, 4), round(high, 4)]
    return out


def paired_difference_ci(a: np.ndarray, b: np.ndarray, *, n_boot: int = 1000, seed: int = 0
                         ) -> tuple[float, float, float]:
    """Return mean(a - b) and its paired bootstrap 95% interval over the same queries."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return float(diff.mean()), low, high
