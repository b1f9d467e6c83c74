"""Exact top-K search: cosine scores of query blocks against gallery blocks.

The search keeps, for every query, only its running top-K (values and
gallery indices) and, when ground truth is given, one count per positive.
Scores exist one (query block x gallery block) matrix at a time, so memory
grows with ``block_size x gallery_block_size + nq x K``, never with nq x ng.

Every score is computed by :func:`~nia_jax.kernels.similarity.tiled_similarity`
in products of a fixed width, and the running top-K of earlier gallery blocks
wins ties against later blocks. Candidates and scores are therefore the same
bits for every query and gallery block size, sharded or not, and equal ties
are ordered by gallery index, as one ``lax.top_k`` over the whole row would.

Two loop orders give the same numbers:

* a gallery that is a JAX array (the library's own, normalised copy) is
  searched query block by query block, each over all gallery blocks;
* a gallery given as a NumPy array or ``np.memmap`` is read one gallery
  block at a time (validated and normalised on the way), and every query
  block is updated with it, so a gallery on disk is read once.

Backends: ``"jax"`` (the above), ``"faiss"`` (``faiss.IndexFlatIP``, the
optional ``faiss`` extra) and ``"auto"``, the default: faiss when it is
installed, JAX runs on the CPU, no mesh is given and there is no ground
truth; JAX otherwise. Faiss returns the same candidates up to the order of
equal scores and the last bits of the scores, and is faster on CPU:
``lax.top_k`` on XLA:CPU runs on one core, about 30 us per row of 5,000
scores at K = 100, while faiss's search uses every core (docs/benchmarks.md
has the measured times). Faiss cannot count the negatives above a positive
outside the top-K, which needs every score, so with ground truth the JAX
search runs whatever the backend.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nia_jax._validation import as_embeddings, check_int
from nia_jax.errors import ConfigError
from nia_jax.kernels.similarity import TILE, iter_blocks, merge_top_k, pad_rows, tiled_similarity

logger = logging.getLogger(__name__)

SEARCH_BACKENDS = ("auto", "jax", "faiss")
#: Mesh axis names: queries are split over the first, gallery rows over the second.
QUERY_AXIS, GALLERY_AXIS = "queries", "gallery"
#: Rows validated at a time when a host gallery is copied into memory.
LOAD_ROWS = 65536


class SearchResult(NamedTuple):
    """Output of :func:`search` (NumPy arrays).

    Attributes:
      base: the K best cosine scores of each query, best first, (nq, K).
      candidates: their gallery indices, (nq, K); equal scores in index order.
      positive_score: each positive's cosine score, (nq, p), +inf where the
        ground truth is padded; None without ground truth.
      above: per positive, the gallery items that are not positives of the
        query and score at least as high, candidates included, (nq, p); 0
        where padded. None without ground truth.
    """

    base: np.ndarray
    candidates: np.ndarray
    positive_score: np.ndarray | None
    above: np.ndarray | None


def faiss_available() -> bool:
    """Return True when ``import faiss`` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(backend: str) -> str:
    """Validate a search backend name; raise ConfigError for unknown or missing ones."""
    if backend not in SEARCH_BACKENDS:
        raise ConfigError(f"search_backend: expected one of {SEARCH_BACKENDS}, got {backend!r}.")
    if backend == "faiss" and not faiss_available():
        raise ConfigError("search_backend='faiss' needs faiss-cpu: pip install 'nia_jax[faiss]'.")
    return backend


def resolve_backend(backend: str, *, has_positives: bool, mesh: Mesh | None) -> str:
    """Return the backend that runs: ``"jax"`` or ``"faiss"`` (see the module docstring)."""
    check_backend(backend)
    if backend == "faiss" and mesh is not None:
        raise ConfigError("search_backend='faiss' runs on the host CPU; it takes no mesh.")
    if backend == "auto":
        on_cpu = all(device.platform == "cpu" for device in jax.devices())
        backend = "faiss" if on_cpu and mesh is None and not has_positives and faiss_available() else "jax"
    if backend == "faiss" and has_positives:
        logger.info("Ground truth needs every gallery score to place the positives; searching with JAX.")
        backend = "jax"
    return backend


# --- meshes -----------------------------------------------------------------------------


def default_mesh(gallery_shards: int = 1) -> Mesh:
    """Return a mesh of every visible device: ``gallery_shards`` gallery shards, the rest query shards.

    On one host this is every local device; after ``jax.distributed.initialize``
    it spans every process (see docs/scaling.md).
    """
    devices = np.asarray(jax.devices())
    shards = check_int(gallery_shards, "gallery_shards", low=1, high=devices.size)
    if devices.size % shards:
        raise ConfigError(f"gallery_shards={shards} does not divide the {devices.size} devices.")
    # Gallery shard j takes the j-th run of consecutive devices. Devices are listed process
    # by process, so with one shard per host only the top-K lists cross hosts.
    return Mesh(devices.reshape(shards, devices.size // shards).T, (QUERY_AXIS, GALLERY_AXIS))


def mesh_sizes(mesh: Mesh | None) -> tuple[int, int]:
    """Return (query shards, gallery shards) of a mesh; (1, 1) without one."""
    if mesh is None:
        return 1, 1
    if tuple(mesh.axis_names) != (QUERY_AXIS, GALLERY_AXIS):
        raise ConfigError(f"mesh: expected axis names {(QUERY_AXIS, GALLERY_AXIS)}, got {mesh.axis_names}.")
    return mesh.shape[QUERY_AXIS], mesh.shape[GALLERY_AXIS]


def block_rows(block: int, mesh: Mesh | None) -> int:
    """Return the padded rows of a query block: at least 2 per query shard, a multiple of the shards.

    XLA lowers a one-row product to a matrix-vector product, which sums in
    another order, so no shard ever gets a single row.
    """
    shards, _ = mesh_sizes(mesh)
    rows = max(block, 2 * shards)
    return -(-rows // shards) * shards


def _host_if_multiprocess(tree):
    # Placing an array on devices of other processes starts from the same host array in
    # every process; a device array of this process cannot be sent to them.
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(np.asarray, tree)


def replicate(tree, mesh: Mesh | None):
    """Place every array of ``tree`` on all devices of ``mesh`` (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(_host_if_multiprocess(tree), NamedSharding(mesh, P()))


def to_host(x) -> np.ndarray:
    """Return a device array as one NumPy array, gathered over processes when it spans several."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def shard_queries(tree, mesh: Mesh | None):
    """Split axis 0 of every array of ``tree`` over the query shards of ``mesh``."""
    if mesh is None:
        return tree
    return jax.device_put(_host_if_multiprocess(tree), NamedSharding(mesh, P(QUERY_AXIS)))


# --- kernels ------------------------------------------------------------------------------


def positive_scores(queries, rows):
    """Return <q_i, rows[i, j]> (b, p) with the bits of the search's own scores.

    Each score must equal, bit for bit, the one the search computes for the
    same pair, so it is taken from a product of ``TILE`` columns too: groups of
    ``TILE // p`` queries are multiplied with the rows of their own positives.
    """
    b, p, d = rows.shape
    per_group = max(1, TILE // p)
    groups = -(-b // per_group)
    q = pad_rows(queries, groups * per_group).reshape(groups, per_group, d)
    r = pad_rows(rows, groups * per_group).reshape(groups, per_group * p, d)
    sims = jax.lax.map(lambda args: tiled_similarity(*args), (q, r))  # (groups, per_group, per_group * p)
    own = jnp.arange(per_group)[:, None] * p + jnp.arange(p)[None, :]
    picked = jnp.take_along_axis(sims, jnp.broadcast_to(own, (groups, per_group, p)), axis=2)
    return picked.reshape(groups * per_group, p)[:b]


def _count_above(sims, counted, positive_score):
    """Count, per positive, the counted columns scoring at least its score (b, p)."""
    hits = (sims[:, None, :] >= positive_score[:, :, None]) & counted[:, None, :]
    return jnp.sum(hits, axis=2, dtype=jnp.int32)


def _step(queries, gallery, start, offset, valid_from, valid_to, values, indices, positives, positive_score,
          above, *, k: int, width: int, own_scores: bool):
    """Merge one gallery block into the running top-K of one query block.

    The block is rows ``start .. start + width`` of ``gallery``; its first row
    is gallery item ``offset``. Columns outside ``valid_from .. valid_to``
    (block-relative) are ignored: the last block of a device gallery starts
    early so it needs no padding, and its first columns were seen already.
    """
    block = jax.lax.dynamic_slice_in_dim(gallery, start, width)
    sims = tiled_similarity(queries, block)
    cols = jnp.arange(width)
    valid = (cols >= valid_from) & (cols < valid_to)
    masked = jnp.where(valid[None, :], sims, -jnp.inf)
    new_values, new_indices = jax.lax.top_k(masked, min(k, width))
    values, indices = merge_top_k(values, indices, new_values, new_indices + offset, k)
    if positives is None:
        return values, indices, positive_score, above
    local = positives - offset
    inside = (positives >= 0) & (local >= valid_from) & (local < valid_to)
    if own_scores:
        at = jnp.take_along_axis(sims, jnp.clip(local, 0, width - 1), axis=1)
        positive_score = jnp.where(positives >= 0, at, jnp.inf)
    rows = jnp.arange(queries.shape[0])[:, None]
    is_positive = jnp.zeros(sims.shape, bool).at[rows, jnp.where(inside, local, width)].set(True, mode="drop")
    above = above + _count_above(sims, valid[None, :] & ~is_positive, positive_score)
    return values, indices, positive_score, above


@functools.partial(jax.jit, static_argnames=("k", "width", "own_scores", "mesh"))
def search_step(queries, gallery, start, offset, valid_from, valid_to, values, indices, positives,
                positive_score, above, *, k: int, width: int, own_scores: bool, mesh: Mesh | None = None):
    """Run one (query block, gallery block) step of the search; see :func:`_step`.

    With a mesh, the queries (and the state of each query) are split over its
    query axis, and ``gallery`` is replicated: a gallery split over the
    gallery axis goes through :func:`sharded_gallery_step` instead.
    """
    step = functools.partial(_step, k=k, width=width, own_scores=own_scores)
    if mesh is None:
        return step(queries, gallery, start, offset, valid_from, valid_to, values, indices, positives,
                    positive_score, above)
    q, rep = P(QUERY_AXIS), P()
    mapped = jax.shard_map(step, mesh=mesh, in_specs=(q, rep, rep, rep, rep, rep, q, q, q, q, q),
                           out_specs=(q, q, q, q), check_vma=False)
    return mapped(queries, gallery, start, offset, valid_from, valid_to, values, indices, positives,
                  positive_score, above)


@functools.partial(jax.jit, static_argnames=("k", "width", "n_gallery", "mesh"))
def sharded_gallery_step(queries, gallery, start, valid_from, values, indices, positives, positive_score,
                         above, *, k: int, width: int, n_gallery: int, mesh: Mesh):
    """Run :func:`search_step` with ``gallery`` split in equal shards over the gallery axis.

    Each device searches block ``start`` of its own shard; the running top-K
    of each device stays local until :func:`merge_gallery_shards`.
    """

    def step(q, g, start, valid_from, values, indices, positives, positive_score, above):
        shard_rows = g.shape[0]
        offset = jax.lax.axis_index(GALLERY_AXIS) * shard_rows + start
        valid_to = jnp.clip(n_gallery - offset, 0, width)
        return _step(q, g, start, offset, valid_from, valid_to, values, indices, positives, positive_score,
                     above, k=k, width=width, own_scores=False)

    q, rep, both = P(QUERY_AXIS), P(), P(QUERY_AXIS, GALLERY_AXIS)
    mapped = jax.shard_map(step, mesh=mesh, in_specs=(q, P(GALLERY_AXIS), rep, rep, both, both, q, q, both),
                           out_specs=(both, both, q, both), check_vma=False)
    return mapped(queries, gallery, start, valid_from, values, indices, positives, positive_score, above)


@functools.partial(jax.jit, static_argnames=("k", "mesh"))
def merge_gallery_shards(values, indices, above, *, k: int, mesh: Mesh):
    """Merge the per-shard top-K lists (in shard order, so ties keep index order) and sum the counts."""

    def merge(values, indices, above):
        all_values = jax.lax.all_gather(values, GALLERY_AXIS, axis=1, tiled=True)
        all_indices = jax.lax.all_gather(indices, GALLERY_AXIS, axis=1, tiled=True)
        best, at = jax.lax.top_k(all_values, k)
        return best, jnp.take_along_axis(all_indices, at, axis=1), jax.lax.psum(above, GALLERY_AXIS)

    both, q = P(QUERY_AXIS, GALLERY_AXIS), P(QUERY_AXIS)
    mapped = jax.shard_map(merge, mesh=mesh, in_specs=(both, both, both), out_specs=(q, q, q), check_vma=False)
    return mapped(values, indices, above)


@functools.partial(jax.jit, static_argnames=("mesh",))
def positive_scores_step(queries, rows, *, mesh: Mesh | None = None):
    """Run :func:`positive_scores` for one query block, split over the query axis of ``mesh``."""
    if mesh is None:
        return positive_scores(queries, rows)
    q = P(QUERY_AXIS)
    return jax.shard_map(positive_scores, mesh=mesh, in_specs=(q, q), out_specs=q, check_vma=False)(queries, rows)


# --- drivers -------------------------------------------------------------------------------


def load_rows(array, name: str, dim: int | None = None, rows: int = LOAD_ROWS) -> np.ndarray:
    """Validate and normalise a host array (or ``np.memmap``) ``rows`` rows at a time.

    Returns one float32 array; memory peaks at the result plus one chunk,
    where :func:`as_embeddings` on the whole array would hold several copies.
    """
    n = array.shape[0] if hasattr(array, "shape") else len(array)
    if n <= rows or not isinstance(array, np.ndarray) or array.ndim != 2:
        return as_embeddings(array, name, dim=dim)
    out = np.empty((n, array.shape[1]), dtype=np.float32)
    for lo, hi in iter_blocks(n, rows):
        out[lo:hi] = as_embeddings(array[lo:hi], f"{name} rows {lo}..{hi - 1}", dim=dim)
    return out


def _initial_state(rows: int, k: int, width: int, positives, mesh: Mesh | None, gallery_shards: int = 1):
    values = jnp.full((rows, k * gallery_shards), -jnp.inf, dtype=jnp.float32)
    indices = jnp.full((rows, k * gallery_shards), -1, dtype=jnp.int32)
    above = None if positives is None else jnp.zeros((rows, positives.shape[1] * gallery_shards), jnp.int32)
    return values, indices, above


def _blocks_of(n_gallery: int, width: int):
    """Yield (lo, start, valid_from) of the gallery blocks: block rows start..start+width cover lo..lo+width."""
    for lo in range(0, n_gallery, width):
        start = min(lo, n_gallery - width)
        yield lo, start, lo - start


def search(
    queries,
    gallery,
    top_k: int,
    *,
    positives=None,
    block_size: int = 1024,
    gallery_block_size: int | None = None,
    backend: str = "auto",
    mesh: Mesh | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Return the exact top-K gallery items of every query by cosine score.

    Args:
      queries: (nq, d) embeddings; validated and L2-normalised here.
      gallery: (ng, d) embeddings. A JAX array is used as is, so it must be
        normalised already, as :func:`nia_jax.rerank` makes it. A NumPy array
        or ``np.memmap`` is validated and normalised one gallery block at a
        time, and never copied whole when ``gallery_block_size`` is set.
      top_k: K, at most ng.
      positives: optional ground truth, (nq, p) gallery indices padded with -1
        (see :func:`nia_jax._validation.as_positives`); adds each positive's
        score and the count of other items at or above it.
      block_size: queries per block.
      gallery_block_size: gallery rows per block; None searches the whole
        gallery at once. Memory grows with block_size x gallery_block_size.
      backend: ``"auto"``, ``"jax"`` or ``"faiss"`` (see the module docstring).
      mesh: a mesh with axes ("queries", "gallery") (see :func:`default_mesh`)
        to split queries, and gallery rows, over devices.
      on_block: called with (steps done, total steps) for progress bars.
    """
    backend = resolve_backend(backend, has_positives=positives is not None, mesh=mesh)
    q = as_embeddings(queries, "queries")
    n_queries, dim = q.shape
    n_gallery = gallery.shape[0]
    k = check_int(top_k, "top_k", low=1, high=n_gallery)
    block = min(check_int(block_size, "block_size", low=1), n_queries)
    width = n_gallery if gallery_block_size is None else min(
        check_int(gallery_block_size, "gallery_block_size", low=1), n_gallery)
    if backend == "faiss":
        return faiss_search(q, gallery, k, block_size=block, on_block=on_block)
    pos = None if positives is None else np.asarray(positives, dtype=np.int32)
    if isinstance(gallery, jax.Array):
        return _search_device(q, gallery, k, pos, block, width, mesh, on_block)
    if width == n_gallery:
        return _search_device(q, jnp.asarray(load_rows(gallery, "gallery", dim)), k, pos, block, width, mesh,
                              on_block)
    return _search_host(q, gallery, k, pos, block, width, mesh, on_block)


def _positive_rows(gallery, positives: np.ndarray, dim: int):
    """Return the normalised gallery rows of every positive (nq, p, d); zeros where padded."""
    flat = np.maximum(positives.reshape(-1), 0)
    if isinstance(gallery, jax.Array):
        rows = gallery[jnp.asarray(flat)]
    else:
        order = np.argsort(flat, kind="stable")  # reads in file order, which a memmap serves faster
        picked = np.empty((flat.size, dim), dtype=np.float32)
        picked[order] = as_embeddings(np.asarray(gallery[flat[order]]), "gallery rows of the positives", dim=dim)
        rows = jnp.asarray(picked)
    rows = jnp.where(jnp.asarray(positives.reshape(-1) >= 0)[:, None], rows, 0.0)
    return rows.reshape(positives.shape + (dim,))


class DeviceSearch:
    """The JAX search of one normalised device gallery, one query block at a time.

    Built once per gallery; :meth:`block` runs every gallery block for one
    padded query block and returns device arrays, so a caller (the re-ranking
    engine) can score the block before searching the next one.
    """

    def __init__(self, gallery: jax.Array, k: int, width: int, mesh: Mesh | None = None):
        self.n_gallery, self.dim = gallery.shape
        self.k, self.mesh = k, mesh
        self.source = gallery
        _, self.g_shards = mesh_sizes(mesh)
        self.own_scores = width == self.n_gallery and self.g_shards == 1
        if self.g_shards > 1:
            shard_rows = -(-self.n_gallery // self.g_shards)
            self.width = min(width, shard_rows)
            padded = _host_if_multiprocess(pad_rows(gallery, shard_rows * self.g_shards))
            self.gallery = jax.device_put(padded, NamedSharding(mesh, P(GALLERY_AXIS)))
            self.blocks = list(_blocks_of(shard_rows, self.width))
        else:
            self.width = width
            self.gallery = replicate(gallery, mesh)
            self.blocks = list(_blocks_of(self.n_gallery, width))

    def block(self, q_block, pos_block=None):
        """Search one padded query block; return (values, indices, positive scores, counts) on device."""
        mesh, k, width = self.mesh, self.k, self.width
        rows = q_block.shape[0]
        scores = None
        if pos_block is not None:
            if self.own_scores:
                scores = shard_queries(jnp.zeros(pos_block.shape, jnp.float32), mesh)
            else:
                pos_rows = _positive_rows(self.source, to_host(pos_block), self.dim)
                scores = positive_scores_step(q_block, shard_queries(pos_rows, mesh), mesh=mesh)
                scores = jnp.where(pos_block >= 0, scores, jnp.inf)
        values, indices, above = _initial_state(rows, k, width, pos_block, mesh, self.g_shards)
        for _, start, valid_from in self.blocks:
            if self.g_shards > 1:
                values, indices, scores, above = sharded_gallery_step(
                    q_block, self.gallery, start, valid_from, values, indices, pos_block, scores, above,
                    k=k, width=width, n_gallery=self.n_gallery, mesh=mesh)
            else:
                values, indices, scores, above = search_step(
                    q_block, self.gallery, start, start, valid_from, width, values, indices, pos_block, scores,
                    above, k=k, width=width, own_scores=self.own_scores, mesh=mesh)
        if self.g_shards > 1:
            values, indices, above = merge_gallery_shards(values, indices, above, k=k, mesh=mesh)
        return values, indices, scores, above


def _search_device(q, gallery, k, pos, block, width, mesh, on_block):
    """Query blocks outside, gallery blocks inside, over a normalised device gallery."""
    n_queries = q.shape[0]
    searcher = DeviceSearch(gallery, k, width, mesh)
    rows = block_rows(block, mesh)
    outputs = []
    for lo, hi in iter_blocks(n_queries, block):
        q_block = shard_queries(pad_rows(jnp.asarray(q[lo:hi]), rows), mesh)
        pos_block = None if pos is None else shard_queries(pad_rows(jnp.asarray(pos[lo:hi]), rows, fill=-1), mesh)
        result = searcher.block(q_block, pos_block)
        outputs.append(tuple(None if x is None else to_host(x)[: hi - lo] for x in result))
        if on_block is not None:
            on_block(hi, n_queries)
    return _stack(outputs)


def _search_host(q, gallery, k, pos, block, width, mesh, on_block):
    """Gallery blocks outside (each read once from the host array), query blocks inside."""
    n_queries, dim = q.shape
    n_gallery = gallery.shape[0]
    q_shards, g_shards = mesh_sizes(mesh)
    if g_shards > 1:
        raise ConfigError("a host (NumPy or memmap) gallery is streamed block by block; split only queries "
                          "over the mesh, or pass the gallery as a JAX array to split it.")
    rows = block_rows(block, mesh)
    spans = list(iter_blocks(n_queries, block))
    q_blocks = [shard_queries(pad_rows(jnp.asarray(q[lo:hi]), rows), mesh) for lo, hi in spans]

    # Per query block: its running state and, with ground truth, its positives' scores.
    states, pos_blocks, scores = [], [], []
    for lo, hi in spans:
        pos_block = None if pos is None else shard_queries(pad_rows(jnp.asarray(pos[lo:hi]), rows, fill=-1), mesh)
        pos_blocks.append(pos_block)
        states.append(_initial_state(rows, k, width, pos_block, mesh))
        if pos_block is None:
            scores.append(None)
            continue
        found = positive_scores_step(q_blocks[len(pos_blocks) - 1],
                                     shard_queries(_positive_rows(gallery, to_host(pos_block), dim), mesh),
                                     mesh=mesh)
        scores.append(jnp.where(pos_block >= 0, found, jnp.inf))

    total = len(spans) * -(-n_gallery // width)
    done = 0
    for lo, hi in iter_blocks(n_gallery, width):
        chunk = as_embeddings(np.asarray(gallery[lo:hi]), f"gallery rows {lo}..{hi - 1}", dim=dim)
        g_block = replicate(pad_rows(jnp.asarray(chunk), width), mesh)
        for i, q_block in enumerate(q_blocks):
            values, indices, above = states[i]
            values, indices, _, above = search_step(
                q_block, g_block, 0, lo, 0, hi - lo, values, indices, pos_blocks[i], scores[i], above,
                k=k, width=width, own_scores=False, mesh=mesh)
            states[i] = (values, indices, above)
            done += 1
            if on_block is not None:
                on_block(done, total)

    outputs = []
    for (lo, hi), (values, indices, above), score in zip(spans, states, scores):
        n = hi - lo
        outputs.append(tuple(None if x is None else to_host(x)[:n] for x in (values, indices, score, above)))
    return _stack(outputs)


def _stack(outputs) -> SearchResult:
    def cat(i):
        return None if outputs[0][i] is None else np.concatenate([o[i] for o in outputs])

    return SearchResult(cat(0), cat(1), cat(2), cat(3))


class FaissSearch:
    """``faiss.IndexFlatIP`` over one gallery (exact inner product, float32, all CPU threads).

    ``gallery`` is a normalised JAX array or a host array, added to the index
    in chunks; faiss keeps its own float32 copy. ``queries`` are all the
    normalised float32 queries of the run.

    Faiss's scores for a query depend on which other queries one call
    searches with it: the same rows searched in blocks of 1, 7, 512 or 1,024
    differ in their last bits, and sometimes in a candidate at a near tie. So
    every call searches one fixed chunk, queries ``c * CHUNK`` to
    ``(c + 1) * CHUNK``, whatever block of rows is asked for, and the results
    do not depend on the caller's block size.
    """

    CHUNK = 1024

    def __init__(self, gallery, k: int, queries: np.ndarray):
        import faiss

        self.k = k
        self.queries = queries
        self.index = faiss.IndexFlatIP(gallery.shape[1])
        if isinstance(gallery, jax.Array):
            self.index.add(np.asarray(gallery))
        else:
            for lo, hi in iter_blocks(gallery.shape[0], LOAD_ROWS):
                rows = as_embeddings(np.asarray(gallery[lo:hi]), f"gallery rows {lo}..{hi - 1}",
                                     dim=gallery.shape[1])
                self.index.add(rows)
        self._last = (-1, None)  # the last chunk searched, kept for the next block

    def _chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._last[0] != index:
            rows = self.queries[index * self.CHUNK:(index + 1) * self.CHUNK]
            values, indices = self.index.search(np.ascontiguousarray(rows, dtype=np.float32), self.k)
            self._last = (index, (values, indices.astype(np.int32)))
        return self._last[1]

    def rows(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (values, indices) of the top-K of queries ``lo .. hi - 1``."""
        parts = []
        for index in range(lo // self.CHUNK, -(-hi // self.CHUNK)):
            values, indices = self._chunk(index)
            first = index * self.CHUNK
            start, stop = max(lo, first) - first, min(hi, first + self.CHUNK) - first
            parts.append((values[start:stop], indices[start:stop]))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def faiss_search(queries: np.ndarray, gallery, k: int, *, block_size: int = 1024,
                 on_block: Callable[[int, int], None] | None = None) -> SearchResult:
    """Search normalised float32 ``queries`` with :class:`FaissSearch`, block by block."""
    searcher = FaissSearch(gallery, k, queries)
    n_queries = queries.shape[0]
    values = np.empty((n_queries, k), dtype=np.float32)
    indices = np.empty((n_queries, k), dtype=np.int32)
    for lo, hi in iter_blocks(n_queries, block_size):
        values[lo:hi], indices[lo:hi] = searcher.rows(lo, hi)
        if on_block is not None:
            on_block(hi, n_queries)
    return SearchResult(values, indices, None, None)
