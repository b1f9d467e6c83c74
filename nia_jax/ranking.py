"""The re-ranking engine: blocked exact top-K, re-scoring, and positive positions.

For each block of queries the engine computes the cosine scores against the
whole gallery (b x ng, never nq x ng), keeps the exact top-K candidates,
asks the re-ranker for new candidate scores, and, when ground truth is given,
records where each positive lands in the final ranking. The final ranking is
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
from jaxtyping import Array, Float, Int

from nia_jax._validation import as_embeddings, as_positives, check_int
from nia_jax.errors import ConfigError
from nia_jax.kernels.similarity import iter_blocks, pad_rows, similarity
from nia_jax.rerankers.base import Pools, Reranker

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
      prepare_s, score_s: wall time of the pool preparation and of the blocks,
        compilation included.
    """

    candidates: np.ndarray
    scores: np.ndarray
    base: np.ndarray
    order: np.ndarray
    neg_above: np.ndarray | None
    position: np.ndarray | None
    prepare_s: float
    score_s: float


def _positions_one(row, candidates, new, positives):
    """Return (negatives at or above, final position) of each positive of one query."""
    n_gallery = row.shape[0]
    valid = positives >= 0
    safe_pos = jnp.where(valid, positives, 0)

    in_candidates = jnp.zeros(n_gallery, bool).at[candidates].set(True)
    is_positive = jnp.zeros(n_gallery, bool).at[jnp.where(valid, positives, n_gallery)].set(True, mode="drop")
    candidate_is_positive = is_positive[candidates]

    match = candidates[None, :] == positives[:, None]  # (p, K)
    in_top = match.any(axis=1) & valid
    new_score = jnp.max(jnp.where(match, new[None, :], -jnp.inf), axis=1)
    base_score = row[safe_pos]

    negatives_in_top = jnp.sum(~candidate_is_positive)
    above_in_top = jnp.sum((new[None, :] >= new_score[:, None]) & ~candidate_is_positive[None, :], axis=1)
    outside_negative = ~in_candidates & ~is_positive
    above_outside = jnp.sum((row[None, :] >= base_score[:, None]) & outside_negative[None, :], axis=1)
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


@functools.partial(jax.jit, static_argnames=("static", "top"))
def _score_block(static: Reranker, hp, state, pools: Pools, queries, query_self, positives, top: int):
    """Score one block of queries: cosine, exact top-K, re-scoring, positive positions."""
    sims = similarity(queries, pools.gallery)
    base, candidates = jax.lax.top_k(sims, top)
    new = static.score(static, hp, state, pools, queries, query_self, candidates, base)
    # Stable sort on -new keeps cosine order among equal new scores.
    order_in_top = jnp.argsort(-new, axis=1, stable=True)
    order = jnp.take_along_axis(candidates, order_in_top, axis=1)
    if positives is None:
        return candidates, new, base, order, None, None
    neg_above, position = jax.vmap(_positions_one)(sims, candidates, new, positives)
    return candidates, new, base, order, neg_above, position


@functools.partial(jax.jit, static_argnames=("static",))
def _prepare(static: Reranker, hp, pools: Pools):
    return static.prepare(static, hp, pools)


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
    transductive: bool = False,
    on_block: Callable[[int, int], None] | None = None,
) -> Reranked:
    """Re-rank the top-K cosine candidates of every query with ``method``.

    Args:
      method: a re-ranker (for example ``NIA(k=10)`` or ``make_reranker("cosine")``).
      queries: query embeddings (nq, d); rows are L2-normalised here.
      gallery: gallery embeddings (ng, d).
      query_bank: unlabelled query-modality samples (nbq, d), or None.
      gallery_bank: unlabelled gallery-modality samples (nbg, d), or None.
      positives: optional ground truth, a list of positive gallery indices per
        query or a padded int array; used only to report positions, never
        shown to the re-ranker.
      top_k: candidates re-ranked per query (K); ``top_k = ng`` re-ranks all.
      block_size: queries per block; memory grows with block_size x ng.
      transductive: the banks are the evaluated queries and the gallery
        themselves (``query_bank`` and ``gallery_bank`` are then ignored), so
        each sample's own row is excluded from its neighbours.
      on_block: called with (queries done, total) after each block, for
        progress bars in runners.

    Returns:
      A :class:`Reranked` with NumPy arrays.
    """
    q = as_embeddings(queries, "queries")
    g = as_embeddings(gallery, "gallery", dim=q.shape[1])
    n_queries, n_gallery = q.shape[0], g.shape[0]
    top = check_int(top_k, "top_k", low=1, high=n_gallery)
    block = check_int(block_size, "block_size", low=1)
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
    # XLA lowers the matrix products of a one-row block to matrix-vector products, which
    # sum in another order. Padding one-row blocks to two rows keeps every score
    # independent of block_size.
    rows = max(block, 2)
    outputs = []
    start = time.perf_counter()
    for lo, hi in iter_blocks(n_queries, block):
        q_block = pad_rows(jnp.asarray(q[lo:hi]), rows)
        self_block = pad_rows(jnp.asarray(query_self[lo:hi]), rows, fill=-1)
        pos_block = None if pos is None else pad_rows(jnp.asarray(pos[lo:hi]), rows, fill=-1)
        result = _score_block(static, hp, state, pools, q_block, self_block, pos_block, top)
        outputs.append(jax.tree.map(lambda leaf, n=hi - lo: np.asarray(leaf[:n]), result))
        if on_block is not None:
            on_block(hi, n_queries)
    score_s = time.perf_counter() - start

    def stack(i):
        return None if outputs[0][i] is None else np.concatenate([o[i] for o in outputs])

    return Reranked(stack(0), stack(1), stack(2), stack(3), stack(4), stack(5), prepare_s, score_s)
