"""Ranking by a precomputed score matrix, for models that output scores but no embeddings.

Cross-attention models score each (query, gallery) pair jointly, so there are
no embeddings to re-rank. :func:`rank_scores` ranks every gallery item by the
given score and reports positive positions with the same conventions as
:func:`nia_jax.ranking.rerank` with the cosine re-ranker and ``top_k = ng``.
A positive's ``neg_above`` counts the negatives whose score is at least its
own (ties count against it). Its ``position`` adds the positives ahead of it
(higher score, or equal score and lower gallery index).

The matrix may be float16, bfloat16 or memory-mapped; each block of rows is
converted to float32 when it is scored.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nia_jax._validation import as_positives, check_int
from nia_jax.ranking import Reranked


@functools.partial(jax.jit, static_argnames=("top",))
def _rank_block(scores, positives, top: int):
    """Top-K and positive positions of one block of score rows (b, ng)."""
    base, candidates = jax.lax.top_k(scores, top)
    valid = positives >= 0
    own = jnp.take_along_axis(scores, jnp.where(valid, positives, 0), axis=1)  # (b, p)
    # Items scored at least as high as each positive, one positive column at a time: (b, ng) per step.
    at_or_above = jax.lax.map(lambda column: jnp.sum(scores >= column[:, None], axis=1), own.T).T
    other, this = own[:, None, :], own[:, :, None]  # (b, 1, p) against (b, p, 1)
    positives_at_or_above = jnp.sum(valid[:, None, :] & (other >= this), axis=2)
    neg_above = at_or_above - positives_at_or_above
    ahead = valid[:, None, :] & ((other > this) | ((other == this) & (positives[:, None, :] < positives[:, :, None])))
    position = neg_above + jnp.sum(ahead, axis=2)
    return candidates, base, jnp.where(valid, neg_above, -1), jnp.where(valid, position, -1)


def rank_scores(scores, positives, *, top_k: int = 100, block_size: int = 1024,
                on_block: Callable[[int, int], None] | None = None) -> Reranked:
    """Rank the gallery of every query by precomputed scores.

    Args:
      scores: (nq, ng) scores, higher is better; any float dtype, memory-mapped
        or not. Entries must be finite (see :func:`nia_jax.data.io.load_scores`).
      positives: ground truth, as for :func:`nia_jax.ranking.rerank`.
      top_k: candidates returned per query.
      block_size: query rows converted and scored at a time.
      on_block: progress callback (queries done, total).

    Returns:
      A :class:`nia_jax.ranking.Reranked` whose ``scores`` and ``base`` are
      both the given scores of the top-K candidates (nothing is re-scored).
    """
    n_queries, n_gallery = scores.shape
    top = check_int(top_k, "top_k", low=1, high=n_gallery)
    block = min(check_int(block_size, "block_size", low=1), n_queries)
    pos = as_positives(positives, n_queries, n_gallery, "positives")
    outputs = []
    start = time.perf_counter()
    for lo in range(0, n_queries, block):
        hi = min(lo + block, n_queries)
        rows = np.zeros((block, n_gallery), np.float32)
        rows[: hi - lo] = np.asarray(scores[lo:hi]).astype(np.float32)
        pos_block = np.full((block, pos.shape[1]), -1, np.int32)
        pos_block[: hi - lo] = pos[lo:hi]
        result = _rank_block(jnp.asarray(rows), jnp.asarray(pos_block), top)
        outputs.append([np.asarray(leaf[: hi - lo]) for leaf in result])
        if on_block is not None:
            on_block(hi, n_queries)
    candidates, base, neg_above, position = (np.concatenate([o[i] for o in outputs]) for i in range(4))
    return Reranked(candidates, base, base, candidates, neg_above, position, 0.0, time.perf_counter() - start)
