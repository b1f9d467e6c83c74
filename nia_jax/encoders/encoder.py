"""Compute unit-norm CLIP embeddings of images and captions from a local checkpoint folder.

A checkpoint folder holds:

* ``config.json``: the Hugging Face CLIP configuration (``vision_config``,
  ``text_config``, ``projection_dim``);
* ``model.safetensors`` (Hugging Face tensor names, PyTorch layout) or
  ``flax_model.msgpack`` (a nested Flax parameter dict with the same names);
* ``vocab.json`` and ``merges.txt``: the BPE tokenizer.

The folder must already be on disk: nothing is downloaded. Images are
resized (shorter side, bicubic), centre-cropped and normalised with CLIP's
mean and standard deviation. Batches are padded to a fixed shape, so every
batch reuses one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nia_jax.encoders.clip import CLIP, CLIPConfig, from_hf_tensors, to_hf_tensors
from nia_jax.encoders.tokenizer import BPETokenizer
from nia_jax.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
IMAGE_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
WEIGHT_FILES = ("model.safetensors", "flax_model.msgpack")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Read the weights of a checkpoint folder as ``{Hugging Face name: array}``."""
    if (folder / "model.safetensors").is_file():
        try:
            from safetensors.numpy import load_file
        except ImportError as exc:
            raise InputError("reading model.safetensors needs the safetensors package: "
                             "pip install 'nia_jax[clip]'.") from exc
        return load_file(str(folder / "model.safetensors"))
    if (folder / "flax_model.msgpack").is_file():
        from flax.serialization import msgpack_restore

        tree = msgpack_restore((folder / "flax_model.msgpack").read_bytes())
        leaf_names = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
        out = {}
        for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = [str(p.key) for p in path]
            name = ".".join(keys[:-1] + [leaf_names.get(keys[-1], keys[-1])])
            value = np.asarray(value)
            if keys[-1] == "kernel":  # Flax layout -> PyTorch layout, which from_hf_tensors expects
                value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            out[name] = value
        return out
    raise InputError(f"{folder}: no weights found; expected one of {WEIGHT_FILES}.")


def save_checkpoint(folder: str | Path, config: CLIPConfig, params: dict, vocab: dict[str, int],
                    merges: list[tuple[str, str]]) -> Path:
    """Write a checkpoint folder that :class:`ClipEncoder` reads (config, safetensors weights, tokenizer)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_hf(), indent=2))
    save_file(to_hf_tensors(params), str(folder / "model.safetensors"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder


def preprocess(image, size: int) -> np.ndarray:
    """Return one image as a normalised (size, size, 3) float32 array.

    ``image`` is a path, a PIL image, or an (H, W, 3) uint8 array.
    """
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as handle:
            image = handle.convert("RGB")
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"image array: expected (H, W, 3) uint8, got {image.shape} {image.dtype}.")
        image = Image.fromarray(image)
    else:
        image = image.convert("RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return (pixels - IMAGE_MEAN) / IMAGE_STD


@functools.cache
def _forward(config: CLIPConfig, dtype: str, micro_batch: int, kind: str):
    """Return the jitted forward pass of one tower, shared by every encoder of the same architecture."""
    model = CLIP(config, jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    method = CLIP.encode_image if kind == "image" else CLIP.encode_text

    def run(params, x):
        chunks = x.reshape(-1, micro_batch, *x.shape[1:])
        out = jax.lax.map(lambda chunk: model.apply({"params": params}, chunk, method=method), chunks)
        return out.reshape(x.shape[0], -1)

    return jax.jit(run)


class ClipEncoder:
    """Image and text embeddings from a local CLIP checkpoint folder.

    Args:
      checkpoint: the checkpoint folder (see the module docstring).
      batch_size: images or captions per jitted call (rounded up to a
        multiple of ``micro_batch``).
      micro_batch: rows per forward pass inside a call. Embeddings do not
        depend on ``batch_size``; they may differ in the last bits between
        ``micro_batch`` values.
      dtype: ``float32`` or ``bfloat16`` computation; outputs are float32.
    """

    def __init__(self, checkpoint: str | Path, *, batch_size: int = 64, micro_batch: int = 16,
                 dtype: str = "float32"):
        folder = Path(checkpoint)
        if not folder.is_dir():
            raise InputError(f"{folder}: checkpoint folder not found. Give the path of a local folder; "
                             "weights are never downloaded.")
        if dtype not in ("float32", "bfloat16"):
            raise InputError(f"dtype: expected float32 or bfloat16, got {dtype!r}.")
        for name in ("config.json", "vocab.json", "merges.txt"):
            if not (folder / name).is_file():
                raise InputError(f"{folder}: {name} is missing; a checkpoint folder needs config.json, "
                                 f"vocab.json, merges.txt and one of {WEIGHT_FILES}.")
        self.folder = folder
        self.config = CLIPConfig.from_hf(json.loads((folder / "config.json").read_text()))
        try:
            self.params = from_hf_tensors(read_tensors(folder), self.config)
        except KeyError as exc:
            raise InputError(f"{folder}: the weights lack tensor {exc.args[0]!r}; is this a CLIP checkpoint?") from exc
        except ValueError as exc:
            raise InputError(f"{folder}: {exc}") from exc
        self.tokenizer = BPETokenizer.from_files(folder / "vocab.json", folder / "merges.txt",
                                                 self.config.context_length)
        if self.config.eos_token_id == 2 and self.tokenizer.eos != 2:
            # Older CLIP configs keep a placeholder eos_token_id of 2; the vocabulary's token is the real one.
            self.config = dataclasses.replace(self.config, eos_token_id=self.tokenizer.eos)
        if self.tokenizer.eos != self.config.eos_token_id:
            raise InputError(f"{folder}: config eos_token_id={self.config.eos_token_id} but the vocabulary's "
                             f"<|endoftext|> is {self.tokenizer.eos}.")
        if max(self.tokenizer.vocab.values()) >= self.config.vocab_size:
            raise InputError(f"{folder}: vocab.json has token ids up to {max(self.tokenizer.vocab.values())}, "
                             f"beyond the model's vocab_size {self.config.vocab_size}.")
        if micro_batch < 1 or batch_size < 1:
            raise InputError(f"batch_size and micro_batch: expected positive integers, got {batch_size}, {micro_batch}.")
        # Each batch runs as a loop over micro-batches of one fixed shape, so an embedding is the same
        # bit for bit whatever batch_size is (XLA's matrix products may round differently per shape).
        self.micro_batch = micro_batch
        self.batch_size = -(-batch_size // micro_batch) * micro_batch
        self._images = _forward(self.config, dtype, micro_batch, "image")
        self._texts = _forward(self.config, dtype, micro_batch, "text")

    @property
    def dim(self) -> int:
        return self.config.projection_dim

    def _run(self, fn, inputs: np.ndarray) -> np.ndarray:
        """Apply ``fn`` batch by batch; a short last batch is padded to full size (one compilation)."""
        out = []
        for start in range(0, inputs.shape[0], self.batch_size):
            batch = inputs[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, *inputs.shape[1:]), inputs.dtype)
            padded[: batch.shape[0]] = batch
            out.append(np.asarray(fn(self.params, jnp.asarray(padded)))[: batch.shape[0]])
        features = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)

    def encode_images(self, images: Sequence) -> np.ndarray:
        """Return (n, dim) unit-norm float32 embeddings, in input order (paths, PIL images or uint8 arrays)."""
        size = self.config.image_size
        parts = []
        for start in range(0, len(images), self.batch_size):
            pixels = np.stack([preprocess(im, size) for im in images[start:start + self.batch_size]])
            parts.append(self._run(self._images, pixels))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Return (n, dim) unit-norm float32 embeddings of the captions, in input order."""
        return self._run(self._texts, self.tokenizer(list(texts)))


def list_images(folder: str | Path, names_file: str | Path | None = None) -> list[Path]:
    """Return the image paths to encode: the names listed in ``names_file`` (in that order), else the folder sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: image folder not found.")
    if names_file is not None:
        names = [line.strip() for line in Path(names_file).read_text().splitlines() if line.strip()]
        paths = [folder / name for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"{names_file}: {len(missing)} listed images are not in {folder} (first: {missing[0]}).")
        return paths
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return paths
