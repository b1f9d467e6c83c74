"""Per-row statistics of samples against a bank, computed in row blocks.

The hubness baselines describe each gallery item (or query) by one number
taken over a bank: the mean of its k largest similarities, or the
log-sum-exp of its scaled similarities. These kernels compute such numbers
for every row of ``x`` without building the full (n, nb) similarity matrix:
``jax.lax.map`` takes ``ROW_BLOCK`` rows at a time, so memory grows with
ROW_BLOCK x nb.

``exclude[i]`` is the bank row that is x_i itself (transductive runs, where
the gallery bank is the gallery), or -1. That row is left out of x_i's
statistic, so a sample never counts as its own neighbour or normaliser.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from nia_jax.kernels.neighbours import local_weights
from nia_jax.kernels.similarity import similarity

ROW_BLOCK = 256


def _masked_row(row: Float[Array, " d"], bank: Float[Array, "nb d"], exclude) -> Float[Array, " nb"]:
    """Return <row, b> for every bank row b, with row ``exclude`` set to -inf."""
    sims = similarity(row[None, :], bank)[0]
    return jnp.where(jnp.arange(bank.shape[0]) == exclude, -jnp.inf, sims)


def _no_exclusion(n: int) -> Int[Array, " n"]:
    return jnp.full((n,), -1, dtype=jnp.int32)


def row_logsumexp(
    x: Float[Array, "n d"], bank: Float[Array, "nb d"], beta, exclude: Int[Array, " n"] | None = None
) -> Float[Array, " n"]:
    """Return log sum_b exp(beta <x_i, b>) for every row of x.

    ``jax.nn.logsumexp`` subtracts the maximum first, so beta = 100 (CLIP's
    logit scale) stays finite in float32.
    """
    exclude = _no_exclusion(x.shape[0]) if exclude is None else exclude

    def one(args):
        row, own = args
        return jax.nn.logsumexp(beta * _masked_row(row, bank, own))

    return jax.lax.map(one, (x, exclude), batch_size=ROW_BLOCK)


def row_top_k(
    x: Float[Array, "n d"], bank: Float[Array, "nb d"], k: int, exclude: Int[Array, " n"] | None = None
) -> tuple[Float[Array, "n k"], Int[Array, "n k"]]:
    """Return the k largest similarities of every row of x to the bank and their bank rows."""
    exclude = _no_exclusion(x.shape[0]) if exclude is None else exclude

    def one(args):
        row, own = args
        return jax.lax.top_k(_masked_row(row, bank, own), k)

    return jax.lax.map(one, (x, exclude), batch_size=ROW_BLOCK)


def row_mean_top_k(
    x: Float[Array, "n d"], bank: Float[Array, "nb d"], k: int, exclude: Int[Array, " n"] | None = None
) -> Float[Array, " n"]:
    """Return the mean of the k largest similarities of every row of x to the bank."""
    values, _ = row_top_k(x, bank, k, exclude)
    return values.mean(axis=1)


def row_neighbour_mean(
    x: Float[Array, "n d"], bank: Float[Array, "nb d"], k: int, exclude: Int[Array, " n"] | None = None
) -> Float[Array, "n d"]:
    """Return, for every row of x, the similarity-weighted mean of its k nearest bank rows.

    The weights are max(s_j, 0) / sum_i max(s_i, 0) over the k neighbours
    (uniform when every s_j <= 0), the ``power`` weighting with exponent 1.
    """
    exclude = _no_exclusion(x.shape[0]) if exclude is None else exclude

    def one(args):
        # Per row block, so the (rows, k, d) neighbour rows exist ROW_BLOCK rows at a time.
        row, own = args
        values, index = jax.lax.top_k(_masked_row(row, bank, own), k)
        weights = local_weights(values, "power", 1.0)
        return jnp.einsum("k,kd->d", weights, bank[index], precision=jax.lax.Precision.HIGHEST)

    return jax.lax.map(one, (x, exclude), batch_size=ROW_BLOCK)


def normalise_rows(x: Float[Array, "n d"]) -> Float[Array, "n d"]:
    """Return x with unit-L2 rows; an all-zero row (block padding) stays zero."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.where(norm > 0, norm, 1.0)
