"""A CLIP-style dual encoder in Flax: a ViT image tower and a causal text transformer.

The layer layout and parameter names follow the Hugging Face ``CLIPModel``
checkpoint format (``config.json`` + ``model.safetensors``, PyTorch weight
layout), so a CLIP checkpoint folder on local disk can be loaded without
PyTorch: :func:`from_hf_tensors` maps its tensors onto the Flax parameters,
:func:`to_hf_tensors` maps them back. Nothing is ever downloaded.

Towers:

* image: patch convolution (no bias), class token, learned positions,
  pre-LayerNorm, pre-norm transformer layers, LayerNorm of the class token,
  linear projection (no bias);
* text: token and position embeddings, causal pre-norm transformer layers,
  final LayerNorm, the hidden state at the first end-of-text token, linear
  projection (no bias).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """One transformer tower (the fields of a Hugging Face ``*_config`` block)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


# Values that a Hugging Face CLIP config.json may leave out (then its library defaults apply).
HF_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                      "num_hidden_layers": 12, "image_size": 224, "patch_size": 32}
HF_TEXT_DEFAULTS = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                    "num_hidden_layers": 12, "vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 2}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Architecture of the dual encoder; :meth:`from_hf` reads a Hugging Face ``config.json``."""

    vision: TowerConfig
    text: TowerConfig
    image_size: int = 224
    patch_size: int = 16
    vocab_size: int = 49408
    context_length: int = 77
    eos_token_id: int = 49407
    projection_dim: int = 512

    @classmethod
    def from_hf(cls, config: dict) -> "CLIPConfig":
        """Read a Hugging Face CLIP ``config.json``; keys it omits take Hugging Face's CLIP defaults."""
        vision = {**HF_VISION_DEFAULTS, **config.get("vision_config", {})}
        text = {**HF_TEXT_DEFAULTS, **config.get("text_config", {})}
        config = {"projection_dim": 512, **config}
        fields = [f.name for f in dataclasses.fields(TowerConfig)]
        return cls(
            vision=TowerConfig(**{k: vision[k] for k in fields if k in vision}),
            text=TowerConfig(**{k: text[k] for k in fields if k in text}),
            image_size=vision["image_size"], patch_size=vision["patch_size"], vocab_size=text["vocab_size"],
            context_length=text.get("max_position_embeddings", 77), eos_token_id=text.get("eos_token_id", 49407),
            projection_dim=config["projection_dim"],
        )

    def to_hf(self) -> dict:
        def tower(t: TowerConfig) -> dict:
            return dataclasses.asdict(t)

        return {
            "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": self.projection_dim,
            "vision_config": {**tower(self.vision), "image_size": self.image_size, "patch_size": self.patch_size},
            "text_config": {**tower(self.text), "vocab_size": self.vocab_size,
                            "max_position_embeddings": self.context_length, "eos_token_id": self.eos_token_id},
        }


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=name != "gelu")
    raise ValueError(f"hidden_act: unsupported activation {name!r}; expected quick_gelu or gelu.")


class Attention(nn.Module):
    config: TowerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        c = self.config
        heads, width = c.num_attention_heads, c.hidden_size
        head_dim = width // heads

        def project(name):
            y = nn.Dense(width, dtype=self.dtype, name=name)(x)
            return y.reshape(*x.shape[:-1], heads, head_dim)

        q, k, v = project("q_proj") * head_dim ** -0.5, project("k_proj"), project("v_proj")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(x.shape)
        return nn.Dense(width, dtype=self.dtype, name="out_proj")(out)


class EncoderLayer(nn.Module):
    config: TowerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        c = self.config
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="layer_norm1")(x)
        x = x + Attention(c, self.dtype, name="self_attn")(h, mask)
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="layer_norm2")(x)
        return x + MLP(c, self.dtype, name="mlp")(h)


class MLP(nn.Module):
    config: TowerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = nn.Dense(c.intermediate_size, dtype=self.dtype, name="fc1")(x)
        return nn.Dense(c.hidden_size, dtype=self.dtype, name="fc2")(_activation(c.hidden_act)(h))


class Encoder(nn.Module):
    config: TowerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        for i in range(self.config.num_hidden_layers):
            x = EncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
        return x


class VisionEmbeddings(nn.Module):
    config: CLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels):
        c = self.config
        width = c.vision.hidden_size
        patches = nn.Conv(width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                          padding="VALID", use_bias=False, dtype=self.dtype, name="patch_embedding")(pixels)
        patches = patches.reshape(pixels.shape[0], -1, width)
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (width,))
        tokens = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (pixels.shape[0], 1, width)), patches], 1)
        positions = nn.Embed((c.image_size // c.patch_size) ** 2 + 1, width, name="position_embedding")
        return tokens + positions(jnp.arange(tokens.shape[1])).astype(self.dtype)


class VisionModel(nn.Module):
    config: CLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels):
        eps = self.config.vision.layer_norm_eps
        x = VisionEmbeddings(self.config, self.dtype, name="embeddings")(pixels)
        x = nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="pre_layrnorm")(x)  # sic: the checkpoint's name
        x = Encoder(self.config.vision, self.dtype, name="encoder")(x)
        return nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="post_layernorm")(x[:, 0])


class TextEmbeddings(nn.Module):
    config: CLIPConfig

    @nn.compact
    def __call__(self, ids):
        c = self.config
        tokens = nn.Embed(c.vocab_size, c.text.hidden_size, name="token_embedding")(ids)
        positions = nn.Embed(c.context_length, c.text.hidden_size, name="position_embedding")
        return tokens + positions(jnp.arange(ids.shape[1]))


class TextModel(nn.Module):
    config: CLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids):
        c = self.config
        x = TextEmbeddings(c, name="embeddings")(ids).astype(self.dtype)
        causal = jnp.tril(jnp.ones((ids.shape[1], ids.shape[1]), bool))[None, None]
        x = Encoder(c.text, self.dtype, name="encoder")(x, causal)
        x = nn.LayerNorm(epsilon=c.text.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(x)
        # The first end-of-text token summarises the caption (the causal mask hides what follows it).
        eos = jnp.argmax(ids == c.eos_token_id, axis=1)
        return x[jnp.arange(ids.shape[0]), eos]


class CLIP(nn.Module):
    """The dual encoder: ``encode_image(pixels)`` and ``encode_text(ids)`` give projected, unnormalised features."""

    config: CLIPConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.vision_model = VisionModel(c, self.dtype)
        self.text_model = TextModel(c, self.dtype)
        self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
        self.text_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())

    def encode_image(self, pixels):
        """pixels: (b, image_size, image_size, 3) normalised floats -> (b, projection_dim)."""
        return self.visual_projection(self.vision_model(pixels)).astype(jnp.float32)

    def encode_text(self, ids):
        """ids: (b, context_length) token ids -> (b, projection_dim)."""
        return self.text_projection(self.text_model(ids)).astype(jnp.float32)

    def __call__(self, pixels, ids):
        return self.encode_image(pixels), self.encode_text(ids)


def init_params(config: CLIPConfig, seed: int = 0) -> dict:
    """Return randomly initialised parameters (for tests and smoke runs)."""
    pixels = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    ids = jnp.zeros((1, config.context_length), jnp.int32)
    return jax.jit(CLIP(config).init)(jax.random.PRNGKey(seed), pixels, ids)["params"]


# --- Hugging Face tensor names <-> Flax parameters -----------------------------------------------


def _hf_name(path: tuple[str, ...]) -> tuple[str, str]:
    """Map a Flax parameter path to (Hugging Face tensor name, leaf kind)."""
    parts = []
    for part in path[:-1]:
        parts.extend(part.split("_", 1) if part.startswith("layers_") else [part])
    leaf = path[-1]
    if leaf in ("class_embedding", "logit_scale"):
        return ".".join(parts + [leaf]), "plain"
    kind = {"kernel": "conv" if parts[-1] == "patch_embedding" else "dense", "scale": "plain",
            "embedding": "plain", "bias": "plain"}[leaf]
    return ".".join(parts + ["bias" if leaf == "bias" else "weight"]), kind


def to_hf_tensors(params: dict) -> dict[str, np.ndarray]:
    """Return the parameters as Hugging Face CLIP tensors (PyTorch layout), float32."""
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(p.key for p in path)
        name, kind = _hf_name(keys)
        value = np.asarray(value, dtype=np.float32)
        if kind == "dense":
            value = value.T
        elif kind == "conv":
            value = value.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        out[name] = np.ascontiguousarray(value)
    return out


def from_hf_tensors(tensors: dict[str, np.ndarray], config: CLIPConfig) -> dict:
    """Map Hugging Face CLIP tensors onto the Flax parameter tree of ``CLIP(config)``.

    Raises KeyError naming the first tensor the checkpoint lacks, and
    ValueError on a shape mismatch. Extra tensors (for example
    ``position_ids`` buffers) are ignored.
    """
    template = jax.eval_shape(lambda: init_params(config))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    values = []
    for path, spec in leaves:
        name, kind = _hf_name(tuple(p.key for p in path))
        if name not in tensors:
            raise KeyError(name)
        value = np.asarray(tensors[name], dtype=np.float32)
        if kind == "dense":
            value = value.T
        elif kind == "conv":
            value = value.transpose(2, 3, 1, 0)
        if spec.shape == () and value.size == 1:
            value = value.reshape(())  # scalars (logit_scale) may be stored with shape (1,)
        if value.shape != spec.shape:
            raise ValueError(f"{name}: checkpoint shape {value.shape}, model expects {spec.shape}.")
        values.append(jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, values)
