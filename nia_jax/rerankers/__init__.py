"""Re-rankers: NIA and the baselines it is compared with, behind one interface."""

from nia_jax.rerankers.base import Pools, Reranker, available, make_reranker, register, reranker_class
from nia_jax.rerankers.cosine import Cosine
from nia_jax.rerankers.nia import NIA

__all__ = ["NIA", "Cosine", "Pools", "Reranker", "available", "make_reranker", "register", "reranker_class"]
