"""nia_jax: training-free re-ranking of cross-modal retrieval with neighbour information aggregation.

Public API:

* :func:`rerank` re-ranks the top-K cosine candidates of every query.
* :func:`evaluate` adds the metrics of one :class:`RetrievalTask`.
* Re-rankers: :class:`NIA`, :class:`Cosine` and the registry
  (:func:`make_reranker`, :func:`available`).
* Data: :mod:`nia_jax.data` (the embedded COCO 500 set and user files).

Importing the package has no side effects: it configures no logging and
touches neither Hydra nor W&B.
"""

from nia_jax import data, metrics
from nia_jax.data.task import RetrievalTask
from nia_jax.errors import ConfigError, InputError, NiaError
from nia_jax.evaluation import DirectionResult, evaluate, evaluate_all
from nia_jax.ranking import Reranked, rerank
from nia_jax.rerankers import NIA, Cosine, Pools, Reranker, available, make_reranker

__version__ = "0.1.0"

__all__ = [
    "NIA", "ConfigError", "Cosine", "DirectionResult", "InputError", "NiaError", "Pools", "Reranked",
    "Reranker", "RetrievalTask", "available", "data", "evaluate", "evaluate_all", "make_reranker",
    "metrics", "rerank",
]
