"""A retrieval task: one direction of one split, with its banks and ground truth.

A task contains either embeddings (queries and gallery, re-ranked by any method)
or a precomputed score matrix (``scores``, for models that only output
scores; only plain ranking by those scores applies). It may carry extended
ground truths for a subset of its queries (``extended``, for example ECCV
Caption and CxC on COCO 5K), scored beside the standard one. A
:class:`FoldedTask` groups the folds of one direction whose metrics are
averaged (COCO 1K).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Mapping

import numpy as np

from nia_jax._validation import as_embeddings, as_positives
from nia_jax.errors import InputError

Direction = Literal["t2i", "i2t"]
Protocol = Literal["inductive", "transductive"]
PROTOCOLS: tuple[str, ...] = ("inductive", "transductive")
DIRECTIONS: tuple[str, ...] = ("t2i", "i2t")


@dataclasses.dataclass(frozen=True)
class RetrievalTask:
    """One retrieval direction ready for re-ranking.

    Attributes:
      direction: ``t2i`` (captions query images) or ``i2t``.
      queries: unit-norm query embeddings, (nq, d) float32.
      gallery: unit-norm gallery embeddings, (ng, d) float32.
      positives: gallery indices of each query's positives, (nq, p) int32
        padded with -1.
      protocol: ``inductive`` (banks disjoint from the evaluated samples) or
        ``transductive`` (the evaluated queries and gallery are the banks).
      query_bank: query-modality bank (nbq, d), None when transductive.
      gallery_bank: gallery-modality bank (nbg, d), None when transductive.
      split: name of the evaluated split (for example ``test``).
      dataset: name of the data set.
      scores: a precomputed score matrix (nq, ng) used instead of embeddings
        (``queries`` and ``gallery`` are then None), in its stored dtype and
        possibly memory-mapped.
      extended: extra ground truths keyed by name (``eccv``, ``cxc``), each
        for a subset of the queries.
    """

    direction: Direction
    queries: np.ndarray | None
    gallery: np.ndarray | None
    positives: np.ndarray
    protocol: Protocol
    query_bank: np.ndarray | None = None
    gallery_bank: np.ndarray | None = None
    split: str = "all"
    dataset: str = "custom"
    scores: np.ndarray | None = None
    extended: Mapping[str, "ExtendedPositives"] = dataclasses.field(default_factory=dict)

    @property
    def n_queries(self) -> int:
        return (self.scores if self.queries is None else self.queries).shape[0]

    @property
    def n_gallery(self) -> int:
        return self.scores.shape[1] if self.gallery is None else self.gallery.shape[0]

    @classmethod
    def build(cls, direction, queries, gallery, positives, *, protocol="inductive",
              query_bank=None, gallery_bank=None, split="all", dataset="custom",
              norm_policy="warn") -> "RetrievalTask":
        """Validate every array and build the task."""
        if direction not in DIRECTIONS:
            raise InputError(f"direction: expected one of {DIRECTIONS}, got {direction!r}.")
        if protocol not in PROTOCOLS:
            raise InputError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}.")
        q = as_embeddings(queries, f"{dataset}/{split}/{direction} queries", norm_policy=norm_policy)
        g = as_embeddings(gallery, f"{dataset}/{split}/{direction} gallery", dim=q.shape[1], norm_policy=norm_policy)
        qb = gb = None
        if protocol == "inductive":
            if query_bank is not None:
                qb = as_embeddings(query_bank, f"{dataset}/{split}/{direction} query bank", dim=q.shape[1],
                                   norm_policy=norm_policy)
            if gallery_bank is not None:
                gb = as_embeddings(gallery_bank, f"{dataset}/{split}/{direction} gallery bank", dim=q.shape[1],
                                   norm_policy=norm_policy)
        pos = as_positives(positives, q.shape[0], g.shape[0], f"{dataset}/{split}/{direction} ground truth")
        return cls(direction, q, g, pos, protocol, qb, gb, split, dataset)

    @classmethod
    def from_scores(cls, direction, scores, positives, *, protocol="transductive", split="all",
                    dataset="custom") -> "RetrievalTask":
        """Build a task from a precomputed score matrix (nq, ng) instead of embeddings.

        The matrix is kept as given (its dtype, memory map included); the
        loader (:func:`nia_jax.data.io.load_scores`) has checked its entries.
        """
        if direction not in DIRECTIONS:
            raise InputError(f"direction: expected one of {DIRECTIONS}, got {direction!r}.")
        if protocol not in PROTOCOLS:
            raise InputError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}.")
        if getattr(scores, "ndim", 0) != 2:
            raise InputError(f"{dataset}/{split}/{direction} scores: expected a 2-D matrix, "
                             f"got shape {getattr(scores, 'shape', None)}.")
        pos = as_positives(positives, scores.shape[0], scores.shape[1], f"{dataset}/{split}/{direction} ground truth")
        return cls(direction, None, None, pos, protocol, split=split, dataset=dataset, scores=scores)

    def with_extended(self, name: str, rows, positives, n_positives=None,
                      metrics: tuple[str, ...] = ("R@1", "R@5", "R@10", "mAP@R", "R-Precision")
                      ) -> "RetrievalTask":
        """Return a copy that also scores the ground truth ``name`` on the query rows ``rows``.

        ``positives`` lists gallery indices per covered query. ``n_positives``
        counts every listed positive, those absent from the gallery included:
        they count towards R of mAP@R and R-Precision but can never be
        retrieved. ``metrics`` names what is reported, as ``<name>_<metric>``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        label = f"{self.dataset}/{self.split}/{self.direction} {name} ground truth"
        if rows.ndim != 1 or rows.size == 0:
            raise InputError(f"{label}: expected a non-empty 1-D array of query rows, got shape {rows.shape}.")
        if rows.min() < 0 or rows.max() >= self.n_queries or np.unique(rows).size != rows.size:
            raise InputError(f"{label}: query rows must be distinct and within [0, {self.n_queries - 1}].")
        pos = as_positives(positives, rows.size, self.n_gallery, label)
        found = (pos >= 0).sum(axis=1)
        total = found if n_positives is None else np.asarray(n_positives, dtype=np.int64)
        if total.shape != found.shape or (total < found).any():
            raise InputError(f"{label}: n_positives must give, per covered query, at least its positives in the gallery.")
        extended = dict(self.extended)
        extended[name] = ExtendedPositives(rows, pos, total, tuple(metrics))
        return dataclasses.replace(self, extended=extended)


@dataclasses.dataclass(frozen=True)
class ExtendedPositives:
    """An extra ground truth scored on a subset of a task's queries.

    Attributes:
      rows: the covered query rows of the task, (m,).
      positives: their positive gallery indices, (m, p) int32 padded with -1.
      n_positives: listed positives per covered query, those absent from the
        gallery included, (m,).
      metrics: metric names reported for it (keys of
        :func:`nia_jax.metrics.per_query`).
    """

    rows: np.ndarray
    positives: np.ndarray
    n_positives: np.ndarray
    metrics: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FoldedTask:
    """One direction split into folds, each evaluated on its own; metrics are averaged.

    Every fold is a complete :class:`RetrievalTask` (its own gallery, banks and
    neighbours), so nothing of one fold reaches another.

    Attributes:
      direction: ``t2i`` or ``i2t``.
      folds: the fold tasks.
      query_rows: for each fold, the rows of its queries in the whole split,
        so that per-query values can be put back in the split's order.
      split, dataset, protocol: as in :class:`RetrievalTask`.
    """

    direction: Direction
    folds: tuple[RetrievalTask, ...]
    query_rows: tuple[np.ndarray, ...]
    split: str
    dataset: str
    protocol: Protocol

    def __post_init__(self):
        if len(self.folds) != len(self.query_rows) or not self.folds:
            raise InputError("FoldedTask: expected one query-row array per fold and at least one fold.")
        rows = np.concatenate(self.query_rows)
        if np.unique(rows).size != rows.size:
            raise InputError("FoldedTask: a query row appears in two folds.")

    @property
    def n_queries(self) -> int:
        return sum(f.n_queries for f in self.folds)
