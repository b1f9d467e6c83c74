"""The shipped COCO 500 data (splits, banks, golden cosine numbers) and the user file loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO_ROOT

from nia_jax import InputError, evaluate, make_reranker
from nia_jax._validation import as_positives
from nia_jax.data import coco500, load_array, load_embeddings, load_positives
from nia_jax.data.task import RetrievalTask

SHIPPED_FILE = REPO_ROOT / "nia_jax" / "data" / "files" / "coco500_clip_vitb16" / "features_clip.npy"
# Plain cosine retrieval over all 500 pairs, as listed in the data's PROVENANCE.md.
GOLDEN = {"t2i": (50.6, 76.6, 86.2), "i2t": (55.2, 80.8, 89.2)}


def row_set(rows: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in rows}


def numpy_recalls(queries, gallery, ks=(1, 5, 10)):
    """Return R@K (%) of diagonal ground truth, counting ties against the positive, in float64."""
    queries = queries.astype(np.float64)
    gallery = gallery.astype(np.float64)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    sims = queries @ gallery.T
    positive = np.diag(sims)
    rank = (sims >= positive[:, None]).sum(axis=1) - 1  # negatives at or above the positive
    return tuple(100.0 * float(np.mean(rank < k)) for k in ks)


@pytest.fixture(scope="module")
def shipped():
    """(images, captions) read straight from the shipped .npy file."""
    features = np.load(SHIPPED_FILE, allow_pickle=False)
    return features[0], features[1]


@pytest.fixture(scope="module")
def split_tasks():
    return {split: coco500.load_tasks(split, "inductive") for split in ("dev", "test")}


# --- splits and banks ----------------------------------------------------------------------


def test_splits_disjoint_and_cover():
    dev, dev_bank = coco500.split_indices("dev")
    test, test_bank = coco500.split_indices("test")

    assert len(set(dev) & set(test)) == 0
    assert sorted(np.concatenate([dev, test]).tolist()) == list(range(500))
    assert len(dev) == 250
    assert np.array_equal(test_bank, dev)
    assert np.array_equal(dev_bank, test)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_split_tasks_partition_pairs(split_tasks, direction):
    dev = row_set(split_tasks["dev"][direction].queries)
    test = row_set(split_tasks["test"][direction].queries)
    every = row_set(coco500.load_tasks("all", "transductive")[direction].queries)

    assert dev.isdisjoint(test)
    assert len(dev) + len(test) == 500
    assert dev | test == every


def test_test_split_uses_permutation_half(shipped, split_tasks):
    images, captions = shipped
    test_pairs = np.random.default_rng(0).permutation(500)[250:]
    task = split_tasks["test"]["t2i"]

    expected_queries = captions[test_pairs] / np.linalg.norm(captions[test_pairs], axis=1, keepdims=True)
    expected_gallery = images[test_pairs] / np.linalg.norm(images[test_pairs], axis=1, keepdims=True)

    np.testing.assert_allclose(task.queries, expected_queries, atol=1e-6, rtol=0)
    np.testing.assert_allclose(task.gallery, expected_gallery, atol=1e-6, rtol=0)
    assert task.positives[:, 0].tolist() == list(range(250))


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_test_banks_are_dev_samples(split_tasks, direction):
    test, dev = split_tasks["test"][direction], split_tasks["dev"][direction]

    assert row_set(test.query_bank) == row_set(dev.queries)
    assert row_set(test.gallery_bank) == row_set(dev.gallery)
    assert row_set(test.query_bank).isdisjoint(row_set(test.queries))
    assert row_set(test.gallery_bank).isdisjoint(row_set(test.gallery))


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_gallery_bank_pairing_broken(split_tasks, direction):
    test, dev = split_tasks["test"][direction], split_tasks["dev"][direction]
    # dev.gallery[i] is the partner of dev.queries[i] (= test.query_bank[i]).
    assert np.array_equal(test.query_bank, dev.queries)
    same_row = np.all(test.gallery_bank == dev.gallery, axis=1)

    # A random permutation of 250 rows has about one fixed point.
    assert same_row.sum() <= 5


def test_transductive_has_no_banks():
    tasks = coco500.load_tasks("all", "transductive")

    assert tasks["t2i"].query_bank is None
    assert tasks["t2i"].gallery_bank is None
    assert tasks["t2i"].queries.shape == (500, 512)


def test_all_split_rejects_inductive():
    with pytest.raises(InputError, match="transductive"):
        coco500.load_tasks("all", "inductive")


# --- golden numbers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_pairs_cosine():
    tasks = coco500.load_tasks("all", "transductive")
    cosine = make_reranker("cosine")
    return {direction: evaluate(cosine, task, n_boot=10).metrics for direction, task in tasks.items()}


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_golden_cosine_recalls(all_pairs_cosine, direction):
    got = all_pairs_cosine[direction]

    assert got["R@1"] == pytest.approx(GOLDEN[direction][0], abs=1e-9)
    assert got["R@5"] == pytest.approx(GOLDEN[direction][1], abs=1e-9)
    assert got["R@10"] == pytest.approx(GOLDEN[direction][2], abs=1e-9)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_golden_matches_numpy(all_pairs_cosine, shipped, direction):
    images, captions = shipped
    queries, gallery = (captions, images) if direction == "t2i" else (images, captions)
    got = all_pairs_cosine[direction]

    assert (got["R@1"], got["R@5"], got["R@10"]) == pytest.approx(numpy_recalls(queries, gallery), abs=1e-9)


def test_random_variant_near_chance():
    tasks = coco500.load_tasks("all", "transductive", variant="random")
    cosine = make_reranker("cosine")

    for direction, task in tasks.items():
        # Chance R@1 over 500 items is 0.2%.
        assert evaluate(cosine, task, n_boot=10).metrics["R@1"] <= 2.0, direction


# --- user files ----------------------------------------------------------------------------


def unit_matrix(n=4, d=3, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_load_npy(tmp_path):
    emb = unit_matrix()
    np.save(tmp_path / "emb.npy", emb)

    np.testing.assert_allclose(load_embeddings(tmp_path / "emb.npy"), emb, atol=1e-6)


def test_load_npz_key(tmp_path):
    emb = unit_matrix()
    np.savez(tmp_path / "emb.npz", images=emb, captions=emb[::-1])

    np.testing.assert_array_equal(load_array(tmp_path / "emb.npz", "captions"), emb[::-1])


def test_load_npz_missing_key(tmp_path):
    np.savez(tmp_path / "emb.npz", images=unit_matrix(), captions=unit_matrix())

    with pytest.raises(InputError) as info:
        load_array(tmp_path / "emb.npz", "text")
    assert "'text'" in str(info.value)
    assert "images" in str(info.value)
    assert "captions" in str(info.value)


def test_load_npz_ambiguous_without_key(tmp_path):
    np.savez(tmp_path / "emb.npz", images=unit_matrix(), captions=unit_matrix())

    with pytest.raises(InputError, match="key"):
        load_array(tmp_path / "emb.npz")


def test_load_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_array(tmp_path / "absent.npy")


def test_load_wrong_suffix(tmp_path):
    (tmp_path / "emb.txt").write_text("1 2 3")

    with pytest.raises(InputError, match="unsupported file type"):
        load_array(tmp_path / "emb.txt")


def test_load_truncated_npy(tmp_path):
    path = tmp_path / "emb.npy"
    np.save(path, unit_matrix(64, 32))
    path.write_bytes(path.read_bytes()[:300])

    with pytest.raises(InputError, match="truncated"):
        load_array(path)


class _Payload:
    """Object whose unpickling creates a marker file, so any unpickling is visible."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_array_rejected(tmp_path):
    path, marker = tmp_path / "objects.npy", tmp_path / "unpickled"
    np.save(path, np.array([_Payload(marker)], dtype=object), allow_pickle=True)

    with pytest.raises(InputError, match="pickled"):
        load_array(path)
    assert not marker.exists()

    # Control: unpickling the same file does create the marker.
    np.load(path, allow_pickle=True)
    assert marker.exists()


def test_wrong_rank_rejected(tmp_path):
    np.save(tmp_path / "emb.npy", np.ones((2, 3, 4), dtype=np.float32))

    with pytest.raises(InputError, match="2-D"):
        load_embeddings(tmp_path / "emb.npy")


def test_nan_rows_rejected(tmp_path):
    emb = unit_matrix(5)
    emb[3, 1] = np.nan
    np.save(tmp_path / "emb.npy", emb)

    with pytest.raises(InputError) as info:
        load_embeddings(tmp_path / "emb.npy")
    assert "NaN" in str(info.value)
    assert "[3]" in str(info.value)


def test_zero_rows_rejected(tmp_path):
    emb = unit_matrix(5)
    emb[1] = 0.0
    np.save(tmp_path / "emb.npy", emb)

    with pytest.raises(InputError) as info:
        load_embeddings(tmp_path / "emb.npy")
    assert "zeros" in str(info.value)
    assert "[1]" in str(info.value)


def test_dimension_mismatch_transposed(tmp_path):
    # 6 embeddings of dimension 4, saved transposed as (4, 6).
    np.save(tmp_path / "emb.npy", unit_matrix(6, 4).T)

    with pytest.raises(InputError) as info:
        load_embeddings(tmp_path / "emb.npy", dim=4)
    assert "dimension 6" in str(info.value)
    assert "transposed" in str(info.value)


def test_dimension_mismatch_plain(tmp_path):
    np.save(tmp_path / "emb.npy", unit_matrix(6, 5))

    with pytest.raises(InputError) as info:
        load_embeddings(tmp_path / "emb.npy", dim=4)
    assert "dimension 5" in str(info.value)
    assert "transposed" not in str(info.value)


def test_unnormalised_rows_normalised(tmp_path):
    np.save(tmp_path / "emb.npy", 3.0 * unit_matrix())

    got = load_embeddings(tmp_path / "emb.npy", norm_policy="normalise")

    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_unnormalised_rows_rejected(tmp_path):
    np.save(tmp_path / "emb.npy", 3.0 * unit_matrix())

    with pytest.raises(InputError, match="not unit-norm"):
        load_embeddings(tmp_path / "emb.npy", norm_policy="reject")


# --- ground truth --------------------------------------------------------------------------


def test_positives_json_list(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps([[0, 2], 1, [3]]))

    got = load_positives(path)

    assert [p.tolist() for p in got] == [[0, 2], [1], [3]]


def test_positives_json_dict(tmp_path):
    path = tmp_path / "gt.json"
    # Keys are sorted as integers, so "10" comes last.
    path.write_text(json.dumps({str(i): [i] for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)}))

    got = load_positives(path)

    assert [p.tolist() for p in got] == [[i] for i in range(11)]


def test_positives_json_dict_gap(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"0": [1], "2": [0]}))

    with pytest.raises(InputError, match="none missing"):
        load_positives(path)


def test_positives_npy_padded(tmp_path):
    np.save(tmp_path / "gt.npy", np.array([[0, 2], [1, -1]]))

    got = load_positives(tmp_path / "gt.npy")

    assert [p.tolist() for p in got] == [[0, 2], [1]]


def test_positive_out_of_range(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps([[0], [4]]))

    with pytest.raises(InputError) as info:
        as_positives(load_positives(path), n_queries=2, n_gallery=4)
    assert "query 1" in str(info.value)
    assert "[0, 3]" in str(info.value)


def test_query_without_positives(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps([[0], []]))

    with pytest.raises(InputError) as info:
        as_positives(load_positives(path), n_queries=2, n_gallery=4)
    assert "query 1" in str(info.value)
    assert "no positive" in str(info.value)


def test_positives_count_mismatch():
    with pytest.raises(InputError, match="3 queries"):
        RetrievalTask.build("t2i", unit_matrix(2), unit_matrix(4), [[0], [1], [2]])
