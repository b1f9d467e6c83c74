"""Hubness-reduction baselines that correct each gallery item with bank statistics.

Notation: s(q, g) = <q, g> for unit vectors, B_q the query bank (query
modality), B_g the gallery bank (gallery modality). Every per-gallery
statistic is computed once in ``prepare``; ``score`` only gathers it for the
candidates. Softmax forms work in log space, so beta = 100 (CLIP's logit
scale) stays finite in float32, and they return log-probabilities.

In transductive runs B_q is the evaluated queries and B_g the gallery. A
normaliser over B_q then contains the query being scored; that is the
transductive protocol itself and is kept. A gallery item's own row in B_g is
left out of its statistics over B_g (``pools.gallery_self``), and
``qbnorm_dis`` leaves the query's own row out of its activation test.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from nia_jax.errors import ConfigError
from nia_jax.kernels.banks import normalise_rows, row_logsumexp, row_mean_top_k, row_neighbour_mean, row_top_k
from nia_jax.kernels.similarity import similarity
from nia_jax.rerankers._checks import (
    bank,
    choice_setting,
    float_setting,
    gallery_is_member,
    int_setting,
    k_within,
)
from nia_jax.rerankers.base import Pools, Reranker, register


@register
@dataclasses.dataclass(frozen=True)
class NNN(Reranker):
    """Nearest Neighbor Normalization (Chowdhury et al., EMNLP 2024).

    score(q, g) = s(q, g) - alpha * r(g), where r(g) is the mean of g's k
    largest similarities to the query bank B_q. Needs B_q; inductive (the
    bias of g does not depend on the evaluated queries unless B_q is them).

    Attributes:
      k: bank neighbours per gallery item (static). The default 128 follows
        the paper's order of magnitude; validate raises when the query bank
        has fewer than k rows rather than capping k.
      alpha: weight of the bias, >= 0.
    """

    name = "nnn"
    needs = frozenset({"query_bank"})
    traced = ("alpha",)

    k: int = 128
    alpha: float | None = 0.75

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        int_setting(self.k, "nnn.k", low=1)
        float_setting(self.alpha, "nnn.alpha", low=0.0)
        if pools is None:
            return
        query_bank = bank(pools, "query_bank", "nnn")
        k_within(self.k, "nnn.k", query_bank.shape[0], "query bank")

    @staticmethod
    def prepare(static: "NNN", hp, pools: Pools):
        return {"bias": row_mean_top_k(pools.gallery, pools.query_bank, static.k)}

    @staticmethod
    def score(static: "NNN", hp, state, pools: Pools, queries, query_self, candidates, base):
        return base - hp["alpha"] * state["bias"][candidates]


@register
@dataclasses.dataclass(frozen=True)
class CSLS(Reranker):
    """Cross-domain Similarity Local Scaling (Conneau et al., ICLR 2018).

    score(q, g) = 2 s(q, g) - r(q) - r(g), where r(g) is the mean of g's k
    largest similarities to B_q and r(q) the mean of q's k largest
    similarities to B_g. Needs B_q; B_g is optional, and without it r(q) = 0,
    which shifts every candidate of q equally and leaves its ranking
    unchanged. Inductive.

    Attributes:
      k: bank neighbours per sample, for both banks (static).
    """

    name = "csls"
    needs = frozenset({"query_bank"})

    k: int = 10

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        int_setting(self.k, "csls.k", low=1)
        if pools is None:
            return
        k_within(self.k, "csls.k", bank(pools, "query_bank", "csls").shape[0], "query bank")
        if pools.gallery_bank is not None:
            k_within(self.k, "csls.k", pools.gallery_bank.shape[0], "gallery bank")

    @staticmethod
    def prepare(static: "CSLS", hp, pools: Pools):
        return {"gallery_radius": row_mean_top_k(pools.gallery, pools.query_bank, static.k)}

    @staticmethod
    def score(static: "CSLS", hp, state, pools: Pools, queries, query_self, candidates, base):
        if pools.gallery_bank is None:
            query_radius = jnp.zeros(queries.shape[0], dtype=base.dtype)
        else:
            query_radius = row_mean_top_k(queries, pools.gallery_bank, static.k)
        return 2.0 * base - query_radius[:, None] - state["gallery_radius"][candidates]


@register
@dataclasses.dataclass(frozen=True)
class QBNormIS(Reranker):
    """Querybank Normalisation with the inverted softmax (Bogolin et al., CVPR 2022).

    score(q, g) = log[exp(beta s(q, g)) / sum_{b in B_q} exp(beta s(b, g))]
                = beta s(q, g) - LSE_b(beta s(b, g)),
    the log of the inverted softmax (same ranking, no underflow). Needs B_q;
    inductive unless B_q is the evaluated queries.

    Attributes:
      beta: inverse temperature, > 0 (CLIP's logit scale is 100).
    """

    name = "qbnorm_is"
    needs = frozenset({"query_bank"})
    traced = ("beta",)

    beta: float | None = 20.0

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        float_setting(self.beta, "qbnorm_is.beta", low=0.0, low_open=True)
        if pools is not None:
            bank(pools, "query_bank", "qbnorm_is")

    @staticmethod
    def prepare(static: "QBNormIS", hp, pools: Pools):
        return {"log_norm": row_logsumexp(pools.gallery, pools.query_bank, hp["beta"])}

    @staticmethod
    def score(static: "QBNormIS", hp, state, pools: Pools, queries, query_self, candidates, base):
        return hp["beta"] * base - state["log_norm"][candidates]


@register
@dataclasses.dataclass(frozen=True)
class QBNormDIS(Reranker):
    """Querybank Normalisation with the dynamic inverted softmax (Bogolin et al., CVPR 2022).

    The activation set A contains every gallery item that is among the k
    nearest gallery items of some bank query. A query whose top-1 gallery
    item (by cosine) is in A gets the log inverted softmax of ``qbnorm_is``,
    beta s(q, g) - LSE_{b in B_q}(beta s(b, g)), for all its candidates; any
    other query keeps s(q, g). Each query's candidates are thus scored on one
    scale, which is all a per-query ranking needs, but scores of different
    queries are not comparable. Needs B_q. In transductive runs the query's
    own bank row is left out of A for that query, since every query would
    otherwise activate itself.

    Attributes:
      k: gallery items per bank query that enter the activation set (static).
      beta: inverse temperature, > 0.
    """

    name = "qbnorm_dis"
    needs = frozenset({"query_bank"})
    traced = ("beta",)

    k: int = 1
    beta: float | None = 20.0

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        int_setting(self.k, "qbnorm_dis.k", low=1)
        float_setting(self.beta, "qbnorm_dis.beta", low=0.0, low_open=True)
        if pools is None:
            return
        bank(pools, "query_bank", "qbnorm_dis")
        k_within(self.k, "qbnorm_dis.k", pools.gallery.shape[0], "gallery")

    @staticmethod
    def prepare(static: "QBNormDIS", hp, pools: Pools):
        n_gallery = pools.gallery.shape[0]
        _, bank_top = row_top_k(pools.query_bank, pools.gallery, static.k)  # (nbq, k)
        # A bank query's top-k items are distinct, so this counts bank queries per item.
        hits = jnp.zeros(n_gallery, dtype=jnp.int32).at[bank_top.reshape(-1)].add(1)
        return {
            "log_norm": row_logsumexp(pools.gallery, pools.query_bank, hp["beta"]),
            "bank_top": bank_top,
            "hits": hits,
        }

    @staticmethod
    def score(static: "QBNormDIS", hp, state, pools: Pools, queries, query_self, candidates, base):
        best = jnp.argmax(base, axis=1)
        top1 = jnp.take_along_axis(candidates, best[:, None], axis=1)[:, 0]
        own_top = state["bank_top"][jnp.maximum(query_self, 0)]  # (b, k)
        own_hit = (query_self >= 0) & jnp.any(own_top == top1[:, None], axis=1)
        active = state["hits"][top1] - own_hit.astype(jnp.int32) > 0
        normalised = hp["beta"] * base - state["log_norm"][candidates]
        return jnp.where(active[:, None], normalised, base)


GALLERY_BANK_SIDES = ("gallery", "query")


@register
@dataclasses.dataclass(frozen=True)
class DualIS(Reranker):
    """Dual inverted softmax of DBNorm (Wang et al., EMNLP 2023, "Balance Act").

    The score is the product of two inverted softmaxes, in log space:

        score(q, g) = beta1 s(q, g) - LSE_{b in B_q}(beta1 s(b, g))
                    + beta2 s(q, g) - LSE_{b in B_g}(beta2 s(b, x)),

    with x = g for ``gallery_bank_side="gallery"`` (default) and x = q for
    ``"query"``. The default follows the authors' ``db_norm`` code, which
    normalises each gallery item by its similarities to the gallery bank as
    well as to the query bank. With x = q the second normaliser is constant
    per query, so B_g then leaves the ranking unchanged and the method ranks
    like an inverted softmax with numerator weight beta1 + beta2. Needs B_q
    and B_g. Inductive; in transductive runs g's own row in B_g is left out.

    NOTE: beta1 and beta2 default to the keyword defaults of the authors'
    ``db_norm`` function, which their own scripts override. They are not
    tuned for CLIP features, whose gallery-to-gallery similarities are larger
    and spread wider than cross-modal ones, so the gallery-bank factor then
    dominates the ranking.

    Attributes:
      gallery_bank_side: which sample's similarities to B_g form the second
        normaliser, ``gallery`` or ``query`` (static).
      beta1: inverse temperature over the query bank, > 0 (the authors'
        default temperature 1.99 gives 1 / 1.99).
      beta2: inverse temperature over the gallery bank, > 0 (temperature 1/3).
    """

    name = "dualis"
    needs = frozenset({"query_bank", "gallery_bank"})
    traced = ("beta1", "beta2")

    gallery_bank_side: Literal["gallery", "query"] = "gallery"
    beta1: float | None = 1.0 / 1.99
    beta2: float | None = 3.0

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        choice_setting(self.gallery_bank_side, "dualis.gallery_bank_side", GALLERY_BANK_SIDES)
        float_setting(self.beta1, "dualis.beta1", low=0.0, low_open=True)
        float_setting(self.beta2, "dualis.beta2", low=0.0, low_open=True)
        if pools is None:
            return
        bank(pools, "query_bank", "dualis")
        gallery_bank = bank(pools, "gallery_bank", "dualis")
        if self.gallery_bank_side == "gallery" and gallery_is_member(pools) and gallery_bank.shape[0] < 2:
            raise ConfigError(
                "dualis: the gallery bank is the gallery and has one row, so once a gallery item's own "
                "row is left out its normaliser is empty. Use at least two gallery items."
            )

    @staticmethod
    def prepare(static: "DualIS", hp, pools: Pools):
        state = {"query_log_norm": row_logsumexp(pools.gallery, pools.query_bank, hp["beta1"])}
        if static.gallery_bank_side == "gallery":
            state["gallery_log_norm"] = row_logsumexp(
                pools.gallery, pools.gallery_bank, hp["beta2"], exclude=pools.gallery_self
            )
        return state

    @staticmethod
    def score(static: "DualIS", hp, state, pools: Pools, queries, query_self, candidates, base):
        total = (hp["beta1"] + hp["beta2"]) * base - state["query_log_norm"][candidates]
        if static.gallery_bank_side == "gallery":
            return total - state["gallery_log_norm"][candidates]
        return total - row_logsumexp(queries, pools.gallery_bank, hp["beta2"])[:, None]


INVGC_POOLS = ("query_bank", "both")


@register
@dataclasses.dataclass(frozen=True)
class InvGC(Reranker):
    """Inverse graph convolution (Jian & Wang, Findings of EMNLP 2023, "InvGC").

    Each gallery item is pushed away from its bank neighbourhood,

        g' = normalise(g - r_q m_q(g) - r_g m_g(g)),

    where m_q(g) is the similarity-weighted mean of g's k nearest rows of B_q
    (weights max(s, 0), summing to one) and m_g(g) the same over B_g, used
    only with ``pool="both"``. score(q, g) = <q, g'>. Needs B_q (and B_g for
    ``pool="both"``). Inductive; in transductive runs g's own row in B_g is
    left out of its neighbours.

    Attributes:
      k: bank neighbours per gallery item (static). The authors take about
        1% of the bank; 10 is 1% of a 1000-row bank.
      pool: ``query_bank`` or ``both`` (static).
      r_q: step away from the query-bank neighbourhood.
      r_g: step away from the gallery-bank neighbourhood (``pool="both"``).
    """

    name = "invgc"
    needs = frozenset({"query_bank"})
    traced = ("r_q", "r_g")

    k: int = 10
    pool: Literal["query_bank", "both"] = "query_bank"
    r_q: float | None = 0.1
    r_g: float | None = 0.1

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        int_setting(self.k, "invgc.k", low=1)
        choice_setting(self.pool, "invgc.pool", INVGC_POOLS)
        float_setting(self.r_q, "invgc.r_q")
        float_setting(self.r_g, "invgc.r_g")
        if pools is None:
            return
        k_within(self.k, "invgc.k", bank(pools, "query_bank", "invgc").shape[0], "query bank")
        if self.pool == "both":
            rows = bank(pools, "gallery_bank", "invgc").shape[0] - int(gallery_is_member(pools))
            k_within(self.k, "invgc.k", rows, "gallery bank")

    @staticmethod
    def prepare(static: "InvGC", hp, pools: Pools):
        moved = pools.gallery - hp["r_q"] * row_neighbour_mean(pools.gallery, pools.query_bank, static.k)
        if static.pool == "both":
            moved = moved - hp["r_g"] * row_neighbour_mean(
                pools.gallery, pools.gallery_bank, static.k, exclude=pools.gallery_self
            )
        return {"moved_gallery": normalise_rows(moved)}

    @staticmethod
    def score(static: "InvGC", hp, state, pools: Pools, queries, query_self, candidates, base):
        # A (b, ng) product and a gather cost less memory than gathering (b, K, d) rows.
        sims = similarity(queries, state["moved_gallery"])
        return jnp.take_along_axis(sims, candidates, axis=1)
