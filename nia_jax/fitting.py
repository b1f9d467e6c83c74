"""Fit NIA's continuous hyperparameters by gradient descent on a smooth retrieval surrogate.

Grid search (``experiments/tune.py``) evaluates every combination of a few
values. Here the continuous settings (tau, lam, w, beta, gamma, eta) are
learned instead. NIA's score is differentiable in all of them: the ridge
factorisation is a Cholesky solve, the local weights are a softmax or a power,
and the fusion is algebra. The static settings (k, weighting, pool, form) are
kept fixed. The neighbour sets are the cosine top-k over the banks, and the
candidates are each query's cosine top-K, so neither depends on the
hyperparameters. Both are computed from the embeddings, and gradients flow
through the scores only.

The surrogate of R@1 is one of:

* ``listwise``: a softmax cross-entropy over each query's K candidates with
  the positives as the target, ``-log sum_{p in P} softmax(s / T)_p``;
* ``smooth_ap``: 1 - Smooth-AP (Brown et al., ECCV 2020), where the
  rank of each positive is a sum of sigmoids ``sigmoid((s_j - s_p) / T)``.

Queries whose positives are all outside the K candidates cannot be helped by
re-ranking and are left out of the loss.

Each hyperparameter is optimised through an unconstrained parameter u, so the
values always stay valid: lam and tau are ``floor + softplus(u)``, eta is
``softplus(u)``, w and gamma are ``sigmoid(u)`` and beta is ``u``. The optimiser
is Adam with a warm-up and cosine decay schedule. It runs full-batch on the
fitting queries of every direction, and it stops early when the loss on
held-out queries of the same split has not improved by ``min_delta`` for
``patience`` steps. The values of the last improvement are returned, unless
they score a lower R@1 than the starting values on all the queries. In that
case the starting values are returned (``keep_start_if_worse``). Every step is
deterministic, so the same seed gives the same fit.

    method = nia_jax.NIA()
    dev = nia_jax.data.coco500.load_tasks(split="dev")
    result = fit(method, dev, FitSettings(seed=0))
    result.method       # a NIA with the learned values
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Literal, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nia_jax._validation import as_embeddings
from nia_jax.data.task import RetrievalTask
from nia_jax.errors import ConfigError
from nia_jax.kernels.similarity import similarity
from nia_jax.rerankers.base import Pools
from nia_jax.rerankers.nia import NIA

logger = logging.getLogger(__name__)

SURROGATES = ("listwise", "smooth_ap")
Surrogate = Literal["listwise", "smooth_ap"]

# Map from each hyperparameter to the function that turns its unconstrained parameter u into a valid value.
TRANSFORMS = {
    "tau": "softplus",
    "lam": "softplus",
    "w": "sigmoid",
    "beta": "identity",
    "gamma": "sigmoid",
    "eta": "softplus",
}
# Lower bounds added to the softplus. The floors keep the ridge system well conditioned and the
# softmax temperature finite, and eta may reach zero.
FLOORS = {"tau": 1e-4, "lam": 1e-4, "eta": 0.0}


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """Settings of :func:`fit`.

    Attributes:
      surrogate: ``listwise`` (softmax cross-entropy) or ``smooth_ap``.
      temperature: T of the surrogate, in score units (CLIP's logit scale of 100 is T = 0.01).
      learning_rate: peak Adam step size in the unconstrained parameters.
      max_steps: maximum number of Adam updates.
      warmup_steps: updates over which the step size rises linearly from zero.
      final_lr_ratio: step size at ``max_steps`` as a fraction of the peak (cosine decay).
      patience: updates without a held-out loss below the best by more than
        ``min_delta`` before the fit stops.
      min_delta: smallest decrease of the held-out loss that counts as an improvement.
      holdout: fraction of each direction's queries held out for early stopping, in (0, 1).
      seed: seed of the held-out split; the optimisation itself has no randomness.
      top_k: candidates per query (K), capped at the gallery size.
      learn: names of the hyperparameters to learn. None learns every one that
        changes the scores of this static setting (see :func:`active_hyperparameters`).
      margin: initial values closer than this to a bound of their range (0 for
        eta, 0 or 1 for w and gamma) are moved inside by it, because the
        parametrisation reaches the bounds only at infinity.
      keep_start_if_worse: return the starting values when the learned ones have
        a lower R@1 over all the tasks' queries (fitting and held-out together).
        The surrogate is not R@1, so near a tuned optimum a lower loss can
        cost a query or two.
    """

    surrogate: Surrogate = "listwise"
    temperature: float = 0.01
    learning_rate: float = 0.1
    max_steps: int = 100
    warmup_steps: int = 5
    final_lr_ratio: float = 0.1
    patience: int = 20
    min_delta: float = 1e-3
    holdout: float = 0.2
    seed: int = 0
    top_k: int = 100
    learn: tuple[str, ...] | None = None
    margin: float = 0.01
    keep_start_if_worse: bool = True

    def validate(self) -> None:
        """Raise ConfigError when a setting is out of range."""
        if self.surrogate not in SURROGATES:
            raise ConfigError(f"fit.surrogate={self.surrogate!r} is invalid: expected one of {SURROGATES}.")
        positive = {"temperature": self.temperature, "learning_rate": self.learning_rate}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"fit.{name}={value} is out of range: expected a value > 0.")
        for name in ("max_steps", "patience", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"fit.{name}={getattr(self, name)} is out of range: expected an integer >= 1.")
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise ConfigError(f"fit.warmup_steps={self.warmup_steps} is out of range: "
                              f"expected 0 <= warmup_steps < max_steps ({self.max_steps}).")
        if self.min_delta < 0:
            raise ConfigError(f"fit.min_delta={self.min_delta} is out of range: expected a value >= 0.")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ConfigError(f"fit.final_lr_ratio={self.final_lr_ratio} is out of range: expected [0, 1].")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"fit.holdout={self.holdout} is out of range: expected a fraction in (0, 1).")
        if not 0 < self.margin < 0.5:
            raise ConfigError(f"fit.margin={self.margin} is out of range: expected a value in (0, 0.5).")
        if self.learn is not None:
            unknown = sorted(set(self.learn) - set(TRANSFORMS))
            if unknown or not self.learn:
                raise ConfigError(f"fit.learn={list(self.learn)} is invalid: expected a non-empty subset "
                                  f"of {list(TRANSFORMS)}.")


class FitBatch(NamedTuple):
    """One direction's queries with their fixed candidates and targets.

    Attributes:
      pools: gallery and banks, as :func:`nia_jax.rerank` builds them.
      queries: unit-norm queries, (n, d).
      query_self: each query's row in the query bank (transductive) or -1, (n,).
      candidates: gallery indices of the cosine top-K, (n, K).
      base: their cosine scores, (n, K).
      target: True where a candidate is a positive, (n, K). Rows without a
        positive among the candidates get a placeholder True in column 0.
      valid: whether a positive is among the candidates, (n,).
    """

    pools: Pools
    queries: jax.Array
    query_self: jax.Array
    candidates: jax.Array
    base: jax.Array
    target: jax.Array
    valid: jax.Array


@dataclasses.dataclass
class FitResult:
    """Output of :func:`fit`.

    Attributes:
      method: the starting NIA with the learned values, from the step of the last held-out improvement.
      start: the NIA the fit started from, as given.
      initial: the starting values actually used, after ``margin`` was applied.
      learned_names: the hyperparameters that were learned.
      curve: one entry per step with step, learning_rate, fit_loss,
        heldout_loss, fit_R@1, heldout_R@1 and tune_R@1, then the learned
        hyperparameters' values at that step. The R@1 values are percentages
        over the fitting, held-out and all queries, averaged over the tasks.
        A positive outside the K candidates counts as a miss, so they equal
        nia_jax.evaluate's R@1.
      best_step: the step whose values are returned (0: the starting values).
      steps: updates run before stopping.
      stopped_early: whether the patience ran out before ``max_steps``.
      kept_start: whether ``method`` is the start because the learned values scored
        a lower R@1 on the tuning queries (``FitSettings.keep_start_if_worse``).
      seconds: wall time of the fit, compilation included.
      settings: the settings used.
    """

    method: NIA
    start: NIA
    initial: dict[str, float]
    learned_names: tuple[str, ...]
    curve: list[dict[str, float]]
    best_step: int
    steps: int
    stopped_early: bool
    kept_start: bool
    seconds: float
    settings: FitSettings

    def learned(self) -> dict[str, float]:
        """Return the learned values of the learned hyperparameters."""
        return {name: getattr(self.method, name) for name in self.learned_names}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary with the full learning curve."""
        return {
            "settings": dataclasses.asdict(self.settings),
            "learned_names": list(self.learned_names),
            "start": {name: getattr(self.start, name) for name in NIA.traced},
            "initial": self.initial,
            "learned": {name: getattr(self.method, name) for name in NIA.traced},
            "best_step": self.best_step,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "kept_start": self.kept_start,
            "fit_s": round(self.seconds, 3),
            "curve": self.curve,
        }


# --- parametrisation ------------------------------------------------------------------


def active_hyperparameters(method: NIA) -> tuple[str, ...]:
    """Return the hyperparameters that change NIA's scores under its static settings.

    tau is unused with uniform weights, gamma when there is no s_nia
    (``form="none"``) and beta outside the embedding form.
    """
    active = {"lam", "w", "eta"}
    if method.weighting != "uniform":
        active.add("tau")
    if method.form != "none":
        active.add("gamma")
    if method.form == "embedding":
        active.add("beta")
    return tuple(name for name in NIA.traced if name in active)


def to_hyperparameters(params: Mapping[str, jax.Array], fixed: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Map unconstrained parameters to valid hyperparameter values, merged with the fixed ones."""
    hp = dict(fixed)
    for name, u in params.items():
        kind = TRANSFORMS[name]
        if kind == "softplus":
            hp[name] = FLOORS[name] + jax.nn.softplus(u)
        elif kind == "sigmoid":
            hp[name] = jax.nn.sigmoid(u)
        else:
            hp[name] = u
    return hp


def to_parameters(hp: Mapping[str, float], names: Sequence[str], *, margin: float = 0.01,
                  dtype=jnp.float32) -> dict[str, jax.Array]:
    """Return the unconstrained parameters u of ``names`` such that ``to_hyperparameters(u)`` gives ``hp``.

    Values within ``margin`` of a bound are first moved inside it, because the
    softplus and sigmoid reach their bounds only at infinity.
    """
    params = {}
    for name in names:
        value = float(hp[name])
        kind = TRANSFORMS[name]
        if kind == "softplus":
            excess = max(value - FLOORS[name], margin)
            # The inverse of softplus, log(exp(x) - 1), written to stay finite for large x.
            u = excess + np.log(-np.expm1(-excess))
        elif kind == "sigmoid":
            p = min(max(value, margin), 1.0 - margin)
            u = np.log(p) - np.log1p(-p)
        else:
            u = value
        params[name] = jnp.asarray(u, dtype=dtype)
    return params


# --- data -----------------------------------------------------------------------------


def make_batch(task: RetrievalTask, rows: np.ndarray | None = None, *, top_k: int = 100,
               dtype=jnp.float32) -> FitBatch:
    """Build the fixed inputs of the surrogate for the queries ``rows`` of one task.

    The pools and the candidates are built as :func:`nia_jax.rerank` builds
    them, so the scores match :func:`nia_jax.evaluate`'s. ``rows`` defaults to
    every query. With ``dtype=jnp.float64`` (under ``jax.enable_x64``) the
    embeddings are upcast after the candidates are chosen.
    """
    queries = as_embeddings(task.queries, "queries")
    gallery = as_embeddings(task.gallery, "gallery", dim=queries.shape[1])
    n_queries, n_gallery = queries.shape[0], gallery.shape[0]
    rows = np.arange(n_queries) if rows is None else np.asarray(rows, dtype=np.int64)
    top = min(top_k, n_gallery)

    if task.protocol == "transductive":
        query_bank, gallery_bank = queries, gallery
        query_self = rows.astype(np.int32)
        gallery_self = np.arange(n_gallery, dtype=np.int32)
    else:
        query_bank = None if task.query_bank is None else as_embeddings(task.query_bank, "query_bank")
        gallery_bank = None if task.gallery_bank is None else as_embeddings(task.gallery_bank, "gallery_bank")
        query_self = np.full(rows.size, -1, dtype=np.int32)
        gallery_self = np.full(n_gallery, -1, dtype=np.int32)

    base, candidates = jax.lax.top_k(similarity(jnp.asarray(queries[rows]), jnp.asarray(gallery)), top)
    positives = jnp.asarray(task.positives[rows])
    target = jnp.any((candidates[:, :, None] == positives[:, None, :]) & (positives[:, None, :] >= 0), axis=2)
    valid = target.any(axis=1)
    placeholder = jnp.zeros_like(target).at[:, 0].set(True)
    target = jnp.where(valid[:, None], target, placeholder)

    def cast(x):
        return None if x is None else jnp.asarray(x, dtype=dtype)

    pools = Pools(gallery=cast(gallery), query_bank=cast(query_bank), gallery_bank=cast(gallery_bank),
                  gallery_self=jnp.asarray(gallery_self))
    return FitBatch(pools, cast(queries[rows]), jnp.asarray(query_self), candidates, cast(base), target, valid)


def split_rows(n_queries: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (fitting rows, held-out rows) of ``n_queries`` queries, from a seeded permutation."""
    n_heldout = int(round(holdout * n_queries))
    if n_heldout < 1 or n_heldout > n_queries - 1:
        raise ConfigError(f"fit.holdout={holdout} leaves {n_heldout} of {n_queries} queries held out; "
                          "both parts need at least one query. Change holdout.")
    order = np.random.default_rng(seed).permutation(n_queries)
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


# --- surrogate ------------------------------------------------------------------------


def query_losses(scores: jax.Array, target: jax.Array, surrogate: Surrogate, temperature) -> jax.Array:
    """Return each query's surrogate loss (n,) from its candidate scores and positive mask."""
    if surrogate == "listwise":
        logits = scores / temperature
        everything = jax.nn.logsumexp(logits, axis=1)
        positives = jax.nn.logsumexp(jnp.where(target, logits, -jnp.inf), axis=1)
        return everything - positives
    if surrogate == "smooth_ap":
        # ahead[i, p, j] = sigmoid((s_j - s_p) / T): a smooth "j is ranked above p".
        ahead = jax.nn.sigmoid((scores[:, None, :] - scores[:, :, None]) / temperature)
        others = ~jnp.eye(scores.shape[1], dtype=bool)[None]
        rank_all = 1.0 + jnp.sum(jnp.where(others, ahead, 0.0), axis=2)
        rank_positive = 1.0 + jnp.sum(jnp.where(others & target[:, None, :], ahead, 0.0), axis=2)
        precision = jnp.where(target, rank_positive / rank_all, 0.0)
        return 1.0 - precision.sum(axis=1) / target.sum(axis=1)
    raise ValueError(f"unknown surrogate {surrogate!r}; expected one of {SURROGATES}")


def recall_at_1(scores: jax.Array, batch: FitBatch) -> jax.Array:
    """Return R@1 in percent, counting ties against the positives as :mod:`nia_jax.metrics` does."""
    return 100.0 * _hits_at_1(scores, batch) / scores.shape[0]


def batch_scores(static: NIA, hp: Mapping[str, jax.Array], batch: FitBatch, state=None) -> jax.Array:
    """Return NIA's scores (n, K) of a batch's candidates, through NIA.prepare and NIA.score.

    ``state`` is NIA.prepare's output for ``batch.pools``; it is computed when omitted.
    """
    if state is None:
        state = NIA.prepare(static, hp, batch.pools)
    return NIA.score(static, hp, state, batch.pools, batch.queries, batch.query_self, batch.candidates,
                     batch.base)


def _mean_valid_loss(scores, batch: FitBatch, surrogate, temperature):
    """Return the surrogate loss averaged over the queries that have a positive among their candidates."""
    losses = query_losses(scores, batch.target, surrogate, temperature)
    return jnp.sum(jnp.where(batch.valid, losses, 0.0)) / jnp.maximum(jnp.sum(batch.valid), 1)


def _hits_at_1(scores, batch: FitBatch):
    """Return how many queries rank a positive first; ties count against the positive."""
    best_positive = jnp.max(jnp.where(batch.target, scores, -jnp.inf), axis=1)
    best_negative = jnp.max(jnp.where(batch.target, -jnp.inf, scores), axis=1)
    return jnp.sum(batch.valid & (best_positive > best_negative))


@functools.partial(jax.jit, static_argnames=("static", "surrogate"))
def surrogate_loss(hp: Mapping[str, jax.Array], static: NIA, batches: Sequence[FitBatch],
                   surrogate: Surrogate = "listwise", temperature=0.01) -> jax.Array:
    """Return the surrogate loss averaged over the batches (directions), as a function of ``hp``.

    ``static`` is the NIA whose traced fields are None (``NIA.split()[0]``),
    and ``hp`` contains every traced field. Differentiate with ``jax.grad``.
    """
    values = [_mean_valid_loss(batch_scores(static, hp, batch), batch, surrogate, temperature) for batch in batches]
    return sum(values) / len(values)


# --- optimisation ---------------------------------------------------------------------


class _StepSettings(NamedTuple):
    """Settings that the compiled training step depends on. The other FitSettings fields reuse its compilation."""

    surrogate: str
    temperature: float
    learning_rate: float
    max_steps: int
    warmup_steps: int
    final_lr_ratio: float

    @classmethod
    def of(cls, settings: FitSettings) -> "_StepSettings":
        return cls(**{name: getattr(settings, name) for name in cls._fields})

    def schedule(self) -> optax.Schedule:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=self.learning_rate, warmup_steps=self.warmup_steps,
            decay_steps=self.max_steps, end_value=self.learning_rate * self.final_lr_ratio,
        )

    def optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.schedule())


@functools.partial(jax.jit, static_argnames=("static", "settings"))
def _train_step(params, opt_state, fixed, fit_batches, heldout_batches, static, settings):
    """Evaluate the current parameters on both parts and take one Adam step on the fitting part.

    The held-out queries of a direction share its pools, so they are scored with the
    state prepared for the fitting queries, outside the gradient.
    """

    def loss_fn(p):
        hp = to_hyperparameters(p, fixed)
        fit_losses, held_losses, fit_hits, held_hits = [], [], [], []
        for fit_batch, held_batch in zip(fit_batches, heldout_batches):
            state = NIA.prepare(static, hp, fit_batch.pools)
            scores = batch_scores(static, hp, fit_batch, state)
            fit_losses.append(_mean_valid_loss(scores, fit_batch, settings.surrogate, settings.temperature))
            fit_hits.append(_hits_at_1(scores, fit_batch))
            frozen_hp, frozen_state = jax.lax.stop_gradient((hp, state))
            scores = batch_scores(static, frozen_hp, held_batch, frozen_state)
            held_losses.append(_mean_valid_loss(scores, held_batch, settings.surrogate, settings.temperature))
            held_hits.append(_hits_at_1(scores, held_batch))
        return _mean(fit_losses), (_mean(held_losses), fit_hits, held_hits)

    (fit_loss, (held_loss, fit_hits, held_hits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = settings.optimizer().update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)

    def percent(hits, sizes):
        return _mean([100.0 * h / n for h, n in zip(hits, sizes)])

    fit_sizes = [b.queries.shape[0] for b in fit_batches]
    held_sizes = [b.queries.shape[0] for b in heldout_batches]
    metrics = {
        "fit_loss": fit_loss,
        "heldout_loss": held_loss,
        "fit_R@1": percent(fit_hits, fit_sizes),
        "heldout_R@1": percent(held_hits, held_sizes),
        "tune_R@1": percent([a + b for a, b in zip(fit_hits, held_hits)],
                            [a + b for a, b in zip(fit_sizes, held_sizes)]),
    }
    return new_params, opt_state, metrics, to_hyperparameters(params, fixed)


def _mean(values):
    return sum(values) / len(values)


@functools.partial(jax.jit, static_argnames=("static",))
def _tune_recall(hp, static, fit_batches, heldout_batches):
    """Return R@1 in percent over all queries of every direction (fitting and held-out), averaged."""
    recalls = []
    for fit_batch, held_batch in zip(fit_batches, heldout_batches):
        state = NIA.prepare(static, hp, fit_batch.pools)
        hits = sum(_hits_at_1(batch_scores(static, hp, b, state), b) for b in (fit_batch, held_batch))
        recalls.append(100.0 * hits / (fit_batch.queries.shape[0] + held_batch.queries.shape[0]))
    return _mean(recalls)


def _split_batches(tasks: Mapping[str, RetrievalTask], method: NIA, settings: FitSettings
                   ) -> tuple[tuple[FitBatch, ...], tuple[FitBatch, ...]]:
    """Return the fitting and held-out batches of every task, from the seeded query split."""
    fit_batches, heldout_batches = [], []
    for task in tasks.values():
        fit_rows, heldout_rows = split_rows(task.queries.shape[0], settings.holdout, settings.seed)
        fit_batch = make_batch(task, fit_rows, top_k=settings.top_k)
        method.validate(fit_batch.pools, task.gallery.shape[0])
        fit_batches.append(fit_batch)
        # Both parts share the pools, which NIA.prepare codes once per step.
        heldout_batches.append(make_batch(task, heldout_rows, top_k=settings.top_k)._replace(pools=fit_batch.pools))
    return tuple(fit_batches), tuple(heldout_batches)


def fit(method: NIA, tasks: Mapping[str, RetrievalTask], settings: FitSettings = FitSettings(), *,
        on_step: Callable[[dict[str, float]], None] | None = None) -> FitResult:
    """Learn NIA's continuous hyperparameters on ``tasks`` (for example the dev split's t2i and i2t).

    Args:
      method: the starting NIA; its static settings are kept.
      tasks: one or more retrieval tasks, whose losses are averaged with equal weight.
      settings: surrogate, optimiser and early-stopping settings.
      on_step: called with each learning-curve entry as it is computed (for loggers).

    Returns:
      A :class:`FitResult`. Its ``method`` contains the values of the last held-out
      improvement, or the starting values when those score a higher R@1 on
      ``tasks`` and ``settings.keep_start_if_worse`` is set.
    """
    if not isinstance(method, NIA):
        raise ConfigError(f"fit: expected a NIA re-ranker, got {type(method).__name__}.")
    if not tasks:
        raise ConfigError("fit: no tasks given; pass at least one RetrievalTask.")
    settings.validate()
    method.validate()
    names = tuple(settings.learn) if settings.learn is not None else active_hyperparameters(method)
    names = tuple(name for name in NIA.traced if name in names)

    start_time = time.perf_counter()
    fit_batches, heldout_batches = _split_batches(tasks, method, settings)
    static, start_hp = method.split()
    params = to_parameters({n: getattr(method, n) for n in names}, names, margin=settings.margin)
    fixed = {name: value for name, value in start_hp.items() if name not in names}
    initial = {name: float(v) for name, v in to_hyperparameters(params, fixed).items()}
    step_settings = _StepSettings.of(settings)
    schedule = step_settings.schedule()
    opt_state = step_settings.optimizer().init(params)

    curve: list[dict[str, float]] = []
    best_loss, best_step, best_params = np.inf, 0, params
    stopped_early = False
    step = 0
    # Step t evaluates the values after t updates. It also computes update t + 1, which is
    # kept only while t < max_steps.
    for step in range(settings.max_steps + 1):
        new_params, new_state, metrics, hp = _train_step(params, opt_state, fixed, fit_batches,
                                                          heldout_batches, static, step_settings)
        entry = {"step": step, "learning_rate": float(schedule(step))}
        entry.update({k: float(v) for k, v in metrics.items()})
        entry.update({name: float(hp[name]) for name in names})
        if not all(np.isfinite(entry[k]) for k in metrics):
            raise FloatingPointError(f"fit: non-finite loss at step {step} ({entry}); "
                                     "lower the learning rate or raise the temperature.")
        curve.append(entry)
        if on_step is not None:
            on_step(entry)
        if entry["heldout_loss"] < best_loss - settings.min_delta:
            best_loss, best_step, best_params = entry["heldout_loss"], step, params
        elif step - best_step >= settings.patience:
            stopped_early = True
            break
        params, opt_state = new_params, new_state

    learned_hp = to_hyperparameters(best_params, fixed)
    learned = dataclasses.replace(method, **{name: float(learned_hp[name]) for name in names})
    kept_start = False
    if settings.keep_start_if_worse:
        # Step 0 scored the starting values unless the margin moved one of them.
        moved = any(initial[n] != float(start_hp[n]) for n in names)
        start_r1 = float(_tune_recall(start_hp, static, fit_batches, heldout_batches)) if moved else curve[0]["tune_R@1"]
        kept_start = curve[best_step]["tune_R@1"] < start_r1
        if kept_start:
            logger.info("the fitted values score a lower R@1 on the tuning queries (%.2f) than the starting "
                        "values (%.2f); keeping the starting values", curve[best_step]["tune_R@1"], start_r1)
            learned = method
    seconds = time.perf_counter() - start_time
    logger.info("fitted %s in %d steps (%.1f s): best step %d, held-out loss %.4f",
                {n: round(getattr(learned, n), 4) for n in names}, step, seconds, best_step, best_loss)
    return FitResult(method=learned, start=method, initial=initial, learned_names=names, curve=curve,
                     best_step=best_step, steps=step, stopped_early=stopped_early, kept_start=kept_start,
                     seconds=seconds, settings=settings)
