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
When a side can have no pool member (known when tracing: its code's
``self_index`` is None), its corrections are left out of the traced program.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from nia_jax.kernels.neighbours import Weighting, local_weights
from nia_jax.kernels.ridge import RidgeFactor
from nia_jax.kernels.similarity import map_row_blocks, masked_top_k

_HI = jax.lax.Precision.HIGHEST
_EPS = 1e-12
_LOO_FLOOR = 1e-6  # relative floor of the leave-one-out ||a(x)||^2, about 8 float32 ulps of 1
_TINY = 1e-30


class PoolCode(NamedTuple):
    """A sample's neighbour information over one pool (leading axis: samples).

    Attributes:
      neighbours: indices of the k nearest pool rows, (n, k).
      local: unit-L2 local weights l(x)/||l(x)|| on those rows, (n, k).
      local_map: u(x) = sum_j local_j A[neighbours_j], (n, d).
      self_index: the sample's own pool row or -1, (n,); None when no sample
        can be a pool member, which is known when the code is traced and
        removes every self correction from the scores.
      self_coef: the plain coefficient a_x(self_index) = A[self_index] . x or
        0, (n,); None with ``self_index``.
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
    self_index: Int[Array, " n"] | None
    self_coef: Float[Array, " n"] | None
    global_norm: Float[Array, " n"]
    mix_norm: Float[Array, " n"]
    local_fit: Float[Array, " n"]
    global_fit: Float[Array, " n"]


#: Rows encoded at a time by :func:`encode` when ``row_block`` is not given.
ENCODE_ROWS = 1024


def encode(
    x: Float[Array, "n d"],
    self_index: Int[Array, " n"] | None,
    pool: Float[Array, "nb d"],
    factor: RidgeFactor,
    *,
    k: int,
    weighting: Weighting,
    tau,
    w,
    row_block: int = ENCODE_ROWS,
) -> PoolCode:
    """Compute the neighbour information of the rows of x over one pool.

    ``self_index`` is each row's own pool row or -1, or None when no row is
    a pool member. ``k``, ``weighting`` and ``row_block`` are static; ``tau``
    and ``w`` may be traced. Rows are coded ``row_block`` at a time, so
    memory grows with row_block x nb, not n x nb.
    """
    if self_index is None:
        return map_row_blocks(lambda rows: _encode(rows, None, pool, factor, k, weighting, tau, w),
                              x.shape[0], row_block, x)
    return map_row_blocks(lambda rows, own: _encode(rows, own, pool, factor, k, weighting, tau, w),
                          x.shape[0], row_block, x, self_index)


def _encode(x, self_index, pool, factor, k, weighting, tau, w) -> PoolCode:
    no_self = jnp.full((x.shape[0],), -1, dtype=jnp.int32) if self_index is None else self_index
    sims, neighbours = masked_top_k(x, pool, no_self, k)
    raw = jax.vmap(local_weights, in_axes=(0, None, None))(sims, weighting, tau)
    local = raw * _reciprocal(jnp.maximum(jnp.linalg.norm(raw, axis=1, keepdims=True), _EPS))
    local_map = jnp.einsum("nk,nkd->nd", local, factor.coding[neighbours], precision=_HI)
    local_fit = jnp.sum(raw * sims, axis=1)
    plain_sq = jnp.einsum("nd,de,ne->n", x, factor.gram, x, precision=_HI)
    plain_fit = jnp.einsum("nd,de,ne->n", x, factor.reconstruction, x, precision=_HI)

    if self_index is None:
        self_coef = None
        global_sq, global_fit = plain_sq, plain_fit
    else:
        is_member = self_index >= 0
        safe = jnp.maximum(self_index, 0)
        self_row = jnp.where(is_member[:, None], factor.coding[safe], 0.0)
        self_coef = jnp.sum(self_row * x, axis=1)
        # NOTE: at lam below about 0.1 the two terms agree to float32 precision and the
        # difference is inaccurate (scores off by up to 0.25 at lam = 1e-4); NIA.validate
        # warns there.
        global_sq = plain_sq - self_coef**2
        # Leave-one-out code a(x) = alpha(x) / (1 - h) with the self entry zeroed,
        # where h = self_coef is the pool row's own leverage.
        self_pool_dot = jnp.where(is_member, jnp.sum(pool[safe] * x, axis=1), 0.0)
        global_fit = (plain_fit - self_coef * self_pool_dot) / jnp.where(is_member, 1.0 - self_coef, 1.0)
    # The floor scales with ||alpha(x)||^2: codes shrink like 1/lam, so a fixed floor
    # would clamp real norms at large lam (about 1e-12 at lam = 1e6). Below the floor,
    # the leave-one-out difference above is float32 rounding noise.
    global_norm = jnp.sqrt(jnp.maximum(global_sq, jnp.maximum(_LOO_FLOOR * plain_sq, _TINY)))

    # The neighbours exclude the self row, so <l(x), a(x)> needs no self correction.
    cos_local_global = jnp.sum(local_map * x, axis=1) / global_norm
    mix_sq = (1 - w) ** 2 + w**2 + 2 * w * (1 - w) * cos_local_global
    mix_norm = jnp.sqrt(jnp.maximum(mix_sq, _EPS))
    return PoolCode(neighbours, local, local_map, self_index, self_coef, global_norm, mix_norm,
                    local_fit, global_fit)


def _reciprocal(x):
    return 1.0 / x


def _weight_at(code_neighbours, code_local, index):
    """Return the local weight that a code puts on pool row ``index`` (0 if absent)."""
    return jnp.sum(jnp.where(code_neighbours == index, code_local, 0.0), axis=-1)


#: The d-dimensional terms of :func:`neighbour_space_scores` come from products with the
#: whole gallery when ng <= DENSE_RATIO * K, and from gathered candidate rows otherwise.
#: Measured on XLA:CPU (jaxlib 0.10), gathering a candidate's row and taking its product
#: costs about as much as 100 gallery rows of a matrix product.
DENSE_RATIO = 64


def neighbour_space_scores(
    q: Float[Array, "b d"],
    q_code: PoolCode,
    candidates: Int[Array, "b K"],
    gallery: Float[Array, "ng d"],
    g_code: PoolCode,
    factor: RidgeFactor,
    w,
) -> Float[Array, "b K"]:
    """Return <phi(q), phi(g)> for a block of queries and their K candidates each.

    ``g_code`` is the code of the whole gallery; only the candidates' entries
    are read. Writing g^ = g / ||a(g)|| and q^ = q / ||a(q)||, every term that
    needs d numbers per candidate folds into two products per query,

        g^ . [w(1-w) u(q) + w^2 (A^T A q^ - c_q A[self(q)] / ||a(q)||)]
        + u(g) . [w(1-w) q^],

    (plus A[self(g)] . q when gallery items can be pool members). They are
    read from two matrix products with the whole gallery when it is small
    next to K (``DENSE_RATIO``), else from the gathered rows of the K
    candidates. Every other term is a gather of a few numbers per candidate.
    Self corrections are traced only for a side whose ``self_index`` is not
    None.
    """
    b, n_candidates = candidates.shape
    q_member = q_code.self_index is not None
    g_member = g_code.self_index is not None
    # Divisions by a per-row number are written as products with its reciprocal:
    # XLA rewrites x / broadcast(y) that way in some programs and not in others,
    # which would make the scores of a sharded block differ in the last bit.
    q_inv = _reciprocal(q_code.global_norm)[:, None]
    g_inv = _reciprocal(g_code.global_norm)[candidates]
    q_hat = q * q_inv

    # The query's two d-vectors (see the docstring), w and the norms folded in.
    towards_g = jnp.dot(q_hat, factor.gram.T, precision=_HI)
    if q_member:
        q_self = q_code.self_index
        q_coef = q_code.self_coef[:, None]
        q_self_row = jnp.where((q_self >= 0)[:, None], factor.coding[jnp.maximum(q_self, 0)], 0.0)
        towards_g = towards_g - (q_coef * q_inv) * q_self_row
    towards_g = w * (1 - w) * q_code.local_map + w**2 * towards_g
    towards_u = w * (1 - w) * q_hat

    if gallery.shape[0] <= DENSE_RATIO * n_candidates:
        def at_candidates(vectors, rows):
            return jnp.take_along_axis(jnp.dot(vectors, rows.T, precision=_HI), candidates, axis=1)

        vector_part = at_candidates(towards_g, gallery) * g_inv + at_candidates(towards_u, g_code.local_map)
    else:
        g_rows = gallery[candidates]  # (b, K, d)
        u_rows = g_code.local_map[candidates]
        vector_part = (jnp.einsum("bKd,bd->bK", g_rows, towards_g, precision=_HI) * g_inv
                       + jnp.einsum("bKd,bd->bK", u_rows, towards_u, precision=_HI))

    # Local-local: weights on shared neighbours, by a k x k index comparison.
    g_neighbours = g_code.neighbours[candidates]  # (b, K, k)
    g_local = g_code.local[candidates]
    same = q_code.neighbours[:, None, :, None] == g_neighbours[:, :, None, :]  # (b, K, k, k)
    local_local = jnp.einsum("qi,qKij,qKj->qK", q_code.local, same.astype(q.dtype), g_local, precision=_HI)
    inner = (1 - w) ** 2 * local_local + vector_part

    # Rank-one corrections for the removed self rows.
    if q_member:
        weight = _weight_at(g_neighbours, g_local, q_self[:, None, None])
        inner = inner - w * (1 - w) * weight * q_coef * q_inv
    if g_member:
        g_self = g_code.self_index[candidates]  # (b, K)
        g_coef = g_code.self_coef[candidates]
        weight = _weight_at(q_code.neighbours[:, None, :], q_code.local[:, None, :], g_self[..., None])
        g_self_rows = jnp.where((g_self >= 0)[..., None], factor.coding[jnp.maximum(g_self, 0)], 0.0)
        coef_q_at_g_self = jnp.einsum("bKd,bd->bK", g_self_rows, q_hat, precision=_HI)
        inner = inner - (w * (1 - w) * weight + w**2 * coef_q_at_g_self) * g_coef * g_inv
    if q_member and g_member:
        shared = (q_self[:, None] >= 0) & (q_self[:, None] == g_self)
        inner = inner + w**2 * jnp.where(shared, q_coef * g_coef, 0.0) * (q_inv * g_inv)
    mix_inv = _reciprocal(q_code.mix_norm)[:, None] * _reciprocal(g_code.mix_norm)[candidates]
    return inner * mix_inv


def neighbour_expression(
    x: Float[Array, "n d"],
    code: PoolCode,
    pool: Float[Array, "nb d"],
    factor: RidgeFactor,
    w,
) -> Float[Array, "n d"]:
    """Return P^T phi(x), the pool's fused neighbour expression of each row of x (n, d)."""
    local_part = jnp.einsum("nk,nkd->nd", code.local, pool[code.neighbours], precision=_HI)
    global_part = jnp.dot(x, factor.reconstruction.T, precision=_HI)
    if code.self_index is not None:
        self_pool_row = jnp.where((code.self_index >= 0)[:, None], pool[jnp.maximum(code.self_index, 0)], 0.0)
        global_part = global_part - code.self_coef[:, None] * self_pool_row
    global_part = global_part / code.global_norm[:, None]
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
