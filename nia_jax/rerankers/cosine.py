"""The raw baseline: candidates keep their cosine scores."""

from __future__ import annotations

import dataclasses

from nia_jax.rerankers.base import Reranker, register


@register
@dataclasses.dataclass(frozen=True)
class Cosine(Reranker):
    """Plain cosine similarity s(q, g) = <q, g>; needs no bank."""

    name = "cosine"

    @staticmethod
    def prepare(static, hp, pools):
        return ()

    @staticmethod
    def score(static, hp, state, pools, queries, query_self, candidates, base):
        return base
