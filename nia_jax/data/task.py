"""A retrieval task: one direction of one split, with its banks and ground truth."""

from __future__ import annotations

import dataclasses
from typing import Literal

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
    """

    direction: Direction
    queries: np.ndarray
    gallery: np.ndarray
    positives: np.ndarray
    protocol: Protocol
    query_bank: np.ndarray | None = None
    gallery_bank: np.ndarray | None = None
    split: str = "all"
    dataset: str = "custom"

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
