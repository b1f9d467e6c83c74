"""Dual softmax (DSL) re-scoring: each similarity weighted by a softmax over the query axis."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nia_jax.kernels.banks import row_logsumexp
from nia_jax.rerankers._checks import bank, float_setting
from nia_jax.rerankers.base import Pools, Reranker, register


@register
@dataclasses.dataclass(frozen=True)
class DSL(Reranker):
    """Dual softmax inference (Cheng et al., 2021, "Improving Video-Text Retrieval by
    Multi-Stream Corpus Alignment and Dual Softmax Loss", CAMoE).

    The DSL value of a pair is

        v(q, g) = s(q, g) * p(q, g),  p(q, g) = exp(s(q, g) / tau) / sum_{b in B_q} exp(s(b, g) / tau),

    a softmax over the query axis. The method is transductive: the query axis
    is meant to be the evaluated queries, which B_q is in transductive runs
    (so the sum includes q itself). Run inductively, B_q is the query bank and
    p is an estimate that may exceed 1. ``tau = 0.01`` matches CLIP's logit
    scale of 100; the default tau = 1 gives a much flatter prior.

    The returned score is an increasing function of v, not v itself:

        score = sign(v) * softplus(log|v| + 2 / tau + log nbq).

    At small tau, p underflows to 0 in float32 for most candidates, and v
    would tie them. Because log p >= -2/tau - log nbq for unit vectors, the
    softplus argument stays >= log|s|, so the score keeps v's order without
    underflow, and it is 0 exactly when v is. Needs B_q.

    Attributes:
      tau: softmax temperature, > 0.
    """

    name = "dsl"
    needs = frozenset({"query_bank"})
    transductive = True
    traced = ("tau",)

    tau: float | None = 1.0

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        float_setting(self.tau, "dsl.tau", low=0.0, low_open=True)
        if pools is not None:
            bank(pools, "query_bank", "dsl")

    @staticmethod
    def prepare(static: "DSL", hp, pools: Pools):
        return {"log_norm": row_logsumexp(pools.gallery, pools.query_bank, 1.0 / hp["tau"])}

    @staticmethod
    def score(static: "DSL", hp, state, pools: Pools, queries, query_self, candidates, base):
        log_p = base / hp["tau"] - state["log_norm"][candidates]
        offset = 2.0 / hp["tau"] + jnp.log(pools.query_bank.shape[0])
        log_magnitude = jnp.log(jnp.abs(base)) + log_p + offset
        return jnp.sign(base) * jax.nn.softplus(log_magnitude)
