"""Data: the embedded COCO 500 set, user embeddings of standard test splits, user files, and tasks.

* :mod:`nia_jax.data.coco500`: the shipped CLIP ViT-B/16 embeddings of 500 COCO pairs.
* :mod:`nia_jax.data.coco5k`, :mod:`nia_jax.data.f30k`: shipped ground truth of
  COCO 5K (and its 1K folds, ECCV Caption and CxC positives) and Flickr30K 1K
  for embeddings users bring; :mod:`nia_jax.data.external` loads those and
  custom data sets (:func:`load_external`).
"""

from nia_jax.data import coco5k, coco500, f30k
from nia_jax.data.external import EXTERNAL, EmbeddingFiles, load_custom, load_external
from nia_jax.data.io import load_array, load_embeddings, load_ids, load_positives, load_scores
from nia_jax.data.task import DIRECTIONS, PROTOCOLS, ExtendedPositives, FoldedTask, RetrievalTask

__all__ = [
    "DIRECTIONS", "EXTERNAL", "PROTOCOLS", "EmbeddingFiles", "ExtendedPositives", "FoldedTask", "RetrievalTask",
    "coco500", "coco5k", "f30k", "load_array", "load_custom", "load_embeddings", "load_external", "load_ids",
    "load_positives", "load_scores",
]
