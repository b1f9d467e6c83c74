"""Retrieval metrics on hand-made rankings whose values are derived by hand.

Embeddings are built from chosen cosines, so every ranking below can be read
off the cosine tables in the comments. Metrics are percentages.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import unit_rows

from nia_jax import make_reranker, metrics, rerank
from nia_jax.rerankers import base as rerankers_base
from nia_jax.rerankers.base import Reranker


def cosine_rows(pairs):
    """Return unit vectors (a, b, sqrt(1 - a^2 - b^2)): cosine a to e0 and b to e1."""
    pairs = np.asarray(pairs, dtype=np.float64)
    rest = np.sqrt(1.0 - (pairs**2).sum(axis=1, keepdims=True))
    return np.hstack([pairs, rest])


def summary_of(queries, gallery, positives, top_k, method=None):
    method = method or make_reranker("cosine")
    out = rerank(method, queries, gallery, positives=positives, top_k=top_k)
    return metrics.summarise(out.neg_above, out.position, n_boot=200), out


# --- two images with five captions each ----------------------------------------------------
#
# Caption j is (cosine to image 0, cosine to image 1). Captions 0-4 describe image 0,
# captions 5-9 image 1. Captions 4, 8 and 9 are closer to the other image.
CAPTION_COSINES = [
    (0.9, 0.1), (0.8, 0.3), (0.7, 0.2), (0.5, 0.4), (0.2, 0.97),
    (0.15, 0.95), (0.1, 0.85), (0.4, 0.75), (0.6, 0.5), (0.65, 0.55),
]
IMAGES = np.eye(3)[:2]
CAPTIONS = cosine_rows(CAPTION_COSINES)
CAPTION_IMAGE = np.array([0] * 5 + [1] * 5)


@pytest.fixture(scope="module")
def t2i_summary():
    # Captions query the 2 images: captions 4, 8 and 9 rank their image second.
    summary, _ = summary_of(CAPTIONS, IMAGES, CAPTION_IMAGE, top_k=2)
    return summary


@pytest.fixture(scope="module")
def i2t_summary():
    # Image 0 ranks the captions 0 1 2 9 8 3 7 4 5 6: positives at positions 0, 1, 2, 5, 7.
    # Image 1 ranks them 4 5 6 7 9 8 3 1 2 0: positives at positions 1, 2, 3, 4, 5.
    positives = [list(range(5)), list(range(5, 10))]
    summary, _ = summary_of(IMAGES, CAPTIONS, positives, top_k=10)
    return summary


def test_t2i_hand_recall(t2i_summary):
    assert t2i_summary["R@1"] == pytest.approx(70.0)
    assert t2i_summary["R@5"] == pytest.approx(100.0)
    assert t2i_summary["R@10"] == pytest.approx(100.0)


def test_t2i_hand_ranks(t2i_summary):
    assert t2i_summary["medr"] == 1.0
    assert t2i_summary["meanr"] == pytest.approx(1.3)


def test_t2i_hand_precision(t2i_summary):
    # One positive per caption: AP@R and R-Precision are both the R@1 hit.
    assert t2i_summary["mAP@R"] == pytest.approx(70.0)
    assert t2i_summary["R-Precision"] == pytest.approx(70.0)


def test_i2t_hand_recall(i2t_summary):
    # Image 0's best positive is first. Image 1 has caption 4 (a negative) above all its positives.
    assert i2t_summary["R@1"] == pytest.approx(50.0)
    assert i2t_summary["R@5"] == pytest.approx(100.0)


def test_i2t_hand_ranks(i2t_summary):
    assert i2t_summary["medr"] == 1.5


def test_i2t_hand_precision(i2t_summary):
    # Image 0: (1/1 + 2/2 + 3/3) / 5 = 60. Image 1: (1/2 + 2/3 + 3/4 + 4/5) / 5 = 54.333.
    assert i2t_summary["mAP@R"] == pytest.approx((60.0 + 163.0 / 3.0) / 2.0, abs=1e-3)
    # Image 0 has 3 positives in its top 5, image 1 has 4.
    assert i2t_summary["R-Precision"] == pytest.approx(70.0)


def test_i2t_hand_positions():
    positives = [list(range(5)), list(range(5, 10))]
    _, out = summary_of(IMAGES, CAPTIONS, positives, top_k=10)

    # Positions follow the order of the positives, so caption 8 (position 5) precedes caption 9.
    assert out.position.tolist() == [[0, 1, 2, 5, 7], [1, 2, 3, 5, 4]]
    assert out.neg_above.tolist() == [[0, 0, 0, 2, 3], [1, 1, 1, 1, 1]]


# --- ties, candidates and re-ordering ------------------------------------------------------


def test_constant_scores_recall_zero():
    # Every query and gallery item is the same vector, so every score ties.
    queries, gallery = np.tile(np.eye(4)[:1], (3, 1)), np.tile(np.eye(4)[:1], (4, 1))
    summary, _ = summary_of(queries, gallery, [0, 1, 2], top_k=4)

    assert summary["R@1"] == 0.0
    # Ties count against the positive: all 3 negatives are at or above it.
    assert summary["medr"] == 4.0
    assert summary["mAP@R"] == 0.0


def test_positive_outside_top_k():
    # Cosines to the query by gallery index: 0.5, 0.9, 0.6 (the positive), 0.8, 0.7.
    # With K = 2 the candidates are items 1 and 3, and item 4 (0.7) still ranks above the positive.
    query = np.eye(3)[:1]
    gallery = cosine_rows([(0.5, 0.0), (0.9, 0.0), (0.6, 0.0), (0.8, 0.0), (0.7, 0.0)])
    summary, out = summary_of(query, gallery, [2], top_k=2)

    assert out.candidates.tolist() == [[1, 3]]
    assert out.neg_above.tolist() == [[3]]
    assert out.position.tolist() == [[3]]
    assert summary["medr"] == 4.0
    assert summary["R@1"] == 0.0
    assert summary["R@5"] == 100.0


@dataclasses.dataclass(frozen=True)
class ReverseCosine(Reranker):
    """Test-only re-ranker that reverses the cosine order of the candidates."""

    name = "test_reverse_cosine"

    @staticmethod
    def prepare(static, hp, pools):
        return ()

    @staticmethod
    def score(static, hp, state, pools, queries, query_self, candidates, base):
        return -base


@pytest.fixture
def reverse_cosine():
    """Register ReverseCosine for one test, then remove it from the registry."""
    rerankers_base.register(ReverseCosine)
    yield make_reranker(ReverseCosine.name)
    del rerankers_base._REGISTRY[ReverseCosine.name]


# Cosines to the query by gallery index: 0.9, 0.8 (the positive), 0.7, 0.1.
REORDER_GALLERY = cosine_rows([(0.9, 0.0), (0.8, 0.0), (0.7, 0.0), (0.1, 0.0)])


def test_reorder_top2_makes_hit(reverse_cosine):
    query = np.eye(3)[:1]
    cosine, _ = summary_of(query, REORDER_GALLERY, [1], top_k=2)
    reversed_, out = summary_of(query, REORDER_GALLERY, [1], top_k=2, method=reverse_cosine)

    assert cosine["R@1"] == 0.0
    assert out.order.tolist() == [[1, 0]]
    assert reversed_["R@1"] == 100.0


def test_reorder_top3_keeps_miss(reverse_cosine):
    # Reversing 0.9, 0.8, 0.7 puts item 2 first and leaves the positive second.
    query = np.eye(3)[:1]
    reversed_, out = summary_of(query, REORDER_GALLERY, [1], top_k=3, method=reverse_cosine)

    assert out.order.tolist() == [[2, 1, 0]]
    assert out.neg_above.tolist() == [[1]]
    assert reversed_["R@1"] == 0.0
    assert reversed_["medr"] == 2.0


def test_candidates_stay_above_rest(reverse_cosine):
    # The re-ranker gives its candidates low scores, but they still precede every other item.
    query = np.eye(3)[:1]
    gallery = cosine_rows([(0.5, 0.0), (0.9, 0.0), (0.6, 0.0), (0.8, 0.0), (0.7, 0.0)])
    _, out = summary_of(query, gallery, [2], top_k=2, method=reverse_cosine)

    assert out.neg_above.tolist() == [[3]]
    assert out.position.tolist() == [[3]]


# --- invariance and bootstrap ---------------------------------------------------------------


@pytest.fixture(scope="module")
def permutation_case():
    rng = np.random.default_rng(5)
    queries, gallery = unit_rows(rng, 12, 8), unit_rows(rng, 15, 8)
    positives = [sorted(rng.choice(15, size=1 + i % 3, replace=False).tolist()) for i in range(12)]
    return queries, gallery, positives


def point_metrics(summary):
    """Drop the bootstrap intervals, which resample queries by position."""
    return {key: value for key, value in summary.items() if not key.endswith("_ci95")}


@pytest.mark.parametrize("permute", ["queries", "gallery", "both"])
def test_metrics_permutation_invariant(permutation_case, permute):
    queries, gallery, positives = permutation_case
    rng = np.random.default_rng(9)
    query_order = rng.permutation(12) if permute in ("queries", "both") else np.arange(12)
    gallery_order = rng.permutation(15) if permute in ("gallery", "both") else np.arange(15)
    # Gallery item j moves to the position where gallery_order equals j.
    new_index = np.argsort(gallery_order)
    relabelled = [[int(new_index[j]) for j in positives[i]] for i in query_order]

    original, _ = summary_of(queries, gallery, positives, top_k=5)
    permuted, _ = summary_of(queries[query_order], gallery[gallery_order], relabelled, top_k=5)

    assert point_metrics(permuted) == point_metrics(original)


def test_per_query_follows_permutation(permutation_case):
    queries, gallery, positives = permutation_case
    order = np.random.default_rng(3).permutation(12)
    original = rerank(make_reranker("cosine"), queries, gallery, positives=positives, top_k=5)
    permuted = rerank(make_reranker("cosine"), queries[order], gallery, positives=[positives[i] for i in order],
                      top_k=5)

    before = metrics.per_query(original.neg_above, original.position)
    after = metrics.per_query(permuted.neg_above, permuted.position)
    for name, values in before.items():
        np.testing.assert_array_equal(after[name], values[order], err_msg=name)


def test_bootstrap_ci_constant():
    assert metrics.bootstrap_ci(np.full(40, 37.5)) == (37.5, 37.5)


def test_bootstrap_ci_brackets_mean():
    values = np.array([0.0, 100.0] * 50)
    low, high = metrics.bootstrap_ci(values, n_boot=500)

    assert low < 50.0
    assert high > 50.0
    assert low >= 35.0
    assert high <= 65.0


def test_jnp_input_accepted():
    # rerank takes JAX arrays as well as NumPy ones and returns NumPy arrays.
    out = rerank(make_reranker("cosine"), jnp.asarray(CAPTIONS), jnp.asarray(IMAGES), positives=CAPTION_IMAGE,
                 top_k=2)

    assert isinstance(out.neg_above, np.ndarray)
    assert (out.neg_above[:, 0] == 0).sum() == 7
