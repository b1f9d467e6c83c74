"""Collaborative representation: ridge coding of a sample over a pool of samples.

For a pool P (nb rows of dimension d) and a sample x, the global neighbour
expression is

    alpha(x) = argmin_a ||x - P^T a||^2 + lam ||a||^2 = (P P^T + lam I)^{-1} P x.

By the push-through identity the same coefficients are P (P^T P + lam I)^{-1} x,
so the coding map ``A = (P P^T + lam I)^{-1} P`` (nb x d) can be built from
either Gram matrix. We factorise the smaller one once per pool with Cholesky:
the dual nb x nb system when nb <= d, the primal d x d system otherwise
(cost O(nb^2 d + nb^3) versus O(nb d^2 + d^3)). Every sample is then coded by
one product, ``alpha(x) = A x``.

Leave-one-out: when x is pool row i, coding it over the pool finds itself.
Coding P_i over the other rows only has the closed form
z = -C[:, i] / C[i, i] with C = (P P^T + lam I)^{-1} and z_i = 0 (the same
argument as the EASE recommender's diagonal constraint). Since
alpha(P_i) = e_i - lam C[:, i], this equals alpha(P_i) / (1 - h_i) with entry i
zeroed, where h_i = alpha(P_i)_i is the leverage of row i; no second solve.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve
from jaxtyping import Array, Float, Int

_HI = jax.lax.Precision.HIGHEST


class RidgeFactor(NamedTuple):
    """One pool's ridge factorisation, computed once and shared by every sample.

    Attributes:
      coding: A = (P P^T + lam I)^{-1} P, shape (nb, d); alpha(x) = A x.
      gram: A^T A, shape (d, d); <alpha(x), alpha(y)> = x^T (A^T A) y.
      reconstruction: P^T A, shape (d, d); the ridge fit of x is (P^T A) x.
    """

    coding: Float[Array, "nb d"]
    gram: Float[Array, "d d"]
    reconstruction: Float[Array, "d d"]


def ridge_factor(pool: Float[Array, "nb d"], lam) -> RidgeFactor:
    """Factorise ``pool`` once for ridge coding with penalty ``lam`` (traced, > 0).

    The n x n (dual) or d x d (primal) form is chosen from the static shape.
    """
    nb, d = pool.shape
    pool = pool.astype(jnp.float32)
    if nb <= d:
        gram = jnp.dot(pool, pool.T, precision=_HI) + lam * jnp.eye(nb, dtype=pool.dtype)
        coding = cho_solve(cho_factor(gram, lower=True), pool)
    else:
        gram = jnp.dot(pool.T, pool, precision=_HI) + lam * jnp.eye(d, dtype=pool.dtype)
        coding = cho_solve(cho_factor(gram, lower=True), pool.T).T
    return RidgeFactor(
        coding=coding,
        gram=jnp.dot(coding.T, coding, precision=_HI),
        reconstruction=jnp.dot(pool.T, coding, precision=_HI),
    )


def ridge_coefficients(factor: RidgeFactor, x: Float[Array, " d"]) -> Float[Array, " nb"]:
    """Return alpha(x) = (P P^T + lam I)^{-1} P x for one sample x."""
    return jnp.dot(factor.coding, x, precision=_HI)


def leave_one_out_coefficients(
    factor: RidgeFactor, x: Float[Array, " d"], self_index: Int[Array, ""]
) -> Float[Array, " nb"]:
    """Return the coefficients of x over the pool without its own row ``self_index``.

    ``self_index`` is -1 when x is not a pool row; the plain coefficients are
    returned then.
    """
    alpha = ridge_coefficients(factor, x)
    is_member = self_index >= 0
    safe = jnp.maximum(self_index, 0)
    leverage = jnp.where(is_member, alpha[safe], 0.0)
    scaled = alpha / (1.0 - leverage)
    return jnp.where(is_member & (jnp.arange(alpha.shape[0]) == safe), 0.0, scaled)
