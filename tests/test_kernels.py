"""JAX kernels and full NIA scores against the float64 NumPy reference (tests/reference.py).

The JAX side runs in float32, so values are compared with an absolute
tolerance of 1e-5. Shapes are kept small and shared between tests so that
each static NIA configuration is compiled once per session.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from conftest import unit_rows
from scipy.special import softmax

from nia_jax import NIA, ranking, rerank
from nia_jax.kernels.neighbours import local_weights
from nia_jax.kernels.ridge import leave_one_out_coefficients, ridge_coefficients, ridge_factor
from nia_jax.kernels.similarity import masked_top_k

ATOL = 1e-5
WEIGHTINGS = ("uniform", "softmax", "power")
FORMS = ("neighbour", "embedding", "none")
# tau values per weighting. 0.01 is CLIP's logit scale: exp(s / 0.01) overflows float32.
TAUS = {"uniform": (1.0,), "softmax": (0.01, 0.1), "power": (1.0, 3.0)}

D = 16
NQ, NG = 6, 8
NB_DUAL, NB_PRIMAL = 5, 24  # bank rows: nb <= d takes the dual ridge system, nb > d the primal one
TOP_K = 5


@pytest.fixture(scope="module")
def data():
    """Unit-norm float64 queries, gallery and banks shared by the NIA tests."""
    rng = np.random.default_rng(7)
    return {
        "q": unit_rows(rng, NQ, D),
        "g": unit_rows(rng, NG, D),
        "qb_dual": unit_rows(rng, NB_DUAL, D),
        "gb_dual": unit_rows(rng, NB_DUAL + 2, D),
        "qb_primal": unit_rows(rng, NB_PRIMAL, D),
    }


def f32(x):
    return np.asarray(x, dtype=np.float32)


def at_candidates(full_scores, candidates):
    """Pick the reference scores of each query's candidates, (nq, K)."""
    return np.take_along_axis(full_scores, candidates, axis=1)


def reference_pools(pool, transductive, q, g, qb, gb):
    """Return the reference's (pool, query_self, gallery_self) list for a NIA pool setting."""
    if transductive:
        by_name = {
            "query_bank": (q, np.arange(q.shape[0]), None),
            "gallery_bank": (g, None, np.arange(g.shape[0])),
        }
    else:
        by_name = {"query_bank": (qb, None, None), "gallery_bank": (gb, None, None)}
    names = ("query_bank", "gallery_bank") if pool == "both" else (pool,)
    return [by_name[name] for name in names]


def nia_settings(method: NIA) -> dict:
    """Return the reference keyword arguments of a NIA instance."""
    names = ("k", "weighting", "tau", "lam", "w", "beta", "gamma", "form", "eta")
    return {name: getattr(method, name) for name in names}


# --- similarity and top-K -------------------------------------------------------------


def test_masked_top_k_matches_reference(make_unit):
    x, pool = make_unit(4, D), make_unit(9, D)
    self_index = np.array([-1, 2, -1, 8], dtype=np.int32)
    sims, idx = masked_top_k(f32(x), f32(pool), jnp.asarray(self_index), 4)

    for i in range(4):
        ref_sims, ref_idx = ref.nearest_rows(x[i], pool, 4, self_index[i])
        np.testing.assert_array_equal(np.asarray(idx[i]), ref_idx)
        np.testing.assert_allclose(np.asarray(sims[i]), ref_sims, atol=ATOL, rtol=0)


def test_masked_top_k_ties_lower_index():
    # Integer entries make every dot product exact, so duplicated rows tie exactly.
    pool = np.array([
        [1, 0, 0, 0],  # 0
        [0, 1, 0, 0],  # 1
        [1, 0, 0, 0],  # 2, duplicate of 0
        [1, 1, 0, 0],  # 3
        [0, 1, 0, 0],  # 4, duplicate of 1
        [1, 0, 0, 0],  # 5, duplicate of 0
    ], dtype=np.float32)
    x = np.array([[2, 1, 0, 0]], dtype=np.float32)  # sims: 2, 1, 2, 3, 1, 2

    sims, idx = masked_top_k(x, pool, jnp.array([-1], dtype=jnp.int32), 4)

    assert np.asarray(idx[0]).tolist() == [3, 0, 2, 5]
    assert np.asarray(sims[0]).tolist() == [3.0, 2.0, 2.0, 2.0]


def test_masked_top_k_skips_only_self():
    pool = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]],
                    dtype=np.float32)
    # x is pool row 0. Its duplicates (rows 2 and 5) remain eligible neighbours.
    x = pool[:1]

    sims, idx = masked_top_k(x, pool, jnp.array([0], dtype=jnp.int32), 4)

    assert np.asarray(idx[0]).tolist() == [2, 3, 5, 1]
    assert np.asarray(sims[0]).tolist() == [1.0, 1.0, 1.0, 0.0]


# --- local weights -------------------------------------------------------------------


def weights_of(sims, weighting, tau):
    """Run the per-sample kernel over rows, as fusion.encode does."""
    run = jax.vmap(local_weights, in_axes=(0, None, None))
    return np.asarray(run(jnp.asarray(sims, dtype=jnp.float32), weighting, tau))


SIMS = np.array([[0.9, 0.8, 0.5, 0.1], [0.6, 0.55, 0.2, -0.3]])


def test_local_weights_uniform():
    np.testing.assert_array_equal(weights_of(SIMS, "uniform", 1.0), np.full((2, 4), 0.25, dtype=np.float32))


@pytest.mark.parametrize("tau", [0.5, 0.1, 0.05])
def test_local_weights_softmax(tau):
    np.testing.assert_allclose(weights_of(SIMS, "softmax", tau), softmax(SIMS / tau, axis=1), atol=ATOL, rtol=0)


def test_local_weights_softmax_clip_scale():
    sims = np.array([[0.99, 0.98, 0.95, 0.3]])
    # The naive float32 exp(s / tau) overflows at this scale, but the kernel must stay finite.
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(np.float32(0.99) / np.float32(0.01)))

    got = weights_of(sims, "softmax", 0.01)

    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, softmax(sims / 0.01, axis=1), atol=ATOL, rtol=0)


@pytest.mark.parametrize("tau", [1.0, 3.0, 200.0])
def test_local_weights_power(tau):
    base = np.maximum(SIMS, 0.0)
    # Dividing by the row maximum keeps the float64 reference in range at tau = 200.
    powered = (base / base.max(axis=1, keepdims=True)) ** tau
    expected = powered / powered.sum(axis=1, keepdims=True)

    got = weights_of(SIMS, "power", tau)

    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_local_weights_power_nonpositive():
    got = weights_of(np.array([[0.0, -0.1, -0.5]]), "power", 2.0)

    np.testing.assert_allclose(got, np.full((1, 3), 1 / 3), atol=ATOL, rtol=0)


# --- ridge coding --------------------------------------------------------------------


def ridge_lstsq(x, pool, lam):
    """Solve min ||x - P^T a||^2 + lam ||a||^2 as least squares on the augmented system."""
    nb = pool.shape[0]
    system = np.vstack([pool.T, np.sqrt(lam) * np.eye(nb)])
    target = np.concatenate([x, np.zeros(nb)])
    return np.linalg.lstsq(system, target, rcond=None)[0]


@pytest.mark.parametrize(("nb", "d"), [(6, 16), (20, 8)], ids=["dual", "primal"])
def test_ridge_coefficients_match_lstsq(make_unit, nb, d):
    pool, xs, lam = make_unit(nb, d), make_unit(3, d), 0.5
    factor = ridge_factor(f32(pool), lam)

    for x in np.vstack([xs, pool[:2]]):
        got = np.asarray(ridge_coefficients(factor, f32(x)))
        np.testing.assert_allclose(got, ridge_lstsq(x, pool, lam), atol=ATOL, rtol=0)


@pytest.mark.parametrize(("nb", "d"), [(6, 16), (20, 8)], ids=["dual", "primal"])
def test_ridge_factor_matrices(make_unit, nb, d):
    pool, lam = make_unit(nb, d), 0.5
    coding = np.linalg.solve(pool @ pool.T + lam * np.eye(nb), pool)

    factor = ridge_factor(f32(pool), lam)

    np.testing.assert_allclose(np.asarray(factor.coding), coding, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(factor.gram), coding.T @ coding, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(factor.reconstruction), pool.T @ coding, atol=ATOL, rtol=0)


def test_ridge_dual_primal_agree(make_unit):
    # Zero columns change neither P P^T nor P x, so padding a 12 x 8 pool (primal, nb > d)
    # to 12 x 16 (dual, nb <= d) must give the same coefficients.
    pool, lam = make_unit(12, 8), 0.3
    padded = np.hstack([pool, np.zeros((12, 8))])
    primal = ridge_factor(f32(pool), lam)
    dual = ridge_factor(f32(padded), lam)

    np.testing.assert_allclose(np.asarray(dual.coding[:, :8]), np.asarray(primal.coding), atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(dual.coding[:, 8:]), 0.0, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(dual.gram[:8, :8]), np.asarray(primal.gram), atol=ATOL, rtol=0)


@pytest.mark.parametrize(("nb", "d"), [(7, 16), (20, 8)], ids=["dual", "primal"])
def test_leave_one_out_matches_removal(make_unit, nb, d):
    pool, lam = make_unit(nb, d), 0.5
    factor = ridge_factor(f32(pool), lam)
    loo = jax.vmap(leave_one_out_coefficients, in_axes=(None, 0, 0))
    got = np.asarray(loo(factor, f32(pool), jnp.arange(nb)))

    for i in range(nb):
        keep = np.arange(nb) != i
        expected = np.zeros(nb)
        expected[keep] = ridge_lstsq(pool[i], pool[keep], lam)
        np.testing.assert_allclose(got[i], expected, atol=ATOL, rtol=0, err_msg=f"row {i}")


def test_leave_one_out_nonmember_is_plain(make_unit):
    pool, x = make_unit(7, D), make_unit(1, D)[0]
    factor = ridge_factor(f32(pool), 0.5)

    got = leave_one_out_coefficients(factor, f32(x), jnp.int32(-1))

    np.testing.assert_array_equal(np.asarray(got), np.asarray(ridge_coefficients(factor, f32(x))))


# --- full NIA scores through rerank ----------------------------------------------------


def test_rerank_candidates_cosine_top_k(data):
    method = NIA(k=3, weighting="softmax")
    out = rerank(method, f32(data["q"]), f32(data["g"]), query_bank=f32(data["qb_dual"]), top_k=TOP_K)
    cosine = data["q"] @ data["g"].T
    expected = np.argsort(-cosine, axis=1, kind="stable")[:, :TOP_K]
    order_in_top = np.argsort(-out.scores, axis=1, kind="stable")

    np.testing.assert_array_equal(out.candidates, expected)
    np.testing.assert_allclose(out.base, at_candidates(cosine, expected), atol=ATOL, rtol=0)
    np.testing.assert_array_equal(out.order, np.take_along_axis(out.candidates, order_in_top, axis=1))


@pytest.mark.parametrize("ridge_form", ["dual", "primal"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("form", FORMS)
def test_nia_matches_reference(data, form, weighting, ridge_form):
    bank = data[f"qb_{ridge_form}"]
    for tau in TAUS[weighting]:
        for w in (0.0, 0.5, 1.0):
            method = NIA(k=3, weighting=weighting, form=form, tau=tau, lam=0.5, w=w, beta=0.7, gamma=0.6)
            out = rerank(method, f32(data["q"]), f32(data["g"]), query_bank=f32(bank), top_k=TOP_K)
            expected = ref.nia_scores(data["q"], data["g"], bank, **nia_settings(method))

            assert np.isfinite(out.scores).all(), f"tau={tau} w={w}"
            np.testing.assert_allclose(out.scores, at_candidates(expected, out.candidates), atol=ATOL, rtol=0,
                                       err_msg=f"tau={tau} w={w}")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("pool", ["query_bank", "gallery_bank", "both"])
@pytest.mark.parametrize("transductive", [False, True], ids=["inductive", "transductive"])
def test_nia_pools_match_reference(data, transductive, pool, form):
    q, g, qb, gb = data["q"], data["g"], data["qb_dual"], data["gb_dual"]
    method = NIA(k=3, weighting="softmax", pool=pool, form=form, tau=0.1, lam=0.5, w=0.5, beta=-0.4, gamma=0.6)
    out = rerank(method, f32(q), f32(g), query_bank=f32(qb), gallery_bank=f32(gb), top_k=TOP_K,
                 transductive=transductive)
    pools = reference_pools(pool, transductive, q, g, qb, gb)
    expected = ref.nia_scores_pools(q, g, pools, **nia_settings(method))

    np.testing.assert_allclose(out.scores, at_candidates(expected, out.candidates), atol=ATOL, rtol=0)


def test_nia_uneven_blocks(data):
    q, g = data["q"], data["g"]
    method = NIA(k=3, weighting="power", pool="both", tau=2.0, lam=0.5, w=0.3, gamma=0.6)
    # block_size 4 splits the 6 queries into 4 + 2, so the last block is padded.
    out = rerank(method, f32(q), f32(g), top_k=TOP_K, block_size=4, transductive=True)
    pools = reference_pools("both", True, q, g, None, None)
    expected = ref.nia_scores_pools(q, g, pools, **nia_settings(method))

    np.testing.assert_allclose(out.scores, at_candidates(expected, out.candidates), atol=ATOL, rtol=0)


def test_nia_top_k_whole_gallery(data):
    q, g, qb = data["q"], data["g"], data["qb_dual"]
    method = NIA(k=3, weighting="softmax", tau=0.1, lam=0.5, w=0.5, gamma=0.6)
    out = rerank(method, f32(q), f32(g), query_bank=f32(qb), top_k=NG)
    expected = ref.nia_scores(q, g, qb, **nia_settings(method))

    np.testing.assert_array_equal(np.sort(out.candidates, axis=1), np.tile(np.arange(NG), (NQ, 1)))
    np.testing.assert_allclose(out.scores, at_candidates(expected, out.candidates), atol=ATOL, rtol=0)


@pytest.mark.parametrize(("dtype", "atol"), [(np.float16, ATOL), (jnp.bfloat16, 1e-4)], ids=["float16", "bfloat16"])
def test_nia_low_precision_input(data, dtype, atol):
    # The reference receives the same rounded values as the library.
    q, g, qb = (np.asarray(data[name], dtype=dtype) for name in ("q", "g", "qb_dual"))
    method = NIA(k=3, weighting="softmax", tau=0.1, lam=0.5, w=0.5, gamma=0.6)
    out = rerank(method, q, g, query_bank=qb, top_k=TOP_K)
    expected = ref.nia_scores(*(a.astype(np.float64) for a in (q, g, qb)), **nia_settings(method))

    np.testing.assert_allclose(out.scores, at_candidates(expected, out.candidates), atol=atol, rtol=0)


# --- blocking and compilation -------------------------------------------------------------

BLOCK_NQ = 10
BLOCK_METHODS = {
    "neighbour-both-transductive": (NIA(k=3, pool="both", form="neighbour"), True),
    "embedding-gallery-inductive": (NIA(k=3, pool="gallery_bank", form="embedding", beta=0.5), False),
}


@pytest.fixture(scope="module")
def blocked_case():
    """Inputs with several positives per query, and each method's result with one block."""
    rng = np.random.default_rng(11)
    inputs = {
        "queries": f32(unit_rows(rng, BLOCK_NQ, D)),
        "gallery": f32(unit_rows(rng, 12, D)),
        "query_bank": f32(unit_rows(rng, 9, D)),
        "gallery_bank": f32(unit_rows(rng, 9, D)),
        "positives": [[i % 12, (i + 5) % 12] for i in range(BLOCK_NQ)],
        "top_k": 5,
    }
    whole = {
        name: rerank(method, **inputs, block_size=BLOCK_NQ, transductive=transductive)
        for name, (method, transductive) in BLOCK_METHODS.items()
    }
    return inputs, whole


@pytest.mark.parametrize("name", BLOCK_METHODS)
@pytest.mark.parametrize("block_size", [1, 3, 7])
def test_blocked_equals_unblocked(blocked_case, block_size, name):
    inputs, whole = blocked_case
    method, transductive = BLOCK_METHODS[name]
    out = rerank(method, **inputs, block_size=block_size, transductive=transductive)

    for field in ("candidates", "scores", "base", "order", "neg_above", "position"):
        assert np.array_equal(getattr(out, field), getattr(whole[name], field)), field


def test_traced_sweep_compiles_once(make_unit):
    # Shapes used by no other test, so the first call must compile.
    q, g, qb = (f32(make_unit(n, D)) for n in (5, 9, 7))
    # The embedding form reads every traced value (the neighbour form ignores beta).
    method = NIA(k=2, weighting="power", form="embedding", tau=2.0, lam=0.7, w=0.4, beta=0.1, gamma=0.3)

    def counts():
        return ranking._score_block._cache_size(), ranking._prepare._cache_size()

    def run(m):
        return rerank(m, q, g, query_bank=qb, top_k=4, block_size=3).scores

    start = counts()
    run(method)
    after_first = counts()
    assert after_first[0] == start[0] + 1
    assert after_first[1] == start[1] + 1

    sweep = {
        "tau": (0.5, 1.0, 1.5, 3.0, 4.0),
        "lam": (0.01, 0.1, 1.0, 10.0, 100.0),
        "w": (0.0, 0.25, 0.5, 0.75, 1.0),
        "beta": (-1.0, -0.5, 0.0, 0.5, 1.0),
        "gamma": (0.0, 0.25, 0.5, 0.75, 1.0),
        "eta": (0.0, 0.1, 0.5, 1.0, 2.0),
    }
    # A traced hyperparameter added to NIA needs an entry here.
    assert set(sweep) == set(NIA.traced)
    for name, values in sweep.items():
        scores = [run(dataclasses.replace(method, **{name: value})) for value in values]
        # A value frozen into the compiled code would leave the scores unchanged.
        assert not np.allclose(scores[0], scores[-1]), name
    after_sweep = counts()
    assert after_sweep[0] == after_first[0]
    assert after_sweep[1] == after_first[1]

    run(dataclasses.replace(method, k=3))
    after_k = counts()
    assert after_k[0] == after_sweep[0] + 1
    assert after_k[1] == after_sweep[1] + 1
