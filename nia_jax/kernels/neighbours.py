"""Local neighbour weights: how much each of a sample's k nearest pool rows counts.

A sample x with similarities s_1 >= ... >= s_k to its k nearest pool rows gets
weights c_j >= 0 with sum_j c_j = 1:

* ``uniform``: c_j = 1 / k.
* ``softmax``: c_j = exp(s_j / tau) / sum_i exp(s_i / tau), computed with the
  maximum subtracted first so CLIP logits (s / 0.01) do not overflow.
* ``power``: c_j = max(s_j, 0)^tau / sum_i max(s_i, 0)^tau; uniform when every
  s_j <= 0.

These kernels take one sample; callers ``vmap`` them over rows.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

Weighting = Literal["uniform", "softmax", "power"]
WEIGHTINGS: tuple[str, ...] = ("uniform", "softmax", "power")


def local_weights(sims: Float[Array, " k"], weighting: Weighting, tau) -> Float[Array, " k"]:
    """Return the weights c (summing to one) of one sample's k nearest neighbours.

    ``weighting`` is static; ``tau`` (temperature or exponent) may be traced.
    """
    k = sims.shape[0]
    if weighting == "uniform":
        return jnp.full((k,), 1.0 / k, dtype=sims.dtype)
    if weighting == "softmax":
        return jax.nn.softmax(sims / tau)
    if weighting == "power":
        base = jnp.maximum(sims, 0.0)
        # Dividing by the maximum first keeps base**tau in range for large tau.
        top = jnp.max(base)
        safe_top = jnp.where(top > 0, top, 1.0)
        powered = jnp.where(base > 0, (base / safe_top) ** tau, 0.0)
        total = powered.sum()
        return jnp.where(total > 0, powered / jnp.where(total > 0, total, 1.0), 1.0 / k)
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
