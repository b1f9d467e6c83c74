"""Re-rankers: NIA and the baselines it is compared with, behind one interface."""

from nia_jax.rerankers.base import Pools, Reranker, available, make_reranker, register, reranker_class
from nia_jax.rerankers.cosine import Cosine
from nia_jax.rerankers.dsl import DSL
from nia_jax.rerankers.expansion import AQE, DBA
from nia_jax.rerankers.hubness import CSLS, NNN, DualIS, InvGC, QBNormDIS, QBNormIS
from nia_jax.rerankers.nia import NIA
from nia_jax.rerankers.reciprocal import KReciprocal
from nia_jax.rerankers.sinkhorn import DBSN, Sinkhorn

__all__ = [
    "AQE", "CSLS", "DBA", "DBSN", "DSL", "NIA", "NNN", "Cosine", "DualIS", "InvGC", "KReciprocal", "Pools",
    "QBNormDIS", "QBNormIS", "Reranker", "Sinkhorn", "available", "make_reranker", "register", "reranker_class",
]
