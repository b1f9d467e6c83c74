"""Cosine similarity and exact top-K, one block of queries at a time.

Shapes use one vocabulary across the package: ``nq`` queries, ``ng`` gallery
items, ``nb`` bank (pool) rows, ``d`` embedding dimension, ``k`` local
neighbours, ``K`` re-ranked candidates, ``b`` rows in a block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def similarity(x: Float[Array, "b d"], y: Float[Array, "n d"]) -> Float[Array, "b n"]:
    """Return cosine similarities ``x @ y.T`` of unit-norm rows in float32."""
    return jnp.dot(x, y.T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("k",))
def top_k(scores: Float[Array, "b n"], k: int) -> tuple[Float[Array, "b k"], Int[Array, "b k"]]:
    """Return the k largest scores per row and their column indices, best first.

    Equal scores are ordered by increasing column index (``lax.top_k`` is stable).
    """
    return jax.lax.top_k(scores, k)


@functools.partial(jax.jit, static_argnames=("k",))
def masked_top_k(
    x: Float[Array, "b d"],
    pool: Float[Array, "nb d"],
    self_index: Int[Array, " b"],
    k: int,
) -> tuple[Float[Array, "b k"], Int[Array, "b k"]]:
    """Return the k nearest pool rows of each x by cosine, skipping x's own row.

    ``self_index[i]`` is the row of ``pool`` that is x_i itself, or -1 when x_i
    is not a pool member. Only that exact row is skipped, so duplicates of x_i
    elsewhere in the pool stay eligible neighbours.
    """
    sims = similarity(x, pool)
    cols = jnp.arange(pool.shape[0])
    sims = jnp.where(cols[None, :] == self_index[:, None], -jnp.inf, sims)
    return jax.lax.top_k(sims, k)


def iter_blocks(n: int, block_size: int):
    """Yield ``(start, stop)`` ranges that cover ``range(n)`` in blocks."""
    for start in range(0, n, block_size):
        yield start, min(start + block_size, n)


def pad_rows(x, rows: int, fill=0):
    """Pad axis 0 of ``x`` to ``rows`` rows so every block has one shape (one compilation)."""
    missing = rows - x.shape[0]
    if missing == 0:
        return x
    pad = [(0, missing)] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, pad, constant_values=fill)
