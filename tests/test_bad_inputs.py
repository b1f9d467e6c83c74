"""Bad input through both public entry points: the library call and the Hydra runner.

Every case of ``CASES`` has a library test (``nia_jax.rerank``, the loaders or a
re-ranker constructor) and a runner test (``experiments/rerank.py`` on the
``custom`` data set, whose small files each test writes into ``tmp_path``).
``test_every_case_has_both_entry_points`` keeps the two tables complete.
Command-line typos go through ``common.check_command_line``, the check a
runner runs before Hydra composes its config.

Runner tests call the runner's ``main`` in-process with a config from Hydra's
compose API, as Hydra itself would after composition. A failing run must exit
with status 1, log exactly one error line that names the problem, and leave no
results.json. Two runs go through a real subprocess to check the command line
itself: a bad file (no traceback, non-zero exit) and W&B online mode with no
reachable server (a bounded wait, then offline with a warning).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import CONF_DIR, EXPERIMENTS_DIR, unit_rows
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import common
import nia_jax
import rerank
from nia_jax import NIA
from nia_jax.data.external import EmbeddingFiles, load_custom
from nia_jax.data.io import load_array, load_embeddings, load_positives
from nia_jax.errors import ConfigError, InputError
from nia_jax.rerankers import available, make_reranker, reranker_class

N, D, BANK_ROWS = 12, 8, 20

# Every bad-input case; each has a library test and a runner test (see the two tables below).
CASES = (
    "rank_3d", "rank_1d", "dimension", "dimension_bank", "nan", "inf", "nan_bank", "zero_row",
    "unnormalised_warn", "unnormalised_reject", "empty_gallery", "empty_bank", "k_above_bank",
    "top_k_above_gallery", "top_k_zero", "lam_zero", "tau_negative", "w_above_one", "gamma_negative",
    "eta_negative", "duplicates", "integer", "float16", "bfloat16", "positive_out_of_range",
    "query_without_positive", "no_query_with_positive", "gallery_without_query", "npy_truncated",
    "npy_not_array", "npy_pickled", "npz_missing_key", "unknown_key", "wrong_type", "unknown_name",
    "nonfinite_scores", "wandb_offline",
)


# --- data and files --------------------------------------------------------------------------


def normalise(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """Paired images and captions (caption i describes image i), and two inductive banks."""
    rng = np.random.default_rng(11)
    images = unit_rows(rng, N, D).astype(np.float32)
    texts = normalise(images + 0.3 * rng.standard_normal((N, D)))
    return {
        "images": images,
        "texts": texts,
        "image_bank": unit_rows(rng, BANK_ROWS, D).astype(np.float32),
        "text_bank": unit_rows(rng, BANK_ROWS, D).astype(np.float32),
    }


def save(tmp_path, name, array):
    path = tmp_path / f"{name}.npy"
    np.save(path, array, allow_pickle=False)
    return path


def custom(tmp_path, data, *, banks=False, extra=(), **arrays):
    """Write the custom data set's files and return runner overrides that read them.

    ``arrays`` replaces any of images, texts, image_bank, text_bank. With
    ``banks`` the run is inductive and reads the bank files; otherwise it is
    transductive.
    """
    values = {**data, **arrays}
    overrides = ["dataset=custom", "method=cosine", "n_boot=10"]
    names = ("images", "texts", "image_bank", "text_bank") if banks else ("images", "texts")
    for name in names:
        key = {"images": "image_embeddings", "texts": "text_embeddings"}.get(name, name)
        overrides.append(f"dataset.{key}='{save(tmp_path, name, values[name])}'")
    overrides.append("protocol=inductive" if banks else "protocol=transductive")
    return overrides + list(extra)


def write_json(tmp_path, name, payload):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(payload))
    return path


def truncated_npy(tmp_path, array):
    path = save(tmp_path, "full", array)
    cut = tmp_path / "truncated.npy"
    cut.write_bytes(path.read_bytes()[:-7])
    return cut


def text_npy(tmp_path, array):
    path = tmp_path / "as_text.npy"
    path.write_text("\n".join(",".join(str(v) for v in row) for row in array))
    return path


def pickled_npy(tmp_path, array):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"row": row} for row in array], dtype=object), allow_pickle=True)
    return path


def npz_file(tmp_path, array):
    path = tmp_path / "arrays.npz"
    np.savez(path, images=array)
    return path


# --- the runner, in-process --------------------------------------------------------------


class RunnerResult:
    """Outcome of one in-process runner call: exit status, the NiaError it failed on, logs, output."""

    def __init__(self, code, error, records, run_dir):
        self.code = code
        self.error = error
        self.records = records
        self.run_dir = run_dir

    @property
    def error_lines(self):
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]

    @property
    def warnings(self):
        return [r.getMessage() for r in self.records if r.levelno == logging.WARNING]

    def results(self):
        return json.loads((self.run_dir / "results.json").read_text())


@pytest.fixture
def run_runner(tmp_path, monkeypatch, caplog):
    """Return a function that runs experiments/rerank.py's main in-process with overrides."""
    failures = []
    original = common.fail_run

    def recording_fail_run(exc):
        failures.append(exc)
        original(exc)

    monkeypatch.setattr(common, "fail_run", recording_fail_run)

    def run(overrides, name="run"):
        run_dir = tmp_path / name
        if not any(o.startswith("logger=") for o in overrides):
            overrides = ["logger=none", *overrides]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("rerank", overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        caplog.clear()
        code = 0
        try:
            with caplog.at_level(logging.INFO):
                rerank.main(cfg)
        except SystemExit as exit_:
            code = exit_.code
        finally:
            HydraConfig.instance().cfg = None
        return RunnerResult(code, failures[-1] if failures else None, list(caplog.records), run_dir)

    return run


def assert_clean_failure(result, error_type, words):
    assert result.code == 1
    assert type(result.error) is error_type, repr(result.error)
    assert len(result.error_lines) == 1, result.error_lines
    assert "\n" not in result.error_lines[0]
    for word in words:
        assert word in result.error_lines[0], word
    assert not (result.run_dir / "results.json").exists()


# --- library: cases that raise -------------------------------------------------------------


def cosine():
    return make_reranker("cosine")


def rerank_call(data, **changes):
    """Call nia_jax.rerank on the t2i direction with ``changes`` applied to its arguments."""
    kwargs = dict(queries=data["texts"], gallery=data["images"], top_k=5)
    kwargs.update(changes)
    method = kwargs.pop("method", cosine())
    return nia_jax.rerank(method, **kwargs)


def with_row(array, row, value):
    out = array.copy()
    out[row] = value
    return out


def paired(n=N):
    return [[i] for i in range(n)]


def paired_files(tmp_path, data, ground_truth_t2i):
    """Return the EmbeddingFiles of the images, the captions and a t2i ground-truth file."""
    return EmbeddingFiles(image_embeddings=str(save(tmp_path, "images", data["images"])),
                          text_embeddings=str(save(tmp_path, "texts", data["texts"])),
                          ground_truth_t2i=str(write_json(tmp_path, "t2i", ground_truth_t2i)))


LIBRARY_ERRORS = {
    "rank_3d": (lambda d, t: rerank_call(d, queries=d["texts"][None]), InputError, ("2-D", "(1, 12, 8)")),
    "rank_1d": (lambda d, t: rerank_call(d, gallery=d["images"][0]), InputError, ("2-D", "(8,)")),
    "dimension": (lambda d, t: rerank_call(d, gallery=d["images"][:, :6]), InputError,
                  ("gallery", "dimension 6", "dimension 8")),
    "dimension_bank": (lambda d, t: rerank_call(d, method=make_reranker("nnn", k=3), query_bank=d["text_bank"][:, :6]),
                       InputError, ("query_bank", "dimension 6")),
    "nan": (lambda d, t: rerank_call(d, gallery=with_row(d["images"], 2, np.nan)), InputError,
            ("gallery", "NaN or Inf", "[2]")),
    "inf": (lambda d, t: rerank_call(d, queries=with_row(d["texts"], 4, np.inf)), InputError,
            ("queries", "NaN or Inf", "[4]")),
    "nan_bank": (lambda d, t: rerank_call(d, method=make_reranker("nnn", k=3),
                                          query_bank=with_row(d["text_bank"], 1, np.nan)),
                 InputError, ("query_bank", "NaN or Inf", "[1]")),
    "zero_row": (lambda d, t: rerank_call(d, gallery=with_row(d["images"], 5, 0.0)), InputError,
                 ("all zeros", "[5]")),
    "unnormalised_reject": (lambda d, t: load_embeddings(save(t, "scaled", 3 * d["images"]), norm_policy="reject"),
                            InputError, ("12 of 12 rows are not unit-norm", "L2-normalise")),
    "empty_gallery": (lambda d, t: rerank_call(d, gallery=d["images"][:0]), InputError,
                      ("gallery", "at least one")),
    "empty_bank": (lambda d, t: rerank_call(d, method=make_reranker("nnn", k=3), query_bank=d["text_bank"][:0]),
                   InputError, ("query_bank", "at least one")),
    "k_above_bank": (lambda d, t: rerank_call(d, method=NIA(k=BANK_ROWS), query_bank=d["text_bank"]), ConfigError,
                     ("nia.k=20", "k <= 19", "Lower k")),
    "top_k_above_gallery": (lambda d, t: rerank_call(d, top_k=N + 1), InputError, ("top_k", "[1, 12]", "13")),
    "top_k_zero": (lambda d, t: rerank_call(d, top_k=0), InputError, ("top_k", "got 0")),
    "lam_zero": (lambda d, t: NIA(lam=0.0), ConfigError, ("nia.lam=0.0", "> 0")),
    "tau_negative": (lambda d, t: NIA(tau=-0.1), ConfigError, ("nia.tau=-0.1", "> 0")),
    "w_above_one": (lambda d, t: NIA(w=1.5), ConfigError, ("nia.w=1.5", "<= 1")),
    "gamma_negative": (lambda d, t: NIA(gamma=-0.5), ConfigError, ("nia.gamma=-0.5", ">= 0")),
    "eta_negative": (lambda d, t: NIA(eta=-1.0), ConfigError, ("nia.eta=-1.0", ">= 0")),
    "positive_out_of_range": (lambda d, t: rerank_call(d, positives=[[N + 87]] + paired()[1:]), InputError,
                              ("query 0", "99", "[0, 11]")),
    "query_without_positive": (lambda d, t: rerank_call(d, positives=paired()[:3] + [[]] + paired()[4:]), InputError,
                               ("query 3", "no positive")),
    "no_query_with_positive": (lambda d, t: load_custom(paired_files(t, d, [[]] * N), "transductive"), InputError,
                               ("t2i", "no query has a positive")),
    "npy_truncated": (lambda d, t: load_embeddings(truncated_npy(t, d["images"])), InputError, ("truncated",)),
    "npy_not_array": (lambda d, t: load_embeddings(text_npy(t, d["images"])), InputError,
                      ("not a NumPy .npy array", "np.save")),
    "npy_pickled": (lambda d, t: load_embeddings(pickled_npy(t, d["images"])), InputError,
                    ("Python objects", "never loaded")),
    "npz_missing_key": (lambda d, t: load_array(npz_file(t, d["images"]), key="image"), InputError,
                        ("no array named 'image'", "['images']")),
    "unknown_key": (lambda d, t: make_reranker("nia", kk=3), ConfigError, ("['kk']", "Did you mean 'k'?")),
    "wrong_type": (lambda d, t: NIA(k="ten"), ConfigError, ("nia.k", "expected an integer", "'ten'")),
    "unknown_name": (lambda d, t: make_reranker("nai"), ConfigError, ("'nai'", "Did you mean 'nia'?")),
    "nonfinite_scores": (
        lambda d, t: NIA(k=3, weighting="softmax", tau=1e-30).check_scores(
            rerank_call(d, method=NIA(k=3, weighting="softmax", tau=1e-30), query_bank=d["text_bank"]).scores),
        ConfigError, ("NaN or Inf", "nia.tau=1e-30 (default 0.05)")),
}


@pytest.mark.parametrize("case", sorted(LIBRARY_ERRORS))
def test_library_rejects(case, data, tmp_path):
    call, error_type, words = LIBRARY_ERRORS[case]

    with pytest.raises(error_type) as info:
        call(data, tmp_path)

    assert type(info.value) is error_type
    for word in words:
        assert word in str(info.value), word


# --- library: cases that succeed, with what they guarantee ---------------------------------


def test_library_unnormalised_warns(data, tmp_path, caplog):
    path = save(tmp_path, "scaled", 3 * data["images"])

    with caplog.at_level(logging.WARNING, logger="nia_jax"):
        rows = load_embeddings(path)

    assert any("12 of 12 rows are not unit-norm" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rows, data["images"], atol=1e-6)


def test_library_duplicates_tie_against_positive(data):
    gallery = data["images"].copy()
    gallery[1] = gallery[0]
    queries = gallery.copy()  # every query's own image scores exactly 1

    out = rerank_call(data, queries=queries, gallery=gallery, positives=paired())

    # Queries 0 and 1 have an exact duplicate of their positive: the tie counts against it.
    assert out.neg_above[0, 0] == 1
    assert out.neg_above[1, 0] == 1
    assert (out.neg_above[2:, 0] == 0).all()
    assert np.isfinite(out.scores).all()


@pytest.mark.parametrize("dtype", ["int32", "float16", "bfloat16"])
def test_library_dtypes_upcast(data, dtype):
    values = np.round(data["texts"] * 100) if dtype == "int32" else data["texts"]
    typed = values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    method = NIA(k=3)

    got = rerank_call(data, method=method, queries=typed, query_bank=data["text_bank"])
    expected = rerank_call(data, method=method, queries=typed.astype(np.float32), query_bank=data["text_bank"])

    np.testing.assert_array_equal(got.candidates, expected.candidates)
    np.testing.assert_array_equal(got.scores, expected.scores)


def test_library_jax_bfloat16_accepted(data):
    queries = jnp.asarray(data["texts"], dtype=jnp.bfloat16)

    out = rerank_call(data, queries=queries)

    assert np.isfinite(out.scores).all()


def test_library_evaluate_caps_top_k(data):
    task = nia_jax.RetrievalTask.build("t2i", data["texts"], data["images"], paired(), protocol="transductive")

    result = nia_jax.evaluate(cosine(), task, top_k=10 * N, n_boot=0)

    assert result.reranked.candidates.shape == (N, N)


def test_library_gallery_without_query(data, tmp_path):
    # No caption names image 5: it stays in the t2i gallery but is no i2t query.
    ground_truth = [[i] if i != 5 else [4] for i in range(N)]

    tasks = load_custom(paired_files(tmp_path, data, ground_truth), "transductive")

    assert tasks["t2i"].n_gallery == N
    assert tasks["i2t"].n_queries == N - 1


def test_library_query_without_positive_dropped(data, tmp_path):
    ground_truth = [[i] if i != 3 else [] for i in range(N)]

    tasks = load_custom(paired_files(tmp_path, data, ground_truth), "transductive")

    assert tasks["t2i"].n_queries == N - 1


def test_library_rerank_nonfinite_raises(data):
    method = NIA(k=3, weighting="softmax", tau=1e-30)
    with pytest.raises(ConfigError, match="NaN or Inf") as caught:
        rerank_call(data, method=method, query_bank=data["text_bank"])
    assert "nia.tau=1e-30" in str(caught.value)


# --- re-ranker constructors ------------------------------------------------------------------

# One out-of-range setting per registered re-ranker: (settings, words of the message).
BAD_SETTINGS = {
    "aqe": (dict(alpha=-1.0), ("aqe.alpha=-1.0", ">= 0")),
    "cosine": None,  # no settings
    "csls": (dict(k=0), ("csls.k=0", ">= 1")),
    "dba": (dict(n=0), ("dba.n=0", ">= 1")),
    "dbsn": (dict(beta=0.0), ("dbsn.beta=0.0", "> 0")),
    "dsl": (dict(tau=0.0), ("dsl.tau=0.0", "> 0")),
    "dualis": (dict(beta2=-3.0), ("dualis.beta2=-3.0", "> 0")),
    "invgc": (dict(r_q=float("inf")), ("invgc.r_q=inf", "finite")),
    "kreciprocal": (dict(lam=1.5), ("kreciprocal.lam=1.5", "<= 1")),
    "nia": (dict(k=0), ("nia.k=0", ">= 1")),
    "nnn": (dict(alpha=-0.5), ("nnn.alpha=-0.5", ">= 0")),
    "qbnorm_dis": (dict(beta=-20.0), ("qbnorm_dis.beta=-20.0", "> 0")),
    "qbnorm_is": (dict(beta=0.0), ("qbnorm_is.beta=0.0", "> 0")),
    "sinkhorn": (dict(n_iter=0), ("sinkhorn.n_iter=0", ">= 1")),
}


def test_bad_settings_cover_registry():
    assert set(BAD_SETTINGS) == set(available())


@pytest.mark.parametrize("name", sorted(n for n, v in BAD_SETTINGS.items() if v is not None))
def test_constructor_rejects_setting(name):
    settings, words = BAD_SETTINGS[name]

    with pytest.raises(ConfigError) as info:
        reranker_class(name)(**settings)

    for word in words:
        assert word in str(info.value), word


def test_constructor_choice_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'softmax'"):
        NIA(weighting="sofmax")


def test_split_static_half_builds():
    static, hp = NIA(k=3).split()

    assert static.lam is None
    assert float(hp["lam"]) == NIA().lam


def test_split_rejects_none_setting():
    with pytest.raises(ConfigError, match=r"nia.lam=10.0 \(the defaults\)"):
        NIA(lam=None).split()


def test_traced_settings_skip_checks():
    def doubled_lam(lam):
        return NIA(lam=lam).lam * 2.0

    assert float(jax.jit(doubled_lam)(1.5)) == 3.0
    np.testing.assert_allclose(jax.vmap(doubled_lam)(jnp.array([1.0, 2.0])), [2.0, 4.0])
    assert float(jax.grad(doubled_lam)(1.5)) == 2.0


def test_concrete_array_setting_checked():
    assert NIA(lam=jnp.float32(2.0)).lam == 2.0
    with pytest.raises(ConfigError, match="nia.lam=0.0"):
        NIA(lam=np.float32(0.0))
    with pytest.raises(ConfigError, match="expected a number"):
        NIA(lam=jnp.array([1.0, 2.0]))


# --- runner: cases that fail -----------------------------------------------------------------


def scaled(data):
    return {"images": 3 * data["images"]}


RUNNER_ERRORS = {
    "rank_3d": (lambda d, t: custom(t, d, texts=d["texts"][None]), InputError, ("texts.npy", "2-D", "(1, 12, 8)")),
    "rank_1d": (lambda d, t: custom(t, d, images=d["images"][0]), InputError, ("images.npy", "2-D", "(8,)")),
    "dimension": (lambda d, t: custom(t, d, texts=d["texts"][:, :6]), InputError,
                  ("(12, 6)", "embedding dimensions (columns) differ")),
    "dimension_bank": (lambda d, t: custom(t, d, banks=True, text_bank=d["text_bank"][:, :6]), InputError,
                       ("text_bank.npy", "dimension 6")),
    "nan": (lambda d, t: custom(t, d, images=with_row(d["images"], 2, np.nan)), InputError,
            ("images.npy", "NaN or Inf", "[2]")),
    "inf": (lambda d, t: custom(t, d, texts=with_row(d["texts"], 4, -np.inf)), InputError,
            ("texts.npy", "NaN or Inf", "[4]")),
    "nan_bank": (lambda d, t: custom(t, d, banks=True, image_bank=with_row(d["image_bank"], 1, np.nan)), InputError,
                 ("image_bank.npy", "NaN or Inf", "[1]")),
    "zero_row": (lambda d, t: custom(t, d, images=with_row(d["images"], 5, 0.0)), InputError,
                 ("images.npy", "all zeros", "[5]")),
    "unnormalised_reject": (lambda d, t: custom(t, d, extra=["encoder.reject_unnormalised=true"], **scaled(d)),
                            InputError, ("images.npy", "12 of 12 rows are not unit-norm")),
    "empty_gallery": (lambda d, t: custom(t, d, images=d["images"][:0]), InputError,
                      ("images.npy", "at least one")),
    "empty_bank": (lambda d, t: custom(t, d, banks=True, text_bank=d["text_bank"][:0]), InputError,
                   ("text_bank.npy", "at least one")),
    "k_above_bank": (lambda d, t: custom(t, d, extra=["method=nia", "method.k=12"]), ConfigError,
                     ("nia.k=12", "k <= 11", "Lower k")),
    "top_k_zero": (lambda d, t: custom(t, d, extra=["top_k=0"]), InputError, ("top_k", "got 0")),
    "lam_zero": (lambda d, t: custom(t, d, extra=["method=nia", "method.lam=0"]), ConfigError, ("nia.lam=0.0", "> 0")),
    "tau_negative": (lambda d, t: custom(t, d, extra=["method=nia", "method.tau=-0.1"]), ConfigError,
                     ("nia.tau=-0.1", "> 0")),
    "w_above_one": (lambda d, t: custom(t, d, extra=["method=nia", "method.w=1.5"]), ConfigError,
                    ("nia.w=1.5", "<= 1")),
    "gamma_negative": (lambda d, t: custom(t, d, extra=["method=nia", "method.gamma=-0.5"]), ConfigError,
                       ("nia.gamma=-0.5", ">= 0")),
    "eta_negative": (lambda d, t: custom(t, d, extra=["method=nia", "method.eta=-1"]), ConfigError,
                     ("nia.eta=-1.0", ">= 0")),
    "positive_out_of_range": (
        lambda d, t: custom(t, d, extra=[f"dataset.ground_truth_t2i='{write_json(t, 'gt', [[99]] + paired()[1:])}'"]),
        InputError, ("query 0", "99", "[0, 11]")),
    "no_query_with_positive": (
        lambda d, t: custom(t, d, extra=[f"dataset.ground_truth_t2i='{write_json(t, 'gt', [[]] * N)}'"]),
        InputError, ("no query has a positive",)),
    "npy_truncated": (lambda d, t: custom(t, d, extra=[f"dataset.image_embeddings='{truncated_npy(t, d['images'])}'"]),
                      InputError, ("truncated.npy", "truncated")),
    "npy_not_array": (lambda d, t: custom(t, d, extra=[f"dataset.text_embeddings='{text_npy(t, d['texts'])}'"]),
                      InputError, ("as_text.npy", "not a NumPy .npy array")),
    "npy_pickled": (lambda d, t: custom(t, d, extra=[f"dataset.image_embeddings='{pickled_npy(t, d['images'])}'"]),
                    InputError, ("objects.npy", "Python objects", "never loaded")),
    "npz_missing_key": (
        lambda d, t: custom(t, d, extra=[f"dataset.image_embeddings='{npz_file(t, d['images'])}'",
                                         "+dataset.image_key=image"]),
        InputError, ("no array named 'image'", "['images']")),
    "unknown_name": (lambda d, t: custom(t, d, extra=["dataset.name=cusotm"]), ConfigError,
                     ("dataset.name", "'cusotm'", "Did you mean 'custom'?")),
    "nonfinite_scores": (
        lambda d, t: custom(t, d, extra=["method=nia", "method.k=3", "method.weighting=softmax", "method.tau=1e-30"]),
        ConfigError, ("NaN or Inf", "overflows float32")),
}


@pytest.mark.parametrize("case", sorted(RUNNER_ERRORS))
def test_runner_rejects(case, data, tmp_path, run_runner):
    setup, error_type, words = RUNNER_ERRORS[case]

    result = run_runner(setup(data, tmp_path))

    assert_clean_failure(result, error_type, words)


@pytest.mark.parametrize(("extra", "words"), [
    (["logger=wandb", "logger.mode=onlin"], ("logger.mode", "Did you mean 'online'?")),
    (["search_backend=fais"], ("search_backend", "Did you mean 'faiss'?")),
    (["logger=wandb", "logger.init_timeout=0"], ("logger.init_timeout=0", "> 0")),
])
def test_runner_rejects_setting_value(extra, words, data, tmp_path, run_runner):
    result = run_runner(custom(tmp_path, data, extra=extra))

    assert_clean_failure(result, ConfigError, words)


def test_runner_contradictory_norm_settings(data, tmp_path, run_runner):
    extra = ["encoder.reject_unnormalised=true", "encoder.normalised=false"]

    result = run_runner(custom(tmp_path, data, extra=extra))

    assert_clean_failure(result, ConfigError, ("encoder.reject_unnormalised=true", "encoder.normalised=false"))


# --- runner: cases that succeed ---------------------------------------------------------------


def test_runner_unnormalised_warns(data, tmp_path, run_runner):
    result = run_runner(custom(tmp_path, data, **scaled(data)))

    assert result.code == 0
    assert any("12 of 12 rows are not unit-norm" in w for w in result.warnings), result.warnings
    assert (result.run_dir / "results.json").is_file()


def test_runner_top_k_above_gallery(data, tmp_path, run_runner):
    result = run_runner(custom(tmp_path, data, extra=["top_k=1000"]))

    assert result.code == 0
    assert result.results()["methods"]["cosine"]["t2i"]["n_queries"] == N


def test_runner_duplicates_tie_against_positive(data, tmp_path, run_runner):
    images = data["images"].copy()
    images[1] = images[0]

    result = run_runner(custom(tmp_path, data, images=images, texts=images.copy()))

    # Captions 0 and 1 tie between images 0 and 1, and a tie counts against the positive.
    t2i = result.results()["methods"]["cosine"]["t2i"]
    assert result.code == 0
    assert t2i["R@1"] == pytest.approx(100.0 * (N - 2) / N)


@pytest.mark.parametrize("dtype", ["int32", "float16", "bfloat16"])
def test_runner_dtypes_match_float32(dtype, data, tmp_path, run_runner):
    values = np.round(data["images"] * 100) if dtype == "int32" else data["images"]
    typed = values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)

    (tmp_path / "typed").mkdir()
    (tmp_path / "float32").mkdir()

    typed_run = run_runner(custom(tmp_path / "typed", data, images=typed), name="typed_run")
    float_run = run_runner(custom(tmp_path / "float32", data, images=typed.astype(np.float32)), name="float_run")

    assert typed_run.code == 0
    assert float_run.code == 0
    assert typed_run.results()["methods"] == float_run.results()["methods"]


def test_runner_gallery_without_query(data, tmp_path, run_runner):
    ground_truth = [[i] if i != 5 else [4] for i in range(N)]
    extra = [f"dataset.ground_truth_t2i='{write_json(tmp_path, 'gt', ground_truth)}'"]

    result = run_runner(custom(tmp_path, data, extra=extra))

    methods = result.results()["methods"]["cosine"]
    assert result.code == 0
    assert methods["t2i"]["n_queries"] == N
    assert methods["i2t"]["n_queries"] == N - 1


def test_runner_query_without_positive(data, tmp_path, run_runner):
    ground_truth = [[i] if i != 3 else [] for i in range(N)]
    extra = [f"dataset.ground_truth_t2i='{write_json(tmp_path, 'gt', ground_truth)}'"]

    result = run_runner(custom(tmp_path, data, extra=extra))

    assert result.code == 0
    assert result.results()["methods"]["cosine"]["t2i"]["n_queries"] == N - 1


# --- runner: command-line typos ---------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "words"), [
    (["method=nai"], ("method=nai", "Did you mean 'nia'?")),
    (["dataset=cusotm"], ("dataset=cusotm", "Did you mean 'custom'?")),
    (["topk=5"], ("topk: unknown config key", "Did you mean 'top_k'?")),
    (["method.kk=3"], ("method.kk: unknown config key", "Did you mean 'method.k'?")),
    (["-m", "method.k=1,2", "method.lamm=3"], ("method.lamm", "Did you mean 'method.lam'?")),
    (["top_k=ten"], ("top_k: invalid value", "top_k=100 (the default)")),
    (["+topk=5"], ("Did you mean 'top_k'?", "A leading + adds a key that the run does not read.")),
    (["+method.kk=3"], ("Did you mean 'method.k'?", "A leading + adds")),
])
def test_command_line_typo_suggests(overrides, words, capsys):
    with pytest.raises(SystemExit) as info:
        common.check_command_line("rerank", overrides)
    lines = capsys.readouterr().err.strip().splitlines()

    assert info.value.code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("ERROR: ")
    for word in words:
        assert word in lines[0], word


def test_command_line_valid_passes(capsys):
    common.check_command_line("rerank", ["-m", "method=nia", "method.k=3", "top_k=50", "method.lam=1,10"])
    common.check_command_line("rerank", ["-m", "+experiment=nia_sweep_k"])
    common.check_command_line("rerank", ["++topk=5"])  # "++" forces the key in on purpose

    assert capsys.readouterr().err == ""


# --- results files -----------------------------------------------------------------------------


def test_json_write_keeps_old_on_failure(tmp_path):
    path = tmp_path / "results.json"
    common.write_json_atomic(path, {"ok": 1})

    with pytest.raises(TypeError):
        common.write_json_atomic(path, {"bad": object()})

    assert json.loads(path.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# --- the command line, in a subprocess -------------------------------------------------------


def run_script(cwd, overrides, env_changes=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    env.update(env_changes or {})
    start = time.perf_counter()
    process = subprocess.run([sys.executable, str(EXPERIMENTS_DIR / "rerank.py"), *overrides], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=timeout, check=False)
    return process, time.perf_counter() - start


@pytest.mark.slow
def test_script_bad_file_clean_exit(data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = custom(tmp_path, data, extra=[f"dataset.image_embeddings='{pickled_npy(tmp_path, data['images'])}'",
                                              "logger=none", f"hydra.run.dir={run_dir}"])

    process, _ = run_script(tmp_path, overrides)
    output = process.stdout + process.stderr
    error_lines = [line for line in output.splitlines() if "ERROR" in line]

    assert process.returncode == 1
    assert "Traceback" not in output
    assert len(error_lines) == 1, output
    assert "never loaded" in error_lines[0]
    assert not (run_dir / "results.json").exists()


def closed_port():
    """Return a local TCP port that nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_script_wandb_online_falls_back(data, tmp_path):
    # Every address W&B could reach points at a closed local port, so no real host is contacted.
    dead = f"http://127.0.0.1:{closed_port()}"
    env = {
        "WANDB_BASE_URL": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
        "NO_PROXY": "", "no_proxy": "", "WANDB_API_KEY": "0" * 40, "WANDB_ERROR_REPORTING": "false",
        "WANDB__DISABLE_UPDATE_CHECK": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
    }
    env_mode = {"WANDB_MODE": "online"}
    run_dir = tmp_path / "run"
    overrides = custom(tmp_path, data, extra=["logger=wandb", "logger.mode=online", "logger.init_timeout=5",
                                              f"hydra.run.dir={run_dir}"])

    process, seconds = run_script(tmp_path, overrides, {**env, **env_mode}, timeout=120)
    output = process.stdout + process.stderr
    warnings = [line for line in output.splitlines() if "W&B online init failed" in line]

    assert process.returncode == 0, output
    assert seconds < 60
    assert len(warnings) == 1, output
    assert "logging offline" in warnings[0]
    assert (run_dir / "results.json").is_file()
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


# --- the matrix is complete -------------------------------------------------------------------

# Cases whose entry point is covered by a named test above instead of a table row.
LIBRARY_TESTS = {
    "unnormalised_warn": test_library_unnormalised_warns,
    "duplicates": test_library_duplicates_tie_against_positive,
    "integer": test_library_dtypes_upcast,
    "float16": test_library_dtypes_upcast,
    "bfloat16": test_library_dtypes_upcast,
    "gallery_without_query": test_library_gallery_without_query,
    "wandb_offline": None,  # W&B is a runner feature; the library never imports it
}
RUNNER_TESTS = {
    "unnormalised_warn": test_runner_unnormalised_warns,
    "top_k_above_gallery": test_runner_top_k_above_gallery,
    "duplicates": test_runner_duplicates_tie_against_positive,
    "integer": test_runner_dtypes_match_float32,
    "float16": test_runner_dtypes_match_float32,
    "bfloat16": test_runner_dtypes_match_float32,
    "query_without_positive": test_runner_query_without_positive,
    "gallery_without_query": test_runner_gallery_without_query,
    # The runners call common.check_command_line before Hydra, and tests/test_runner.py runs
    # the real command line for these two.
    "unknown_key": test_command_line_typo_suggests,
    "wrong_type": test_command_line_typo_suggests,
    "wandb_offline": test_script_wandb_online_falls_back,
}


def test_every_case_has_both_entry_points():
    library = set(LIBRARY_ERRORS) | set(LIBRARY_TESTS)
    runner = set(RUNNER_ERRORS) | set(RUNNER_TESTS)

    assert library == set(CASES), sorted(library ^ set(CASES))
    assert runner == set(CASES), sorted(runner ^ set(CASES))


def test_tiny_lam_leave_one_out_warns(caplog):
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    method = NIA(k=1, form="neighbour", pool="gallery_bank", lam=1e-4)

    with caplog.at_level("WARNING", logger="nia_jax.rerankers.nia"):
        nia_jax.rerank(method, queries, gallery, top_k=2, transductive=True)
    assert "nia.lam=0.0001 with leave-one-out" in caplog.text
    assert "Use lam >= 0.1" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="nia_jax.rerankers.nia"):
        nia_jax.rerank(NIA(k=1, form="neighbour", pool="gallery_bank", lam=0.1), queries, gallery, top_k=2,
                       transductive=True)
    assert "leave-one-out" not in caplog.text


@pytest.mark.parametrize("n_boot", [-1, 1, 9, 2.5])
def test_bootstrap_too_few_resamples(n_boot):
    values = np.array([0.0, 100.0, 100.0, 0.0])
    with pytest.raises(InputError, match=r"n_boot=.*>= 10"):
        nia_jax.metrics.bootstrap_ci(values, n_boot=n_boot)


@pytest.mark.parametrize("n_boot", [0, 1])
def test_runner_n_boot_too_small(n_boot):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("rerank", overrides=["logger=none", f"n_boot={n_boot}"])
    with pytest.raises(ConfigError, match="at least 10 bootstrap resamples"):
        common.apply_search_options(cfg)


@pytest.mark.parametrize("mmap", [False, True])
def test_npy_header_larger_than_file(tmp_path, mmap):
    path = tmp_path / "huge.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (10**9, 512)})
        handle.write(b"\0" * 4096)
    with pytest.raises(InputError, match="header declares a float32 array of shape") as caught:
        load_array(path, mmap=mmap)
    assert "holds 4,096 bytes" in str(caught.value)


@pytest.mark.parametrize(("content", "words"), [
    ([[0.5], [1]], "query 0 has positives [0.5]"),
    ([[0], [True]], "query 1 has positives [True]"),
    ({"0": [0], "foo": [1]}, "got 'foo'"),
    ({"-1": [0]}, "got '-1'"),
    ({"0": [0], "2": [1]}, "missing [1], extra ['2']"),
])
def test_ground_truth_json_invalid(tmp_path, content, words):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError) as caught:
        load_positives(path)
    assert words in str(caught.value)


def test_compare_method_override_hint(capsys):
    with pytest.raises(SystemExit) as info:
        common.check_command_line("compare", ["method=nai"])
    lines = capsys.readouterr().err.strip().splitlines()

    assert info.value.code == 1
    assert len(lines) == 1, lines
    assert "compare.py has no config group 'method'" in lines[0]
    assert "include=[nia,nnn]" in lines[0]
