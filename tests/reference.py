"""Plain NumPy (float64) references that the JAX kernels are tested against.

They build every nb-dimensional vector explicitly and loop where the maths
loops, so they share no shortcut with the kernels they check.
"""

from __future__ import annotations

import numpy as np


def normalise(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def local_weight_vector(x, pool, k, weighting, tau, self_index=-1):
    """Dense (nb,) local weight vector of one sample, self row excluded."""
    sims = pool @ x
    candidates = [j for j in np.argsort(-sims, kind="stable") if j != self_index][:k]
    s = sims[candidates]
    if weighting == "uniform":
        c = np.full(k, 1.0 / k)
    elif weighting == "softmax":
        e = np.exp((s - s.max()) / tau)
        c = e / e.sum()
    else:
        b = np.maximum(s, 0.0) ** tau
        c = b / b.sum() if b.sum() > 0 else np.full(k, 1.0 / k)
    out = np.zeros(pool.shape[0])
    out[candidates] = c
    return out


def ridge_code(x, pool, lam, self_index=-1):
    """Ridge coefficients of x over the pool rows, without the self row (explicit solve)."""
    keep = [j for j in range(pool.shape[0]) if j != self_index]
    sub = pool[keep]
    alpha = np.linalg.solve(sub @ sub.T + lam * np.eye(len(keep)), sub @ x)
    out = np.zeros(pool.shape[0])
    out[keep] = alpha
    return out


def nia_feature(x, pool, k, weighting, tau, lam, w, self_index=-1):
    """phi(x) = normalise((1 - w) l / ||l|| + w a / ||a||), built densely."""
    l = normalise(local_weight_vector(x, pool, k, weighting, tau, self_index))
    a = normalise(ridge_code(x, pool, lam, self_index))
    return normalise((1 - w) * l + w * a)


def hubness(g, pool, k, weighting, tau, lam, w, self_index=-1):
    """h(g) = (1 - w) <g, P^T c(g)> + w <g, P^T a(g)>, from dense weights and an explicit solve."""
    c = local_weight_vector(g, pool, k, weighting, tau, self_index)
    a = ridge_code(g, pool, lam, self_index)
    return (1 - w) * (c @ (pool @ g)) + w * (g @ (pool.T @ a))


def nia_scores(queries, gallery, pool, *, k, weighting, tau, lam, w, beta, gamma, form, eta=0.0,
               query_self=None, gallery_self=None):
    """Full (nq, ng) NIA scores over one pool, in float64."""
    queries, gallery, pool = normalise(queries), normalise(gallery), normalise(pool)
    nq, ng = queries.shape[0], gallery.shape[0]
    query_self = np.full(nq, -1) if query_self is None else query_self
    gallery_self = np.full(ng, -1) if gallery_self is None else gallery_self
    base = queries @ gallery.T
    hub = np.array([hubness(g, pool, k, weighting, tau, lam, w, s) for g, s in zip(gallery, gallery_self)])
    if form == "none":
        return base - eta * hub[None, :]
    gal_phi = np.stack([nia_feature(g, pool, k, weighting, tau, lam, w, s) for g, s in zip(gallery, gallery_self)])
    if form == "embedding":
        moved = normalise(gallery + beta * gal_phi @ pool)
        nia = queries @ moved.T
    else:
        q_phi = np.stack([nia_feature(q, pool, k, weighting, tau, lam, w, s) for q, s in zip(queries, query_self)])
        nia = q_phi @ gal_phi.T
    return (1 - gamma) * base + gamma * nia - eta * hub[None, :]


def nearest_rows(x, pool, k, self_index=-1):
    """Return (similarities, indices) of the k pool rows nearest to x, self row skipped.

    Equal similarities are ordered by increasing row index (stable sort).
    """
    sims = np.asarray(pool, dtype=np.float64) @ np.asarray(x, dtype=np.float64)
    order = [j for j in np.argsort(-sims, kind="stable") if j != self_index][:k]
    return sims[order], np.asarray(order)


def nia_scores_pools(queries, gallery, pools, *, k, weighting, tau, lam, w, beta, gamma, form, eta=0.0):
    """Full (nq, ng) NIA scores when several pools are used (``pool="both"``), in float64.

    ``pools`` is a list of ``(pool, query_self, gallery_self)``. The neighbour
    form averages the pools' scores. The embedding form averages the pools'
    expressions P^T phi(g) and moves each gallery item once by their mean.
    """
    queries, gallery = normalise(queries), normalise(gallery)
    settings = dict(k=k, weighting=weighting, tau=tau, lam=lam, w=w)
    if form in ("neighbour", "none"):
        # Both the scores and the hubness terms are averaged over the pools.
        scores = [
            nia_scores(queries, gallery, pool, beta=beta, gamma=gamma, form=form, eta=eta,
                       query_self=query_self, gallery_self=gallery_self, **settings)
            for pool, query_self, gallery_self in pools
        ]
        return np.mean(scores, axis=0)
    hubs = []
    for pool, _, gallery_self in pools:
        pool = normalise(pool)
        gallery_self = np.full(gallery.shape[0], -1) if gallery_self is None else gallery_self
        hubs.append([hubness(g, pool, self_index=s, **settings) for g, s in zip(gallery, gallery_self)])
    hub = np.mean(hubs, axis=0)
    expressions = []
    for pool, _, gallery_self in pools:
        pool = normalise(pool)
        gallery_self = np.full(gallery.shape[0], -1) if gallery_self is None else gallery_self
        phi = np.stack([nia_feature(g, pool, self_index=s, **settings) for g, s in zip(gallery, gallery_self)])
        expressions.append(phi @ pool)
    moved = normalise(gallery + beta * np.mean(expressions, axis=0))
    return (1 - gamma) * (queries @ gallery.T) + gamma * (queries @ moved.T) - eta * hub[None, :]
