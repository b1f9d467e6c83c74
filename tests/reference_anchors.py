"""Plain NumPy (float64) references of the baseline re-rankers, written from their formulas.

Each function returns the full (nq, ng) score matrix. They loop and build
sets where the formulas do, and share no code with the JAX kernels: the
inverted softmaxes divide exponentials directly (float64 represents exp(100)),
Sinkhorn rescales the matrix itself rather than log potentials, and the
k-reciprocal sets are Python sets.

``query_self[i]`` is query i's row in the query bank and ``gallery_self[j]``
gallery item j's row in the gallery bank, or -1 (None means all -1): in
transductive runs the banks are the queries and the gallery themselves.
"""

from __future__ import annotations

import numpy as np


def normalise(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _self_rows(self_index, n):
    return np.full(n, -1) if self_index is None else np.asarray(self_index)


def _mean_top(sims, k, skip=-1):
    values = [s for j, s in enumerate(sims) if j != skip]
    return float(np.mean(sorted(values, reverse=True)[:k]))


def _inverted_softmax_log(sims_to_bank, sims, beta, skip=-1):
    """log[exp(beta s) / sum_b exp(beta s_b)] for one gallery item, bank row ``skip`` left out."""
    keep = [j for j in range(sims_to_bank.shape[0]) if j != skip]
    return np.log(np.exp(beta * sims) / np.exp(beta * sims_to_bank[keep]).sum())


def nnn(queries, gallery, query_bank, gallery_bank=None, *, k, alpha, **_):
    q, g, bq = normalise(queries), normalise(gallery), normalise(query_bank)
    bias = np.array([_mean_top(bq @ item, k) for item in g])
    return q @ g.T - alpha * bias[None, :]


def csls(queries, gallery, query_bank, gallery_bank=None, *, k, **_):
    q, g, bq = normalise(queries), normalise(gallery), normalise(query_bank)
    gallery_radius = np.array([_mean_top(bq @ item, k) for item in g])
    if gallery_bank is None:
        query_radius = np.zeros(q.shape[0])
    else:
        bg = normalise(gallery_bank)
        query_radius = np.array([_mean_top(bg @ item, k) for item in q])
    return 2 * q @ g.T - query_radius[:, None] - gallery_radius[None, :]


def qbnorm_is(queries, gallery, query_bank, gallery_bank=None, *, beta, **_):
    q, g, bq = normalise(queries), normalise(gallery), normalise(query_bank)
    sims = q @ g.T
    out = np.empty_like(sims)
    for j in range(g.shape[0]):
        out[:, j] = _inverted_softmax_log(bq @ g[j], sims[:, j], beta)
    return out


def qbnorm_dis(queries, gallery, query_bank, gallery_bank=None, *, beta, k, query_self=None, **_):
    q, g, bq = normalise(queries), normalise(gallery), normalise(query_bank)
    sims = q @ g.T
    normalised = qbnorm_is(queries, gallery, query_bank, beta=beta)
    bank_top = [set(np.argsort(-(g @ b), kind="stable")[:k].tolist()) for b in bq]
    own_rows = _self_rows(query_self, q.shape[0])
    out = sims.copy()
    for i in range(q.shape[0]):
        activation = set()
        for row, top in enumerate(bank_top):
            if row != own_rows[i]:
                activation |= top
        if int(np.argmax(sims[i])) in activation:
            out[i] = normalised[i]
    return out


def dualis(queries, gallery, query_bank, gallery_bank, *, beta1, beta2, gallery_bank_side="gallery",
           gallery_self=None, **_):
    q, g = normalise(queries), normalise(gallery)
    bq, bg = normalise(query_bank), normalise(gallery_bank)
    sims = q @ g.T
    own_rows = _self_rows(gallery_self, g.shape[0])
    out = np.empty_like(sims)
    for j in range(g.shape[0]):
        first = _inverted_softmax_log(bq @ g[j], sims[:, j], beta1)
        if gallery_bank_side == "gallery":
            second = _inverted_softmax_log(bg @ g[j], sims[:, j], beta2, skip=own_rows[j])
        else:
            second = np.array([np.log(np.exp(beta2 * sims[i, j]) / np.exp(beta2 * (bg @ q[i])).sum())
                               for i in range(q.shape[0])])
        out[:, j] = first + second
    return out


def dsl(queries, gallery, query_bank, gallery_bank=None, *, tau, **_):
    """The documented order-preserving score sign(v) softplus(log|v| + 2/tau + log nbq) of v = s p."""
    q, g, bq = normalise(queries), normalise(gallery), normalise(query_bank)
    sims = q @ g.T
    prior = np.exp(sims / tau) / np.exp((bq @ g.T) / tau).sum(axis=0)[None, :]
    value = sims * prior
    with np.errstate(divide="ignore"):
        magnitude = np.log(np.abs(value)) + 2.0 / tau + np.log(bq.shape[0])
    return np.sign(value) * np.logaddexp(0.0, magnitude)


def _sinkhorn_column_scaling(kernel, n_iter):
    """Return the column scaling v of diag(u) K diag(v) with row sums 1/nr and column sums 1/nc."""
    rows, columns = kernel.shape
    u, v = np.ones(rows), np.ones(columns)
    for _ in range(n_iter):
        u = (1.0 / rows) / (kernel @ v)
        v = (1.0 / columns) / (kernel.T @ u)
    return v


def _sinkhorn_scores(q, g, bq, extra_columns, beta, n_iter):
    columns = g if extra_columns is None else np.concatenate([g, extra_columns])
    scaling = _sinkhorn_column_scaling(np.exp(beta * (bq @ columns.T)), n_iter)
    out = np.empty((q.shape[0], g.shape[0]))
    for i in range(q.shape[0]):
        row = np.exp(beta * (columns @ q[i])) * scaling
        out[i] = np.log(row[: g.shape[0]] / row.sum())
    return out


def sinkhorn(queries, gallery, query_bank, gallery_bank=None, *, beta, n_iter, **_):
    return _sinkhorn_scores(normalise(queries), normalise(gallery), normalise(query_bank), None, beta, n_iter)


def dbsn(queries, gallery, query_bank, gallery_bank, *, beta, n_iter, gallery_self=None, **_):
    bg = normalise(gallery_bank)
    duplicates = set(_self_rows(gallery_self, normalise(gallery).shape[0]).tolist())
    extra = bg[[j for j in range(bg.shape[0]) if j not in duplicates]]
    return _sinkhorn_scores(normalise(queries), normalise(gallery), normalise(query_bank), extra, beta, n_iter)


def _weighted_neighbour_mean(x, pool, k, skip=-1):
    sims = pool @ x
    order = [j for j in np.argsort(-sims, kind="stable") if j != skip][:k]
    weights = np.maximum(sims[order], 0.0)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(k, 1.0 / k)
    return weights @ pool[order]


def invgc(queries, gallery, query_bank, gallery_bank=None, *, k, r_q, r_g=0.0, pool="query_bank",
          gallery_self=None, **_):
    q, g, bq = normalise(queries), normalise(gallery), normalise(query_bank)
    own_rows = _self_rows(gallery_self, g.shape[0])
    moved = []
    for j, item in enumerate(g):
        new = item - r_q * _weighted_neighbour_mean(item, bq, k)
        if pool == "both":
            new = new - r_g * _weighted_neighbour_mean(item, normalise(gallery_bank), k, skip=own_rows[j])
        moved.append(new)
    return q @ normalise(np.array(moved)).T


def aqe(queries, gallery, query_bank=None, gallery_bank=None, *, n, alpha, **_):
    q, g = normalise(queries), normalise(gallery)
    expanded = []
    for item in q:
        sims = g @ item
        top = np.argsort(-sims, kind="stable")[:n]
        expanded.append(item + sum(max(sims[j], 0.0) ** alpha * g[j] for j in top))
    return normalise(np.array(expanded)) @ g.T


def dba(queries, gallery, query_bank=None, gallery_bank=None, *, n, alpha, **_):
    q, g = normalise(queries), normalise(gallery)
    augmented = []
    for i, item in enumerate(g):
        sims = g @ item
        others = [j for j in np.argsort(-sims, kind="stable") if j != i][: n - 1]
        augmented.append(item + sum(max(sims[j], 0.0) ** alpha * g[j] for j in others))
    return q @ normalise(np.array(augmented)).T


def kreciprocal(queries, gallery, query_bank, gallery_bank=None, *, k1, k2, lam, query_self=None, **_):
    """k-reciprocal re-ranking over U = query bank + gallery, as documented in the JAX module.

    Vectors have n + 1 entries: the last one is the self weight of a query
    that is not a member of U.
    """
    q, g, bq = normalise(queries), normalise(gallery), normalise(query_bank)
    members = np.concatenate([bq, g])
    n = members.shape[0]
    sims = members @ members.T
    half = int(np.ceil(k1 / 2))

    def nearest(row, k, skip):
        return [j for j in np.argsort(-row, kind="stable") if j != skip][:k]

    near_k1 = [nearest(sims[i], k1, i) for i in range(n)]
    near_half = [nearest(sims[i], half, i) for i in range(n)]
    half_sets = [{i} | {j for j in near_half[i] if i in near_half[j]} for i in range(n)]

    def expand(reciprocal, own):
        out = set(reciprocal)
        for j in reciprocal:
            if j == own:
                continue
            if len(half_sets[j] & reciprocal) > 2.0 / 3.0 * len(half_sets[j]):
                out |= half_sets[j]
        return out

    def encode(members_set, row, outside):
        vector = np.zeros(n + 1)
        for u in members_set:
            vector[u] = np.exp(row[u] - 1.0)
        if outside:
            vector[n] = 1.0
        return vector / vector.sum()

    member_vectors = []
    for i in range(n):
        reciprocal = {i} | {j for j in near_k1[i] if i in near_k1[j]}
        member_vectors.append(encode(expand(reciprocal, i), sims[i], outside=False))

    def query_expansion(vector, row, own):
        return (vector + sum(member_vectors[j] for j in nearest(row, k2 - 1, own))) / k2

    gallery_vectors = [query_expansion(member_vectors[bq.shape[0] + j], sims[bq.shape[0] + j], bq.shape[0] + j)
                       for j in range(g.shape[0])]
    kth_similarity = [sorted((sims[j, m] for m in range(n) if m != j), reverse=True)[k1 - 1] for j in range(n)]

    own_rows = _self_rows(query_self, q.shape[0])
    out = np.empty((q.shape[0], g.shape[0]))
    for a, item in enumerate(q):
        row = members @ item
        own = int(own_rows[a])
        neighbours = nearest(row, k1, own)
        if own >= 0:
            reciprocal = {own} | {j for j in neighbours if own in near_k1[j]}
        else:
            # The query would enter j's k1 nearest if it joined U (ties favour the query).
            reciprocal = {j for j in neighbours if row[j] >= kth_similarity[j]}
        vector = query_expansion(encode(expand(reciprocal, own), row, outside=own < 0), row, own)
        for b in range(g.shape[0]):
            shared = np.minimum(vector, gallery_vectors[b]).sum()
            union = np.maximum(vector, gallery_vectors[b]).sum()
            distance = (1 - lam) * (1 - shared / union) + lam * (1 - item @ g[b])
            out[a, b] = -distance
    return out


REFERENCES = {
    "nnn": nnn, "csls": csls, "qbnorm_is": qbnorm_is, "qbnorm_dis": qbnorm_dis, "dualis": dualis,
    "dsl": dsl, "sinkhorn": sinkhorn, "dbsn": dbsn, "invgc": invgc, "kreciprocal": kreciprocal,
    "aqe": aqe, "dba": dba,
}
