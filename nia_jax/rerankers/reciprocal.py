"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), adapted to cosine embeddings.

The samples that neighbour sets are drawn from form the universe U = B_q u G
(query bank rows first, then the gallery), n = nbq + ng rows. Steps, for a
sample x (a member of U, or an outside query):

1. N(x, k): x's k nearest members of U other than x itself, by cosine.
2. R(x, k1) = {x} u {j in N(x, k1) : x in N(j, k1)}, the k1-reciprocal set.
   For a query outside U, "x in N(j, k1)" means that x would enter j's k1
   nearest if it joined U: s(j, x) >= t_j, the k1-th largest similarity of j
   to the rest of U. Ties within ``TIE_TOLERANCE`` count as neighbours.
3. R*(x): R(x, k1) plus the half set R(j, h) (h = ceil(k1 / 2)) of every
   j in R(x, k1) whose half set shares more than 2/3 of its members with
   R(x, k1).
4. V(x): weight exp(s(x, u) - 1) = exp(-(1 - s)) on every u in R*(x), x
   itself included with weight 1, normalised to sum 1. This replaces Zhong's
   exp(-d) on max-normalised squared Euclidean distances with the cosine
   distance 1 - s.
5. Local query expansion: V(x) is replaced by the mean of V over x and its
   k2 - 1 nearest members of U.
6. Jaccard distance d_J(q, g) = 1 - sum min(V_q, V_g) / sum max(V_q, V_g),
   where sum max = 2 - sum min because both vectors sum to 1.
7. Final distance (1 - lam) d_J + lam (1 - s(q, g)); the score is its negative.

The sets and vectors of U's members are computed once in ``prepare``, over U
alone. A query is not added to U: it gets its own vector from steps 1-5, but
the members' sets and vectors do not change to include it (in Zhong's
method they would). An outside query's self weight lives outside U, so it
only enlarges sum max. In transductive runs B_q is the evaluated queries,
so U is all queries and the gallery, every query is a member (its own row is
excluded from its neighbours), and this approximation disappears.

Cost: ``prepare`` stores dense (n, n) similarity, set and vector matrices, as
Zhong's implementation does, so memory grows with n^2. Scoring a block
builds (b, n) vectors and compares them with the K candidates' vectors.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nia_jax.kernels.similarity import similarity
from nia_jax.rerankers._checks import bank, float_setting, int_setting, k_within
from nia_jax.rerankers.base import Pools, Reranker, register

# Similarities recomputed for a block differ from the prepared ones in the last float32 bits.
TIE_TOLERANCE = 1e-6


def half_size(k1: int) -> int:
    """Return h = ceil(k1 / 2), the neighbour count of the half sets in the expansion."""
    return (k1 + 1) // 2


def mutual_neighbours(sims, k: int):
    """Return each member's k nearest other members and whether each one is mutual.

    ``sims`` is the symmetric (n, n) member similarity matrix with the
    members themselves on the diagonal. Returns (values, neighbours, mutual),
    each (n, k), best first: ``mutual[i, m]`` is True when i is among the k
    nearest other members of ``neighbours[i, m]``.
    """
    n = sims.shape[0]
    others = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, sims)
    values, neighbours = jax.lax.top_k(others, k)
    threshold = values[:, -1]
    mutual = values >= threshold[neighbours] - TIE_TOLERANCE
    return values, neighbours, mutual


def reciprocal_sets(sims, k: int):
    """Return the k-reciprocal sets R(i, k) of every member as a dense (n, n) bool matrix.

    Row i marks i itself and every j among i's k nearest other members that
    also has i among its k nearest.
    """
    _, neighbours, mutual = mutual_neighbours(sims, k)
    return _dense_sets(neighbours, mutual)


def _dense_sets(neighbours, mutual):
    """Return the (n, n) bool matrix of each member itself and its mutual neighbours."""
    n = neighbours.shape[0]
    rows = jnp.arange(n)[:, None]
    sets = jnp.zeros((n, n), dtype=bool).at[rows, neighbours].set(mutual)
    return sets | jnp.eye(n, dtype=bool)


def _expand(reciprocal_row, neighbours, mutual, half_index, half_count):
    """Return R*(x) (n,) from R(x, k1) (n,) and x's k1 nearest members with their mutuality.

    A mutual neighbour j adds its half set R(j, h) when more than 2/3 of
    that set lies in R(x, k1).
    """
    n = reciprocal_row.shape[0]
    lists = half_index[neighbours]  # (k1, h + 1), -1 where unused
    listed = lists >= 0
    inside = listed & reciprocal_row[jnp.maximum(lists, 0)]
    overlap = inside.sum(axis=1)
    # Integer form of overlap > (2/3) |R(j, h)|.
    adds = mutual & (3 * overlap > 2 * half_count[neighbours])
    targets = jnp.where(listed & adds[:, None], lists, n)
    added = jnp.zeros(n, dtype=bool).at[targets.reshape(-1)].set(True, mode="drop")
    return reciprocal_row | added


@register
@dataclasses.dataclass(frozen=True)
class KReciprocal(Reranker):
    """k-reciprocal encoding re-ranking (Zhong et al., CVPR 2017).

    score(q, g) = -[(1 - lam) d_J(q, g) + lam (1 - s(q, g))], with d_J the
    Jaccard distance of the expanded k-reciprocal vectors over U = B_q u G;
    the module docstring lists the steps and how they differ from Zhong's.
    Needs B_q. Transductive: neighbour sets are meant to range over all
    evaluated queries and the gallery, which U is in transductive runs. Run
    inductively, B_q replaces the other queries.

    NOTE: across a modality gap the sets never mix modalities. On the
    embedded CLIP COCO data every caption's k1 = 20 nearest members are
    captions and every image's are images, so d_J = 1 for every pair and the
    method ranks exactly as cosine, under either protocol.

    Attributes:
      k1: neighbours of the k-reciprocal sets (static).
      k2: samples averaged in the local query expansion, x included
        (static); 1 turns the expansion off.
      lam: weight of the original distance 1 - s, in [0, 1].
    """

    name = "kreciprocal"
    needs = frozenset({"query_bank"})
    transductive = True
    traced = ("lam",)

    k1: int = 20
    k2: int = 6
    lam: float | None = 0.3

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        int_setting(self.k1, "kreciprocal.k1", low=1)
        int_setting(self.k2, "kreciprocal.k2", low=1)
        float_setting(self.lam, "kreciprocal.lam", low=0.0, high=1.0)
        if pools is None:
            return
        members = bank(pools, "query_bank", "kreciprocal").shape[0] + pools.gallery.shape[0]
        label = "query bank plus gallery without the sample itself"
        k_within(self.k1, "kreciprocal.k1", members - 1, label)
        k_within(self.k2 - 1, "kreciprocal.k2 - 1", members - 1, label)

    @staticmethod
    def prepare(static: "KReciprocal", hp, pools: Pools):
        members = jnp.concatenate([pools.query_bank, pools.gallery])
        n = members.shape[0]
        sims = similarity(members, members)
        # Symmetric, so that "i in N(j)" and "j in N(i)" read the same number.
        sims = 0.5 * (sims + sims.T)
        others = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, sims)

        values, neighbours, mutual = mutual_neighbours(sims, static.k1)
        threshold = values[:, -1]
        reciprocal = _dense_sets(neighbours, mutual)

        h = half_size(static.k1)
        half_mutual = values[:, :h] >= values[:, h - 1][neighbours[:, :h]] - TIE_TOLERANCE
        half_index = jnp.concatenate(
            [jnp.arange(n)[:, None], jnp.where(half_mutual, neighbours[:, :h], -1)], axis=1
        )
        half_count = 1 + half_mutual.sum(axis=1)

        expand = jax.vmap(_expand, in_axes=(0, 0, 0, None, None))
        expanded = expand(reciprocal, neighbours, mutual, half_index, half_count)
        weights = jnp.where(expanded, jnp.exp(sims - 1.0), 0.0)
        vectors = weights / weights.sum(axis=1, keepdims=True)

        gallery_rows = pools.query_bank.shape[0] + jnp.arange(pools.gallery.shape[0])
        gallery_vectors = _query_expansion(vectors[gallery_rows], others[gallery_rows], vectors, static.k2)
        return {
            "members": members,
            "threshold": threshold,
            "half_index": half_index,
            "half_count": half_count,
            "vectors": vectors,
            "gallery_vectors": gallery_vectors,
        }

    @staticmethod
    def score(static: "KReciprocal", hp, state, pools: Pools, queries, query_self, candidates, base):
        n = state["members"].shape[0]
        sims = similarity(queries, state["members"])  # (b, n)
        own = jnp.arange(n)[None, :] == query_self[:, None]
        others = jnp.where(own, -jnp.inf, sims)

        values, neighbours = jax.lax.top_k(others, static.k1)
        mutual = values >= state["threshold"][neighbours] - TIE_TOLERANCE
        rows = jnp.arange(queries.shape[0])[:, None]
        reciprocal = jnp.zeros(sims.shape, dtype=bool).at[rows, neighbours].set(mutual) | own

        expand = jax.vmap(_expand, in_axes=(0, 0, 0, None, None))
        expanded = expand(reciprocal, neighbours, mutual, state["half_index"], state["half_count"])
        weights = jnp.where(expanded, jnp.exp(sims - 1.0), 0.0)
        # A query outside U keeps its self weight exp(0) = 1 outside U's columns.
        outside_mass = (query_self < 0).astype(weights.dtype)
        vectors = weights / (weights.sum(axis=1) + outside_mass)[:, None]
        vectors = _query_expansion(vectors, others, state["vectors"], static.k2)

        def shared_mass(column):
            return jnp.minimum(vectors, state["gallery_vectors"][column]).sum(axis=1)

        overlap = jax.lax.map(shared_mass, candidates.T).T  # (b, K)
        jaccard = 1.0 - overlap / (2.0 - overlap)
        return -((1.0 - hp["lam"]) * jaccard + hp["lam"] * (1.0 - base))


def _query_expansion(vectors, others, member_vectors, k2: int):
    """Return the mean of each row's vector and the vectors of its k2 - 1 nearest members."""
    if k2 == 1:
        return vectors
    _, neighbours = jax.lax.top_k(others, k2 - 1)
    return (vectors + member_vectors[neighbours].sum(axis=1)) / k2
