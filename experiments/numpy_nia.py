"""NIA in plain vectorised NumPy (float32, one query block at a time), the benchmark's baseline.

It computes what :class:`nia_jax.NIA` computes for an inductive run (no
sample is a pool member) with the ``none`` and ``neighbour`` forms. It is
written the way one would without JAX: BLAS products, ``argpartition`` for
the top-K and the local neighbours, and fancy indexing for the candidates.
The benchmark checks that its scores match the library's.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _normalise(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _top(scores, k):
    """Return (values, indices) of the k largest entries per row, best first, ties by index."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(part, order, axis=1)


def _weights(sims, weighting, tau):
    k = sims.shape[1]
    if weighting == "uniform":
        return np.full_like(sims, 1.0 / k)
    if weighting == "softmax":
        e = np.exp((sims - sims.max(axis=1, keepdims=True)) / tau)
        return e / e.sum(axis=1, keepdims=True)
    base = np.maximum(sims, 0.0)
    top = base.max(axis=1, keepdims=True)
    powered = np.where(base > 0, (base / np.where(top > 0, top, 1.0)) ** tau, 0.0)
    total = powered.sum(axis=1, keepdims=True)
    return np.where(total > 0, powered / np.where(total > 0, total, 1.0), 1.0 / k)


class _Pool:
    """A bank's ridge coding map A, A^T A and P^T A."""

    def __init__(self, bank, lam):
        self.bank = bank
        nb, d = bank.shape
        if nb <= d:
            self.coding = np.linalg.solve(bank @ bank.T + lam * np.eye(nb, dtype=np.float32), bank)
        else:
            self.coding = np.linalg.solve(bank.T @ bank + lam * np.eye(d, dtype=np.float32), bank.T).T
        self.coding = self.coding.astype(np.float32)
        self.gram = self.coding.T @ self.coding
        self.reconstruction = bank.T @ self.coding

    def code(self, x, k, weighting, tau, w):
        """Return the code of rows x: neighbours, local, local map, norms and the two fits."""
        sims, neighbours = _top(x @ self.bank.T, k)
        raw = _weights(sims, weighting, tau)
        local = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), _EPS)
        local_map = np.einsum("nk,nkd->nd", local, self.coding[neighbours])
        global_norm = np.sqrt(np.maximum(np.sum((x @ self.gram) * x, axis=1), _EPS))
        cos = np.sum(local_map * x, axis=1) / global_norm
        mix_norm = np.sqrt(np.maximum((1 - w) ** 2 + w**2 + 2 * w * (1 - w) * cos, _EPS))
        return {
            "neighbours": neighbours, "local": local, "local_map": local_map, "global_norm": global_norm,
            "mix_norm": mix_norm, "local_fit": np.sum(raw * sims, axis=1),
            "global_fit": np.sum((x @ self.reconstruction) * x, axis=1),
        }


def _search(q, gallery, k, gallery_block):
    """Return the top-k (values, indices) of q over the gallery, gallery_block rows at a time."""
    values = indices = None
    for lo in range(0, gallery.shape[0], gallery_block):
        found_values, found = _top(q @ gallery[lo:lo + gallery_block].T, min(k, gallery[lo:lo + gallery_block].shape[0]))
        found += lo
        if values is None:
            values, indices = found_values, found
            continue
        both_values = np.concatenate([values, found_values], axis=1)
        both = np.concatenate([indices, found], axis=1)
        values, at = _top(both_values, k)
        indices = np.take_along_axis(both, at, axis=1)
    return values, indices


def rerank(method, queries, gallery, *, query_bank=None, gallery_bank=None, top_k=100, block_size=1024,
           gallery_block=131072, row_block=8192):
    """Return (candidates, scores) of NIA ``method`` (form ``none`` or ``neighbour``, inductive)."""
    if method.form not in ("none", "neighbour"):
        raise NotImplementedError(f"numpy_nia: form={method.form!r} is not implemented")
    queries, gallery = _normalise(queries), np.asarray(gallery)
    names = ("query_bank", "gallery_bank") if method.pool == "both" else (method.pool,)
    banks = {"query_bank": query_bank, "gallery_bank": gallery_bank}
    settings = dict(k=method.k, weighting=method.weighting, tau=method.tau, w=method.w)
    pools, gallery_codes = {}, {}
    hub = np.zeros(gallery.shape[0], dtype=np.float32)
    g_rows = np.empty(gallery.shape, dtype=np.float32)
    for lo in range(0, gallery.shape[0], row_block):
        g_rows[lo:lo + row_block] = _normalise(gallery[lo:lo + row_block])
    for name in names:
        pools[name] = pool = _Pool(_normalise(banks[name]), method.lam)
        parts = [pool.code(g_rows[lo:lo + row_block], **settings) for lo in range(0, gallery.shape[0], row_block)]
        code = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        hub += ((1 - method.w) * code["local_fit"] + method.w * code["global_fit"]) / len(names)
        if method.form == "neighbour":
            gallery_codes[name] = code

    w = method.w
    candidates = np.empty((queries.shape[0], top_k), dtype=np.int64)
    scores = np.empty((queries.shape[0], top_k), dtype=np.float32)
    for lo in range(0, queries.shape[0], block_size):
        q = queries[lo:lo + block_size]
        base, cand = _search(q, g_rows, top_k, gallery_block)
        score = base - method.eta * hub[cand]
        if method.form == "neighbour":
            nia = np.zeros_like(base)
            for name in names:
                pool, g_code = pools[name], gallery_codes[name]
                q_code = pool.code(q, **settings)
                same = q_code["neighbours"][:, None, :, None] == g_code["neighbours"][cand][:, :, None, :]
                local_local = np.einsum("qi,qKij,qKj->qK", q_code["local"], same, g_code["local"][cand])
                rows = g_rows[cand]
                local_q_global_g = np.einsum("bKd,bd->bK", rows, q_code["local_map"])
                global_q_local_g = np.einsum("bKd,bd->bK", g_code["local_map"][cand], q)
                global_global = np.einsum("bKd,bd->bK", rows, q @ pool.gram)
                q_norm, g_norm = q_code["global_norm"][:, None], g_code["global_norm"][cand]
                inner = ((1 - w) ** 2 * local_local
                         + w * (1 - w) * (local_q_global_g / g_norm + global_q_local_g / q_norm)
                         + w**2 * global_global / (q_norm * g_norm))
                nia += inner / (q_code["mix_norm"][:, None] * g_code["mix_norm"][cand])
            score = (1 - method.gamma) * base + method.gamma * nia / len(names) - method.eta * hub[cand]
        candidates[lo:lo + block_size], scores[lo:lo + block_size] = cand, score
    return candidates, scores
