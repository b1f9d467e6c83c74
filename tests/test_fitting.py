"""Gradient fitting of NIA's continuous settings (nia_jax.fitting) and its runner experiments/fit.py.

The gradient checks run in float64 inside ``jax.enable_x64(True)`` blocks, so
the rest of the suite keeps float32. The ``float32_after`` fixture fails a
test that leaves 64-bit mode on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONF_DIR, unit_rows
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import nia_jax
from nia_jax import fitting
from nia_jax.data import coco500
from nia_jax.data.task import RetrievalTask
from nia_jax.errors import ConfigError

# Relative and absolute tolerance of the float64 gradient check, and the central-difference step.
GRAD_RTOL, GRAD_ATOL, FD_STEP = 1e-6, 1e-9, 1e-6
TOP_K = 5

# Static settings that together reach every hyperparameter and every code path that
# depends on one: both fusion forms, the hubness-only form, the three local weightings,
# the three pools, and the leave-one-out corrections of the transductive protocol.
CASES = {
    "neighbour-softmax-query": (dict(k=3, weighting="softmax", pool="query_bank", form="neighbour", tau=0.1),
                                "inductive"),
    "embedding-power-gallery": (dict(k=3, weighting="power", pool="gallery_bank", form="embedding", tau=2.0,
                                     beta=0.3), "inductive"),
    "neighbour-softmax-both-transductive": (dict(k=2, weighting="softmax", pool="both", form="neighbour", tau=0.1),
                                            "transductive"),
    "none-uniform-gallery-transductive": (dict(k=2, weighting="uniform", pool="gallery_bank", form="none"),
                                          "transductive"),
}
SHARED = dict(lam=0.5, w=0.4, gamma=0.6, eta=0.3)


@pytest.fixture(autouse=True)
def float32_after():
    """Fail a test that leaves JAX's 64-bit mode switched on for the tests after it."""
    assert not jax.config.jax_enable_x64
    yield
    assert not jax.config.jax_enable_x64, "a test left jax_enable_x64 on"


def small_task(protocol: str, seed: int = 3) -> RetrievalTask:
    """Return a seeded 6-query, 8-item task whose gallery leans toward its queries, so ranks vary."""
    rng = np.random.default_rng(seed)
    queries = unit_rows(rng, 6, 16)
    gallery = 0.6 * unit_rows(rng, 8, 16) + 0.4 * queries[np.arange(8) % 6]
    banks = dict(query_bank=unit_rows(rng, 12, 16), gallery_bank=unit_rows(rng, 24, 16))
    if protocol == "transductive":
        banks = {}
    return RetrievalTask.build("t2i", queries, gallery, np.arange(6), protocol=protocol, norm_policy="normalise",
                               **banks)


def medium_tasks(seed: int = 5) -> dict[str, RetrievalTask]:
    """Return two seeded inductive directions of 30 pairs whose positives are noisy copies of the queries."""
    rng = np.random.default_rng(seed)
    images = unit_rows(rng, 30, 16)
    captions = images + 0.9 * unit_rows(rng, 30, 16)
    image_bank, caption_bank = unit_rows(rng, 20, 16), unit_rows(rng, 20, 16)
    return {
        "t2i": RetrievalTask.build("t2i", captions, images, np.arange(30), query_bank=caption_bank,
                                   gallery_bank=image_bank, norm_policy="normalise"),
        "i2t": RetrievalTask.build("i2t", images, captions, np.arange(30), query_bank=image_bank,
                                   gallery_bank=caption_bank, norm_policy="normalise"),
    }


# --- gradients --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("static",))
def gradients_and_central_differences(hp, static, batch, step):
    """Return d loss / d hp from JAX and from central differences, for both surrogates, in one compilation.

    Both are dicts of (2,) arrays, one entry per surrogate in fitting.SURROGATES order.
    """

    def losses(values):
        return jnp.stack([fitting.surrogate_loss(values, static, (batch,), s, 0.05) for s in fitting.SURROGATES])

    grads = jax.jacrev(losses)(hp)
    names = tuple(hp)
    # Row 2i moves hyperparameter i up by its step, row 2i + 1 moves it down.
    shifts = {n: jnp.zeros(2 * len(names), hp[n].dtype).at[2 * i].set(step[n]).at[2 * i + 1].set(-step[n])
              for i, n in enumerate(names)}
    moved = jax.vmap(losses)({n: hp[n] + shifts[n] for n in names})  # (2 * len(names), 2)
    central = {n: (moved[2 * i] - moved[2 * i + 1]) / (2 * step[n]) for i, n in enumerate(names)}
    return grads, central


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_finite_differences(case):
    settings, protocol = CASES[case]
    method = nia_jax.NIA(**settings, **SHARED)
    static, _ = method.split()
    with jax.enable_x64(True):
        batch = fitting.make_batch(small_task(protocol), top_k=TOP_K, dtype=jnp.float64)
        hp = {name: jnp.asarray(getattr(method, name), dtype=jnp.float64) for name in nia_jax.NIA.traced}
        step = {name: jnp.asarray(FD_STEP * max(1.0, abs(float(v))), dtype=jnp.float64) for name, v in hp.items()}
        grads, central = gradients_and_central_differences(hp, static, batch, step)
        grads, central = jax.device_get((grads, central))

    for name in nia_jax.NIA.traced:
        assert grads[name].dtype == np.float64
        for i, surrogate in enumerate(fitting.SURROGATES):
            np.testing.assert_allclose(grads[name][i], central[name][i], rtol=GRAD_RTOL, atol=GRAD_ATOL,
                                       err_msg=f"d {surrogate} loss / d {name}")
    # The hyperparameters that the static settings leave unused get exactly zero gradient.
    nonzero = {name for name in nia_jax.NIA.traced if np.any(grads[name] != 0.0)}
    assert nonzero == set(fitting.active_hyperparameters(method))


def test_surrogate_losses_order_rankings():
    target = jnp.array([[True, False, False]])
    good = jnp.array([[0.9, 0.1, 0.0]])
    bad = jnp.array([[0.0, 0.9, 0.1]])

    for surrogate in fitting.SURROGATES:
        low = fitting.query_losses(good, target, surrogate, 0.05)
        high = fitting.query_losses(bad, target, surrogate, 0.05)
        assert float(low[0]) < float(high[0]), surrogate


# --- parametrisation and settings -------------------------------------------------------


def test_parametrisation_round_trip():
    values = {"tau": 0.05, "lam": 3.0, "w": 0.3, "beta": -0.4, "gamma": 0.8, "eta": 1.5}
    params = fitting.to_parameters(values, tuple(values), margin=0.01)
    back = fitting.to_hyperparameters(params, {})

    for name, value in values.items():
        np.testing.assert_allclose(float(back[name]), value, rtol=1e-5, err_msg=name)


def test_parametrisation_moves_bounds_inside():
    values = {"w": 1.0, "gamma": 0.0, "eta": 0.0}
    back = fitting.to_hyperparameters(fitting.to_parameters(values, tuple(values), margin=0.01), {})

    np.testing.assert_allclose(float(back["w"]), 0.99, rtol=1e-5)
    np.testing.assert_allclose(float(back["gamma"]), 0.01, rtol=1e-4)
    np.testing.assert_allclose(float(back["eta"]), 0.01, rtol=1e-4)


@pytest.mark.parametrize("change", [
    {"holdout": 0.0}, {"holdout": 1.0}, {"temperature": 0.0}, {"learning_rate": -1.0}, {"max_steps": 0},
    {"warmup_steps": 100}, {"surrogate": "hinge"}, {"learn": ("tau", "k")}, {"learn": ()}, {"margin": 0.5},
])
def test_settings_out_of_range_raise(change):
    settings = dataclasses.replace(fitting.FitSettings(), **change)

    with pytest.raises(ConfigError):
        settings.validate()


def test_fit_rejects_other_rerankers():
    with pytest.raises(ConfigError, match="NIA"):
        fitting.fit(nia_jax.make_reranker("cosine"), medium_tasks())


# --- fitting ---------------------------------------------------------------------------


# The hubness-only form compiles quickly, and with softmax weights it still learns tau, lam, w and eta.
FAST_START = nia_jax.NIA(k=3, weighting="softmax", pool="query_bank", form="none", tau=0.1, lam=1.0, w=0.5,
                         eta=0.2)
FAST_SETTINGS = fitting.FitSettings(max_steps=12, warmup_steps=2, patience=5, top_k=10, holdout=0.3)


def test_fit_same_seed_is_identical():
    first = fitting.fit(FAST_START, medium_tasks(), FAST_SETTINGS)
    second = fitting.fit(FAST_START, medium_tasks(), FAST_SETTINGS)
    other_seed = fitting.fit(FAST_START, medium_tasks(), dataclasses.replace(FAST_SETTINGS, seed=1))

    assert first.method == second.method
    assert first.curve == second.curve
    assert first.best_step == second.best_step
    assert other_seed.curve != first.curve


def test_fit_values_stay_in_range_with_large_steps():
    settings = dataclasses.replace(FAST_SETTINGS, learning_rate=20.0, patience=12, min_delta=0.0)
    start = dataclasses.replace(FAST_START, form="embedding", weighting="power", tau=2.0, gamma=0.5)
    result = fitting.fit(start, medium_tasks(), settings)

    result.method.validate()
    assert set(result.learned_names) == {"tau", "lam", "w", "beta", "gamma", "eta"}
    for entry in result.curve:
        assert entry["tau"] > 0
        assert entry["lam"] > 0
        assert entry["eta"] >= 0
        assert 0 <= entry["w"] <= 1
        assert 0 <= entry["gamma"] <= 1
        assert np.isfinite(entry["beta"])


def test_fit_learns_only_requested_names():
    settings = dataclasses.replace(FAST_SETTINGS, learn=("eta",))
    result = fitting.fit(FAST_START, medium_tasks(), settings)

    assert result.learned_names == ("eta",)
    for name in ("tau", "lam", "w"):
        assert getattr(result.method, name) == pytest.approx(getattr(FAST_START, name), rel=1e-6), name


def test_recall_at_1_matches_evaluate():
    tasks = medium_tasks()
    static, hp = FAST_START.split()
    for task in tasks.values():
        batch = fitting.make_batch(task, top_k=FAST_SETTINGS.top_k)
        r1 = fitting.recall_at_1(fitting.batch_scores(static, hp, batch), batch)
        expected = nia_jax.evaluate(FAST_START, task, top_k=FAST_SETTINGS.top_k, n_boot=0).metrics["R@1"]

        assert float(r1) == pytest.approx(expected, abs=1e-3), task.direction


# The NIA settings before the dev-tuned ones became the defaults: far from the dev optimum.
UNTUNED_START = nia_jax.NIA(k=10, weighting="softmax", pool="query_bank", form="neighbour", tau=0.05, lam=1.0,
                            w=0.5, gamma=0.5, eta=0.0)


@pytest.fixture(scope="module")
def dev_tasks():
    return coco500.load_tasks(split="dev")


def dev_mean_r1(method, tasks) -> float:
    return float(np.mean([nia_jax.evaluate(method, t, n_boot=0).metrics["R@1"] for t in tasks.values()]))


@pytest.fixture(scope="module")
def dev_fit(dev_tasks):
    """Fit the untuned settings on the embedded dev split for a few steps (shared by two tests)."""
    settings = fitting.FitSettings(max_steps=6, warmup_steps=1, patience=6, top_k=20)
    return fitting.fit(UNTUNED_START, dev_tasks, settings)


def test_fit_on_dev_lowers_surrogate_loss(dev_fit):
    first, best = dev_fit.curve[0], dev_fit.curve[dev_fit.best_step]

    assert dev_fit.best_step > 0
    assert best["fit_loss"] < first["fit_loss"]
    assert best["heldout_loss"] < first["heldout_loss"]


def test_fit_on_dev_raises_r1(dev_tasks, dev_fit):
    assert not dev_fit.kept_start
    assert dev_mean_r1(dev_fit.method, dev_tasks) > dev_mean_r1(UNTUNED_START, dev_tasks)


def test_fit_from_tuned_defaults_keeps_dev_r1(dev_tasks):
    # The defaults are the grid's choice on dev, where a lower surrogate loss need not raise R@1.
    result = fitting.fit(nia_jax.NIA(), dev_tasks)

    assert dev_mean_r1(result.method, dev_tasks) >= dev_mean_r1(nia_jax.NIA(), dev_tasks)


# --- runner -----------------------------------------------------------------------------


def test_fit_runner_writes_results_and_loadable_config(tmp_path):
    import fit as fit_runner

    overrides = ["logger=none", "compare_grid=false", "max_steps=3", "warmup_steps=1", "n_boot=20",
                 "~tuned@method", "method.form=none", "method.weighting=uniform", "method.k=4", "method.eta=0.5"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("fit", overrides=overrides)
    payload, ranks = fit_runner.run(cfg, tmp_path)
    text = fit_runner.fitted_config_text(cfg, payload)
    markdown = fit_runner.report_fit.render(json.loads(json.dumps(payload)))

    assert set(payload["methods"]) == {"cosine", "nia_start", "nia_fitted"}
    assert payload["fitting"]["learned_names"] == ["lam", "w", "eta"]
    assert len(payload["fitting"]["curve"]) == payload["fitting"]["steps"] + 1
    assert set(ranks) == {f"{m}/{d}" for m in payload["methods"] for d in ("t2i", "i2t")}
    assert "| NIA, fitted |" in markdown

    # The written config composes as a tuned method config and carries the learned values.
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "tuned").mkdir(exist_ok=True)
    (conf / "tuned" / "fitted_nia.yaml").write_text(text)
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        rerank_cfg = compose("rerank", overrides=["tuned@method=fitted_nia"])
    method = OmegaConf.to_container(rerank_cfg.method)
    for name, value in payload["fitting"]["learned"].items():
        assert method[name] == pytest.approx(value), name
    assert (method["k"], method["form"]) == (4, "none")
