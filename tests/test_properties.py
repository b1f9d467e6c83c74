"""Property tests (hypothesis) of the re-rankers, the top-K search and the re-ranking engine.

For random small tasks, block sizes and hyperparameters in their valid ranges:

* every re-ranker's scores equal its float64 NumPy reference
  (tests/reference.py for NIA, tests/reference_anchors.py for the
  baselines), its candidates are the cosine top-K, and its order sorts the
  reference scores;
* permuting the gallery, the queries or the banks permutes the results with
  them;
* the query and gallery block sizes change no bit of the search's output
  and no candidate, order or position of the re-ranking (its scores agree to
  a few float32 ulps, see ``check_block_sizes``);
* scores stay finite on inputs with exact duplicate rows and at extreme
  hyperparameters.

Each new shape or static setting compiles the kernels again, which took 0.1
to 1 s per compilation on a two-core CPU. So the task shapes come from the
few tuples in ``SHAPES``, and every test runs a small, derandomised set of
examples: each run tests the same ones.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from conftest import unit_rows
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference_anchors import REFERENCES
from reference_anchors import normalise as ref_normalise

from nia_jax import NIA, ConfigError, Cosine, Reranker, available, make_reranker, rerank
from nia_jax._validation import as_embeddings
from nia_jax.search import search

#: Shared hypothesis settings. Each test sets its own ``max_examples`` with ``settings(PROPERTY, ...)``.
PROPERTY = settings(max_examples=10, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# float32 kernels against float64 references. The anchors' log-softmax scores reach
# about 100 in magnitude, hence their relative tolerance (as in test_anchors.py).
NIA_ATOL = 1e-4
ANCHOR_RTOL, ANCHOR_ATOL = 1e-4, 2e-4
# Permuted inputs change only the order of sums, so results agree more closely.
PERMUTED_RTOL, PERMUTED_ATOL = 1e-5, 1e-5

# Similarities closer than this count as near-ties. The float32 kernels compute a
# similarity within about 1e-7 of the float64 reference, and k-reciprocal treats
# similarities within 1e-6 as tied, so only larger gaps decide the same neighbours.
TIE_GAP = 3e-6


class Shape(NamedTuple):
    """Rows of the queries, gallery, query bank and gallery bank, and the dimension."""

    nq: int
    ng: int
    nbq: int
    nbg: int
    d: int


SHAPES = (
    Shape(nq=1, ng=2, nbq=2, nbg=2, d=2),  # the smallest valid task
    Shape(nq=4, ng=7, nbq=12, nbg=5, d=3),  # banks larger than d: primal ridge system
    Shape(nq=7, ng=11, nbq=6, nbg=20, d=8),  # query bank within d: dual ridge system
    Shape(nq=12, ng=15, nbq=20, nbg=3, d=5),  # the largest task, with a gallery bank of 3 rows
)


class Banks(NamedTuple):
    """Rows of the banks that a re-ranker uses, which are the queries and the gallery when transductive."""

    nq: int
    ng: int
    query_bank: int
    gallery_bank: int
    transductive: bool


def banks_of(shape: Shape, transductive: bool) -> Banks:
    if transductive:
        return Banks(shape.nq, shape.ng, shape.nq, shape.ng, True)
    return Banks(shape.nq, shape.ng, shape.nbq, shape.nbg, False)


def make_task(shape: Shape, seed: int, *, duplicates: bool = False) -> dict:
    """Draw unit-norm float32 queries, gallery and banks of ``shape`` from ``seed``.

    With ``duplicates``, some rows are exact copies: gallery item 1 of item 0,
    the last query of query 0, and in each bank one row of a gallery item and
    one of query 0.
    """
    rng = np.random.default_rng(seed)
    task = {
        name: unit_rows(rng, rows, shape.d).astype(np.float32)
        for name, rows in (("queries", shape.nq), ("gallery", shape.ng), ("query_bank", shape.nbq),
                           ("gallery_bank", shape.nbg))
    }
    if duplicates:
        task["gallery"][1] = task["gallery"][0]
        task["queries"][-1] = task["queries"][0]
        task["query_bank"][0] = task["gallery"][0]
        task["query_bank"][-1] = task["queries"][0]
        task["gallery_bank"][0] = task["gallery"][-1]
        task["gallery_bank"][-1] = task["queries"][0]
    return task


def well_separated(task: dict) -> bool:
    """Return True when no two similarities in a row of the task's similarity matrix lie within ``TIE_GAP``.

    The matrix compares every row of the task (queries, gallery and banks)
    with every other. Every discrete choice a re-ranker makes (nearest
    neighbours, top-K, arg max, k-reciprocal membership) compares
    similarities within one of its rows.
    """
    rows = np.concatenate([task[name] for name in ("queries", "gallery", "query_bank", "gallery_bank")])
    rows = rows.astype(np.float64)
    sims = np.sort(rows @ rows.T, axis=1)
    return bool(np.all(np.diff(sims, axis=1) > TIE_GAP))


def run(method, task: dict, *, transductive: bool, top_k: int, **options):
    return rerank(method, task["queries"], task["gallery"], query_bank=task["query_bank"],
                  gallery_bank=task["gallery_bank"], top_k=top_k, transductive=transductive, **options)


def at(full: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return np.take_along_axis(full, columns, axis=1)


# --- hyperparameter strategies ----------------------------------------------------------


def log_uniform(low: float, high: float):
    """Floats whose base-10 logarithm is uniform in [log10 low, log10 high]."""
    return st.floats(np.log10(low), np.log10(high)).map(lambda exponent: float(10.0 ** exponent))


def with_extremes(strategy, *extremes: float):
    """``strategy``, or one of the ``extremes`` exactly."""
    return st.one_of(st.sampled_from(extremes), strategy)


def temperatures(wide: bool):
    """Positive inverse temperatures (beta) of the softmax forms, with the extremes when ``wide``."""
    return with_extremes(log_uniform(1e-6, 1e4), 1e-6, 1e4) if wide else log_uniform(0.1, 100.0)


def pool_names(pool: str) -> tuple[str, ...]:
    """Return the banks a NIA ``pool`` setting codes over."""
    return ("query_bank", "gallery_bank") if pool == "both" else (pool,)


@st.composite
def nia_methods(draw, banks: Banks, *, wide: bool = False) -> NIA:
    """A valid NIA over ``banks``, with every form, weighting and pool, and leave-one-out on or off.

    ``wide`` draws lam, tau, beta and eta from their extremes too (lam from 1e-6
    to 1e6). Otherwise lam >= 0.1, the smallest lam of conf/grid/nia*.yaml: at
    smaller lam the leave-one-out codes lose accuracy in float32 (see
    ``test_nia_leave_one_out_tiny_lam``).
    """
    rows = {"query_bank": banks.query_bank, "gallery_bank": banks.gallery_bank}
    # NIA.validate requires k <= rows - 1 in every pool, so a pool needs two rows.
    pools = [pool for pool in ("query_bank", "gallery_bank", "both")
             if all(rows[name] >= 2 for name in pool_names(pool))]
    pool = draw(st.sampled_from(pools))
    usable = min(rows[name] for name in pool_names(pool))
    weighting = draw(st.sampled_from(("uniform", "softmax", "power")))
    if weighting == "softmax":
        tau = draw(with_extremes(log_uniform(1e-6, 1e4), 1e-6) if wide else log_uniform(0.01, 10.0))
    elif weighting == "power":
        tau = draw(with_extremes(log_uniform(1e-6, 1e3), 1e-6, 1e3) if wide else log_uniform(0.25, 8.0))
    else:
        tau = 1.0  # unused by uniform weights
    return NIA(
        k=draw(st.integers(1, usable - 1)),
        weighting=weighting,
        pool=pool,
        form=draw(st.sampled_from(("neighbour", "embedding", "none"))),
        leave_one_out=draw(st.booleans()),
        tau=tau,
        lam=draw(with_extremes(log_uniform(1e-6, 1e6), 1e-6, 1e6) if wide else log_uniform(0.1, 1e4)),
        w=draw(st.floats(0.0, 1.0)),
        beta=draw(st.floats(-1e3, 1e3) if wide else st.floats(-2.0, 2.0)),
        gamma=draw(st.floats(0.0, 1.0)),
        eta=draw(st.floats(0.0, 1e3) if wide else st.floats(0.0, 2.0)),
    )


ANCHORS = ("nnn", "csls", "qbnorm_is", "qbnorm_dis", "dualis", "dsl", "sinkhorn", "dbsn", "invgc",
           "kreciprocal", "aqe", "dba")


@st.composite
def anchor_settings(draw, name: str, banks: Banks, *, wide: bool = False) -> dict:
    """Valid settings of the baseline ``name`` over ``banks``, with extreme values when ``wide``."""
    beta = temperatures(wide)
    if name == "nnn":
        return dict(k=draw(st.integers(1, banks.query_bank)), alpha=draw(st.floats(0.0, 1e3 if wide else 2.0)))
    if name == "csls":
        return dict(k=draw(st.integers(1, min(banks.query_bank, banks.gallery_bank))))
    if name == "qbnorm_is":
        return dict(beta=draw(beta))
    if name == "qbnorm_dis":
        return dict(k=draw(st.integers(1, banks.ng)), beta=draw(beta))
    if name == "dualis":
        return dict(gallery_bank_side=draw(st.sampled_from(("gallery", "query"))), beta1=draw(beta),
                    beta2=draw(beta))
    if name == "dsl":
        return dict(tau=draw(with_extremes(log_uniform(1e-6, 1e4), 1e-6) if wide else log_uniform(0.01, 10.0)))
    if name in ("sinkhorn", "dbsn"):
        return dict(n_iter=draw(st.integers(1, 20)), beta=draw(beta))
    if name == "invgc":
        # Below |r_q| + |r_g| = 0.9 a moved item keeps a norm of at least 0.1, so its
        # normalisation does not amplify float32 error past the tolerance.
        step = st.floats(-1e3, 1e3) if wide else st.floats(-0.45, 0.45)
        # Transductive runs leave a gallery item's own row out of its gallery-bank neighbours.
        gallery_rows = banks.gallery_bank - int(banks.transductive)
        pool = draw(st.sampled_from(("query_bank", "both") if gallery_rows >= 1 else ("query_bank",)))
        high = banks.query_bank if pool == "query_bank" else min(banks.query_bank, gallery_rows)
        return dict(k=draw(st.integers(1, high)), pool=pool, r_q=draw(step), r_g=draw(step))
    if name == "kreciprocal":
        others = banks.query_bank + banks.ng - 1
        return dict(k1=draw(st.integers(1, others)), k2=draw(st.integers(1, others + 1)),
                    lam=draw(st.floats(0.0, 1.0)))
    if name in ("aqe", "dba"):
        # max(s, 0)^alpha jumps at alpha = 0 (0^0 = 1), and the kernels take alpha as
        # float32, which rounds an alpha below about 1e-45 to 0. So positive exponents start at 1e-6.
        alpha = st.one_of(st.just(0.0), log_uniform(1e-6, 100.0 if wide else 5.0))
        return dict(n=draw(st.integers(1, banks.ng)), alpha=draw(alpha))
    raise ValueError(f"no settings strategy for re-ranker {name!r}")


class Case(NamedTuple):
    """One drawn example: the task's shape and seed, the protocol, K and the re-ranker."""

    shape: Shape
    seed: int
    transductive: bool
    top_k: int
    method: Reranker


seeds = st.integers(0, 2**32 - 1)


@st.composite
def cases(draw, name: str, *, wide: bool = False) -> Case:
    """A task shape, seed, protocol, K and valid re-ranker ``name`` ("nia", a baseline or "cosine")."""
    shape = draw(st.sampled_from(SHAPES))
    transductive = draw(st.booleans())
    banks = banks_of(shape, transductive)
    if name == "nia":
        method = draw(nia_methods(banks, wide=wide))
    elif name == "cosine":
        method = Cosine()
    else:
        method = make_reranker(name, **draw(anchor_settings(name, banks, wide=wide)))
    return Case(shape, draw(seeds), transductive, draw(st.integers(1, shape.ng)), method)


# --- references --------------------------------------------------------------------------


def nia_reference(method: NIA, task: dict, transductive: bool) -> np.ndarray:
    """Return the float64 reference scores (nq, ng) of one NIA case."""
    q, g = task["queries"], task["gallery"]
    if transductive:
        own = method.leave_one_out
        pools = {
            "query_bank": (q, np.arange(q.shape[0]) if own else None, None),
            "gallery_bank": (g, None, np.arange(g.shape[0]) if own else None),
        }
    else:
        pools = {name: (task[name], None, None) for name in ("query_bank", "gallery_bank")}
    settings_ = {name: getattr(method, name) for name in ("k", "weighting", "tau", "lam", "w", "beta", "gamma",
                                                          "form", "eta")}
    return ref.nia_scores_pools(q, g, [pools[name] for name in pool_names(method.pool)], **settings_)


def anchor_reference(method, task: dict, transductive: bool) -> np.ndarray:
    """Return the float64 reference scores (nq, ng) of one baseline case."""
    settings_ = {field.name: getattr(method, field.name) for field in dataclasses.fields(method)}
    q, g = task["queries"], task["gallery"]
    if transductive:
        return REFERENCES[method.name](q, g, q, g, **settings_, query_self=np.arange(q.shape[0]),
                                       gallery_self=np.arange(g.shape[0]))
    return REFERENCES[method.name](q, g, task["query_bank"], task["gallery_bank"], **settings_)


def check_against_reference(out, expected: np.ndarray, task: dict, top_k: int, *, rtol: float, atol: float):
    """Assert candidates, scores and order of ``out`` against full reference scores."""
    cosine = ref_normalise(task["queries"]) @ ref_normalise(task["gallery"]).T
    expected_candidates = np.argsort(-cosine, axis=1, kind="stable")[:, :top_k]
    np.testing.assert_array_equal(np.sort(out.candidates, axis=1), np.sort(expected_candidates, axis=1),
                                  err_msg="candidates are not the cosine top-K")
    np.testing.assert_allclose(out.base, at(cosine, out.candidates), rtol=0, atol=1e-6,
                               err_msg="base scores are not the cosine scores")

    assert np.isfinite(out.scores).all(), "non-finite scores"
    np.testing.assert_allclose(out.scores, at(expected, out.candidates), rtol=rtol, atol=atol,
                               err_msg="scores differ from the reference")

    # Best first by the reference, up to the tolerance of two scores.
    ordered = at(expected, out.order)
    slack = 2 * (atol + rtol * np.abs(ordered).max())
    assert np.all(np.diff(ordered, axis=1) <= slack), "order is not sorted by the reference scores"


# --- kernels against the references -----------------------------------------------------


@settings(PROPERTY, max_examples=25)
@given(case=cases("nia"))
def test_nia_matches_reference(case):
    task = make_task(case.shape, case.seed)
    assume(well_separated(task))

    out = run(case.method, task, transductive=case.transductive, top_k=case.top_k)

    expected = nia_reference(case.method, task, case.transductive)
    check_against_reference(out, expected, task, case.top_k, rtol=0, atol=NIA_ATOL)


@pytest.mark.parametrize("name", ANCHORS)
@settings(PROPERTY, max_examples=3)
@given(data=st.data())
def test_anchor_matches_reference(name, data):
    case = data.draw(cases(name), label="case")
    task = make_task(case.shape, case.seed)
    assume(well_separated(task))

    out = run(case.method, task, transductive=case.transductive, top_k=case.top_k)

    expected = anchor_reference(case.method, task, case.transductive)
    check_against_reference(out, expected, task, case.top_k, rtol=ANCHOR_RTOL, atol=ANCHOR_ATOL)


def test_every_anchor_has_reference():
    assert set(ANCHORS) == set(REFERENCES)
    assert set(ANCHORS) | {"nia", "cosine"} == set(available())


# NOTE: known float32 limit, left as is. For a pool member x, fusion.encode computes
# ||a(x)||^2 as ||alpha(x)||^2 - alpha_self(x)^2, two numbers near 1 whose difference is
# of order lam^2 when x is far from the span of the other pool rows (for example, when
# the pool has at most d rows). At lam = 1e-4 no digit of it survives float32, and the
# example below scores 0.71 where the reference scores 0.96.
@pytest.mark.xfail(strict=True, reason="leave-one-out NIA codes lose float32 accuracy at small lam")
def test_nia_leave_one_out_tiny_lam():
    # Two gallery items in two dimensions. The transductive gallery-bank pool codes each
    # item over the other one. The neighbour-space score is a cosine, so at most 1.
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    method = NIA(k=1, form="neighbour", pool="gallery_bank", lam=1e-4, w=0.5, gamma=1.0, eta=0.0)

    out = rerank(method, queries, gallery, top_k=2, transductive=True)

    expected = nia_reference(method, {"queries": queries, "gallery": gallery}, transductive=True)
    assert np.abs(out.scores).max() <= 1.0 + NIA_ATOL, "a neighbour-space score is not a cosine"
    np.testing.assert_allclose(out.scores, at(expected, out.candidates), rtol=0, atol=NIA_ATOL)


# At lam = 1e6 every ridge coefficient is about 1e-6, so ||a(x)||^2 is about 1e-12: a
# fixed floor there would change the scores.
def test_nia_huge_lam():
    task = make_task(Shape(nq=3, ng=5, nbq=6, nbg=2, d=8), seed=0)
    method = NIA(k=2, form="neighbour", lam=1e6, w=0.5, gamma=1.0, eta=0.0)

    out = run(method, task, transductive=False, top_k=5)

    expected = nia_reference(method, task, transductive=False)
    np.testing.assert_allclose(out.scores, at(expected, out.candidates), rtol=0, atol=NIA_ATOL)


# --- permutation invariance -------------------------------------------------------------
#
# No re-ranker is exempt. Every score belongs to one query and one gallery item, whatever
# their rows, and no score depends on the order of the bank rows. Only ties could break
# that (equal scores are ordered by index), and well_separated rules them out.


def by_gallery_item(candidates: np.ndarray, scores: np.ndarray):
    """Return each query's candidates and scores sorted by gallery index."""
    order = np.argsort(candidates, axis=1)
    return at(candidates, order), at(scores, order)


def check_permutations(case: Case, data) -> None:
    """Assert that permuted gallery, queries and banks permute ``case``'s results with them."""
    task = make_task(case.shape, case.seed)
    assume(well_separated(task))
    options = dict(transductive=case.transductive, top_k=case.top_k)
    out = run(case.method, task, **options)

    gallery_order = np.asarray(data.draw(st.permutations(range(case.shape.ng)), label="gallery order"))
    moved = run(case.method, dict(task, gallery=task["gallery"][gallery_order]), **options)
    candidates, scores = by_gallery_item(out.candidates, out.scores)
    moved_candidates, moved_scores = by_gallery_item(gallery_order[moved.candidates], moved.scores)
    np.testing.assert_array_equal(moved_candidates, candidates, err_msg="gallery permuted: candidates")
    np.testing.assert_allclose(moved_scores, scores, rtol=PERMUTED_RTOL, atol=PERMUTED_ATOL,
                               err_msg="gallery permuted: scores")

    query_order = np.asarray(data.draw(st.permutations(range(case.shape.nq)), label="query order"))
    moved = run(case.method, dict(task, queries=task["queries"][query_order]), **options)
    np.testing.assert_array_equal(moved.candidates, out.candidates[query_order],
                                  err_msg="queries permuted: candidates")
    np.testing.assert_allclose(moved.scores, out.scores[query_order], rtol=PERMUTED_RTOL, atol=PERMUTED_ATOL,
                               err_msg="queries permuted: scores")

    if case.transductive:
        return  # the banks are the queries and the gallery, permuted above
    query_bank_order = np.asarray(data.draw(st.permutations(range(case.shape.nbq)), label="query bank order"))
    gallery_bank_order = np.asarray(data.draw(st.permutations(range(case.shape.nbg)), label="gallery bank order"))
    moved = run(case.method, dict(task, query_bank=task["query_bank"][query_bank_order],
                                  gallery_bank=task["gallery_bank"][gallery_bank_order]), **options)
    np.testing.assert_array_equal(moved.candidates, out.candidates, err_msg="banks permuted: candidates")
    np.testing.assert_allclose(moved.scores, out.scores, rtol=PERMUTED_RTOL, atol=PERMUTED_ATOL,
                               err_msg="banks permuted: scores")


@settings(PROPERTY, max_examples=8)
@given(case=cases("nia"), data=st.data())
def test_nia_permutation_invariant(case, data):
    check_permutations(case, data)


@pytest.mark.parametrize("name", ANCHORS + ("cosine",))
@settings(PROPERTY, max_examples=3)
@given(data=st.data())
def test_anchor_permutation_invariant(name, data):
    check_permutations(data.draw(cases(name), label="case"), data)


# --- block sizes --------------------------------------------------------------------------


def block_sizes(n: int):
    """Block sizes for n rows: 1, divisors of n, n, larger than n, or any size up to n + 3."""
    special = sorted({1, n, n + 3} | {size for size in range(2, n) if n % size == 0})
    return st.one_of(st.sampled_from(special), st.integers(1, n + 3))


def draw_positives(rng: np.random.Generator, nq: int, ng: int) -> np.ndarray:
    """Return 1 to 3 distinct positive gallery indices per query, padded with -1, (nq, 3)."""
    positives = np.full((nq, 3), -1, dtype=np.int32)
    for i in range(nq):
        count = rng.integers(1, min(3, ng) + 1)
        positives[i, :count] = rng.choice(ng, size=count, replace=False)
    return positives


@settings(PROPERTY, max_examples=12)
@given(data=st.data())
def test_search_block_sizes_exact(data):
    nq = data.draw(st.integers(1, 12), label="nq")
    ng = data.draw(st.integers(2, 15), label="ng")
    d = data.draw(st.integers(2, 8), label="d")
    rng = np.random.default_rng(data.draw(seeds, label="seed"))
    queries = unit_rows(rng, nq, d).astype(np.float32)
    gallery = unit_rows(rng, ng, d).astype(np.float32)
    top_k = data.draw(st.integers(1, ng), label="top_k")
    positives = draw_positives(rng, nq, ng) if data.draw(st.booleans(), label="with positives") else None
    block_size = data.draw(block_sizes(nq), label="block_size")
    gallery_block_size = data.draw(st.one_of(st.none(), block_sizes(ng)), label="gallery_block_size")

    whole = search(queries, gallery, top_k, positives=positives, block_size=nq, backend="jax")

    # A NumPy gallery is streamed block by block, and a JAX array is searched on the device.
    device_gallery = jnp.asarray(as_embeddings(gallery, "gallery"))
    for label, rows in (("host gallery", gallery), ("device gallery", device_gallery)):
        blocked = search(queries, rows, top_k, positives=positives, block_size=block_size,
                         gallery_block_size=gallery_block_size, backend="jax")
        for field in whole._fields:
            expected, got = getattr(whole, field), getattr(blocked, field)
            if expected is None:
                assert got is None, f"{label}: {field}"
            else:
                np.testing.assert_array_equal(got, expected, err_msg=f"{label}: {field}")


def check_block_sizes(case: Case, data, *, search_blocks: bool) -> None:
    """Assert that ``rerank`` returns the same results for a drawn query block size.

    With ``search_blocks``, the JAX search also runs in drawn gallery blocks and
    places ground-truth positives. Otherwise only the query blocks change.
    """
    task = make_task(case.shape, case.seed)
    options = dict(transductive=case.transductive, top_k=case.top_k)
    blocked_options = dict(block_size=data.draw(block_sizes(case.shape.nq), label="block_size"))
    fields = ("candidates", "base", "order")
    if search_blocks:
        positives = draw_positives(np.random.default_rng(case.seed), case.shape.nq, case.shape.ng)
        options.update(positives=positives, search_backend="jax")
        blocked_options["gallery_block_size"] = data.draw(st.one_of(st.none(), block_sizes(case.shape.ng)),
                                                          label="gallery_block_size")
        fields += ("neg_above", "position")

    whole = run(case.method, task, block_size=case.shape.nq, gallery_block_size=None, **options)
    blocked = run(case.method, task, **blocked_options, **options)

    for field in fields:
        np.testing.assert_array_equal(getattr(blocked, field), getattr(whole, field), err_msg=field)
    # The new scores are compared to a few float32 ulps, not bit for bit. On XLA:CPU
    # (jaxlib 0.10) the last bit of a product or of a fused multiply-add can depend on the
    # number of query rows at these small d. For example, AQE(n=3) and NIA(k=1, lam=1, w=0, eta=0.375, top_k=3) on
    # make_task(Shape(4, 7, 12, 5, 3), seed=0) differ in query blocks of 1 against 4.
    scale = max(1.0, float(np.abs(whole.scores).max()))
    np.testing.assert_allclose(blocked.scores, whole.scores, rtol=0, atol=4 * np.finfo(np.float32).eps * scale,
                               err_msg="scores")


@settings(PROPERTY, max_examples=6)
@given(case=cases("nia"), data=st.data())
def test_nia_block_sizes_invariant(case, data):
    check_block_sizes(case, data, search_blocks=True)


# The gallery blocks only change the search, which test_search_block_sizes_exact and
# test_nia_block_sizes_invariant cover, so each baseline is checked with query blocks alone.
@pytest.mark.parametrize("name", ANCHORS + ("cosine",))
@settings(PROPERTY, max_examples=2)
@given(data=st.data())
def test_anchor_block_sizes_invariant(name, data):
    check_block_sizes(data.draw(cases(name), label="case"), data, search_blocks=False)


# --- finite scores --------------------------------------------------------------------------


def check_finite(case: Case) -> None:
    """Assert finite cosine and re-ranked scores on a task with exact duplicate rows."""
    task = make_task(case.shape, case.seed, duplicates=True)

    out = run(case.method, task, transductive=case.transductive, top_k=case.top_k)

    assert np.isfinite(out.base).all(), "non-finite cosine scores"
    assert np.isfinite(out.scores).all(), "non-finite scores"


@settings(PROPERTY, max_examples=10)
@given(case=cases("nia", wide=True))
def test_nia_scores_finite(case):
    check_finite(case)


@pytest.mark.parametrize("name", ANCHORS)
@settings(PROPERTY, max_examples=3)
@given(data=st.data())
def test_anchor_scores_finite(name, data):
    check_finite(data.draw(cases(name, wide=True), label="case"))


# Every positive tau is valid, but the kernels take hyperparameters as float32: 1e-50
# rounds to 0 there, and any tau below about 3e-39 overflows s / tau.
@pytest.mark.parametrize("method", [NIA(k=2, form="neighbour", weighting="softmax", tau=1e-50),
                                    make_reranker("dsl", tau=1e-50)], ids=["nia", "dsl"])
def test_tiny_tau_finite_or_rejected(method):
    task = make_task(SHAPES[1], seed=0)
    try:
        out = run(method, task, transductive=False, top_k=SHAPES[1].ng)
    except ConfigError:
        return
    assert np.isfinite(out.scores).all(), "non-finite scores"
