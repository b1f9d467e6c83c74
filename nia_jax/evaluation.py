"""Evaluate re-rankers on retrieval tasks: both directions, metrics and timing.

:func:`evaluate` accepts a :class:`RetrievalTask` (embeddings or a
precomputed score matrix, with optional extended ground truths such as ECCV
Caption) or a :class:`FoldedTask`, whose folds are evaluated one by one and
averaged (:func:`evaluate_folds`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from nia_jax import metrics
from nia_jax.data.task import ExtendedPositives, FoldedTask, RetrievalTask
from nia_jax.errors import ConfigError
from nia_jax.precomputed import rank_scores
from nia_jax.ranking import Reranked, rerank
from nia_jax.rerankers.base import Reranker
from nia_jax.rerankers.cosine import Cosine


@dataclasses.dataclass
class DirectionResult:
    """Metrics of one method on one task, with what is needed to compare methods.

    Attributes:
      metrics: every metric of :func:`nia_jax.metrics.summarise`, plus
        ``<name>_<metric>`` for each extended ground truth of the task; for a
        folded task, the fold averages of :func:`nia_jax.metrics.fold_average`.
      per_query: per-query values (for paired comparisons), keyed by metric;
        extended ground truths give ``<name>_<metric>`` over their covered
        queries only. For a folded task, in the order of the whole split.
      reranked: the raw output of :func:`nia_jax.ranking.rerank` (None for a
        folded task: see ``folds``).
      seconds: wall time, preparation plus blocks, compilation included
        (extended ground truths not included).
      folds: per-fold results of a folded task, else None.
    """

    metrics: dict
    per_query: dict[str, np.ndarray]
    reranked: Reranked | None
    seconds: float
    folds: list["DirectionResult"] | None = None


def evaluate(method: Reranker, task: RetrievalTask | FoldedTask, *, top_k: int = 100, block_size: int = 1024,
             n_boot: int = 1000, seed: int = 0,
             on_block: Callable[[int, int], None] | None = None) -> DirectionResult:
    """Re-rank one task with ``method`` and compute its metrics.

    ``top_k`` is capped at the gallery size, so ``top_k = ng`` re-ranks all.
    A :class:`FoldedTask` goes to :func:`evaluate_folds`. A task built from a
    precomputed score matrix only supports the cosine re-ranker, which ranks
    by the given scores; other methods raise ConfigError.
    """
    if isinstance(task, FoldedTask):
        return evaluate_folds(method, task, top_k=top_k, block_size=block_size, n_boot=n_boot, seed=seed,
                              on_block=on_block)
    out = _rank(method, task, None, task.positives, top_k=top_k, block_size=block_size, on_block=on_block)
    summary = metrics.summarise(out.neg_above, out.position, n_boot=n_boot, seed=seed)
    per_query = metrics.per_query(out.neg_above, out.position)
    for name, extra in task.extended.items():
        means, values = _evaluate_extended(method, task, name, extra, top_k=top_k, block_size=block_size)
        summary.update(means)
        per_query.update(values)
    return DirectionResult(summary, per_query, out, out.prepare_s + out.score_s)


def evaluate_folds(method: Reranker, task: FoldedTask, *, top_k: int = 100, block_size: int = 1024,
                   n_boot: int = 1000, seed: int = 0,
                   on_block: Callable[[int, int], None] | None = None) -> DirectionResult:
    """Evaluate each fold on its own and average the metrics (the COCO 1K protocol).

    Each fold is a complete task, re-ranked with its own gallery and banks.
    Metrics are the means of the per-fold metrics (see
    :func:`nia_jax.metrics.fold_average`); ``metrics["folds"]`` lists them.
    """
    results = [evaluate(method, fold, top_k=top_k, block_size=block_size, n_boot=0, seed=seed,
                        on_block=on_block) for fold in task.folds]
    summary = metrics.fold_average([r.metrics for r in results], [r.per_query for r in results],
                                   n_boot=n_boot, seed=seed)
    per_query: dict[str, np.ndarray] = {}
    for key in results[0].per_query:
        parts = [r.per_query[key] for r in results]
        if all(p.shape[0] == fold.n_queries for p, fold in zip(parts, task.folds)):
            values = np.empty(task.n_queries, dtype=np.result_type(*parts))
            for rows, part in zip(task.query_rows, parts):
                values[rows] = part
        else:  # an extended ground truth covers some queries of each fold: keep fold order
            values = np.concatenate(parts)
        per_query[key] = values
    return DirectionResult(summary, per_query, None, sum(r.seconds for r in results), folds=results)


def _rank(method: Reranker, task: RetrievalTask, rows: np.ndarray | None, positives, *, top_k: int,
          block_size: int, on_block=None) -> Reranked:
    """Rank all queries of ``task`` (or only ``rows``) against its gallery."""
    top = min(top_k, task.n_gallery)
    if task.scores is not None:
        if not isinstance(method, Cosine):
            raise ConfigError(
                f"{method.name} re-ranks from embeddings, but data set {task.dataset} gives a precomputed "
                "score matrix (dataset.similarity), which supports only ranking by its scores. Use the cosine "
                "method (rerank.py method=cosine, compare.py include=[cosine]), or give embeddings instead."
            )
        scores = task.scores if rows is None else task.scores[rows]
        return rank_scores(scores, positives, top_k=top, block_size=block_size, on_block=on_block)
    queries = task.queries if rows is None else task.queries[rows]
    return rerank(
        method, queries, task.gallery,
        query_bank=task.query_bank, gallery_bank=task.gallery_bank, positives=positives,
        top_k=top, block_size=block_size, transductive=task.protocol == "transductive", on_block=on_block,
    )


def _evaluate_extended(method: Reranker, task: RetrievalTask, name: str, extra: ExtendedPositives, *,
                       top_k: int, block_size: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Score an extended ground truth with a second pass of the same ranking.

    Each query's ranking depends only on the query and the pools unless the
    banks are the evaluated queries (transductive protocol) or the method
    normalises over them. In the first case (and always for cosine and for
    score matrices) only the covered queries are ranked again. Otherwise all
    queries are, with the standard positives on the rows that the extended
    ground truth does not cover.
    """
    independent = (task.scores is not None or isinstance(method, Cosine)
                   or (task.protocol == "inductive" and not method.transductive))
    if independent:
        out = _rank(method, task, extra.rows, extra.positives, top_k=top_k, block_size=block_size)
        neg_above, position = out.neg_above, out.position
    else:
        width = max(task.positives.shape[1], extra.positives.shape[1])
        positives = np.full((task.n_queries, width), -1, dtype=np.int32)
        positives[:, : task.positives.shape[1]] = task.positives
        positives[extra.rows] = -1
        positives[extra.rows, : extra.positives.shape[1]] = extra.positives
        out = _rank(method, task, None, positives, top_k=top_k, block_size=block_size)
        neg_above, position = out.neg_above[extra.rows], out.position[extra.rows]
    return metrics.extended_summary(name, neg_above, position, extra.metrics, n_positives=extra.n_positives)


def evaluate_all(methods: Mapping[str, Reranker], tasks: Mapping[str, RetrievalTask | FoldedTask], **kwargs
                 ) -> dict[str, dict[str, DirectionResult]]:
    """Evaluate every method on every task: ``{method: {direction: result}}``."""
    return {name: {d: evaluate(m, t, **kwargs) for d, t in tasks.items()} for name, m in methods.items()}
