"""Evaluate re-rankers on retrieval tasks: both directions, metrics and timing."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from nia_jax import metrics
from nia_jax.data.task import RetrievalTask
from nia_jax.ranking import Reranked, rerank
from nia_jax.rerankers.base import Reranker


@dataclasses.dataclass
class DirectionResult:
    """Metrics of one method on one task, with what is needed to compare methods.

    Attributes:
      metrics: every metric of :func:`nia_jax.metrics.summarise`.
      per_query: per-query values (for paired comparisons), keyed by metric.
      reranked: the raw output of :func:`nia_jax.ranking.rerank`.
      seconds: wall time, preparation plus blocks, compilation included.
    """

    metrics: dict
    per_query: dict[str, np.ndarray]
    reranked: Reranked
    seconds: float


def evaluate(method: Reranker, task: RetrievalTask, *, top_k: int = 100, block_size: int = 1024,
             n_boot: int = 1000, seed: int = 0,
             on_block: Callable[[int, int], None] | None = None) -> DirectionResult:
    """Re-rank one task with ``method`` and compute its metrics.

    ``top_k`` is capped at the gallery size, so ``top_k = ng`` re-ranks all.
    """
    out = rerank(
        method, task.queries, task.gallery,
        query_bank=task.query_bank, gallery_bank=task.gallery_bank, positives=task.positives,
        top_k=min(top_k, task.gallery.shape[0]), block_size=block_size,
        transductive=task.protocol == "transductive", on_block=on_block,
    )
    summary = metrics.summarise(out.neg_above, out.position, n_boot=n_boot, seed=seed)
    return DirectionResult(summary, metrics.per_query(out.neg_above, out.position), out,
                           out.prepare_s + out.score_s)


def evaluate_all(methods: Mapping[str, Reranker], tasks: Mapping[str, RetrievalTask], **kwargs
                 ) -> dict[str, dict[str, DirectionResult]]:
    """Evaluate every method on every task: ``{method: {direction: result}}``."""
    return {name: {d: evaluate(m, t, **kwargs) for d, t in tasks.items()} for name, m in methods.items()}
