"""Sinkhorn normalisation baselines: the query-bank form and the dual-bank form (DBSN).

Sinkhorn normalisation turns exp(beta s) over rows (query-modality samples)
and columns (gallery-modality samples) into a matrix with uniform row sums
1/nr and column sums 1/nc by alternately rescaling rows and columns. In log
space, with potentials h (rows) and f (columns), each iteration is

    h_b = -log nr - LSE_c(beta s(b, c) + f_c)     (rows)
    f_c = -log nc - LSE_b(beta s(b, c) + h_b)     (columns)

starting from f = 0 and ending on the column update.

Approximation, to keep scoring per query and cheap: the rows are the query
bank B_q only. ``prepare`` runs the iterations once on B_q, and a query q is
then normalised as one extra row against the fixed column potentials:

    score(q, g) = beta s(q, g) + f_g - LSE_c(beta s(q, c) + f_c),

the log of q's row of the plan. The exact method would add q to the rows
and rerun the iterations for every query. In transductive runs B_q is the
evaluated queries, so the plan is the exact one over all of them and q's row
is read from it. The row LSE is constant per query and does not change the
ranking. Memory grows with nbq x nc, the size of the plan.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nia_jax.kernels.similarity import similarity
from nia_jax.rerankers._checks import bank, float_setting, int_setting
from nia_jax.rerankers.base import Pools, Reranker, register


def column_potentials(logits, column_valid, n_iter: int):
    """Return the column potentials f (nc,) of the Sinkhorn plan of ``logits`` (nr, nc).

    Columns with ``column_valid`` False take no part and get f = -inf.
    """
    log_row_mass = -jnp.log(logits.shape[0])
    log_column_mass = -jnp.log(column_valid.sum())
    start = jnp.where(column_valid, 0.0, -jnp.inf).astype(logits.dtype)

    def iteration(_, f):
        h = log_row_mass - jax.nn.logsumexp(logits + f[None, :], axis=1)
        f_new = log_column_mass - jax.nn.logsumexp(logits + h[:, None], axis=0)
        return jnp.where(column_valid, f_new, -jnp.inf)

    return jax.lax.fori_loop(0, n_iter, iteration, start)


def _validate(method, pools, banks):
    name = method.name
    float_setting(method.beta, f"{name}.beta", low=0.0, low_open=True)
    int_setting(method.n_iter, f"{name}.n_iter", low=1)
    if pools is None:
        return
    for field in banks:
        bank(pools, field, name)


def _score(hp, state, columns, queries, candidates, base):
    logits = hp["beta"] * similarity(queries, columns) + state["potentials"][None, :]
    row_log_norm = jax.nn.logsumexp(logits, axis=1)
    return hp["beta"] * base + state["potentials"][candidates] - row_log_norm[:, None]


@register
@dataclasses.dataclass(frozen=True)
class Sinkhorn(Reranker):
    """Sinkhorn normalisation over the query bank (SN; Pan et al., ACM MM 2025, "DBSN").

    Rows are B_q, columns the gallery; see the module docstring for the
    iterations and for the bank-only approximation. score(q, g) is the log of
    q's row of the plan. Needs B_q. Inductive unless B_q is the evaluated
    queries (transductive runs, where the plan is exact).

    Attributes:
      n_iter: row-and-column iterations (static).
      beta: inverse temperature, > 0 (CLIP's logit scale is 100).
    """

    name = "sinkhorn"
    needs = frozenset({"query_bank"})
    traced = ("beta",)

    n_iter: int = 10
    beta: float | None = 20.0

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        _validate(self, pools, ("query_bank",))

    @staticmethod
    def prepare(static: "Sinkhorn", hp, pools: Pools):
        logits = hp["beta"] * similarity(pools.query_bank, pools.gallery)
        valid = jnp.ones(pools.gallery.shape[0], dtype=bool)
        return {"potentials": column_potentials(logits, valid, static.n_iter)}

    @staticmethod
    def score(static: "Sinkhorn", hp, state, pools: Pools, queries, query_self, candidates, base):
        return _score(hp, state, pools.gallery, queries, candidates, base)


@register
@dataclasses.dataclass(frozen=True)
class DBSN(Reranker):
    """Dual Bank Sinkhorn Normalization (Pan et al., ACM MM 2025).

    As ``sinkhorn``, but the columns are the gallery together with the
    gallery bank B_g, so that the columns the query bank is balanced against
    look more like the targets' distribution:

        score(q, g) = beta s(q, g) + f_g - LSE_{c in G u B_g}(beta s(q, c) + f_c),

    with f from the bank-only plan over rows B_q and columns G u B_g. This
    matches the authors' code (github.com/ppanzx/DBSN, ``dbsn.py``), which
    runs 10 Sinkhorn iterations on the stacked target and target-bank
    similarities to the query bank and subtracts the targets' potentials.
    NOTE: this reading rests on the paper's abstract (a target bank added
    beside the query bank) and on that code; the paper's equations were not
    checked. Needs B_q and B_g. In transductive runs B_g is the gallery, so
    every B_g row is a duplicate gallery column and is left out, and dbsn
    equals sinkhorn.

    Attributes:
      n_iter: row-and-column iterations (static).
      beta: inverse temperature, > 0.
    """

    name = "dbsn"
    needs = frozenset({"query_bank", "gallery_bank"})
    traced = ("beta",)

    n_iter: int = 10
    beta: float | None = 20.0

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        _validate(self, pools, ("query_bank", "gallery_bank"))

    @staticmethod
    def prepare(static: "DBSN", hp, pools: Pools):
        n_bank = pools.gallery_bank.shape[0]
        columns = jnp.concatenate([pools.gallery, pools.gallery_bank])
        # A gallery-bank row that is a gallery item (transductive runs) would be a second copy of its column.
        duplicate_rows = jnp.where(pools.gallery_self >= 0, pools.gallery_self, n_bank)
        bank_valid = jnp.ones(n_bank, dtype=bool).at[duplicate_rows].set(False, mode="drop")
        valid = jnp.concatenate([jnp.ones(pools.gallery.shape[0], dtype=bool), bank_valid])
        logits = hp["beta"] * similarity(pools.query_bank, columns)
        return {"columns": columns, "potentials": column_potentials(logits, valid, static.n_iter)}

    @staticmethod
    def score(static: "DBSN", hp, state, pools: Pools, queries, query_self, candidates, base):
        return _score(hp, state, state["columns"], queries, candidates, base)
