"""Streaming search, block-size invariance, memory-mapped galleries, faiss, sharding, compilation.

Galleries here are larger than ``TILE`` (512 columns) so that the tiled
products, the clamped last tile and the gallery blocks all take part, but the
dimension is small so the file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import reference as ref
from conftest import REPO_ROOT, unit_rows

from nia_jax import NIA, make_reranker, ranking, rerank, search
from nia_jax.errors import ConfigError
from nia_jax.kernels import fusion
from nia_jax.kernels.ridge import ridge_factor
from nia_jax.kernels.similarity import TILE, tiled_similarity
from nia_jax.search import SearchResult

D = 16
NQ, NG, NB = 23, 1100, 40
TOP_K = 20
FIELDS = ("candidates", "scores", "base", "order", "neg_above", "position")


def f32(x):
    return np.asarray(x, dtype=np.float32)


@pytest.fixture(scope="module")
def case():
    """Queries with two positives each, a gallery with exact duplicates (ties), and banks."""
    rng = np.random.default_rng(5)
    gallery = unit_rows(rng, NG, D)
    # Rows 700 and 1050 copy rows 3 and 600: equal scores across tiles and gallery blocks.
    gallery[700], gallery[1050] = gallery[3], gallery[600]
    queries = unit_rows(rng, NQ, D)
    queries[0] = gallery[3]  # its top-1 is a tie between rows 3 and 700
    return {
        "queries": f32(queries),
        "gallery": f32(gallery),
        "query_bank": f32(unit_rows(rng, NB, D)),
        "gallery_bank": f32(unit_rows(rng, NB, D)),
        "positives": [[(7 * i) % NG, (7 * i + 650) % NG] for i in range(NQ)],
    }


NEIGHBOUR = dict(k=3, form="neighbour", weighting="softmax")
METHODS = {
    "cosine": (make_reranker("cosine"), False),
    "nia-default": (NIA(k=2), False),
    "nia-neighbour": (NIA(**NEIGHBOUR), False),
    "nia-gallery-transductive": (NIA(pool="gallery_bank", **NEIGHBOUR), True),
    "nnn": (make_reranker("nnn", k=4), False),
}


def run(case, name, **options):
    method, transductive = METHODS[name]
    return rerank(method, case["queries"], case["gallery"], query_bank=case["query_bank"],
                  gallery_bank=case["gallery_bank"], positives=case["positives"], top_k=TOP_K,
                  transductive=transductive, **options)


@pytest.fixture(scope="module")
def whole(case):
    """Each method with one query block and the whole gallery at once."""
    return {name: run(case, name, block_size=NQ, gallery_block_size=None) for name in METHODS}


def assert_same(out, expected):
    for field in FIELDS:
        assert np.array_equal(getattr(out, field), getattr(expected, field)), field


# --- kernels --------------------------------------------------------------------------------


def test_tiled_similarity_independent_of_shape(case):
    q, g = case["queries"], case["gallery"]
    full = np.asarray(tiled_similarity(q, g))
    assert full.shape == (NQ, NG)
    np.testing.assert_allclose(full, q @ g.T, atol=1e-6, rtol=0)
    # Any slice of rows and columns gives the same bits as the whole product.
    for rows, (lo, hi) in [(2, (0, NG)), (7, (5, 600)), (NQ, (513, 1100)), (3, (1000, 1100)), (11, (17, 530))]:
        part = np.asarray(tiled_similarity(q[:rows], g[lo:hi]))
        assert np.array_equal(part, full[:rows, lo:hi]), (rows, lo, hi)


def test_search_ties_go_to_the_lower_index(case):
    q, g = case["queries"], case["gallery"]
    for width in (None, 100, 700, 701):
        found = search.search(q[:1], g, 3, gallery_block_size=width, backend="jax")
        # Query 0 is gallery row 3, duplicated at row 700, which sits in a later block.
        assert found.candidates[0, :2].tolist() == [3, 700], width
        assert found.base[0, 0] == found.base[0, 1]


def test_encode_row_blocks_assemble_every_row(case):
    # The engine fixes row_block for the gallery and codes a query block at once, so row
    # blocks never change its results. Here they only have to put every row in place.
    factor = ridge_factor(case["query_bank"], 0.5)
    settings = dict(k=3, weighting="softmax", tau=0.1, w=0.5)
    whole = fusion.encode(case["gallery"], None, case["query_bank"], factor, row_block=NG, **settings)
    for row_block in (64, 333):
        blocked = fusion.encode(case["gallery"], None, case["query_bank"], factor, row_block=row_block, **settings)
        assert np.array_equal(blocked.neighbours, whole.neighbours)
        for got, expected in zip(jax.tree.leaves(blocked), jax.tree.leaves(whole)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6, rtol=0)


# --- block sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize(("block_size", "gallery_block_size"),
                         [(1, None), (4, 100), (7, 300), (5, 7), (NQ, NG - 1)],
                         ids=["q1", "q4-g100", "q7-g300", "q5-g7", "g-all-but-one"])
def test_blocked_equals_unblocked(case, whole, name, block_size, gallery_block_size):
    # 100 divides the 1100 gallery rows, 300 and 7 do not; 7 < K.
    out = run(case, name, block_size=block_size, gallery_block_size=gallery_block_size)
    assert_same(out, whole[name])


def test_positions_match_a_full_score_matrix(case, whole):
    """The streamed counts give the positions a full (nq, ng) matrix gives."""
    out = whole["cosine"]
    sims = np.asarray(tiled_similarity(case["queries"], case["gallery"]))
    for i, positives in enumerate(case["positives"]):
        order = np.lexsort((np.arange(NG), -sims[i]))  # best first, ties by index
        rank = np.empty(NG, dtype=int)
        rank[order] = np.arange(NG)
        for j, p in enumerate(sorted(set(positives))):
            negatives = np.setdiff1d(np.arange(NG), positives)
            above = int(np.sum(sims[i, negatives] >= sims[i, p]))
            assert out.neg_above[i, j] == above, (i, p)
    assert np.array_equal(out.candidates, np.stack([np.lexsort((np.arange(NG), -s))[:TOP_K] for s in sims]))


# --- memory-mapped galleries -----------------------------------------------------------------


def test_memmap_gallery_equals_in_memory(case, tmp_path):
    path = tmp_path / "gallery.npy"
    np.save(path, case["gallery"])
    mapped = np.load(path, mmap_mode="r")
    positives = np.asarray(case["positives"], dtype=np.int32)
    in_memory = search.search(case["queries"], case["gallery"], TOP_K, positives=positives)
    for width, block in [(100, 5), (275, NQ), (NG, 7)]:
        streamed = search.search(case["queries"], mapped, TOP_K, positives=positives, gallery_block_size=width,
                                 block_size=block)
        for field in SearchResult._fields:
            assert np.array_equal(getattr(streamed, field), getattr(in_memory, field)), (field, width)
    out = rerank(make_reranker("cosine"), case["queries"], mapped, positives=case["positives"], top_k=TOP_K,
                 gallery_block_size=128)
    assert np.array_equal(out.candidates, in_memory.candidates)
    assert np.array_equal(out.base, in_memory.base)


# --- faiss ---------------------------------------------------------------------------------


def test_faiss_backend_matches_jax(case, monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setattr(search.FaissSearch, "CHUNK", 8)  # several chunks, crossed by the blocks below
    q, g = case["queries"], case["gallery"]
    jax_found = search.search(q, g, TOP_K, backend="jax")
    faiss_found = search.search(q, g, TOP_K, backend="faiss")
    # Faiss searches fixed chunks of queries, so its results do not depend on the block size.
    for block in (1, 5, 7, NQ - 1):
        blocked = search.search(q, g, TOP_K, backend="faiss", block_size=block)
        assert np.array_equal(blocked.base, faiss_found.base), block
        assert np.array_equal(blocked.candidates, faiss_found.candidates), block
    np.testing.assert_allclose(faiss_found.base, jax_found.base, atol=1e-6, rtol=0)
    sims = q.astype(np.float64) @ g.T.astype(np.float64)
    for i in range(NQ):
        kth = np.sort(sims[i])[::-1][TOP_K - 1]
        # Items clearly above the K-th score are found by both; ties may swap places.
        clear = set(np.flatnonzero(sims[i] > kth + 1e-5))
        assert clear <= set(faiss_found.candidates[i]), i
        assert clear <= set(jax_found.candidates[i]), i
        assert set(faiss_found.candidates[i]) - set(jax_found.candidates[i]) <= set(
            np.flatnonzero(np.abs(sims[i] - kth) <= 1e-5)), i

    method = NIA(**NEIGHBOUR)
    by_jax = rerank(method, q, g, query_bank=case["query_bank"], top_k=TOP_K, search_backend="jax")
    by_faiss = rerank(method, q, g, query_bank=case["query_bank"], top_k=TOP_K, search_backend="faiss")
    same_lists = np.all(np.sort(by_jax.candidates, 1) == np.sort(by_faiss.candidates, 1), axis=1)
    assert same_lists.sum() >= NQ - 1  # query 0's tie may differ
    for i in np.flatnonzero(same_lists):
        mine = dict(zip(by_jax.candidates[i], by_jax.scores[i]))
        np.testing.assert_allclose([mine[c] for c in by_faiss.candidates[i]], by_faiss.scores[i], atol=1e-5)


def test_backend_choice(monkeypatch):
    assert search.resolve_backend("jax", has_positives=False, mesh=None) == "jax"
    # Ground truth needs every score, which only the JAX search counts.
    assert search.resolve_backend("faiss", has_positives=True, mesh=None) == "jax"
    assert search.resolve_backend("auto", has_positives=True, mesh=None) == "jax"
    if search.faiss_available():
        assert search.resolve_backend("auto", has_positives=False, mesh=None) == "faiss"
    monkeypatch.setattr(search, "faiss_available", lambda: False)
    assert search.resolve_backend("auto", has_positives=False, mesh=None) == "jax"
    with pytest.raises(ConfigError, match="faiss"):
        search.check_backend("faiss")
    with pytest.raises(ConfigError, match="search_backend"):
        search.check_backend("annoy")


def test_search_defaults_reach_rerank(case, monkeypatch):
    """Runners set the search options once (experiments/common.py); every rerank call uses them."""
    calls = []
    real = search.DeviceSearch.__init__

    def spy(self, gallery, k, width, mesh=None):
        calls.append(width)
        real(self, gallery, k, width, mesh)

    monkeypatch.setattr(search.DeviceSearch, "__init__", spy)
    saved = ranking.search_defaults()
    try:
        ranking.set_search_defaults(gallery_block_size=300, search_backend="jax")
        out = rerank(make_reranker("cosine"), case["queries"], case["gallery"], top_k=TOP_K)
    finally:
        ranking.set_search_defaults(**saved)
    assert calls == [300]
    assert np.array_equal(out.candidates, search.search(case["queries"], case["gallery"], TOP_K,
                                                        backend="jax").candidates)
    with pytest.raises(ConfigError, match="unknown search option"):
        ranking.set_search_defaults(block_size=3)


# --- the gathered form of the NIA scores -------------------------------------------------------


@pytest.mark.parametrize("transductive", [False, True], ids=["inductive", "transductive"])
def test_nia_gathered_rows_match_reference(case, monkeypatch, transductive):
    """Large galleries read candidate rows instead of products with the whole gallery."""
    q, g, qb, gb = (np.asarray(case[k], dtype=np.float64) for k in ("queries", "gallery", "query_bank",
                                                                       "gallery_bank"))
    q, g = q[:6], g[:60]
    method = NIA(pool="both", tau=0.1, lam=0.5, w=0.4, gamma=0.6, eta=0.3, **NEIGHBOUR)
    monkeypatch.setattr(fusion, "DENSE_RATIO", 0)
    out = rerank(method, f32(q), f32(g), query_bank=f32(qb), gallery_bank=f32(gb), top_k=9,
                 transductive=transductive)
    if transductive:
        pools = [(q, np.arange(6), None), (g, None, np.arange(60))]
    else:
        pools = [(qb, None, None), (gb, None, None)]
    settings = {name: getattr(method, name) for name in ("k", "weighting", "tau", "lam", "w", "beta", "gamma",
                                                          "form", "eta")}
    expected = ref.nia_scores_pools(q, g, pools, **settings)
    np.testing.assert_allclose(out.scores, np.take_along_axis(expected, out.candidates, axis=1), atol=1e-5,
                               rtol=0)


# --- compilation ---------------------------------------------------------------------------


def test_sweep_compiles_once(case):
    method = NIA(k=4, form="neighbour", pool="gallery_bank")  # k=4: compiled by no other test

    def counts():
        return (ranking._score_block._cache_size(), ranking._prepare._cache_size(),
                search.search_step._cache_size())

    def go(m):
        return run_method(case, m).scores

    start = counts()
    first = go(method)
    after_first = counts()
    assert after_first[:2] == (start[0] + 1, start[1] + 1)
    values = np.linspace(0.05, 0.95, 20)
    scores = [go(dataclasses.replace(method, w=float(w))) for w in values]
    assert counts() == after_first
    assert not np.allclose(scores[0], scores[-1])  # w reached the kernels as a traced value
    assert np.array_equal(first, go(method))


def run_method(case, method):
    return rerank(method, case["queries"], case["gallery"], query_bank=case["query_bank"],
                  gallery_bank=case["gallery_bank"], positives=case["positives"], top_k=TOP_K,
                  gallery_block_size=300, block_size=8)


# --- sharding --------------------------------------------------------------------------------

SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from nia_jax import NIA, make_reranker, rerank
    from nia_jax.search import default_mesh

    rng = np.random.default_rng(3)
    def unit(n, d):
        x = rng.standard_normal((n, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    q, g, qb, gb = unit(21, 16), unit(1100, 16), unit(40, 16), unit(40, 16)
    positives = [[(5 * i) % 1100, (5 * i + 600) % 1100] for i in range(21)]
    neighbour = dict(k=3, form="neighbour", weighting="softmax")
    methods = {
        "cosine": (make_reranker("cosine"), False),
        "nia-default": (NIA(), False),
        "nia-query-transductive": (NIA(**neighbour), True),
        "nia-gallery-transductive": (NIA(pool="gallery_bank", **neighbour), True),
        "csls": (make_reranker("csls", k=3), False),
    }
    fields = ("candidates", "scores", "base", "order", "neg_above", "position")
    report = {"devices": len(jax.devices()), "mismatches": []}
    for name, (method, transductive) in methods.items():
        args = dict(query_bank=qb, gallery_bank=gb, positives=positives, top_k=20, transductive=transductive)
        single = rerank(method, q, g, block_size=8, **args)
        # 8 query shards; 4 query x 2 gallery shards with gallery blocks.
        for shards, width in [(1, None), (2, 300)]:
            out = rerank(method, q, g, block_size=8, mesh=default_mesh(shards), gallery_block_size=width, **args)
            for field in fields:
                if not np.array_equal(getattr(out, field), getattr(single, field)):
                    report["mismatches"].append([name, shards, width, field])
    print(json.dumps(report))
    """
)


def test_eight_devices_equal_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert report["mismatches"] == []


PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, process_id, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if process_id >= 0:  # -1: one process on its own, the reference
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                                   process_id=process_id)
    import numpy as np
    from nia_jax import NIA, rerank
    from nia_jax.search import default_mesh

    rng = np.random.default_rng(3)
    def unit(n, d):
        x = rng.standard_normal((n, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    q, g, qb = unit(21, 16), unit(1100, 16), unit(40, 16)
    positives = [[(5 * i) % 1100, (5 * i + 600) % 1100] for i in range(21)]
    method = NIA(k=3, form="neighbour", weighting="softmax")
    args = dict(query_bank=qb, positives=positives, top_k=20, block_size=8)
    if process_id >= 0:
        # One gallery shard per process: the top-K lists are merged across processes.
        args.update(mesh=default_mesh(gallery_shards=2), gallery_block_size=300)
    result = rerank(method, q, g, **args)
    np.savez(out, **{name: getattr(result, name) for name in ("candidates", "scores", "neg_above", "position")})
    """
)


def test_two_processes_equal_one(tmp_path):
    """jax.distributed over two local processes (two CPU devices each) gives the one-process results."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    workers = [subprocess.Popen([sys.executable, "-c", PROCESS_SCRIPT, str(port), str(i), str(tmp_path / f"{i}.npz")],
                                env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in (0, 1)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
    done = subprocess.run([sys.executable, "-c", PROCESS_SCRIPT, str(port), "-1", str(tmp_path / "single.npz")],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = np.load(tmp_path / "single.npz")
    for i in (0, 1):
        split = np.load(tmp_path / f"{i}.npz")
        for name in single.files:
            assert np.array_equal(split[name], single[name]), (i, name)


def test_tile_is_a_constant():
    # Changing TILE changes the last bits of every score; this test makes that a deliberate edit.
    assert TILE == 512


# --- benchmark runner ----------------------------------------------------------------------


def test_benchmark_one_case_keeps_docs(tmp_path):
    """A one-case run writes benchmark.json with every key the docs read, and leaves the page alone."""
    root = REPO_ROOT
    page = root / "docs" / "benchmarks.md"
    before = page.read_bytes()
    run_dir = tmp_path / "run"
    small = {"n_queries": 40, "n_gallery": 30, "n_bank": 24, "dim": 8, "repeats": 1, "block_size": 16}
    overrides = [f"cases.coco5k.{key}={value}" for key, value in small.items()]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    process = subprocess.run(
        [sys.executable, str(root / "experiments" / "benchmark.py"), "case=coco5k", "top_k=5",
         f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}", *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert process.returncode == 0, process.stderr[-3000:]
    assert "left unchanged" in process.stdout
    assert page.read_bytes() == before
    record = json.loads((run_dir / "benchmark.json").read_text())["cases"]["coco5k"]
    for key in ("gemm_s", "gemm_floor_s", "topk_s", "topk_jax_s", "topk_faiss_s", "nia_s", "nia_numpy_s",
                "compile_s", "peak_rss_mib", *(f"{name}_s" for name in ("nnn", "csls", "sinkhorn", "dba"))):
        assert key in record, key
    assert record["case"]["n_queries"] == 40
    assert record["nia_numpy_check"]["same_candidates"] == 1.0
