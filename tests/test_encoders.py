"""The Flax CLIP encoder: checkpoint round trip, tokenizer, and the embeddings it produces.

A tiny randomly initialised model is saved to a local checkpoint folder in the
Hugging Face layout and loaded back through the same code path that reads
real checkpoints. No weights are downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import EXPERIMENTS_DIR

from nia_jax import InputError

pytest.importorskip("PIL")
pytest.importorskip("safetensors")
from nia_jax.encoders import (CLIP, BPETokenizer, CLIPConfig, ClipEncoder, TowerConfig,  # noqa: E402
                              base_vocabulary, init_params, save_checkpoint, to_hf_tensors)

MERGES = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("o", "n</w>")]
CAPTIONS = ["a cat on the mat", "The dog.", "two cats", "A CAT ON THE MAT", "x", "numbers 123 &amp; more", "the"]


def tiny_vocab():
    tokens = base_vocabulary() + [a + b for a, b in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, params, checkpoint folder) of a small random CLIP."""
    vocab = tiny_vocab()
    tower = TowerConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)
    config = CLIPConfig(vision=tower, text=tower, image_size=16, patch_size=8, vocab_size=len(vocab),
                        context_length=12, eos_token_id=vocab["<|endoftext|>"], projection_dim=8)
    params = init_params(config, seed=0)
    folder = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip", config, params, vocab, MERGES)
    return config, params, folder


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20 + 3 * i, 24, 3), dtype=np.uint8) for i in range(7)]


@pytest.fixture(scope="module")
def encoder(tiny):
    return ClipEncoder(tiny[2], batch_size=4, micro_batch=2)


def test_checkpoint_round_trip(tiny, encoder):
    _, params, _ = tiny
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, encoder.params)

    assert all(jax.tree.leaves(same))


def test_hf_tensor_names_and_layout(tiny):
    config, params, _ = tiny
    tensors = to_hf_tensors(params)

    assert tensors["vision_model.embeddings.patch_embedding.weight"].shape == (16, 3, 8, 8)
    assert tensors["vision_model.embeddings.position_embedding.weight"].shape == (5, 16)
    assert tensors["text_model.encoder.layers.0.mlp.fc1.weight"].shape == (32, 16)
    assert tensors["text_projection.weight"].shape == (8, 16)
    assert "vision_model.pre_layrnorm.weight" in tensors
    assert "text_model.final_layer_norm.bias" in tensors


def test_embeddings_match_model(tiny, encoder):
    config, params, _ = tiny
    ids = encoder.tokenizer(CAPTIONS)
    apply = jax.jit(lambda p, x: CLIP(config).apply({"params": p}, x, method=CLIP.encode_text))
    direct = np.array(apply(params, jnp.asarray(ids)))
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)

    np.testing.assert_allclose(encoder.encode_texts(CAPTIONS), direct, atol=1e-5)


def test_embeddings_normalised(encoder, images):
    for features in (encoder.encode_images(images), encoder.encode_texts(CAPTIONS)):
        assert features.dtype == np.float32
        assert features.shape[1] == 8
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-6)


def test_embeddings_follow_input_order(encoder, images):
    image_features, text_features = encoder.encode_images(images), encoder.encode_texts(CAPTIONS)
    order = [3, 0, 6, 1, 5, 2, 4]

    np.testing.assert_array_equal(encoder.encode_images([images[i] for i in order]), image_features[order])
    np.testing.assert_array_equal(encoder.encode_texts([CAPTIONS[i] for i in order]), text_features[order])
    assert not np.allclose(text_features[0], text_features[1])


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_embeddings_identical_across_batch_sizes(tiny, encoder, images, batch_size):
    other = ClipEncoder(tiny[2], batch_size=batch_size, micro_batch=2)

    np.testing.assert_array_equal(other.encode_images(images), encoder.encode_images(images))
    np.testing.assert_array_equal(other.encode_texts(CAPTIONS), encoder.encode_texts(CAPTIONS))


def test_msgpack_checkpoint(tmp_path, tiny, encoder, images):
    from flax.serialization import msgpack_serialize

    config, params, folder = tiny

    def nest(tree):  # layers_0 -> layers/0, as Hugging Face Flax checkpoints nest them
        out = {}
        for key, value in tree.items():
            value = nest(value) if isinstance(value, dict) else np.asarray(value)
            if key.startswith("layers_"):
                out.setdefault("layers", {})[key.split("_", 1)[1]] = value
            else:
                out[key] = value
        return out

    copy = tmp_path / "flax"
    copy.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt"):
        (copy / name).write_bytes((folder / name).read_bytes())
    (copy / "flax_model.msgpack").write_bytes(msgpack_serialize(nest(jax.device_get(params))))

    loaded = ClipEncoder(copy, batch_size=4, micro_batch=2)
    np.testing.assert_array_equal(loaded.encode_images(images), encoder.encode_images(images))


def test_tokenizer_merges_and_specials():
    vocab = tiny_vocab()
    tokenizer = BPETokenizer(vocab, MERGES, context_length=8)
    ids = tokenizer(["The  cat", "on on on on on on on on"])

    assert ids[0, :4].tolist() == [vocab["<|startoftext|>"], vocab["the</w>"], vocab["cat</w>"],
                                   vocab["<|endoftext|>"]]
    assert ids[0, 4:].tolist() == [0, 0, 0, 0]
    # Truncated to the context length, still ending with the end token.
    assert ids[1, -1] == vocab["<|endoftext|>"]
    assert ids[1, 1:-1].tolist() == [vocab["on</w>"]] * 6


def test_tokenizer_unescapes_and_splits_digits():
    vocab = tiny_vocab()
    ids = BPETokenizer(vocab, MERGES, context_length=12)(["12 &amp;"])[0]

    assert ids[1:5].tolist() == [vocab["1</w>"], vocab["2</w>"], vocab["&</w>"], vocab["<|endoftext|>"]]


def test_missing_folder_is_input_error(tmp_path):
    with pytest.raises(InputError, match="never downloaded"):
        ClipEncoder(tmp_path / "nowhere")


def test_incomplete_weights(tmp_path, tiny):
    from safetensors.numpy import load_file, save_file

    _, _, folder = tiny
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt"):
        (broken / name).write_bytes((folder / name).read_bytes())
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["text_projection.weight"]
    save_file(tensors, str(broken / "model.safetensors"))

    with pytest.raises(InputError, match="text_projection.weight"):
        ClipEncoder(broken)


def test_config_json_is_hf_style(tiny):
    _, _, folder = tiny
    config = json.loads((folder / "config.json").read_text())

    assert config["vision_config"]["patch_size"] == 8
    assert config["text_config"]["max_position_embeddings"] == 12
    assert CLIPConfig.from_hf(config) == tiny[0]


def run_embed(tmp_path, checkpoint, image_dir, *overrides):
    """Run experiments/embed.py on the CPU with tmp_path's captions.txt, writing to tmp_path / "out"."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, str(EXPERIMENTS_DIR / "embed.py"), f"encoder.checkpoint={checkpoint}",
         f"images={image_dir}", f"captions={tmp_path / 'captions.txt'}", f"output_dir={tmp_path / 'out'}",
         "encoder.model=tiny-random", f"hydra.run.dir={tmp_path / 'run'}", *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_embed_script(tmp_path, tiny):
    from PIL import Image

    _, _, folder = tiny
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(1)
    for name in ("b.png", "a.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(image_dir / name)
    (tmp_path / "order.txt").write_text("c.jpg\na.png\nb.png\n")
    (tmp_path / "captions.txt").write_text("a cat\nthe dog\ntwo cats\n")
    out = tmp_path / "out"
    done = run_embed(tmp_path, folder, image_dir, f"image_list={tmp_path / 'order.txt'}")

    assert done.returncode == 0, done.stdout + done.stderr
    image_features = np.load(out / "image_embeddings.npy")
    assert image_features.shape == (3, 8)
    assert np.load(out / "text_embeddings.npy").shape == (3, 8)
    assert (out / "image_names.txt").read_text().split() == ["c.jpg", "a.png", "b.png"]
    meta = json.loads((out / "embed.json").read_text())
    assert meta["model"] == "tiny-random"
    assert meta["n_captions"] == 3
    expected = ClipEncoder(folder, batch_size=64).encode_images([image_dir / "c.jpg"])
    np.testing.assert_allclose(image_features[:1], expected, atol=1e-5)


@pytest.mark.slow
def test_embed_rejects_blank_caption(tmp_path, tiny):
    from PIL import Image

    _, _, folder = tiny
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(image_dir / "a.png")
    (tmp_path / "captions.txt").write_text("a cat\n\nthe dog\ntwo cats\n\n")
    out = tmp_path / "out"
    done = run_embed(tmp_path, folder, image_dir)
    output = done.stdout + done.stderr

    assert done.returncode == 1, output
    assert "1 blank caption line(s) (first lines: [2])" in output
    assert "Traceback" not in output
    assert not (out / "text_embeddings.npy").exists()
