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

R is the number of positives of the query. Extended ground truths (ECCV
Caption) may list positives that are not in the gallery. ``n_positives`` then
gives R, and those positives are never found, as in the ``eccv-caption``
package. Metrics of folded tasks (COCO 1K) are the means of the per-fold
metrics (:func:`fold_average`).
"""

from __future__ import annotations

import numpy as np

from nia_jax.errors import InputError

RECALL_KS = (1, 5, 10)


def best_rank(neg_above: np.ndarray) -> np.ndarray:
    """Return each query's 0-based rank: the negatives at or above its best positive."""
    masked = np.where(neg_above >= 0, neg_above, np.iinfo(np.int64).max)
    return masked.min(axis=1)


def per_query(neg_above: np.ndarray, position: np.ndarray, *, n_positives: np.ndarray | None = None
              ) -> dict[str, np.ndarray]:
    """Return per-query values (percentages for hits and precisions) keyed by metric name.

    ``n_positives`` (nq,) overrides R, the positive count of each query, when
    some listed positives are absent from the gallery. By default R counts the
    valid entries of ``position``.
    """
    neg_above = np.asarray(neg_above, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    rank = best_rank(neg_above)
    values = {f"R@{k}": 100.0 * (rank < k) for k in RECALL_KS}
    values["rank"] = rank + 1.0

    valid = position >= 0
    n_pos = valid.sum(axis=1) if n_positives is None else np.asarray(n_positives, dtype=np.int64)
    pos_sorted = np.sort(np.where(valid, position, np.iinfo(np.int64).max), axis=1)
    order = np.arange(1, position.shape[1] + 1)[None, :]
    within = (pos_sorted < n_pos[:, None]) & (order <= n_pos[:, None])
    precision = np.where(within, order / (pos_sorted + 1.0), 0.0)
    values["mAP@R"] = 100.0 * precision.sum(axis=1) / n_pos
    values["R-Precision"] = 100.0 * within.sum(axis=1) / n_pos
    return values


#: Minimum resamples accepted for an interval. With fewer, the 95% percentiles are
#: a handful of draws (n_boot = 1 gives an interval that can miss the estimate).
MIN_BOOT = 10


def check_boot(n_boot) -> int:
    """Return ``n_boot`` if it can give an interval, or raise InputError."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < MIN_BOOT:
        raise InputError(f"n_boot={n_boot!r}: a bootstrap interval needs an integer number of resamples >= "
                         f"{MIN_BOOT}; 1000 is the default. Use n_boot=0 in the library to skip intervals.")
    return int(n_boot)


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 statistic=np.mean) -> tuple[float, float]:
    """Return the percentile bootstrap interval of ``statistic`` over queries."""
    check_boot(n_boot)
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


def extended_summary(prefix: str, neg_above: np.ndarray, position: np.ndarray, names, *,
                     n_positives: np.ndarray | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Return (``{prefix_metric: mean}``, ``{prefix_metric: per-query values}``) for an extra ground truth.

    ``names`` picks the metrics (keys of :func:`per_query`, for example
    ``R@1`` or ``mAP@R``); ``<prefix>_n_queries`` counts the covered queries.
    """
    values = per_query(neg_above, position, n_positives=n_positives)
    means = {f"{prefix}_{name}": round(float(values[name].mean()), 4) for name in names}
    means[f"{prefix}_n_queries"] = int(values["rank"].size)
    return means, {f"{prefix}_{name}": values[name] for name in names}


def fold_average(fold_metrics: list[dict], fold_values: list[dict[str, np.ndarray]], *, n_boot: int = 1000,
                 seed: int = 0) -> dict:
    """Average the metrics of several folds (COCO 1K protocol).

    Every numeric metric is the mean of its per-fold values (``medr`` too, as
    in the usual 1K protocol). ``n_queries`` and ``*_n_queries`` are summed,
    and ``rsum`` is the sum of the averaged recalls. The 95% intervals come from a
    bootstrap that resamples queries within each fold and averages the fold
    means, so they match the averaged statistic. ``folds`` keeps the per-fold
    metrics (without intervals).
    """
    out: dict = {}
    keys = [k for k, v in fold_metrics[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key in keys:
        column = [m[key] for m in fold_metrics]
        if key == "n_queries" or key.endswith("_n_queries"):
            out[key] = int(sum(column))
        elif key == "rsum":
            continue
        else:
            out[key] = round(float(np.mean(column)), 4)
    out["rsum"] = round(sum(out[f"R@{k}"] for k in RECALL_KS), 4)
    out["n_folds"] = len(fold_metrics)
    if n_boot:
        check_boot(n_boot)
        rng = np.random.default_rng(seed)
        for name in [f"R@{k}" for k in RECALL_KS] + ["mAP@R", "R-Precision"]:
            stats = np.zeros(n_boot)
            for values in fold_values:
                v = np.asarray(values[name], dtype=np.float64)
                stats += v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
            stats /= len(fold_values)
            low, high = np.quantile(stats, [0.025, 0.975])
            out[f"{name}_ci95"] = [round(float(low), 4), round(float(high), 4)]
    out["folds"] = [{k: v for k, v in m.items() if not k.endswith("_ci95")} for m in fold_metrics]
    return out
