"""Checks applied to user arrays before they reach a jitted kernel.

Every check raises :class:`nia_jax.errors.InputError` with the name of the
array (a file path where one is known), the value found, the value expected
and what to do about it. Kernels themselves assume validated input.
"""

from __future__ import annotations

import logging
import typing
from typing import Literal

import numpy as np

from nia_jax.errors import ConfigError, InputError, did_you_mean

logger = logging.getLogger(__name__)

NormPolicy = Literal["normalise", "warn", "reject"]
NORM_POLICIES: tuple[str, ...] = typing.get_args(NormPolicy)

# CLIP-style encoders that store float16 embeddings give norms within about
# 1e-3 of one; anything further away is treated as not normalised.
NORM_TOLERANCE = 1e-2


def as_embeddings(
    array,
    name: str,
    *,
    dim: int | None = None,
    norm_policy: NormPolicy = "warn",
    allow_empty: bool = False,
) -> np.ndarray:
    """Validate a 2-D embedding matrix and return it as unit-norm float32 rows.

    Args:
      array: anything NumPy can turn into a numeric array of shape (n, d).
        float16 and bfloat16 inputs are upcast to float32.
      name: how the array is named in error messages (a role or a file path).
      dim: required embedding dimension d, if already known from another array.
      norm_policy: what to do with rows whose L2 norm is not 1 within
        ``NORM_TOLERANCE``: ``"normalise"`` silently, ``"warn"`` normalise and
        log a warning, ``"reject"`` raise.
      allow_empty: accept n == 0.

    Returns:
      A new float32 array of shape (n, d) with unit-norm rows. The input is
      never modified.
    """
    check_norm_policy(norm_policy)
    try:
        arr = np.asarray(array)
    except Exception as exc:  # NumPy raises several types for ragged input.
        raise InputError(f"{name}: cannot be read as a numeric array ({exc}).") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype.name == "bfloat16"
    ):
        raise InputError(
            f"{name}: expected a numeric array of embeddings, got dtype {arr.dtype}. "
            "Save embeddings as float32, float16 or bfloat16."
        )
    if np.iscomplexobj(arr):
        raise InputError(f"{name}: expected real embeddings, got complex dtype {arr.dtype}.")
    if arr.ndim != 2:
        raise InputError(
            f"{name}: expected a 2-D array (n, d) of embeddings, got shape {arr.shape}. "
            "Stack one embedding per row."
        )
    n, d = arr.shape
    if n == 0 and not allow_empty:
        raise InputError(f"{name}: expected at least one embedding row, got shape {arr.shape}.")
    if d == 0:
        raise InputError(f"{name}: expected embeddings with d >= 1 columns, got shape {arr.shape}.")
    if dim is not None and d != dim:
        hint = " It may be transposed." if n == dim else ""
        raise InputError(
            f"{name}: embedding dimension {d} does not match the other inputs' dimension "
            f"{dim} (shape {arr.shape}).{hint} Use embeddings from the same model for every input."
        )
    out = arr.astype(np.float32, copy=True)
    norms = _row_norms(out)
    # A float32 value squared cannot overflow float64, so a row's norm is finite
    # exactly when every entry of the row is.
    bad_rows = np.flatnonzero(~np.isfinite(norms))
    if bad_rows.size:
        raise InputError(
            f"{name}: {bad_rows.size} row(s) contain NaN or Inf (first rows: {bad_rows[:5].tolist()}). "
            "Re-encode them, for example in float32 instead of float16."
        )
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise InputError(
            f"{name}: {zero.size} row(s) are all zeros (first rows: {zero[:5].tolist()}); "
            "a zero embedding has no direction. Remove or re-encode them."
        )
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        message = (
            f"{name}: {int(off.sum())} of {n} rows are not unit-norm "
            f"(norms from {norms.min():.4g} to {norms.max():.4g})"
        )
        if norm_policy == "reject":
            raise InputError(message + ". L2-normalise them or allow normalisation.")
        if norm_policy == "warn":
            logger.warning("%s; normalising them.", message)
    out /= norms[:, None].astype(np.float32)
    return out


def _row_norms(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Return the float64 L2 norm of every row of float32 ``x``.

    Works through ``chunk`` rows at a time, so the float64 copy stays small:
    a whole-matrix copy costs 8 bytes per entry and, at 10^6 x 512, most of
    the validation time.
    """
    norms = np.empty(x.shape[0], dtype=np.float64)
    for lo in range(0, x.shape[0], chunk):
        rows = x[lo:lo + chunk].astype(np.float64)
        norms[lo:lo + chunk] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return norms


def check_norm_policy(norm_policy) -> None:
    """Raise ConfigError unless ``norm_policy`` is one of ``NORM_POLICIES``."""
    if norm_policy not in NORM_POLICIES:
        raise ConfigError(f"norm_policy: expected one of {NORM_POLICIES}, got {norm_policy!r}."
                          f"{did_you_mean(norm_policy, NORM_POLICIES)}")


def as_positives(positives, n_queries: int, n_gallery: int, name: str = "positives") -> np.ndarray:
    """Validate ground truth and return it as a padded int32 array (nq, p).

    ``positives`` is either a sequence of ``n_queries`` index lists (one list of
    gallery indices per query, several allowed) or an integer array (nq,) of
    single positives, or an integer array (nq, p) padded with -1.
    """
    if isinstance(positives, np.ndarray) and positives.dtype != object:
        arr = positives
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{name}: expected integer gallery indices, got dtype {arr.dtype}.")
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise InputError(f"{name}: expected shape (nq,) or (nq, p), got {arr.shape}.")
        lists = [row[row >= 0] for row in arr]
        if (arr < -1).any():
            raise InputError(f"{name}: negative index below -1 found; -1 is the only padding value.")
    else:
        lists = [np.asarray(list(p) if not np.isscalar(p) else [p]) for p in positives]
    if len(lists) != n_queries:
        raise InputError(
            f"{name}: ground truth has {len(lists)} queries, but there are {n_queries} query embeddings."
        )
    width = max((len(p) for p in lists), default=0)
    out = np.full((n_queries, max(width, 1)), -1, dtype=np.int32)
    for i, p in enumerate(lists):
        if len(p) == 0:
            raise InputError(
                f"{name}: query {i} has no positive gallery item. Every query needs at least one; "
                "drop such queries before evaluation."
            )
        p = np.asarray(p)
        if not np.issubdtype(p.dtype, np.integer):
            raise InputError(f"{name}: query {i} has non-integer positives {p[:5].tolist()}.")
        if p.min() < 0 or p.max() >= n_gallery:
            raise InputError(
                f"{name}: query {i} has positive index {int(p.min() if p.min() < 0 else p.max())} "
                f"outside the gallery range [0, {n_gallery - 1}]."
            )
        uniq = np.unique(p)
        out[i, : uniq.size] = uniq
    return out


def check_int(value, name: str, *, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int within [low, high], or raise InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name}: expected an integer, got {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(f"{name}: expected a value {bound}, got {value}.")
    return int(value)


def check_float(value, name: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """Return ``value`` as a finite float within its range, or raise InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}: expected a number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not np.isfinite(value):
        raise InputError(f"{name}: expected a finite number, got {value}.")
    if low is not None and (value < low or (low_open and value == low)):
        op = ">" if low_open else ">="
        raise InputError(f"{name}: expected a value {op} {low}, got {value}.")
    if high is not None and value > high:
        raise InputError(f"{name}: expected a value <= {high}, got {value}.")
    return value
