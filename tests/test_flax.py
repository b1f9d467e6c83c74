"""NIAReranker (nia_jax.modules), the Flax NNX module, against the functional nia_jax.rerank.

A tiny dual encoder built here (a linear image tower and a bag-of-tokens text
tower) produces the embeddings, and the module re-ranks inside the same
``nnx.jit`` step as the encoder.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nia_jax
from nia_jax import fitting
from nia_jax.data.task import RetrievalTask
from nia_jax.errors import ConfigError
from nia_jax.modules import Bank, Hyperparameter, NIAReranker, Prepared

README = Path(__file__).resolve().parent.parent / "README.md"
README_FLAX_HEADING = "## NIA inside a Flax model"

DIM, PIXELS, VOCAB, TOKENS = 16, 12, 50, 5
N_GALLERY, N_QUERIES, N_TEXT_BANK, N_IMAGE_BANK = 10, 6, 14, 16
TOP_K = 6


class TinyDualEncoder(nnx.Module):
    """A minimal CLIP-shaped encoder: images and captions mapped to unit vectors of one space."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.image_proj = nnx.Linear(PIXELS, DIM, rngs=rngs)
        self.token_embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.text_proj = nnx.Linear(DIM, DIM, rngs=rngs)

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        x = self.image_proj(pixels)
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        x = self.text_proj(self.token_embed(tokens).mean(axis=1))
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@nnx.jit
def eval_step(encoder: TinyDualEncoder, reranker: NIAReranker, tokens: jax.Array):
    """Encode a batch of captions and re-rank the module's image gallery for them."""
    return reranker(encoder.encode_text(tokens))


@pytest.fixture(scope="module")
def encoded():
    """Seeded inputs encoded by the tiny dual encoder: text queries against an image gallery."""
    rng = np.random.default_rng(11)
    encoder = TinyDualEncoder(rngs=nnx.Rngs(0))
    gallery_pixels = rng.standard_normal((N_GALLERY, PIXELS)).astype(np.float32)
    bank_pixels = rng.standard_normal((N_IMAGE_BANK, PIXELS)).astype(np.float32)
    query_tokens = rng.integers(0, VOCAB, (N_QUERIES, TOKENS))
    bank_tokens = rng.integers(0, VOCAB, (N_TEXT_BANK, TOKENS))
    return {
        "encoder": encoder,
        "tokens": jnp.asarray(query_tokens),
        "queries": np.asarray(encoder.encode_text(jnp.asarray(query_tokens))),
        "gallery": np.asarray(encoder.encode_image(jnp.asarray(gallery_pixels))),
        "query_bank": np.asarray(encoder.encode_text(jnp.asarray(bank_tokens))),
        "gallery_bank": np.asarray(encoder.encode_image(jnp.asarray(bank_pixels))),
    }


def build(method, data) -> NIAReranker:
    return NIAReranker(method, data["gallery"], query_bank=data["query_bank"], gallery_bank=data["gallery_bank"],
                       top_k=TOP_K)


def functional(method, data) -> nia_jax.Reranked:
    return nia_jax.rerank(method, data["queries"], data["gallery"], query_bank=data["query_bank"],
                          gallery_bank=data["gallery_bank"], top_k=TOP_K)


def same_values(a: nia_jax.NIA, b: nia_jax.NIA) -> bool:
    """Return whether two NIA settings agree, with hyperparameters compared in float32 (the module's precision)."""
    static_a, hp_a = a.split()
    static_b, hp_b = b.split()
    return static_a == static_b and all(float(hp_a[n]) == float(hp_b[n]) for n in nia_jax.NIA.traced)


def assert_same_ranking(out, expected: nia_jax.Reranked):
    np.testing.assert_array_equal(np.asarray(out.candidates), expected.candidates)
    np.testing.assert_allclose(np.asarray(out.base), expected.base, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.scores), expected.scores, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.order), expected.order)


METHODS = {
    "neighbour-softmax-both": nia_jax.NIA(k=3, weighting="softmax", pool="both", form="neighbour", tau=0.1,
                                          lam=0.5, w=0.4, gamma=0.6, eta=0.3),
    "embedding-power-query": nia_jax.NIA(k=3, weighting="power", pool="query_bank", form="embedding", tau=2.0,
                                         lam=0.5, w=0.4, beta=0.3, gamma=0.6, eta=0.3),
    "none-uniform-gallery": nia_jax.NIA(k=2, weighting="uniform", pool="gallery_bank", form="none", lam=1.0,
                                        w=0.5, eta=0.8),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_module_scores_match_rerank(encoded, name):
    method = METHODS[name]
    out = eval_step(encoded["encoder"], build(method, encoded), encoded["tokens"])

    assert_same_ranking(out, functional(method, encoded))


def test_module_changes_the_cosine_order(encoded):
    out = eval_step(encoded["encoder"], build(METHODS["none-uniform-gallery"], encoded), encoded["tokens"])

    assert not np.array_equal(np.asarray(out.order), np.asarray(out.candidates))


def test_module_accepts_fitted_hyperparameters(encoded):
    # A short fit on a task built from the encoder's own embeddings, with diagonal ground truth.
    task = RetrievalTask.build("t2i", encoded["queries"], encoded["gallery"][:N_QUERIES], np.arange(N_QUERIES),
                               query_bank=encoded["query_bank"], gallery_bank=encoded["gallery_bank"],
                               norm_policy="normalise")
    start = METHODS["neighbour-softmax-both"]
    result = fitting.fit(start, {"t2i": task}, fitting.FitSettings(max_steps=4, warmup_steps=1, top_k=TOP_K,
                                                                   holdout=0.35))
    reranker = build(start, encoded)
    before = np.asarray(eval_step(encoded["encoder"], reranker, encoded["tokens"]).scores)
    reranker.set_hyperparameters(result.method)
    out = eval_step(encoded["encoder"], reranker, encoded["tokens"])

    assert same_values(reranker.method, result.method)
    assert not np.allclose(np.asarray(out.scores), before)
    assert_same_ranking(out, functional(result.method, encoded))


def test_set_hyperparameters_by_name(encoded):
    reranker = build(METHODS["none-uniform-gallery"], encoded)
    reranker.set_hyperparameters({"eta": 1.5, "lam": 2.0})
    out = eval_step(encoded["encoder"], reranker, encoded["tokens"])

    expected = dataclasses.replace(METHODS["none-uniform-gallery"], eta=1.5, lam=2.0)
    assert_same_ranking(out, functional(expected, encoded))


def test_set_hyperparameters_rejects_bad_values(encoded):
    reranker = build(METHODS["none-uniform-gallery"], encoded)

    with pytest.raises(ConfigError):
        reranker.set_hyperparameters({"w": 1.5})
    with pytest.raises(ConfigError):
        reranker.set_hyperparameters({"k": 3})
    with pytest.raises(ConfigError):
        reranker.set_hyperparameters(dataclasses.replace(METHODS["none-uniform-gallery"], k=3))
    assert same_values(reranker.method, METHODS["none-uniform-gallery"])


def test_module_state_is_nnx_state(encoded):
    reranker = build(METHODS["neighbour-softmax-both"], encoded)
    graphdef, state = nnx.split(reranker)
    clone = nnx.merge(graphdef, state)

    assert jax.tree.leaves(nnx.state(reranker, Prepared))
    assert len(jax.tree.leaves(nnx.state(reranker, Hyperparameter))) == len(nia_jax.NIA.traced)
    assert len(jax.tree.leaves(nnx.state(reranker, Bank))) == 4
    np.testing.assert_array_equal(np.asarray(eval_step(encoded["encoder"], clone, encoded["tokens"]).scores),
                                  np.asarray(eval_step(encoded["encoder"], reranker, encoded["tokens"]).scores))


def test_module_rejects_other_rerankers(encoded):
    with pytest.raises(ConfigError, match="NIA"):
        NIAReranker(nia_jax.make_reranker("cosine"), encoded["gallery"])


def readme_flax_example() -> str:
    """Return the first Python code block under the README's Flax heading."""
    text = README.read_text()
    assert README_FLAX_HEADING in text, f"README.md has no '{README_FLAX_HEADING}' section"
    section = text.split(README_FLAX_HEADING, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match is not None, f"README.md's '{README_FLAX_HEADING}' section has no python code block"
    return match.group(1)


def test_readme_flax_example_matches_rerank(capsys):
    namespace = {"__name__": "readme_flax_example"}
    exec(compile(readme_flax_example(), str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    out, tokens = namespace["out"], namespace["tokens"]
    queries = np.asarray(namespace["encoder"].encode_text(tokens))

    expected = nia_jax.rerank(nia_jax.NIA(), queries, np.asarray(namespace["gallery"]),
                              query_bank=np.asarray(namespace["caption_bank"]), top_k=5)

    assert same_values(namespace["reranker"].method, nia_jax.NIA())
    assert np.asarray(out.order).shape == (tokens.shape[0], 5)
    assert_same_ranking(out, expected)
    assert not np.array_equal(np.asarray(out.order), np.asarray(out.candidates))  # NIA moved some candidates
    assert str(np.asarray(out.order)) in capsys.readouterr().out
