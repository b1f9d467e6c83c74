"""A Flax NNX module that re-ranks query embeddings with NIA inside a jitted model step.

:class:`NIAReranker` keeps a gallery, NIA's unlabelled banks and NIA's
prepared state as NNX variables. So it can run in the same ``nnx.jit`` step
as an encoder, and ``nnx.split``, ``nnx.merge`` and checkpoints treat it as
any other part of a model. It computes what :func:`nia_jax.rerank` computes
for one block of queries, through ``NIA.prepare`` and ``NIA.score``.

    reranker = NIAReranker(fitted.method, gallery, query_bank=text_bank)

    @nnx.jit
    def eval_step(encoder, reranker, tokens):
        return reranker(encoder.encode_text(tokens))

See docs/flax.md for a full example with a dual encoder.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nia_jax._validation import as_embeddings, check_int
from nia_jax.errors import ConfigError
from nia_jax.kernels.similarity import similarity
from nia_jax.rerankers.base import Pools
from nia_jax.rerankers.nia import NIA


# NIA.prepare, compiled once per static setting and bank shapes.
_prepare = jax.jit(NIA.prepare, static_argnums=0)


class Bank(nnx.Variable):
    """Embeddings that the re-ranker reads and never learns: the gallery and the banks."""


class Hyperparameter(nnx.Variable):
    """One of NIA's continuous settings (tau, lam, w, beta, gamma, eta), a scalar."""


class Prepared(nnx.Variable):
    """NIA.prepare's output for the current banks and hyperparameters (ridge factors, codes)."""


class RerankOutput(NamedTuple):
    """Re-ranked candidates of a batch of queries (JAX arrays).

    Attributes:
      candidates: gallery indices of each query's top-K by cosine, (b, K).
      scores: NIA's scores of those candidates, (b, K).
      base: their cosine scores, (b, K).
      order: the candidates sorted by NIA's score, best first, (b, K).
    """

    candidates: jax.Array
    scores: jax.Array
    base: jax.Array
    order: jax.Array


class NIAReranker(nnx.Module):
    """NIA re-ranking of a fixed gallery as a Flax NNX module.

    Args:
      method: the NIA settings, for example ``fit(...).method`` or a tuned NIA.
      gallery: gallery embeddings (ng, d); rows are L2-normalised here.
      query_bank: unlabelled query-modality embeddings (nbq, d), if ``method.pool`` uses them.
      gallery_bank: unlabelled gallery-modality embeddings (nbg, d), if ``method.pool`` uses them.
      gallery_self: each gallery item's row in ``gallery_bank`` or -1 (ng,). Set it when
        the gallery bank contains the gallery itself, so that items skip their own row.
        The default is -1 everywhere.
      top_k: candidates re-ranked per query (K), capped at the gallery size.

    The static settings (k, weighting, pool, form, leave_one_out) and K fix the
    compiled code. The hyperparameters are :class:`Hyperparameter` variables, and
    :meth:`set_hyperparameters` replaces them and prepares the state again.
    """

    def __init__(self, method: NIA, gallery, *, query_bank=None, gallery_bank=None, gallery_self=None,
                 top_k: int = 100):
        if not isinstance(method, NIA):
            raise ConfigError(f"NIAReranker: expected a NIA re-ranker, got {type(method).__name__}.")
        g = as_embeddings(gallery, "gallery")
        d = g.shape[1]
        qb = None if query_bank is None else as_embeddings(query_bank, "query_bank", dim=d)
        gb = None if gallery_bank is None else as_embeddings(gallery_bank, "gallery_bank", dim=d)
        if gallery_self is None:
            self_rows = np.full(g.shape[0], -1, dtype=np.int32)
        else:
            self_rows = np.asarray(gallery_self, dtype=np.int32)
            if self_rows.shape != (g.shape[0],):
                raise ConfigError(f"gallery_self: expected shape ({g.shape[0]},), got {self_rows.shape}.")

        self.static, hp = method.split()
        self.top_k = check_int(top_k, "top_k", low=1)
        self.gallery = Bank(jnp.asarray(g))
        self.query_bank = None if qb is None else Bank(jnp.asarray(qb))
        self.gallery_bank = None if gb is None else Bank(jnp.asarray(gb))
        self.gallery_self = Bank(jnp.asarray(self_rows))
        method.validate(self._pools(), g.shape[0])
        self.hyperparameters = nnx.data({name: Hyperparameter(value) for name, value in hp.items()})
        self.state = Prepared(_prepare(self.static, self._hp(), self._pools()))

    def _pools(self) -> Pools:
        def value(variable):
            return None if variable is None else variable.get_value()

        return Pools(gallery=self.gallery.get_value(), query_bank=value(self.query_bank),
                     gallery_bank=value(self.gallery_bank), gallery_self=self.gallery_self.get_value())

    def _hp(self) -> dict[str, jax.Array]:
        return {name: variable.get_value() for name, variable in self.hyperparameters.items()}

    @property
    def method(self) -> NIA:
        """The NIA re-ranker with the module's current hyperparameter values."""
        return dataclasses.replace(self.static, **{k: float(v) for k, v in self._hp().items()})

    def set_hyperparameters(self, values: NIA | Mapping[str, float]) -> None:
        """Replace the continuous hyperparameters and prepare the state again.

        ``values`` is a NIA with the same static settings (for example a
        :class:`nia_jax.fitting.FitResult`'s ``method``) or a mapping of some of
        tau, lam, w, beta, gamma and eta to new values.
        """
        if isinstance(values, NIA):
            static, _ = values.split()
            if static != self.static:
                raise ConfigError(f"set_hyperparameters: the static settings differ from the module's "
                                  f"({static} versus {self.static}); build a new NIAReranker instead.")
            values = {name: getattr(values, name) for name in NIA.traced}
        unknown = sorted(set(values) - set(NIA.traced))
        if unknown:
            raise ConfigError(f"set_hyperparameters: unknown hyperparameter(s) {unknown}; "
                              f"expected some of {list(NIA.traced)}.")
        candidate = dataclasses.replace(self.method, **{k: float(v) for k, v in values.items()})
        candidate.validate()
        for name, value in values.items():
            self.hyperparameters[name].set_value(jnp.asarray(value, dtype=jnp.float32))
        self.state.set_value(_prepare(self.static, self._hp(), self._pools()))

    def __call__(self, queries: jax.Array, query_self: jax.Array | None = None) -> RerankOutput:
        """Re-rank the gallery for a batch of query embeddings (b, d); rows are L2-normalised here.

        ``query_self`` gives each query's row in the query bank, or -1 (the
        default) when the query is not a bank member. Traceable, so it can run
        inside ``nnx.jit`` or ``jax.jit``.
        """
        queries = jnp.asarray(queries, dtype=jnp.float32)
        queries = queries / jnp.linalg.norm(queries, axis=1, keepdims=True)
        n_queries = queries.shape[0]
        if query_self is None:
            query_self = jnp.full((n_queries,), -1, dtype=jnp.int32)
        if n_queries == 1:
            # XLA turns one-row matrix products into matrix-vector products that sum in another
            # order, so one-row batches are padded to two rows, as nia_jax.rerank pads its blocks.
            queries = jnp.concatenate([queries, queries])
            query_self = jnp.concatenate([query_self, query_self])
        pools = self._pools()
        top = min(self.top_k, pools.gallery.shape[0])
        base, candidates = jax.lax.top_k(similarity(queries, pools.gallery), top)
        scores = NIA.score(self.static, self._hp(), self.state.get_value(), pools, queries, query_self,
                           candidates, base)
        # A stable sort keeps cosine order among equal NIA scores, as nia_jax.rerank does.
        order = jnp.take_along_axis(candidates, jnp.argsort(-scores, axis=1, stable=True), axis=1)
        return RerankOutput(candidates[:n_queries], scores[:n_queries], base[:n_queries], order[:n_queries])
