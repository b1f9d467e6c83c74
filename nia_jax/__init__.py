"""nia_jax: training-free re-ranking of cross-modal retrieval with neighbour information aggregation.

Public API:

* :func:`rerank` re-ranks the top-K cosine candidates of every query.
* :func:`evaluate` adds the metrics of one :class:`RetrievalTask` (or the
  fold averages of a :class:`FoldedTask`, :func:`evaluate_folds`).
* Re-rankers: :class:`NIA`, :class:`Cosine` and the registry
  (:func:`make_reranker`, :func:`available`).
* Data: :mod:`nia_jax.data` (the embedded COCO 500 set, user embeddings of
  COCO 5K/1K, Flickr30K 1K or any paired set, and user files).

Importing the package has no side effects: it configures no logging and
touches neither Hydra nor W&B.
"""

from nia_jax import data, metrics
from nia_jax.data.task import FoldedTask, RetrievalTask
from nia_jax.errors import ConfigError, InputError, NiaError
from nia_jax.evaluation import DirectionResult, evaluate, evaluate_all, evaluate_folds
from nia_jax.ranking import Reranked, rerank
from nia_jax.rerankers import NIA, Cosine, Pools, Reranker, available, make_reranker
from nia_jax.fitting import FitResult, FitSettings, fit

__version__ = "0.1.0"

__all__ = [
    "NIA", "ConfigError", "Cosine", "DirectionResult", "FoldedTask", "InputError", "NiaError", "Pools", "Reranked",
    "Reranker", "RetrievalTask", "available", "data", "evaluate", "evaluate_all", "evaluate_folds", "make_reranker",
    "metrics", "rerank",
]
__all__ += ["FitResult", "FitSettings", "fit"]
