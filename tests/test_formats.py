"""Embedding and score file formats: every container and dtype gives the same results, bad files fail clearly.

All runs use a small custom data set (paired rows) written to tmp_path in
each format. The embedding values are rounded to bfloat16 precision first, so
float32, float16 and bfloat16 files hold the very same numbers.
"""

from __future__ import annotations

import dataclasses
import json

import ml_dtypes
import numpy as np
import pytest

from nia_jax import ConfigError, InputError, evaluate, make_reranker
from nia_jax.data import EmbeddingFiles, load_external, load_ids
from nia_jax.data.io import check_rows, load_array, load_embeddings, load_scores

N, DIM = 400, 8
safetensors_numpy = pytest.importorskip("safetensors.numpy")


@pytest.fixture(scope="module")
def pairs():
    """(images, captions): float32 values exactly representable in bfloat16 and float16."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((N, DIM))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    captions = images + 0.2 * rng.standard_normal((N, DIM))
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    out = []
    for x in (images, captions):
        x = x.astype(ml_dtypes.bfloat16).astype(np.float32)
        x[np.abs(x) < 1e-3] = 0.0  # outside float16's normal range
        out.append(x)
    return tuple(out)


def write(tmp_path, fmt, images, captions) -> EmbeddingFiles:
    """Save the pair in one format and return the files that name it."""
    if fmt in ("npy", "mmap", "float16", "bfloat16"):
        dtype = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(fmt, np.float32)
        np.save(tmp_path / "img.npy", images.astype(dtype))
        np.save(tmp_path / "txt.npy", captions.astype(dtype))
        return EmbeddingFiles(image_embeddings=str(tmp_path / "img.npy"), text_embeddings=str(tmp_path / "txt.npy"),
                              mmap=fmt == "mmap")
    if fmt == "npz":
        np.savez(tmp_path / "emb.npz", img=images, txt=captions)
        path = str(tmp_path / "emb.npz")
    else:
        dtype = ml_dtypes.bfloat16 if fmt == "safetensors_bf16" else np.float32
        safetensors_numpy.save_file({"img": images.astype(dtype), "txt": captions.astype(dtype)},
                                    str(tmp_path / "emb.safetensors"))
        path = str(tmp_path / "emb.safetensors")
    return EmbeddingFiles(image_embeddings=path, text_embeddings=path, image_key="img", text_key="txt")


def cosine_results(files):
    tasks = load_external("custom", files, "transductive")
    return {d: evaluate(make_reranker("cosine"), t, top_k=50, n_boot=0) for d, t in tasks.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pairs):
    return cosine_results(write(tmp_path_factory.mktemp("ref"), "npy", *pairs))


FORMATS = ["npz", "safetensors", "safetensors_bf16", "mmap", "float16", "bfloat16"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_round_trip(tmp_path, pairs, reference, fmt):
    got = cosine_results(write(tmp_path, fmt, *pairs))

    for direction in ("t2i", "i2t"):
        assert got[direction].metrics == reference[direction].metrics
        assert np.array_equal(got[direction].reranked.position, reference[direction].reranked.position)


def test_reference_not_chance(reference):
    assert reference["t2i"].metrics["R@1"] > 30.0


def test_bfloat16_npy_read_as_bfloat16(tmp_path, pairs):
    np.save(tmp_path / "x.npy", pairs[0].astype(ml_dtypes.bfloat16))

    array = load_array(tmp_path / "x.npy")

    assert array.dtype == ml_dtypes.bfloat16
    assert np.array_equal(array.astype(np.float32), pairs[0])


def test_mmap_stays_mapped(tmp_path, pairs):
    np.save(tmp_path / "x.npy", pairs[0])

    loaded = load_embeddings(tmp_path / "x.npy", mmap=True)

    assert isinstance(loaded, np.memmap)
    assert loaded.dtype == np.float32


def test_mmap_checked_in_chunks(tmp_path, pairs):
    bad = np.tile(pairs[0], (3, 1))
    bad[1000, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    mapped = np.load(tmp_path / "bad.npy", mmap_mode="r")

    with pytest.raises(InputError, match="row 1000"):
        check_rows(mapped, "bad.npy", chunk_rows=64)
    check_rows(mapped[:1000], "good part", chunk_rows=64)


# --- precomputed similarity matrices --------------------------------------------------------


@pytest.fixture(scope="module")
def scores(pairs):
    images, captions = pairs
    return (captions.astype(np.float64) @ images.astype(np.float64).T).astype(np.float32)


def numpy_positions(scores_matrix):
    """neg_above of the diagonal positive, counting ties against it."""
    own = np.diag(scores_matrix)
    return (scores_matrix >= own[:, None]).sum(axis=1) - 1


@pytest.mark.parametrize("fmt", ["npy", "mmap", "float16", "npz"])
def test_similarity_matches_numpy(tmp_path, scores, fmt):
    matrix = scores.astype(np.float16) if fmt == "float16" else scores
    if fmt == "npz":
        np.savez(tmp_path / "s.npz", s=matrix)
        files = EmbeddingFiles(similarity=str(tmp_path / "s.npz"), similarity_key="s")
    else:
        np.save(tmp_path / "s.npy", matrix)
        files = EmbeddingFiles(similarity=str(tmp_path / "s.npy"), mmap=fmt == "mmap")
    tasks = load_external("custom", files, "inductive")  # scores need no bank
    expected = matrix.astype(np.float32)

    for direction, matrix_d in (("t2i", expected), ("i2t", expected.T)):
        result = evaluate(make_reranker("cosine"), tasks[direction], n_boot=0)
        assert np.array_equal(result.reranked.neg_above[:, 0], numpy_positions(matrix_d))
        assert result.metrics["R@1"] == pytest.approx(100.0 * np.mean(numpy_positions(matrix_d) == 0), abs=1e-9)


def test_similarity_close_to_embeddings(tmp_path, scores, reference):
    np.save(tmp_path / "s.npy", scores)
    tasks = load_external("custom", EmbeddingFiles(similarity=str(tmp_path / "s.npy")), "transductive")
    got = evaluate(make_reranker("cosine"), tasks["t2i"], n_boot=0).metrics

    # Same ranking up to round-off: the bfloat16-rounded values give some exact ties, which float64 scores
    # keep and float32 sums may split, so a few queries (here at most four) may move.
    assert got["R@1"] == pytest.approx(reference["t2i"].metrics["R@1"], abs=4 * 100.0 / N)


def test_separate_i2t_similarity(tmp_path, scores):
    np.save(tmp_path / "s.npy", scores)
    np.save(tmp_path / "s_i2t.npy", -scores.T)  # a model scoring i2t differently
    tasks = load_external("custom", EmbeddingFiles(similarity=str(tmp_path / "s.npy"),
                                                   similarity_i2t=str(tmp_path / "s_i2t.npy")), "transductive")

    assert evaluate(make_reranker("cosine"), tasks["i2t"], n_boot=0).metrics["R@1"] < 5.0


def test_similarity_rejects_embedding_rerankers(tmp_path, scores):
    np.save(tmp_path / "s.npy", scores)
    tasks = load_external("custom", EmbeddingFiles(similarity=str(tmp_path / "s.npy")), "transductive")

    with pytest.raises(ConfigError, match="cosine") as info:
        evaluate(make_reranker("nia"), tasks["t2i"], n_boot=0)
    assert "embeddings" in str(info.value)


def test_similarity_transposed_named(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((1000, 5000), np.float16))

    with pytest.raises(InputError, match="transposed"):
        load_external("f30k1k", EmbeddingFiles(similarity=str(tmp_path / "s.npy")), "transductive")


def test_similarity_rejects_infinite(tmp_path, scores):
    bad = scores.copy()
    bad[7, 3] = -np.inf
    np.save(tmp_path / "s.npy", bad)

    with pytest.raises(InputError, match="row 7"):
        load_scores(tmp_path / "s.npy")


# --- bad files -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_wrong_key(tmp_path, pairs, fmt):
    files = dataclasses.replace(write(tmp_path, fmt, *pairs), text_key="text")

    with pytest.raises(InputError, match="no array named 'text'") as info:
        load_external("custom", files, "transductive")
    assert "txt" in str(info.value)


@pytest.mark.parametrize("fmt", ["npy", "mmap", "npz", "safetensors"])
def test_truncated_file(tmp_path, pairs, fmt):
    files = write(tmp_path, fmt, *pairs)
    path = tmp_path / files.text_embeddings.split("/")[-1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(InputError, match="truncated"):
        load_external("custom", files, "transductive")


def test_transposed_embeddings(tmp_path, pairs):
    images, captions = pairs
    np.save(tmp_path / "img.npy", images)
    np.save(tmp_path / "txt.npy", np.ascontiguousarray(captions.T))

    with pytest.raises(InputError, match="text array looks transposed"):
        load_external("custom", EmbeddingFiles(image_embeddings=str(tmp_path / "img.npy"),
                                               text_embeddings=str(tmp_path / "txt.npy")), "transductive")


def test_encoder_dim_checked(tmp_path, pairs):
    files = dataclasses.replace(write(tmp_path, "npy", *pairs), dim=512)

    with pytest.raises(InputError, match="dim=512"):
        load_external("custom", files, "transductive")


def test_safetensors_without_package(tmp_path, pairs, monkeypatch):
    import builtins

    files = write(tmp_path, "safetensors", *pairs)
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError("no safetensors")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    with pytest.raises(InputError, match=r"nia_jax\[safetensors\]"):
        load_array(files.image_embeddings, "img")


@pytest.mark.parametrize("suffix", ["txt", "json", "npy"])
def test_id_files(tmp_path, suffix):
    ids = [391895, 522418, 184613]
    path = tmp_path / f"ids.{suffix}"
    if suffix == "txt":
        path.write_text("\n".join(map(str, ids)) + "\n")
    elif suffix == "json":
        path.write_text(json.dumps(ids))
    else:
        np.save(path, np.array(ids))

    got = load_ids(path)

    assert got.dtype == np.int64
    assert got.tolist() == ids
