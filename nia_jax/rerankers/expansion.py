"""Alpha query expansion (alpha-QE) and database-side augmentation (alpha-DBA).

Both come from Radenovic et al., "Fine-tuning CNN Image Retrieval with No
Human Annotation", TPAMI 2019. A vector x is replaced by the weighted sum of
itself and its nearest gallery items, each weighted by max(s, 0)^alpha, and
renormalised. Both use only the gallery, which every task has, and neither
is transductive.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nia_jax.kernels.banks import normalise_rows, row_top_k
from nia_jax.kernels.similarity import similarity
from nia_jax.rerankers._checks import float_setting, int_setting, k_within
from nia_jax.rerankers.base import Pools, Reranker, register

_HI = jax.lax.Precision.HIGHEST


def _validate(method, pools: Pools | None, n_gallery: int | None) -> None:
    name = method.name
    int_setting(method.n, f"{name}.n", low=1)
    float_setting(method.alpha, f"{name}.alpha", low=0.0)
    rows = pools.gallery.shape[0] if pools is not None else n_gallery
    if rows is not None:
        k_within(method.n, f"{name}.n", rows, "gallery")


def _expansion_weights(sims, alpha):
    return jnp.maximum(sims, 0.0) ** alpha


@register
@dataclasses.dataclass(frozen=True)
class AQE(Reranker):
    """Alpha query expansion (Radenovic et al., TPAMI 2019).

    q' = normalise(q + sum_{j in top-n(q)} max(s(q, g_j), 0)^alpha g_j),
    over q's n nearest gallery items (q's own weight is s(q, q)^alpha = 1),
    and score(q, g) = <q', g>. Needs only the gallery; inductive.

    Attributes:
      n: gallery neighbours added to the query (static).
      alpha: weight exponent, >= 0.
    """

    name = "aqe"
    traced = ("alpha",)

    n: int = 10
    alpha: float | None = 3.0

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        _validate(self, pools, n_gallery)

    @staticmethod
    def prepare(static: "AQE", hp, pools: Pools):
        return ()

    @staticmethod
    def score(static: "AQE", hp, state, pools: Pools, queries, query_self, candidates, base):
        values, index = jax.lax.top_k(similarity(queries, pools.gallery), static.n)
        weights = _expansion_weights(values, hp["alpha"])
        expanded = queries + jnp.einsum("bn,bnd->bd", weights, pools.gallery[index], precision=_HI)
        sims = similarity(normalise_rows(expanded), pools.gallery)
        return jnp.take_along_axis(sims, candidates, axis=1)


@register
@dataclasses.dataclass(frozen=True)
class DBA(Reranker):
    """Alpha database-side augmentation (Radenovic et al., TPAMI 2019).

    g' = normalise(sum_{j in top-n(g)} max(s(g, g_j), 0)^alpha g_j), over g's
    n nearest gallery items with g itself first (weight 1) and its n - 1
    nearest others after it, computed once for the gallery; score(q, g) =
    <q, g'>. Needs only the gallery; inductive.

    Attributes:
      n: gallery items averaged per gallery item, itself included (static).
      alpha: weight exponent, >= 0.
    """

    name = "dba"
    traced = ("alpha",)

    n: int = 10
    alpha: float | None = 3.0

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        _validate(self, pools, n_gallery)

    @staticmethod
    def prepare(static: "DBA", hp, pools: Pools):
        gallery = pools.gallery
        augmented = gallery
        if static.n > 1:
            own = jnp.arange(gallery.shape[0], dtype=jnp.int32)
            values, index = row_top_k(gallery, gallery, static.n - 1, exclude=own)
            weights = _expansion_weights(values, hp["alpha"])
            augmented = gallery + jnp.einsum("gn,gnd->gd", weights, gallery[index], precision=_HI)
        return {"augmented_gallery": normalise_rows(augmented)}

    @staticmethod
    def score(static: "DBA", hp, state, pools: Pools, queries, query_self, candidates, base):
        sims = similarity(queries, state["augmented_gallery"])
        return jnp.take_along_axis(sims, candidates, axis=1)
