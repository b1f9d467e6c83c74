"""NIA: neighbour information aggregation (Wo & Liang, J. South China Univ. of Technology, 2025).

Only the paper's abstract is public, so the design below is this package's
reading of it. Each sample is described by its local neighbours (the k
nearest rows of an unlabelled pool P, with weights c) and its global
neighbour expression (ridge coefficients a over the whole pool). The two are
fused and the candidates are re-scored:

* ``form="neighbour"``: s_nia(q, g) = <phi(q), phi(g)>, both coded over the
  same pool (see :mod:`nia_jax.kernels.fusion` for phi);
* ``form="embedding"``: s_nia(q, g) = <q, normalise(g + beta P^T phi(g))>;
* ``form="none"``: no s_nia, for the hubness term alone.

The final score is (1 - gamma) s(q, g) + gamma s_nia(q, g) - eta h(g). The
hubness term h(g) = (1 - w) <g, P^T c(g)> + w <g, P^T a(g)> measures how well
g's own neighbour information over the pool reconstructs g. Its local part is
the weighted mean similarity to g's k nearest pool rows (NNN's and CSLS's
hubness term when the weights are uniform). Its global part is the ridge
leverage of g. Over the query bank, h flags gallery items that many queries
resemble (hubs) and pushes them down.

With ``pool="both"`` the two pools' s_nia and h are averaged, and the
embedding form averages the two pools' expressions.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
from typing import Literal

import jax
import jax.numpy as jnp

from nia_jax.errors import ConfigError
from nia_jax.kernels import fusion
from nia_jax.kernels.neighbours import WEIGHTINGS
from nia_jax.kernels.ridge import ridge_factor
from nia_jax.rerankers._checks import choice_setting, float_setting, gallery_is_member, int_setting
from nia_jax.rerankers.base import Pools, Reranker, register

logger = logging.getLogger(__name__)

#: Below this lam, leave-one-out codes lose float32 accuracy (fusion.encode).
LOO_MIN_LAM = 0.1

POOLS = ("query_bank", "gallery_bank", "both")
FORMS = ("neighbour", "embedding", "none")


@register
@dataclasses.dataclass(frozen=True)
class NIA(Reranker):
    """NIA re-ranker settings.

    The defaults are the setting chosen on the dev split of the embedded COCO
    500 CLIP set (experiments/tune.py, grid conf/grid/nia.yaml): the hubness
    form with uniform weights, k = 1, lam = 10, w = 0.5 and eta = 0.75. NIA has
    no published defaults, since only its abstract is public.

    Attributes:
      k: local neighbours per sample (static).
      weighting: local weights, ``uniform``, ``softmax`` (temperature tau) or
        ``power`` (exponent tau) (static).
      pool: ``query_bank``, ``gallery_bank`` or ``both`` (static).
      form: ``neighbour``, ``embedding`` or ``none`` (no s_nia) fusion (static).
      leave_one_out: exclude a sample's own pool row from its neighbours and
        its ridge code when it is a pool member (transductive runs) (static).
      tau: softmax temperature or power exponent, > 0.
      lam: ridge penalty lambda, > 0.
      w: weight of the global expression against the local one, in [0, 1].
      beta: step toward (> 0) or away from (< 0) the neighbour expression in
        the embedding form.
      gamma: weight of s_nia in the final score, in [0, 1].
      eta: weight of the hubness term h(g) subtracted from the final score, >= 0.
    """

    name = "nia"
    # The pools it needs depend on ``pool``; ``validate`` checks them.
    traced = ("tau", "lam", "w", "beta", "gamma", "eta")

    k: int = 1
    weighting: Literal["uniform", "softmax", "power"] = "uniform"
    pool: Literal["query_bank", "gallery_bank", "both"] = "query_bank"
    form: Literal["neighbour", "embedding", "none"] = "none"
    leave_one_out: bool = True
    tau: float | None = 0.05
    lam: float | None = 10.0
    w: float | None = 0.5
    beta: float | None = 0.0
    gamma: float | None = 0.5
    eta: float | None = 0.75

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        choice_setting(self.weighting, "nia.weighting", WEIGHTINGS)
        choice_setting(self.pool, "nia.pool", POOLS)
        choice_setting(self.form, "nia.form", FORMS)
        int_setting(self.k, "nia.k", low=1)
        float_setting(self.tau, "nia.tau", low=0.0, low_open=True)
        float_setting(self.lam, "nia.lam", low=0.0, low_open=True)
        float_setting(self.w, "nia.w", low=0.0, high=1.0)
        float_setting(self.beta, "nia.beta")
        float_setting(self.gamma, "nia.gamma", low=0.0, high=1.0)
        float_setting(self.eta, "nia.eta", low=0.0)
        if pools is None:
            return
        if (self.leave_one_out and isinstance(self.lam, numbers.Real) and self.lam < LOO_MIN_LAM
                and gallery_is_member(pools)):
            logger.warning(
                "nia.lam=%g with leave-one-out codes (transductive pools): below lam = %g these codes lose "
                "float32 accuracy and scores can be off by 0.1 or more. Use lam >= %g.",
                self.lam, LOO_MIN_LAM, LOO_MIN_LAM)
        for name in _pool_names(self.pool):
            bank = getattr(pools, name)
            if bank is None:
                raise ConfigError(
                    f"nia.pool={self.pool!r} needs a {name.replace('_', ' ')}, but the task has none. "
                    f"Pass {name}=... to rerank, use transductive=True, or choose another pool."
                )
            # A member sample loses its own row, so k + 1 rows are needed then.
            if self.k > bank.shape[0] - 1:
                raise ConfigError(
                    f"nia.k={self.k} is larger than the {name.replace('_', ' ')} allows "
                    f"({bank.shape[0]} rows, so k <= {bank.shape[0] - 1}). Lower k."
                )

    @staticmethod
    def prepare(static: "NIA", hp, pools: Pools):
        state = {}
        names = _pool_names(static.pool)
        for name in names:
            bank = getattr(pools, name)
            factor = ridge_factor(bank, hp["lam"])
            # Only a gallery-bank pool can contain gallery items; None marks that no gallery item is a pool member.
            self_index = pools.gallery_self if (name == "gallery_bank" and static.leave_one_out) else None
            code = fusion.encode(
                pools.gallery, self_index, bank, factor,
                k=static.k, weighting=static.weighting, tau=hp["tau"], w=hp["w"],
            )
            # The hubness term needs only two numbers per item; the scores keep what they read.
            entry = {"hubness": fusion.hubness(code, hp["w"])}
            if static.form == "neighbour":
                entry.update(factor=factor, gallery_code=code)
            if static.form == "embedding":
                entry["expression"] = fusion.neighbour_expression(pools.gallery, code, bank, factor, hp["w"])
            state[name] = entry
        state["hubness"] = sum(state[n].pop("hubness") for n in names) / len(names)
        if static.form == "embedding":
            mean_expression = sum(state[n].pop("expression") for n in names) / len(names)
            state["moved_gallery"] = fusion.embedding_space_features(pools.gallery, mean_expression, hp["beta"])
        return state

    @staticmethod
    def score(static: "NIA", hp, state, pools: Pools, queries, query_self, candidates, base):
        penalty = hp["eta"] * state["hubness"][candidates]
        if static.form == "none":
            return base - penalty
        if static.form == "embedding":
            moved = state["moved_gallery"][candidates]  # (b, K, d)
            nia = jnp.einsum("bd,bKd->bK", queries, moved, precision=jax.lax.Precision.HIGHEST)
            return fusion.mix_scores(base, nia, hp["gamma"]) - penalty

        total = jnp.zeros_like(base)
        names = _pool_names(static.pool)
        for name in names:
            bank = getattr(pools, name)
            entry = state[name]
            member = name == "query_bank" and static.leave_one_out
            # The whole block at once: the query block size already bounds memory, and
            # row blocks inside it would change the last bits with the block size.
            q_code = fusion.encode(
                queries, query_self if member else None, bank, entry["factor"],
                k=static.k, weighting=static.weighting, tau=hp["tau"], w=hp["w"], row_block=queries.shape[0],
            )
            total = total + fusion.neighbour_space_scores(
                queries, q_code, candidates, pools.gallery, entry["gallery_code"], entry["factor"], hp["w"])
        return fusion.mix_scores(base, total / len(names), hp["gamma"]) - penalty


def _pool_names(pool: str) -> tuple[str, ...]:
    return ("query_bank", "gallery_bank") if pool == "both" else (pool,)
