"""The interface every re-ranker implements, and the data it may see.

A re-ranker is a frozen dataclass whose fields are its configuration. Fields
named in ``traced`` are continuous hyperparameters: they enter the jitted
kernels as traced scalars, so sweeping them reuses one compilation. Every
other field is static (it sets shapes or code paths) and is part of the
compilation key.

Settings are checked when a re-ranker is constructed: ``__post_init__`` runs
``validate()`` without pools, so ``NIA(k=0)`` raises ConfigError at once.
Checks that need the pools (k against a bank's size) run again in
:func:`nia_jax.rerank`.

Two pure functions do the work:

* ``prepare(static, hp, pools)`` runs once per gallery and banks: pool
  factorisations, per-gallery statistics and features.
* ``score(static, hp, state, pools, queries, query_self, candidates, base)``
  returns new scores for one block of queries and its top-K candidates.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from nia_jax.errors import ConfigError, did_you_mean


class Pools(NamedTuple):
    """The samples a re-ranker may use besides the queries being scored.

    Attributes:
      gallery: the gallery, (ng, d).
      query_bank: unlabelled query-modality samples, (nbq, d), or None.
      gallery_bank: unlabelled gallery-modality samples, (nbg, d), or None.
      gallery_self: for each gallery item, its row in ``gallery_bank`` or -1, (ng,).
        It is set when the gallery bank is the gallery itself (transductive).
    """

    gallery: Float[Array, "ng d"]
    query_bank: Float[Array, "nbq d"] | None
    gallery_bank: Float[Array, "nbg d"] | None
    gallery_self: Int[Array, " ng"]


@dataclasses.dataclass(frozen=True)
class Reranker:
    """Base class of re-rankers; subclasses are frozen dataclasses of their settings."""

    name: ClassVar[str] = ""
    # Pools the method needs: a subset of {"query_bank", "gallery_bank"}.
    needs: ClassVar[frozenset[str]] = frozenset()
    # True when the method normalises over the evaluated queries themselves.
    transductive: ClassVar[bool] = False
    # Names of the float fields that stay traced.
    traced: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # Traced fields that hold None (split's static half) or a JAX tracer are skipped
        # by the float checks, so split() and jit, vmap and grad over them still work.
        self.validate()

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        """Raise ConfigError or InputError when a setting is out of range for these pools."""

    def split(self) -> tuple["Reranker", dict[str, Any]]:
        """Return (static part, traced hyperparameters) for the jitted kernels.

        Raises ConfigError when a traced field is None, since the kernels need a number.
        """
        unset = [name for name in self.traced if getattr(self, name) is None]
        if unset:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            settings = ", ".join(f"{self.name}.{name}={defaults[name]}" for name in unset)
            raise ConfigError(f"{self.name}: setting(s) {unset} must be numbers, not None. "
                              f"For example set {settings} (the defaults).")
        static = dataclasses.replace(self, **{name: None for name in self.traced})
        hp = {name: jnp.asarray(getattr(self, name), dtype=jnp.float32) for name in self.traced}
        return static, hp

    def check_scores(self, scores) -> None:
        """Raise ConfigError when ``scores`` (rows of re-ranked candidate scores) contain NaN or Inf.

        The traced settings are checked for range but not for float32 overflow:
        a valid but extreme value (a softmax temperature of 1e-30) can still
        produce NaN or Inf. This is the explicit post-check for that case;
        :func:`nia_jax.rerank` calls it on every result.
        """
        scores = np.asarray(scores)
        bad = ~np.isfinite(scores)
        if not bad.any():
            return
        rows = np.flatnonzero(bad.reshape(scores.shape[0], -1).any(axis=1)) if scores.ndim else np.array([0])
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [f"{self.name}.{name}={getattr(self, name)} (default {defaults[name]})"
                   for name in self.traced if getattr(self, name) != defaults[name]]
        settings = f" Settings away from the defaults: {', '.join(changed)}." if changed else ""
        raise ConfigError(
            f"{self.name}: the re-ranked scores of {rows.size} of {max(scores.shape[0], 1)} queries contain NaN "
            f"or Inf (first query {int(rows[0])}), so a setting overflows float32.{settings} Move the "
            "temperatures and weights toward their defaults."
        )

    @staticmethod
    def prepare(static, hp, pools: Pools):
        raise NotImplementedError

    @staticmethod
    def score(static, hp, state, pools: Pools, queries, query_self, candidates, base):
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Return the full configuration as a JSON-ready dict, with the method name."""
        return {"name": self.name, **dataclasses.asdict(self)}


_REGISTRY: dict[str, type[Reranker]] = {}


def register(cls: type[Reranker]) -> type[Reranker]:
    """Class decorator that makes a re-ranker available by name."""
    if cls.name in _REGISTRY:
        raise ValueError(f"re-ranker name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> tuple[str, ...]:
    """Return the registered re-ranker names in sorted order."""
    return tuple(sorted(_REGISTRY))


def reranker_class(name: str) -> type[Reranker]:
    """Return the registered re-ranker class called ``name``."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown re-ranker {name!r}.{did_you_mean(name, _REGISTRY)} "
                          f"Available: {', '.join(available())}.")
    return _REGISTRY[name]


def make_reranker(name: str, **settings) -> Reranker:
    """Build a registered re-ranker from its name and settings.

    Raises ConfigError for an unknown name or setting, listing the valid ones,
    and for a setting out of range (see ``Reranker.__post_init__``).
    """
    cls = reranker_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ConfigError(
            f"re-ranker {name!r} has no setting(s) {unknown}.{did_you_mean(unknown[0], sorted(fields))} "
            f"Valid settings: {sorted(fields)}."
        )
    return cls(**settings)
