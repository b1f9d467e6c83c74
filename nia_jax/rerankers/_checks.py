"""Setting checks shared by the re-rankers' ``validate`` methods.

Each check raises :class:`nia_jax.errors.ConfigError` naming the setting as
``<method>.<field>``, the value found and the fix. ``validate`` also runs
when a re-ranker is constructed (``Reranker.__post_init__``), so a float
check skips the values that have nothing concrete to check: None, which
``Reranker.split`` puts in the traced fields of its static half, and JAX
tracers, which traced fields hold inside ``jit``, ``vmap`` or ``grad``.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from nia_jax.errors import ConfigError, did_you_mean
from nia_jax.rerankers.base import Pools


def is_not_concrete(value) -> bool:
    """Return True for None (a traced field of ``split``'s static half) and for JAX tracers."""
    return value is None or isinstance(value, jax.core.Tracer)


def _as_real_number(value, name: str) -> float:
    """Return ``value`` as a Python float, or raise ConfigError when it is not one real number.

    Python and NumPy scalars and 0-d NumPy or JAX arrays of a real dtype count.
    """
    if isinstance(value, bool) or isinstance(value, np.bool_):
        raise ConfigError(f"{name}: expected a number, got {value!r} (bool).")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0 and (
            np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
            or value.dtype.name == "bfloat16"):
        return float(value)
    raise ConfigError(f"{name}: expected a number, got {value!r} ({type(value).__name__}).")


def int_setting(value, name: str, *, low: int, high: int | None = None, fix: str = "") -> int:
    """Return ``value`` as an int in [low, high], or raise ConfigError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name}: expected an integer, got {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        hint = f" {fix}" if fix else ""
        raise ConfigError(f"{name}={value} is out of range: expected an integer {bound}.{hint}")
    return int(value)


def float_setting(value, name: str, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, fix: str = ""):
    """Return ``value`` as a finite float in its range, or raise ConfigError.

    None and JAX tracers are returned unchanged, unchecked (see the module docstring).
    """
    if is_not_concrete(value):
        return value
    value = _as_real_number(value, name)
    hint = f" {fix}" if fix else ""
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value} is invalid: expected a finite number.{hint}")
    if low is not None and (value < low or (low_open and value == low)):
        op = ">" if low_open else ">="
        raise ConfigError(f"{name}={value} is out of range: expected a value {op} {low}.{hint}")
    if high is not None and value > high:
        raise ConfigError(f"{name}={value} is out of range: expected a value <= {high}.{hint}")
    return value


def choice_setting(value, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, or raise ConfigError."""
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {choices}, got {value!r}.{did_you_mean(value, choices)}")
    return value


def bank(pools: Pools, field: str, method: str):
    """Return ``pools.<field>``, or raise ConfigError when the task has no such bank."""
    rows = getattr(pools, field)
    if rows is None:
        label = field.replace("_", " ")
        raise ConfigError(
            f"{method} needs a {label}, but the task has none. Pass {field}=... or run with transductive=True."
        )
    return rows


def gallery_is_member(pools: Pools) -> bool:
    """Return True when some gallery item is itself a row of the gallery bank (transductive runs)."""
    return bool(np.any(np.asarray(pools.gallery_self) >= 0))


def k_within(k: int, name: str, rows: int, label: str) -> None:
    """Raise ConfigError when k neighbours cannot be drawn from ``rows`` bank rows."""
    if k > rows:
        raise ConfigError(
            f"{name}={k} is larger than the {label} allows ({rows} rows usable, so k <= {rows}). "
            f"Lower {name.split('.')[-1]} or provide a larger {label}."
        )
