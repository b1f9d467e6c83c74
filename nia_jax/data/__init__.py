"""Data: the embedded COCO 500 set, user file loading, and retrieval tasks."""

from nia_jax.data import coco500
from nia_jax.data.io import load_array, load_embeddings, load_positives
from nia_jax.data.task import DIRECTIONS, PROTOCOLS, RetrievalTask

__all__ = ["DIRECTIONS", "PROTOCOLS", "RetrievalTask", "coco500", "load_array", "load_embeddings", "load_positives"]
