"""Encoders: a Flax CLIP dual encoder that computes embeddings from a local checkpoint.

Optional: needs Pillow and safetensors (``pip install 'nia_jax[clip]'``); the
rest of nia_jax never imports this package. Used by ``experiments/embed.py``.
"""

from nia_jax.encoders.clip import CLIP, CLIPConfig, TowerConfig, from_hf_tensors, init_params, to_hf_tensors
from nia_jax.encoders.encoder import ClipEncoder, list_images, preprocess, read_tensors, save_checkpoint
from nia_jax.encoders.tokenizer import BPETokenizer, base_vocabulary

__all__ = [
    "BPETokenizer", "CLIP", "CLIPConfig", "ClipEncoder", "TowerConfig", "base_vocabulary", "from_hf_tensors",
    "init_params", "list_images", "preprocess", "read_tensors", "save_checkpoint", "to_hf_tensors",
]
