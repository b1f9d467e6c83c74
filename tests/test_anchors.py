"""Tests of the baseline re-rankers (anchors) against float64 NumPy references.

Every anchor runs through ``nia_jax.rerank`` with ``top_k = ng``, so all
candidates are re-scored, and its candidate scores are compared with
``reference_anchors``. The small settings below keep k within the banks of
the toy tasks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import nia_jax
from nia_jax import metrics
from nia_jax.errors import ConfigError
from nia_jax.rerankers import reranker_class
from nia_jax.rerankers.reciprocal import reciprocal_sets
from reference_anchors import REFERENCES

# (test id, registered name, settings) of every anchor and variant under test.
CASES = [
    ("nnn", "nnn", dict(k=4, alpha=0.75)),
    ("csls", "csls", dict(k=3)),
    ("qbnorm_is", "qbnorm_is", dict(beta=20.0)),
    ("qbnorm_dis", "qbnorm_dis", dict(beta=20.0, k=2)),
    ("dualis", "dualis", dict(beta1=1 / 1.99, beta2=3.0)),
    ("dualis_query_side", "dualis", dict(beta1=1 / 1.99, beta2=3.0, gallery_bank_side="query")),
    ("dsl", "dsl", dict(tau=1.0)),
    ("sinkhorn", "sinkhorn", dict(beta=20.0, n_iter=10)),
    ("dbsn", "dbsn", dict(beta=20.0, n_iter=10)),
    ("invgc", "invgc", dict(k=3, r_q=0.1)),
    ("invgc_both", "invgc", dict(k=3, r_q=0.1, r_g=0.2, pool="both")),
    ("kreciprocal", "kreciprocal", dict(k1=6, k2=3, lam=0.3)),
    ("aqe", "aqe", dict(n=3, alpha=3.0)),
    ("dba", "dba", dict(n=3, alpha=3.0)),
]
CASE_IDS = [case[0] for case in CASES]

# Softmax forms at CLIP's logit scale (beta = 100, tau = 1/100).
CLIP_SCALE_CASES = [
    ("qbnorm_is", "qbnorm_is", dict(beta=100.0)),
    ("qbnorm_dis", "qbnorm_dis", dict(beta=100.0, k=2)),
    ("dualis", "dualis", dict(beta1=100.0, beta2=100.0)),
    ("dsl", "dsl", dict(tau=0.01)),
    ("sinkhorn", "sinkhorn", dict(beta=100.0, n_iter=10)),
    ("dbsn", "dbsn", dict(beta=100.0, n_iter=10)),
]

ANCHORS = ("nnn", "csls", "qbnorm_is", "qbnorm_dis", "dualis", "dsl", "sinkhorn", "dbsn", "invgc",
           "kreciprocal", "aqe", "dba")

METHOD_CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "method"

# float32 scores of log-softmax forms reach about 100 in magnitude.
RTOL, ATOL = 1e-4, 2e-4


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_task(seed, captions_per_image, bank_images, bank_captions, d=8, noise=0.7):
    """Draw images and their captions around shared latent points, plus unpaired banks.

    Returns (images, captions, owner, bank_images, bank_captions) with owner[i]
    the image of caption i; every array is unit-norm float32.
    """
    rng = np.random.default_rng(seed)
    counts = np.asarray(captions_per_image)
    owner = np.repeat(np.arange(counts.size), counts)
    latent = rng.standard_normal((counts.size, d))
    images = latent + noise * rng.standard_normal(latent.shape)
    captions = latent[owner] + noise * rng.standard_normal((owner.size, d))
    bank_latent = rng.standard_normal((max(bank_images, bank_captions), d))
    bank_i = bank_latent[:bank_images] + noise * rng.standard_normal((bank_images, d))
    bank_c = bank_latent[rng.integers(0, bank_latent.shape[0], bank_captions)]
    bank_c = bank_c + noise * rng.standard_normal((bank_captions, d))
    return _unit(images), _unit(captions), owner, _unit(bank_i), _unit(bank_c)


def square_task(seed=0, noise=0.7):
    """Ten captions querying ten images, one positive each, with banks of 14 captions and 12 images."""
    images, captions, owner, bank_images, bank_captions = make_task(seed, [1] * 10, 12, 14, noise=noise)
    return dict(queries=captions, gallery=images, query_bank=bank_captions, gallery_bank=bank_images,
                positives=owner)


def caption_tasks(captions_per_image, seed=1):
    """Both directions of images with several captions each, with banks of 5 images and 17 captions."""
    images, captions, owner, bank_images, bank_captions = make_task(seed, captions_per_image, 5, 17)
    t2i = dict(queries=captions, gallery=images, query_bank=bank_captions, gallery_bank=bank_images,
               positives=owner)
    i2t = dict(queries=images, gallery=captions, query_bank=bank_images, gallery_bank=bank_captions,
               positives=[np.flatnonzero(owner == i) for i in range(images.shape[0])])
    return {"t2i": t2i, "i2t": i2t}


FIVE_PER_IMAGE = [5, 5, 5, 5]
UNEVEN = [3, 5, 4, 2, 5, 2]


def run(name, settings, task, *, transductive=False, block_size=1024, with_positives=False):
    method = nia_jax.make_reranker(name, **settings)
    ng = task["gallery"].shape[0]
    return nia_jax.rerank(
        method, task["queries"], task["gallery"],
        query_bank=task["query_bank"], gallery_bank=task["gallery_bank"],
        positives=task["positives"] if with_positives else None,
        top_k=ng, block_size=block_size, transductive=transductive,
    )


def reference(name, settings, task, *, transductive=False):
    """Full float64 reference scores (nq, ng) of one case."""
    queries, gallery = task["queries"], task["gallery"]
    if transductive:
        return REFERENCES[name](
            queries, gallery, queries, gallery, **settings,
            query_self=np.arange(queries.shape[0]), gallery_self=np.arange(gallery.shape[0]),
        )
    return REFERENCES[name](queries, gallery, task["query_bank"], task["gallery_bank"], **settings)


def candidate_view(full, candidates):
    return np.take_along_axis(full, candidates, axis=1)


@pytest.mark.parametrize("protocol", ["inductive", "transductive"])
@pytest.mark.parametrize("case_id, name, settings", CASES, ids=CASE_IDS)
def test_anchor_matches_reference(case_id, name, settings, protocol):
    task = square_task()
    transductive = protocol == "transductive"
    out = run(name, settings, task, transductive=transductive)
    expected = candidate_view(reference(name, settings, task, transductive=transductive), out.candidates)
    np.testing.assert_allclose(out.scores, expected, rtol=RTOL, atol=ATOL)


def test_every_anchor_is_registered_and_tested():
    assert set(ANCHORS) <= set(nia_jax.available())
    assert set(ANCHORS) == {case[1] for case in CASES}


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("counts", [FIVE_PER_IMAGE, UNEVEN], ids=["five_per_image", "uneven"])
@pytest.mark.parametrize("case_id, name, settings", CASES, ids=CASE_IDS)
def test_anchor_non_square_matches_reference(case_id, name, settings, counts, direction):
    task = caption_tasks(counts)[direction]
    out = run(name, settings, task, with_positives=True)
    expected = candidate_view(reference(name, settings, task), out.candidates)
    np.testing.assert_allclose(out.scores, expected, rtol=RTOL, atol=ATOL)
    assert (out.position >= 0).sum() == sum(np.size(p) for p in task["positives"])


@pytest.mark.parametrize("case_id, name, settings", CLIP_SCALE_CASES, ids=[c[0] for c in CLIP_SCALE_CASES])
def test_softmax_forms_at_clip_scale(case_id, name, settings):
    # Low noise and near-copies of the evaluated samples in the banks put many similarities
    # above 0.9, where exp(100 s) overflows float32 (exp(88.7) is its maximum).
    task = square_task(seed=3, noise=0.3)
    rng = np.random.default_rng(4)
    for bank, source in (("query_bank", "queries"), ("gallery_bank", "gallery")):
        copies = _unit(task[source][:6] + 0.05 * rng.standard_normal(task[source][:6].shape))
        task[bank] = np.concatenate([task[bank], copies])
    out = run(name, settings, task)
    full = reference(name, settings, task)
    expected_order = np.argsort(-full, axis=1, kind="stable")
    assert np.isfinite(out.scores).all()
    assert np.array_equal(out.order, expected_order)


@pytest.mark.parametrize("case_id, name, settings", CASES, ids=CASE_IDS)
def test_anchor_accepts_float16(case_id, name, settings):
    task = square_task()
    for key in ("queries", "gallery", "query_bank", "gallery_bank"):
        task[key] = task[key].astype(np.float16)
    out = run(name, settings, task)
    expected = candidate_view(reference(name, settings, task), out.candidates)
    np.testing.assert_allclose(out.scores, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case_id, name, settings", CASES, ids=CASE_IDS)
def test_anchor_leaves_inputs_unchanged(case_id, name, settings):
    task = square_task()
    arrays = {key: task[key] for key in ("queries", "gallery", "query_bank", "gallery_bank")}
    before = {key: value.copy() for key, value in arrays.items()}
    run(name, settings, task)
    run(name, settings, task, transductive=True)
    for key, value in arrays.items():
        assert np.array_equal(value, before[key]), f"{name} changed its {key}"


@pytest.mark.parametrize("block_size", [1, 4])
@pytest.mark.parametrize("case_id, name, settings", CASES, ids=CASE_IDS)
def test_anchor_scores_do_not_depend_on_block_size(case_id, name, settings, block_size):
    if nia_jax.make_reranker(name, **settings).transductive:
        pytest.skip("transductive methods may depend on the evaluated block")
    task = square_task()
    full = run(name, settings, task)
    blocked = run(name, settings, task, block_size=block_size)
    assert np.array_equal(blocked.candidates, full.candidates)
    np.testing.assert_allclose(blocked.scores, full.scores, rtol=1e-6, atol=1e-6)


def _summary(out):
    summary = metrics.summarise(out.neg_above, out.position, n_boot=0)
    return {key: value for key, value in summary.items() if not key.endswith("_ci95")}


@pytest.mark.parametrize("case_id, name, settings", CASES, ids=CASE_IDS)
def test_anchor_metrics_ignore_sample_order(case_id, name, settings):
    task = caption_tasks(UNEVEN)["i2t"]
    rng = np.random.default_rng(7)
    expected = _summary(run(name, settings, task, with_positives=True))

    query_order = rng.permutation(task["queries"].shape[0])
    shuffled_queries = dict(task, queries=task["queries"][query_order],
                            positives=[task["positives"][i] for i in query_order])

    gallery_order = rng.permutation(task["gallery"].shape[0])
    new_index = np.argsort(gallery_order)  # new_index[old] = new position
    shuffled_gallery = dict(task, gallery=task["gallery"][gallery_order],
                            positives=[new_index[p] for p in task["positives"]])

    shuffled_banks = dict(task, query_bank=task["query_bank"][rng.permutation(task["query_bank"].shape[0])],
                          gallery_bank=task["gallery_bank"][rng.permutation(task["gallery_bank"].shape[0])])

    for label, shuffled in [("queries", shuffled_queries), ("gallery", shuffled_gallery),
                            ("banks", shuffled_banks)]:
        assert _summary(run(name, settings, shuffled, with_positives=True)) == expected, f"shuffled {label}"


def test_nnn_two_by_two_by_hand():
    # q0 = (1, 0), q1 = (0, 1); g0 = (1, 0), g1 = (0.6, 0.8); bank (1, 0), (0, 1), (0.8, 0.6).
    # g0's bank similarities are 1, 0, 0.8: top-2 mean 0.9. g1's are 0.6, 0.8, 0.96: top-2 mean 0.88.
    # With alpha = 0.5: q0 -> (1 - 0.45, 0.6 - 0.44), q1 -> (0 - 0.45, 0.8 - 0.44).
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    gallery = np.array([[1.0, 0.0], [0.6, 0.8]])
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    out = nia_jax.rerank(nia_jax.make_reranker("nnn", k=2, alpha=0.5), queries, gallery,
                         query_bank=bank, top_k=2)
    expected = np.array([[0.55, 0.16], [-0.45, 0.36]])
    np.testing.assert_allclose(candidate_view(expected, out.candidates), out.scores, atol=1e-6)
    assert out.order.tolist() == [[0, 1], [1, 0]]


def test_reciprocal_sets_five_by_five_by_hand():
    # 2 nearest others: N(0) = {1, 2}, N(1) = {0, 3}, N(2) = {0, 3}, N(3) = {1, 2}, N(4) = {2, 3}.
    # R(i) keeps i and each j in N(i) with i in N(j); 4 is in neither N(2) nor N(3).
    sims = np.array([
        [1.0, 0.9, 0.8, 0.1, 0.2],
        [0.9, 1.0, 0.3, 0.7, 0.0],
        [0.8, 0.3, 1.0, 0.6, 0.5],
        [0.1, 0.7, 0.6, 1.0, 0.4],
        [0.2, 0.0, 0.5, 0.4, 1.0],
    ], dtype=np.float32)
    expected = [{0, 1, 2}, {0, 1, 3}, {0, 2, 3}, {1, 2, 3}, {4}]
    sets = np.asarray(reciprocal_sets(sims, 2))
    assert [set(np.flatnonzero(row).tolist()) for row in sets] == expected


def test_kreciprocal_is_cosine_without_shared_neighbours():
    # Two far-apart clusters: the query's sets lie in its cluster and the gallery's in the other,
    # so the Jaccard distance is 1 for every pair and only lam (1 - s) orders the candidates.
    rng = np.random.default_rng(5)
    centre = np.eye(6)
    queries = _unit(centre[0] + 0.05 * rng.standard_normal((4, 6)))
    bank = _unit(centre[0] + 0.05 * rng.standard_normal((9, 6)))
    gallery = _unit(centre[1] + 0.05 * rng.standard_normal((8, 6)))
    out = nia_jax.rerank(nia_jax.make_reranker("kreciprocal", k1=4, k2=2, lam=0.3), queries, gallery,
                         query_bank=bank, top_k=8)
    np.testing.assert_allclose(out.scores, -(0.7 + 0.3 * (1 - out.base)), atol=1e-6)


INVALID_SETTINGS = [
    ("nnn", dict(k=15), "query bank"),
    ("nnn", dict(alpha=-1.0), "alpha"),
    ("csls", dict(k=13), "gallery bank"),
    ("qbnorm_is", dict(beta=0.0), "beta"),
    ("qbnorm_dis", dict(k=11), "gallery"),
    ("dualis", dict(gallery_bank_side="both"), "gallery_bank_side"),
    ("dsl", dict(tau=-0.01), "tau"),
    ("sinkhorn", dict(n_iter=0), "n_iter"),
    ("dbsn", dict(beta=float("nan")), "beta"),
    ("invgc", dict(k=15), "query bank"),
    ("kreciprocal", dict(lam=1.5), "lam"),
    ("kreciprocal", dict(k1=24), "k1"),
    ("aqe", dict(n=11), "gallery"),
    ("dba", dict(alpha=-2.0), "alpha"),
]


@pytest.mark.parametrize("name, settings, needle", INVALID_SETTINGS)
def test_anchor_rejects_invalid_setting(name, settings, needle):
    task = square_task()
    with pytest.raises(ConfigError, match=needle):
        run(name, settings, task)


def test_invgc_both_needs_gallery_bank():
    task = dict(square_task(), gallery_bank=None)
    with pytest.raises(ConfigError, match="gallery bank"):
        run("invgc", dict(pool="both"), task)


@pytest.mark.parametrize("name", ANCHORS)
def test_method_config_matches_schema(name):
    import schema  # experiments/schema.py; conftest puts experiments/ on sys.path

    config = OmegaConf.load(METHOD_CONF_DIR / f"{name}.yaml")
    assert list(config.pop("defaults")) == [f"{name}_schema", "_self_"]
    structured = OmegaConf.structured(schema.method_schema(reranker_class(name)))
    settings = OmegaConf.to_container(OmegaConf.merge(structured, config))
    assert settings.pop("name") == name
    method = nia_jax.make_reranker(name, **settings)
    assert method == reranker_class(name)(), f"conf/method/{name}.yaml differs from the library defaults"
    method.validate()
