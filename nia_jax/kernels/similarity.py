"""Cosine similarity and exact top-K, one block of queries at a time.

Shapes use one vocabulary across the package: ``nq`` queries, ``ng`` gallery
items, ``nb`` bank (pool) rows, ``d`` embedding dimension, ``k`` local
neighbours, ``K`` re-ranked candidates, ``b`` rows in a block.

Scores that must not depend on block sizes come from :func:`tiled_similarity`.
XLA's CPU matrix product may sum the d products of a score in
an order that depends on the number of columns of the product; measured on
jaxlib 0.10, a (64 x 512) by (512 x n) product gives different last bits for
n = 1000 and n = 1024. The number of rows does not matter, nor where a row or
column sits in the product. So the search computes every query-gallery score
in products of exactly ``TILE`` gallery columns, and a score is the same
float32 number whatever the query or gallery block sizes are.
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


#: Gallery columns per matrix product in :func:`tiled_similarity`. A constant, never a
#: setting: changing it changes the last bits of the scores.
TILE = 512


def tiled_similarity(x: Float[Array, "b d"], y: Float[Array, "n d"]) -> Float[Array, "b n"]:
    """Return ``x @ y.T`` computed in products of exactly ``TILE`` columns of y.

    A ``fori_loop`` writes each (b, TILE) product into the result in place;
    the last tile starts at ``n - TILE``, so y is never padded or copied,
    except when n < TILE. Memory grows with b x n for the result. On
    XLA:CPU this costs about 15% more than one product of n columns.
    """
    n = y.shape[0]
    if n <= TILE:
        return similarity(x, jnp.pad(y, ((0, TILE - n), (0, 0))))[:, :n]

    def tile(i, out):
        start = jnp.minimum(i * TILE, n - TILE)
        product = similarity(x, jax.lax.dynamic_slice_in_dim(y, start, TILE))
        return jax.lax.dynamic_update_slice_in_dim(out, product, start, axis=1)

    return jax.lax.fori_loop(0, -(-n // TILE), tile, jnp.zeros((x.shape[0], n), jnp.float32))


def map_row_blocks(fn, n: int, block: int, *arrays):
    """Apply a row-wise ``fn`` to ``block`` rows of ``arrays`` at a time; return rows 0..n-1.

    ``fn`` maps arrays with a leading axis of ``block`` rows to a pytree of
    arrays with the same leading axis, each output row depending only on the
    same input row. Used to bound the memory of per-row work (a row's kNN
    over a pool needs a block x nb score matrix) under ``jit``. The last block
    starts at ``n - block``, so nothing is padded; its overlapping rows are
    dropped.
    """
    if n <= block:
        return fn(*arrays)
    n_blocks = -(-n // block)
    starts = jnp.minimum(jnp.arange(n_blocks) * block, n - block)

    def one(start):
        return fn(*(jax.lax.dynamic_slice_in_dim(a, start, block) for a in arrays))

    stacked = jax.lax.map(one, starts)
    keep = n - (n_blocks - 1) * block

    def assemble(leaf):
        head = leaf[:-1].reshape(((n_blocks - 1) * block,) + leaf.shape[2:])
        return jnp.concatenate([head, leaf[-1, block - keep:]], axis=0)

    return jax.tree.map(assemble, stacked)


def merge_top_k(values, indices, new_values, new_indices, k: int):
    """Merge two best-first top-k lists per row into one, ties to the first list.

    ``values``/``indices`` hold the running top-k of earlier gallery columns,
    so on equal scores the lower gallery index stays first, as in one
    ``lax.top_k`` over the whole row.
    """
    merged_values, at = jax.lax.top_k(jnp.concatenate([values, new_values], axis=1), k)
    merged_indices = jnp.take_along_axis(jnp.concatenate([indices, new_indices], axis=1), at, axis=1)
    return merged_values, merged_indices


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
