"""COCO 5K / 1K, Flickr30K 1K and custom data sets on user embeddings, and the ECCV Caption / CxC metrics.

The ground truth comes from the files shipped in nia_jax/data/files. The
embeddings are small synthetic ones written to tmp_path: each caption is its
image plus noise, so retrieval is far from chance. The ECCV Caption and CxC
metrics are cross-checked against the ``eccv-caption`` package (a dev extra)
on the ranked lists our engine produced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXPERIMENTS_DIR

import nia_jax
from nia_jax import ConfigError, InputError, evaluate, make_reranker
from nia_jax.data import EmbeddingFiles, coco5k, f30k, load_external
from nia_jax.data.task import FoldedTask

DIM = 16


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def paired_embeddings(caption_image, n_images, *, seed=0, noise=0.6):
    """Images: random unit vectors; caption i: its image plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    images = unit(rng.standard_normal((n_images, DIM)))
    captions = unit(images[caption_image] + noise * rng.standard_normal((len(caption_image), DIM)) / np.sqrt(DIM))
    return images, captions


def save_pair(tmp_path, images, captions, tag="emb"):
    image_path, text_path = tmp_path / f"{tag}_img.npy", tmp_path / f"{tag}_txt.npy"
    np.save(image_path, images)
    np.save(text_path, captions)
    return str(image_path), str(text_path)


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    """Synthetic COCO 5K embeddings in Karpathy order: (images, captions, EmbeddingFiles)."""
    tmp = tmp_path_factory.mktemp("coco")
    images, captions = paired_embeddings(np.arange(25000) // 5, 5000)
    image_path, text_path = save_pair(tmp, images, captions)
    return images, captions, EmbeddingFiles(image_embeddings=image_path, text_embeddings=text_path)


# --- the shipped COCO 5K ground truth -------------------------------------------------------


def test_coco5k_shipped_counts():
    per_caption = coco5k.caption_image_ids()

    assert per_caption.shape == (25000,)
    assert coco5k.image_ids().shape == (5000,)
    assert np.unique(coco5k.image_ids()).size == 5000
    # Five consecutive rows per image, each image once.
    assert np.array_equal(per_caption.reshape(5000, 5), np.repeat(coco5k.image_ids()[:, None], 5, axis=1))
    assert np.unique(coco5k.caption_ids()).size == 25000


def test_coco5k_ground_truth_five_per_image():
    rows = coco5k.CaptionRows(np.arange(25000) // 5, coco5k.caption_ids(), "standard")
    t2i, i2t = coco5k.ground_truth(rows)

    assert [len(p) for p in i2t] == [5] * 5000
    assert np.array_equal(i2t[7], np.arange(35, 40))
    assert t2i[12345] == 2469


def test_coco5k_ids_match_eccv_caption_package():
    eccv_caption = pytest.importorskip("eccv_caption")
    data = os.path.join(os.path.dirname(eccv_caption.__file__), "data")
    with open(os.path.join(data, "original_caption_to_image.json")) as handle:
        original = json.load(handle)

    assert np.array_equal(np.load(os.path.join(data, "coco_test_ids.npy")), coco5k.caption_ids())
    images = [original[str(c)] for c in coco5k.caption_ids()]
    assert images == [[int(i)] for i in coco5k.caption_image_ids()]


@pytest.mark.parametrize("name", ["eccv", "cxc"])
def test_extended_ids_inside_split(name):
    caption_to_image, image_to_caption = coco5k.extended_ground_truth(name)
    images, captions = set(coco5k.image_ids().tolist()), set(coco5k.caption_ids().tolist())

    assert set(caption_to_image) <= captions
    assert set(image_to_caption) <= images
    assert all(i in images for listed in caption_to_image.values() for i in listed)


def test_eccv_positives_contain_original_pairs():
    rows = coco5k.CaptionRows(np.arange(25000) // 5, coco5k.caption_ids(), "standard")
    query_rows, positives, listed = coco5k.extended_positives(rows, "eccv")["t2i"]

    assert query_rows.size == 1332
    assert all(row // 5 in found for row, found in zip(query_rows, positives))
    assert all(len(found) == n for found, n in zip(positives, listed))


def test_eccv_absent_positives_count_towards_r():
    rows = coco5k.CaptionRows(np.arange(25000) // 5, coco5k.caption_ids(), "standard")
    query_rows, positives, listed = coco5k.extended_positives(rows, "eccv")["i2t"]
    found = np.array([len(p) for p in positives])

    assert query_rows.size == 1261
    assert int((listed - found).sum()) == 2


# --- loading COCO 5K: counts, variants and row order ----------------------------------------


def test_coco5k_tasks_shapes(coco_files):
    _, _, files = coco_files
    tasks = load_external("coco5k", dataclasses.replace(files, extended_metrics=("eccv", "cxc")), "transductive")

    assert tasks["t2i"].queries.shape == (25000, DIM)
    assert tasks["t2i"].gallery.shape == (5000, DIM)
    assert tasks["i2t"].positives.shape == (5000, 5)
    assert set(tasks["t2i"].extended) == {"eccv", "cxc"}
    assert tasks["i2t"].extended["cxc"].rows.size == 5000


def test_coco5k_standard_split_logged(coco_files, caplog):
    _, _, files = coco_files
    with caplog.at_level(logging.INFO, logger="nia_jax.data.coco5k"):
        load_external("coco5k", files, "transductive")

    assert "25,000 caption rows" in caplog.text
    assert "standard" in caplog.text


def test_coco5k_wrong_caption_count_names_expected(tmp_path, coco_files):
    images, captions, files = coco_files
    np.save(tmp_path / "short.npy", captions[:24990])

    with pytest.raises(InputError, match="25,000") as info:
        load_external("coco5k", dataclasses.replace(files, text_embeddings=str(tmp_path / "short.npy")),
                      "transductive")
    assert "25,010" in str(info.value)


def test_coco5k_transposed_images_named(tmp_path, coco_files):
    images, _, files = coco_files
    np.save(tmp_path / "img_t.npy", np.ascontiguousarray(images.T))

    with pytest.raises(InputError, match="transposed"):
        load_external("coco5k", dataclasses.replace(files, image_embeddings=str(tmp_path / "img_t.npy")),
                      "transductive")


def test_coco5k_swapped_files_named(coco_files):
    _, _, files = coco_files
    swapped = dataclasses.replace(files, image_embeddings=files.text_embeddings, text_embeddings=files.image_embeddings)

    with pytest.raises(InputError, match="swapped"):
        load_external("coco5k", swapped, "transductive")


def test_coco5k_image_ids_checked(tmp_path, coco_files):
    _, _, files = coco_files
    good = tmp_path / "ids.txt"
    good.write_text("\n".join(str(i) for i in coco5k.image_ids()))
    shuffled = tmp_path / "shuffled.npy"
    np.save(shuffled, np.roll(coco5k.image_ids(), 1))

    load_external("coco5k", dataclasses.replace(files, image_ids=str(good)), "transductive")
    with pytest.raises(InputError, match="another order"):
        load_external("coco5k", dataclasses.replace(files, image_ids=str(shuffled)), "transductive")


def test_coco5k_caption_image_ids_checked(tmp_path, coco_files):
    _, _, files = coco_files
    wrong = coco5k.caption_image_ids().copy()
    wrong[[10, 15]] = wrong[[15, 10]]  # a caption of image 2 and one of image 3 trade rows
    np.save(tmp_path / "cap_ids.npy", wrong)

    with pytest.raises(InputError, match="row 10") as info:
        load_external("coco5k", dataclasses.replace(files, caption_image_ids=str(tmp_path / "cap_ids.npy")),
                      "transductive")
    assert "2 rows differ" in str(info.value)


def variant_rows():
    """25,010 caption rows: the standard ones plus a sixth caption for ten images (two are real ECCV captions)."""
    extra_images = np.array([575916, 421999] + coco5k.image_ids()[:8].tolist())
    extra_captions = np.array([144675, 467259] + list(range(9_000_001, 9_000_009)))
    image_ids = np.concatenate([coco5k.caption_image_ids(), extra_images])
    caption_ids = np.concatenate([coco5k.caption_ids(), extra_captions])
    row_of_image = {int(i): r for r, i in enumerate(coco5k.image_ids())}
    return image_ids, caption_ids, np.array([row_of_image[int(i)] for i in image_ids])


def test_coco5k_variant_needs_caption_image_ids(tmp_path, coco_files):
    images, _, files = coco_files
    _, _, caption_image = variant_rows()
    _, captions = paired_embeddings(caption_image, 5000, seed=1)
    np.save(tmp_path / "txt25010.npy", captions)

    with pytest.raises(InputError, match="caption_image_ids") as info:
        load_external("coco5k", dataclasses.replace(files, text_embeddings=str(tmp_path / "txt25010.npy")),
                      "transductive")
    assert "25,010" in str(info.value)
    assert "sixth caption" in str(info.value)


def test_coco5k_variant_scored_with_ids(tmp_path, coco_files, caplog):
    images, _, files = coco_files
    image_ids, caption_ids, caption_image = variant_rows()
    _, captions = paired_embeddings(caption_image, 5000, seed=1)
    np.save(tmp_path / "txt25010.npy", captions)
    np.save(tmp_path / "img_ids.npy", image_ids)
    np.save(tmp_path / "cap_ids.npy", caption_ids)
    variant = dataclasses.replace(files, text_embeddings=str(tmp_path / "txt25010.npy"),
                                  caption_image_ids=str(tmp_path / "img_ids.npy"),
                                  caption_ids=str(tmp_path / "cap_ids.npy"), extended_metrics=("eccv",))
    with caplog.at_level(logging.INFO, logger="nia_jax.data.coco5k"):
        tasks = load_external("coco5k", variant, "transductive")

    assert "variant" in caplog.text
    assert tasks["t2i"].queries.shape[0] == 25010
    assert tasks["t2i"].positives[25000:, 0].tolist() == caption_image[25000:].tolist()
    assert (tasks["i2t"].positives >= 0).sum(axis=1).max() == 6
    eccv = tasks["i2t"].extended["eccv"]
    # With the sixth captions present, every ECCV positive caption is found.
    assert np.array_equal((eccv.positives >= 0).sum(axis=1), eccv.n_positives)


def test_coco5k_inductive_without_banks_explains(coco_files):
    _, _, files = coco_files
    with pytest.raises(ConfigError, match="image_bank") as info:
        load_external("coco5k", files, "inductive")
    assert "transductive" in str(info.value)


def test_coco5k_has_only_test_split(coco_files):
    _, _, files = coco_files
    with pytest.raises(ConfigError, match="test"):
        load_external("coco5k", files, "transductive", split="dev")


# --- ECCV Caption and CxC against the eccv-caption package ----------------------------------


@pytest.fixture(scope="module")
def coco5k_cosine(coco_files):
    """Cosine on synthetic COCO 5K with ECCV and CxC: {direction: DirectionResult}."""
    _, _, files = coco_files
    tasks = load_external("coco5k", dataclasses.replace(files, extended_metrics=("eccv", "cxc")), "transductive")
    cosine = make_reranker("cosine")
    return {d: evaluate(cosine, t, top_k=64, block_size=2048, n_boot=0) for d, t in tasks.items()}


@pytest.fixture(scope="module")
def eccv_reference(coco5k_cosine):
    """The eccv-caption package's metrics on our engine's ranked lists (fractions)."""
    eccv_caption = pytest.importorskip("eccv_caption")
    image_ids, caption_ids = coco5k.image_ids(), coco5k.caption_ids()
    t2i_order = coco5k_cosine["t2i"].reranked.order
    i2t_order = coco5k_cosine["i2t"].reranked.order
    t2i = {int(c): image_ids[row].tolist() for c, row in zip(caption_ids, t2i_order)}
    i2t = {int(i): caption_ids[row].tolist() for i, row in zip(image_ids, i2t_order)}
    return eccv_caption.Metrics().compute_all_metrics(
        i2t, t2i, target_metrics=("eccv_r1", "eccv_map_at_r", "eccv_rprecision", "coco_5k_recalls", "cxc_recalls"),
        Ks=(1, 5, 10), verbose=False)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize(("ours", "theirs"), [("eccv_mAP@R", "eccv_map_at_r"), ("eccv_R-Precision", "eccv_rprecision"),
                                              ("eccv_R@1", "eccv_r1")])
def test_eccv_metrics_match_package(coco5k_cosine, eccv_reference, direction, ours, theirs):
    got = coco5k_cosine[direction].metrics[ours]

    assert got == pytest.approx(100.0 * eccv_reference[theirs][direction], abs=1e-4)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_cxc_and_coco_recalls_match_package(coco5k_cosine, eccv_reference, direction, k):
    metrics = coco5k_cosine[direction].metrics

    assert metrics[f"cxc_R@{k}"] == pytest.approx(100.0 * eccv_reference[f"cxc_r{k}"][direction], abs=1e-4)
    assert metrics[f"R@{k}"] == pytest.approx(100.0 * eccv_reference[f"coco_5k_r{k}"][direction], abs=1e-4)


def test_eccv_metrics_not_chance(coco5k_cosine):
    metrics = coco5k_cosine["t2i"].metrics

    assert metrics["eccv_n_queries"] == 1332
    assert metrics["cxc_n_queries"] == 24972
    assert 5.0 < metrics["eccv_mAP@R"] < metrics["eccv_R@1"]


# --- COCO 1K folds --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco1k_tasks(coco_files):
    _, _, files = coco_files
    return load_external("coco1k", files, "transductive")


def test_coco1k_fold_structure(coco_files, coco1k_tasks):
    images, captions, _ = coco_files
    for direction, task in coco1k_tasks.items():
        assert isinstance(task, FoldedTask)
        assert len(task.folds) == 5
        for f, fold in enumerate(task.folds):
            image_rows, caption_rows = np.arange(1000 * f, 1000 * (f + 1)), np.arange(5000 * f, 5000 * (f + 1))
            queries, gallery = (captions, images) if direction == "t2i" else (images, captions)
            query_rows, gallery_rows = (caption_rows, image_rows) if direction == "t2i" else (image_rows, caption_rows)
            np.testing.assert_allclose(fold.queries, queries[query_rows], atol=1e-6)
            np.testing.assert_allclose(fold.gallery, gallery[gallery_rows], atol=1e-6)
            assert fold.query_bank is None
            assert fold.gallery_bank is None


def test_coco1k_average_is_mean_of_folds(coco1k_tasks):
    cosine = make_reranker("cosine")
    result = evaluate(cosine, coco1k_tasks["t2i"], n_boot=50)
    separate = [evaluate(cosine, fold, n_boot=0).metrics for fold in coco1k_tasks["t2i"].folds]

    for key in ("R@1", "R@5", "R@10", "medr", "mAP@R", "R-Precision"):
        assert result.metrics[key] == pytest.approx(np.mean([m[key] for m in separate]), abs=1e-4), key
    assert result.metrics["n_queries"] == 25000
    assert result.metrics["n_folds"] == 5
    assert result.per_query["rank"].shape == (25000,)
    low, high = result.metrics["R@1_ci95"]
    assert low <= result.metrics["R@1"] <= high


def test_coco1k_no_neighbour_from_other_folds(tmp_path, coco_files, coco1k_tasks):
    """Changing every other fold's embeddings leaves fold 0's re-ranking exactly as it was."""
    images, captions, files = coco_files
    rng = np.random.default_rng(5)
    images2, captions2 = images.copy(), captions.copy()
    images2[1000:] = unit(rng.standard_normal((4000, DIM)))
    captions2[5000:] = unit(rng.standard_normal((20000, DIM)))
    image_path, text_path = save_pair(tmp_path, images2, captions2, tag="changed")
    changed = load_external("coco1k", dataclasses.replace(files, image_embeddings=image_path,
                                                          text_embeddings=text_path), "transductive")
    method = make_reranker("csls", k=10)
    for direction in ("t2i", "i2t"):
        before = nia_jax.rerank(method, coco1k_tasks[direction].folds[0].queries,
                                coco1k_tasks[direction].folds[0].gallery,
                                positives=coco1k_tasks[direction].folds[0].positives, top_k=50, transductive=True)
        after = nia_jax.rerank(method, changed[direction].folds[0].queries, changed[direction].folds[0].gallery,
                               positives=changed[direction].folds[0].positives, top_k=50, transductive=True)
        assert np.array_equal(before.position, after.position)
        assert np.array_equal(before.scores, after.scores)


def test_coco1k_rejects_extended_metrics(coco_files):
    _, _, files = coco_files
    with pytest.raises(ConfigError, match="coco5k"):
        load_external("coco1k", dataclasses.replace(files, extended_metrics=("eccv",)), "transductive")


# --- Flickr30K 1K and custom ---------------------------------------------------------------


@pytest.fixture(scope="module")
def f30k_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("f30k")
    images, captions = paired_embeddings(np.arange(5000) // 5, 1000, seed=2)
    image_path, text_path = save_pair(tmp, images, captions)
    return images, captions, EmbeddingFiles(image_embeddings=image_path, text_embeddings=text_path)


def test_f30k_cosine_matches_numpy(f30k_files):
    images, captions, files = f30k_files
    tasks = load_external("f30k1k", files, "transductive")
    got = evaluate(make_reranker("cosine"), tasks["t2i"], n_boot=0).metrics
    sims = captions.astype(np.float64) @ images.astype(np.float64).T
    own = sims[np.arange(5000), np.arange(5000) // 5]
    expected = 100.0 * np.mean((sims > own[:, None]).sum(axis=1) == 0)

    assert got["R@1"] == pytest.approx(expected, abs=0.05)
    assert got["R@1"] > 20.0


def test_f30k_image_names_checked(tmp_path, f30k_files):
    _, _, files = f30k_files
    names = f30k.image_names()
    (tmp_path / "names.txt").write_text("\n".join(names))
    (tmp_path / "photo.txt").write_text("\n".join(n.split(".")[0] for n in names))
    (tmp_path / "wrong.txt").write_text("\n".join(names[::-1]))

    load_external("f30k1k", dataclasses.replace(files, image_ids=str(tmp_path / "names.txt")), "transductive")
    load_external("f30k1k", dataclasses.replace(files, image_ids=str(tmp_path / "photo.txt")), "transductive")
    with pytest.raises(InputError, match="row order"):
        load_external("f30k1k", dataclasses.replace(files, image_ids=str(tmp_path / "wrong.txt")), "transductive")


def test_f30k_wrong_count(tmp_path, f30k_files):
    images, _, files = f30k_files
    np.save(tmp_path / "img.npy", images[:999])

    with pytest.raises(InputError, match="1,000 images"):
        load_external("f30k1k", dataclasses.replace(files, image_embeddings=str(tmp_path / "img.npy")), "transductive")


def test_custom_paired_rows(tmp_path):
    images, captions = paired_embeddings(np.arange(300), 300, seed=3, noise=0.3)
    image_path, text_path = save_pair(tmp_path, images, captions)
    tasks = load_external("custom", EmbeddingFiles(image_embeddings=image_path, text_embeddings=text_path),
                          "transductive")

    assert tasks["t2i"].positives[:, 0].tolist() == list(range(300))
    assert evaluate(make_reranker("cosine"), tasks["i2t"], n_boot=0).metrics["R@1"] > 50.0


def test_custom_ground_truth_inverted(tmp_path):
    caption_image = np.array([0, 0, 1, 2, 2, 2])  # image 3 has no caption
    images, captions = paired_embeddings(caption_image, 4, seed=4)
    image_path, text_path = save_pair(tmp_path, images, captions)
    (tmp_path / "gt.json").write_text(json.dumps([[0], [0, 1], [1], [2], [2], [2]]))
    tasks = load_external("custom", EmbeddingFiles(image_embeddings=image_path, text_embeddings=text_path,
                                                   ground_truth_t2i=str(tmp_path / "gt.json")), "transductive")

    assert tasks["i2t"].queries.shape[0] == 3  # image 3 is only a gallery item
    i2t = [sorted(row[row >= 0].tolist()) for row in tasks["i2t"].positives]
    assert i2t == [[0, 1], [1, 2], [3, 4, 5]]


def test_custom_unpaired_counts_need_ground_truth(tmp_path):
    images, captions = paired_embeddings(np.arange(10) // 2, 5)
    image_path, text_path = save_pair(tmp_path, images, captions)

    with pytest.raises(InputError, match="ground_truth_t2i"):
        load_external("custom", EmbeddingFiles(image_embeddings=image_path, text_embeddings=text_path), "transductive")


def test_custom_inductive_banks(tmp_path):
    images, captions = paired_embeddings(np.arange(200), 200, seed=6)
    image_path, text_path = save_pair(tmp_path, images[:100], captions[:100])
    bank_image, bank_text = save_pair(tmp_path, images[100:], captions[100:], tag="bank")
    files = EmbeddingFiles(image_embeddings=image_path, text_embeddings=text_path)

    with pytest.raises(ConfigError, match="dataset.image_bank"):
        load_external("custom", files, "inductive")
    tasks = load_external("custom", dataclasses.replace(files, image_bank=bank_image, text_bank=bank_text), "inductive")
    np.testing.assert_allclose(tasks["t2i"].query_bank, captions[100:], atol=1e-6)
    np.testing.assert_allclose(tasks["t2i"].gallery_bank, images[100:], atol=1e-6)
    result = evaluate(make_reranker("nnn", k=8), tasks["t2i"], n_boot=0)
    assert result.metrics["n_queries"] == 100


# --- the runner on COCO 1K -------------------------------------------------------------------


@pytest.mark.slow
def test_rerank_runner_coco1k(tmp_path, coco_files):
    _, _, files = coco_files
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(EXPERIMENTS_DIR / "rerank.py"), "dataset=coco1k", "method=cosine", "logger=none",
         "protocol=transductive", "n_boot=20", f"dataset.image_embeddings={files.image_embeddings}",
         f"dataset.text_embeddings={files.text_embeddings}", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)

    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((run_dir / "results.json").read_text())
    entry = results["methods"]["cosine"]["t2i"]
    assert entry["n_folds"] == 5
    assert len(entry["folds"]) == 5
    assert entry["R@1"] == pytest.approx(np.mean([f["R@1"] for f in entry["folds"]]), abs=1e-3)
    assert "means over 5 folds" in done.stdout
