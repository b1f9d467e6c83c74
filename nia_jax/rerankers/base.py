"""The interface every re-ranker implements, and the data it may see.

A re-ranker is a frozen dataclass whose fields are its configuration. Fields
named in ``traced`` are continuous hyperparameters: they enter the jitted
kernels as traced scalars, so sweeping them reuses one compilation. Every
other field is static (it sets shapes or code paths) and is part of the
compilation key.

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
from jaxtyping import Array, Float, Int

from nia_jax.errors import ConfigError


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

    def validate(self, pools: Pools | None = None, n_gallery: int | None = None) -> None:
        """Raise ConfigError or InputError when a setting is out of range for these pools."""

    def split(self) -> tuple["Reranker", dict[str, Any]]:
        """Return (static part, traced hyperparameters) for the jitted kernels."""
        static = dataclasses.replace(self, **{name: None for name in self.traced})
        hp = {name: jnp.asarray(getattr(self, name), dtype=jnp.float32) for name in self.traced}
        return static, hp

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
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown re-ranker {name!r}.{hint} Available: {', '.join(available())}.")
    return _REGISTRY[name]


def make_reranker(name: str, **settings) -> Reranker:
    """Build a registered re-ranker from its name and settings.

    Raises ConfigError for an unknown name or setting, listing the valid ones.
    """
    cls = reranker_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ConfigError(
            f"re-ranker {name!r} has no setting(s) {unknown}; valid settings: {sorted(fields)}."
        )
    return cls(**settings)
