"""The re-ranking engine: blocked exact top-K, re-scoring, and positive positions.

For each block of queries the engine searches the exact top-K candidates by
cosine (:mod:`nia_jax.search`: one query block x gallery block of scores at a
time, never nq x ng), gets new candidate scores from the re-ranker, and, when
ground truth is given, records where each positive lands in the final
ranking. Candidates, scores and positions are the same for every query and
gallery block size, and with or without a device mesh (one exception, in
docs/scaling.md, differs in the last bit of a score). The final ranking is
the K candidates ordered by their new scores, followed by every other gallery
item in cosine order.

Ties are broken against the positive: a positive's position counts every
negative whose key is at least as good as the positive's key, where the key is
(is a candidate, new score) for candidates and (not a candidate, cosine score)
otherwise.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from nia_jax._validation import as_embeddings, as_positives, check_int
from nia_jax.errors import ConfigError
from nia_jax.kernels.similarity import iter_blocks, pad_rows
from nia_jax.rerankers.base import Pools, Reranker
from nia_jax.search import (
    QUERY_AXIS,
    DeviceSearch,
    FaissSearch,
    block_rows,
    check_backend,
    load_rows,
    mesh_sizes,
    replicate,
    resolve_backend,
    shard_queries,
    to_host,
)

logger = logging.getLogger(__name__)


class Reranked(NamedTuple):
    """Output of :func:`rerank` (NumPy arrays).

    Attributes:
      candidates: gallery indices of each query's top-K by cosine, (nq, K).
      scores: the re-ranker's scores of those candidates, (nq, K).
      base: their cosine scores, (nq, K).
      order: the candidates re-sorted by new score, best first, (nq, K).
      neg_above: per positive, the negatives ranked at or above it, (nq, p);
        -1 where the ground truth is padded. None without ground truth.
      position: per positive, its 0-based position in the final ranking,
        (nq, p); -1 where padded. None without ground truth.
      prepare_s, score_s: wall time of the pool preparation and of the blocks
        (search and re-scoring), compilation included.
      search_s: the part of ``score_s`` spent in the top-K search.
    """

    candidates: np.ndarray
    scores: np.ndarray
    base: np.ndarray
    order: np.ndarray
    neg_above: np.ndarray | None
    position: np.ndarray | None
    prepare_s: float
    score_s: float
    search_s: float = 0.0


def _positions_one(candidates, base, new, positives, positive_score, above):
    """Return (negatives at or above, final position) of each positive of one query.

    ``positive_score`` (p,) is each positive's cosine score and ``above`` (p,)
    the count of non-positive gallery items scoring at least as high, over
    the whole gallery, candidates included (see :mod:`nia_jax.search`).
    """
    valid = positives >= 0
    candidate_is_positive = jnp.any((candidates[:, None] == positives[None, :]) & valid[None, :], axis=1)

    match = candidates[None, :] == positives[:, None]  # (p, K)
    in_top = match.any(axis=1) & valid
    new_score = jnp.max(jnp.where(match, new[None, :], -jnp.inf), axis=1)
    base_score = positive_score

    negative_candidate = ~candidate_is_positive[None, :]
    negatives_in_top = jnp.sum(~candidate_is_positive)
    above_in_top = jnp.sum((new[None, :] >= new_score[:, None]) & negative_candidate, axis=1)
    # A candidate's base score is the same float32 number as its gallery score,
    # so removing the candidates from the whole-gallery count leaves the others.
    candidates_above = jnp.sum((base[None, :] >= base_score[:, None]) & negative_candidate, axis=1)
    above_outside = above - candidates_above
    neg_above = jnp.where(in_top, above_in_top, negatives_in_top + above_outside)

    # Among positives: better tier, then higher score, then lower gallery index.
    tier = in_top.astype(jnp.int32)
    key = jnp.where(in_top, new_score, base_score)
    ahead = (
        (tier[None, :] > tier[:, None])
        | ((tier[None, :] == tier[:, None]) & (key[None, :] > key[:, None]))
        | ((tier[None, :] == tier[:, None]) & (key[None, :] == key[:, None]) & (positives[None, :] < positives[:, None]))
    )
    ahead = ahead & valid[None, :]
    position = neg_above + jnp.sum(ahead, axis=1)
    return jnp.where(valid, neg_above, -1), jnp.where(valid, position, -1)


def _score_local(static: Reranker, hp, state, pools: Pools, queries, query_self, candidates, base, positives,
                 positive_score, above):
    """Re-score one block of queries and place its positives (one device's rows)."""
    new = static.score(static, hp, state, pools, queries, query_self, candidates, base)
    if positives is None:
        return new, None, None
    neg_above, position = jax.vmap(_positions_one)(candidates, base, new, positives, positive_score, above)
    return new, neg_above, position


@functools.partial(jax.jit, static_argnames=("static", "mesh"))
def _score_block(static: Reranker, hp, state, pools: Pools, queries, query_self, candidates, base, positives,
                 positive_score, above, mesh: Mesh | None = None):
    """Re-score one block of queries; with a mesh, its rows are split over the query axis."""
    args = (hp, state, pools, queries, query_self, candidates, base, positives, positive_score, above)
    score = functools.partial(_score_local, static)
    if mesh is None:
        return score(*args)
    q, rep = P(QUERY_AXIS), P()
    mapped = jax.shard_map(score, mesh=mesh, in_specs=(rep, rep, rep) + (q,) * 7, out_specs=(q, q, q),
                           check_vma=False)
    return mapped(*args)


@functools.partial(jax.jit, static_argnames=("static",))
def _prepare(static: Reranker, hp, pools: Pools):
    return static.prepare(static, hp, pools)


_DEFAULTS = {"gallery_block_size": None, "search_backend": "auto", "mesh": None}


def search_defaults() -> dict:
    """Return the current defaults of the search options of :func:`rerank` (a copy)."""
    return dict(_DEFAULTS)


def set_search_defaults(**options) -> None:
    """Set process-wide defaults for ``gallery_block_size``, ``search_backend`` and ``mesh``.

    Runners call this once from their config (see ``experiments/common.py``)
    so that every :func:`rerank` below them, including those made by
    :func:`nia_jax.evaluate`, uses the configured search. Arguments passed to
    :func:`rerank` itself win over these defaults.
    """
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown search option(s) {unknown}; expected some of {sorted(_DEFAULTS)}.")
    if options.get("search_backend") is not None:
        check_backend(options["search_backend"])
    _DEFAULTS.update(options)


_UNSET = object()


def rerank(
    method: Reranker,
    queries,
    gallery,
    *,
    query_bank=None,
    gallery_bank=None,
    positives=None,
    top_k: int = 100,
    block_size: int = 1024,
    gallery_block_size=_UNSET,
    search_backend=_UNSET,
    mesh=_UNSET,
    transductive: bool = False,
    on_block: Callable[[int, int], None] | None = None,
) -> Reranked:
    """Re-rank the top-K cosine candidates of every query with ``method``.

    Args:
      method: a re-ranker (for example ``NIA(k=10)`` or ``make_reranker("cosine")``).
      queries: query embeddings (nq, d); rows are L2-normalised here.
      gallery: gallery embeddings (ng, d), also a ``np.memmap``: it is
        validated and normalised in chunks into one float32 copy, which the
        re-rankers share.
      query_bank: unlabelled query-modality samples (nbq, d), or None.
      gallery_bank: unlabelled gallery-modality samples (nbg, d), or None.
      positives: optional ground truth, a list of positive gallery indices per
        query or a padded int array; used only to report positions, never
        shown to the re-ranker.
      top_k: candidates re-ranked per query (K); ``top_k = ng`` re-ranks all.
      block_size: queries per block.
      gallery_block_size: gallery rows per search block, or None for the
        whole gallery; search memory grows with block_size x
        gallery_block_size. Candidates and base scores do not depend on
        either block size; re-ranked scores can differ in their last float32
        bits between query block sizes (docs/scaling.md).
      search_backend: ``"auto"`` (faiss on CPU when installed and there is
        no ground truth or mesh, else JAX), ``"jax"`` or ``"faiss"``; see
        :mod:`nia_jax.search`. With ground truth the search runs in JAX.
      mesh: a ``jax.sharding.Mesh`` with axes ("queries", "gallery") (see
        :func:`nia_jax.search.default_mesh`): query blocks are split over its
        query axis, and the search's gallery over its gallery axis. Results
        equal the single-device ones.
      transductive: the banks are the evaluated queries and the gallery
        themselves (``query_bank`` and ``gallery_bank`` are then ignored), so
        each sample's own row is excluded from its neighbours.
      on_block: called with (queries done, total) after each block, for
        progress bars in runners.

    The last three default to :func:`search_defaults`.

    Returns:
      A :class:`Reranked` with NumPy arrays.
    """
    options = search_defaults()
    for name, value in (("gallery_block_size", gallery_block_size), ("search_backend", search_backend),
                        ("mesh", mesh)):
        if value is not _UNSET:
            options[name] = value
    check_backend(options["search_backend"])
    mesh = options["mesh"]
    mesh_sizes(mesh)

    q = as_embeddings(queries, "queries")
    g = load_rows(gallery, "gallery", dim=q.shape[1])
    n_queries, n_gallery = q.shape[0], g.shape[0]
    top = check_int(top_k, "top_k", low=1, high=n_gallery)
    block = check_int(block_size, "block_size", low=1)
    width = options["gallery_block_size"]
    width = n_gallery if width is None else min(check_int(width, "gallery_block_size", low=1), n_gallery)
    if transductive:
        qb, gb = q, g
        query_self = np.arange(n_queries, dtype=np.int32)
        gallery_self = np.arange(n_gallery, dtype=np.int32)
    else:
        qb = None if query_bank is None else as_embeddings(query_bank, "query_bank", dim=q.shape[1])
        gb = None if gallery_bank is None else as_embeddings(gallery_bank, "gallery_bank", dim=q.shape[1])
        query_self = np.full(n_queries, -1, dtype=np.int32)
        gallery_self = np.full(n_gallery, -1, dtype=np.int32)
    if method.transductive and not transductive:
        logger.info("%s is designed to normalise over the evaluated queries; under the inductive "
                    "protocol it uses the query bank in their place.", method.name)
    pools = Pools(
        gallery=jnp.asarray(g),
        query_bank=None if qb is None else jnp.asarray(qb),
        gallery_bank=None if gb is None else jnp.asarray(gb),
        gallery_self=jnp.asarray(gallery_self),
    )
    for need in sorted(method.needs):
        if getattr(pools, need) is None:
            raise ConfigError(
                f"{method.name} needs a {need.replace('_', ' ')}; pass {need}=... or use transductive=True."
            )
    method.validate(pools, n_gallery)
    pos = None if positives is None else as_positives(positives, n_queries, n_gallery)

    static, hp = method.split()
    start = time.perf_counter()
    state = jax.block_until_ready(_prepare(static, hp, pools))
    prepare_s = time.perf_counter() - start

    block = min(block, n_queries)
    rows = block_rows(block, mesh)
    use_faiss = resolve_backend(options["search_backend"], has_positives=pos is not None, mesh=mesh) == "faiss"
    searcher = FaissSearch(pools.gallery, top, q) if use_faiss else DeviceSearch(pools.gallery, top, width, mesh)
    hp, state, score_pools = replicate((hp, state, pools), mesh)
    split = functools.partial(shard_queries, mesh=mesh)
    outputs = []
    search_s = 0.0
    start = time.perf_counter()
    for lo, hi in iter_blocks(n_queries, block):
        tick = time.perf_counter()
        q_block = split(pad_rows(jnp.asarray(q[lo:hi]), rows))
        pos_block = None if pos is None else split(pad_rows(jnp.asarray(pos[lo:hi]), rows, fill=-1))
        if use_faiss:
            values, indices = searcher.rows(lo, hi)
            base, candidates = (split(pad_rows(jnp.asarray(x), rows)) for x in (values, indices))
            positive_score = above = None
        else:
            base, candidates, positive_score, above = jax.block_until_ready(searcher.block(q_block, pos_block))
        search_s += time.perf_counter() - tick
        self_block = split(pad_rows(jnp.asarray(query_self[lo:hi]), rows, fill=-1))
        new, neg_above, position = _score_block(
            static, hp, state, score_pools, q_block, self_block, candidates, base, pos_block, positive_score, above,
            mesh=mesh)
        block_candidates, new, block_base, neg_above, position = (
            None if leaf is None else to_host(leaf)[: hi - lo] for leaf in (candidates, new, base, neg_above, position))
        # A stable sort keeps cosine order among equal new scores. NumPy sorts these short
        # rows about three times faster than XLA:CPU's sort or lax.top_k.
        order = np.take_along_axis(block_candidates, np.argsort(-new, axis=1, kind="stable"), axis=1)
        outputs.append((block_candidates, new, block_base, order, neg_above, position))
        if on_block is not None:
            on_block(hi, n_queries)
    score_s = time.perf_counter() - start

    def stack(i):
        return None if outputs[0][i] is None else np.concatenate([o[i] for o in outputs])

    scores = stack(1)
    method.check_scores(scores)  # a valid but extreme setting can overflow float32
    return Reranked(stack(0), scores, stack(2), stack(3), stack(4), stack(5), prepare_s, score_s, search_s)
