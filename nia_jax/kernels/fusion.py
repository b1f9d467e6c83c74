"""Fusion of local and global neighbour information into NIA features and scores.

For a sample x and a pool P, let l(x) be its local weight vector (k non-zeros
on its k nearest pool rows, see :mod:`nia_jax.kernels.neighbours`) and a(x) its
ridge coefficients with its own row removed (see :mod:`nia_jax.kernels.ridge`).
Both live in the pool's coordinate space (dimension nb). NIA's neighbour-space
feature is

    v(x)   = (1 - w) l(x) / ||l(x)|| + w a(x) / ||a(x)||
    phi(x) = v(x) / ||v(x)||

and its embedding-space feature for a gallery item is

    g' = normalise(g + beta P^T phi(g)).

Neither nb-dimensional vector is ever built. Every inner product reduces to
d-dimensional products and k gathers:

    <l(x), a(y)> = u(x) . y           with u(x) = sum_j l_j(x) A_j (d-vector)
    <a(x), a(y)> = x^T (A^T A) y      (d x d matrix shared by all pairs)
    <l(x), l(y)> = sum over shared neighbours of l_j(x) l_j(y)   (k x k compare)

plus rank-one corrections for the removed self rows. So scoring K candidates
costs O(K (k^2 + d)) per query, and the per-gallery codes are computed once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from nia_jax.kernels.neighbours import Weighting, local_weights
from nia_jax.kernels.ridge import RidgeFactor
from nia_jax.kernels.similarity import masked_top_k

_HI = jax.lax.Precision.HIGHEST
_EPS = 1e-12


class PoolCode(NamedTuple):
    """A sample's neighbour information over one pool (leading axis: samples).

    Attributes:
      neighbours: indices of the k nearest pool rows, (n, k).
      local: unit-L2 local weights l(x)/||l(x)|| on those rows, (n, k).
      local_map: u(x) = sum_j local_j A[neighbours_j], (n, d).
      self_index: the sample's own pool row or -1, (n,).
      self_row: A[self_index] or zeros, (n, d); used for the self corrections.
      self_coef: the plain coefficient a_x(self_index) = A[self_index] . x or 0, (n,).
      global_norm: ||a(x)|| with the self entry removed, (n,).
      mix_norm: ||v(x)|| for the fusion weight w it was built with, (n,).
      local_fit: <x, P^T c(x)> = sum_j c_j(x) s_j(x) with the weights c(x)
        summing to one: the (weighted) mean similarity to the k neighbours, (n,).
      global_fit: <x, P^T a(x)>, how much of x the ridge code over the pool
        reconstructs (its leverage), with the self row left out, (n,).
    """

    neighbours: Int[Array, "n k"]
    local: Float[Array, "n k"]
    local_map: Float[Array, "n d"]
    self_index: Int[Array, " n"]
    self_row: Float[Array, "n d"]
    self_coef: Float[Array, " n"]
    global_norm: Float[Array, " n"]
    mix_norm: Float[Array, " n"]
    local_fit: Float[Array, " n"]
    global_fit: Float[Array, " n"]


def encode(
    x: Float[Array, "n d"],
    self_index: Int[Array, " n"],
    pool: Float[Array, "nb d"],
    factor: RidgeFactor,
    *,
    k: int,
    weighting: Weighting,
    tau,
    w,
) -> PoolCode:
    """Compute the neighbour information of the rows of x over one pool.

    ``k`` and ``weighting`` are static; ``tau`` and ``w`` may be traced.
    """
    sims, neighbours = masked_top_k(x, pool, self_index, k)
    raw = jax.vmap(local_weights, in_axes=(0, None, None))(sims, weighting, tau)
    local = raw / jnp.maximum(jnp.linalg.norm(raw, axis=1, keepdims=True), _EPS)
    local_map = jnp.einsum("nk,nkd->nd", local, factor.coding[neighbours], precision=_HI)

    is_member = self_index >= 0
    self_row = jnp.where(is_member[:, None], factor.coding[jnp.maximum(self_index, 0)], 0.0)
    self_coef = jnp.sum(self_row * x, axis=1)
    global_sq = jnp.einsum("nd,de,ne->n", x, factor.gram, x, precision=_HI) - self_coef**2
    global_norm = jnp.sqrt(jnp.maximum(global_sq, _EPS))

    # The neighbours exclude the self row, so <l(x), a(x)> needs no self correction.
    cos_local_global = jnp.sum(local_map * x, axis=1) / global_norm
    mix_sq = (1 - w) ** 2 + w**2 + 2 * w * (1 - w) * cos_local_global
    mix_norm = jnp.sqrt(jnp.maximum(mix_sq, _EPS))

    local_fit = jnp.sum(raw * sims, axis=1)
    # Leave-one-out code a(x) = alpha(x) / (1 - h) with the self entry zeroed,
    # where h = self_coef is the pool row's own leverage.
    self_pool_dot = jnp.where(is_member, jnp.sum(pool[jnp.maximum(self_index, 0)] * x, axis=1), 0.0)
    plain_fit = jnp.einsum("nd,de,ne->n", x, factor.reconstruction, x, precision=_HI)
    global_fit = (plain_fit - self_coef * self_pool_dot) / jnp.where(is_member, 1.0 - self_coef, 1.0)
    return PoolCode(neighbours, local, local_map, self_index, self_row, self_coef, global_norm, mix_norm,
                    local_fit, global_fit)


def _weight_at(code_neighbours, code_local, index):
    """Return the local weight that a code puts on pool row ``index`` (0 if absent)."""
    return jnp.sum(jnp.where(code_neighbours == index, code_local, 0.0), axis=-1)


def neighbour_space_scores(
    q: Float[Array, " d"],
    q_code: PoolCode,
    g: Float[Array, "K d"],
    g_code: PoolCode,
    factor: RidgeFactor,
    w,
) -> Float[Array, " K"]:
    """Return <phi(q), phi(g)> for one query (code of one sample) and K candidates."""
    # Local-local: weights on shared neighbours, by a k x k index comparison.
    same = q_code.neighbours[None, :, None] == g_code.neighbours[:, None, :]  # (K, k, k)
    local_local = jnp.einsum("a,Kab,Kb->K", q_code.local, same.astype(q.dtype), g_code.local)

    # Local-global in both directions, minus the coefficient on the removed self row.
    g_self_coef = g_code.self_coef
    local_q_global_g = g @ q_code.local_map - _weight_at(q_code.neighbours, q_code.local, g_code.self_index[:, None]) * g_self_coef
    global_q_local_g = g_code.local_map @ q - _weight_at(g_code.neighbours, g_code.local, q_code.self_index) * q_code.self_coef

    # Global-global through the d x d Gram, with rank-one self corrections.
    plain = g @ (factor.gram @ q)
    coef_g_at_q_self = g @ q_code.self_row
    coef_q_at_g_self = g_code.self_row @ q
    shared_self = (q_code.self_index >= 0) & (q_code.self_index == g_code.self_index)
    global_global = (
        plain
        - q_code.self_coef * coef_g_at_q_self
        - coef_q_at_g_self * g_self_coef
        + jnp.where(shared_self, q_code.self_coef * g_self_coef, 0.0)
    )

    inner = (
        (1 - w) ** 2 * local_local
        + w * (1 - w) * (local_q_global_g / g_code.global_norm + global_q_local_g / q_code.global_norm)
        + w**2 * global_global / (q_code.global_norm * g_code.global_norm)
    )
    return inner / (q_code.mix_norm * g_code.mix_norm)


def neighbour_expression(
    x: Float[Array, "n d"],
    code: PoolCode,
    pool: Float[Array, "nb d"],
    factor: RidgeFactor,
    w,
) -> Float[Array, "n d"]:
    """Return P^T phi(x), the pool's fused neighbour expression of each row of x (n, d)."""
    local_part = jnp.einsum("nk,nkd->nd", code.local, pool[code.neighbours], precision=_HI)
    self_pool_row = jnp.where((code.self_index >= 0)[:, None], pool[jnp.maximum(code.self_index, 0)], 0.0)
    global_part = (
        jnp.dot(x, factor.reconstruction.T, precision=_HI) - code.self_coef[:, None] * self_pool_row
    ) / code.global_norm[:, None]
    return ((1 - w) * local_part + w * global_part) / code.mix_norm[:, None]


def embedding_space_features(
    x: Float[Array, "n d"], expression: Float[Array, "n d"], beta
) -> Float[Array, "n d"]:
    """Return normalise(x + beta P^T phi(x)); beta < 0 pushes x away from its neighbours."""
    moved = x + beta * expression
    return moved / jnp.maximum(jnp.linalg.norm(moved, axis=1, keepdims=True), _EPS)


def hubness(code: PoolCode, w) -> Float[Array, " n"]:
    """Return h(x) = (1 - w) <x, P^T c(x)> + w <x, P^T a(x)>, x's fit by its pool neighbours.

    With uniform weights and w = 0 this is the mean similarity of x to its k
    nearest pool rows, the hubness term of NNN and CSLS; with w = 1 it is the
    ridge leverage of x, how well the whole pool explains it. A gallery item
    that the query bank explains well is a likely hub.
    """
    return (1 - w) * code.local_fit + w * code.global_fit


def mix_scores(base, nia, gamma):
    """Return the final score (1 - gamma) s + gamma s_nia."""
    return (1 - gamma) * base + gamma * nia
