"""The Hydra runner experiments/rerank.py: config composition, results.json, W&B and bad input.

The end-to-end runs start ``python experiments/rerank.py`` in a subprocess on
the CPU, each once per module, and are marked slow (they still run by default).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import CONF_DIR, EXPERIMENTS_DIR, REPO_ROOT
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

import common
import schema

schema.register_schemas()

GROUPS = ("dataset", "encoder", "method", "protocol", "logger")
# Every YAML file of every group, found on disk so that new options are covered.
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
METRIC_KEYS = ("R@1", "R@5", "R@10", "rsum", "medr", "mAP@R", "R-Precision", "R@1_ci95")
SCRIPT = EXPERIMENTS_DIR / "rerank.py"
SHIPPED_FILE = REPO_ROOT / "nia_jax" / "data" / "files" / "coco500_clip_vitb16" / "features_clip.npy"


def compose_rerank(overrides, config_dir=CONF_DIR):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("rerank", overrides=list(overrides))


def exception_chain(exc):
    """Return exc and every exception it was raised from or raised while handling."""
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


# --- composition ---------------------------------------------------------------------------


def test_options_found():
    found = {group for group, _ in OPTIONS}

    assert found == set(GROUPS)
    assert ("method", "nia") in OPTIONS
    assert ("method", "cosine") in OPTIONS


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes(group, option):
    # The dev-tuned overlay of conf/tuned/ is dropped so the group's own file is what composes.
    extra = ["~tuned@method"] if group == "method" else []
    cfg = compose_rerank([f"{group}={option}", *extra])
    own_keys = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    own_keys.pop("defaults", None)

    composed = OmegaConf.to_container(cfg[group])  # keeps required (???) values as "???" instead of raising
    for key, value in own_keys.items():
        assert composed[key] == value, f"{group}.{key}"


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "tuned").glob("*.yaml")))
def test_tuned_overlay_applies(option):
    cfg = compose_rerank([f"method={option}"])
    tuned = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "tuned" / f"{option}.yaml"))
    tuned.pop("defaults", None)

    composed = OmegaConf.to_container(cfg.method)
    for key, value in tuned.items():
        assert composed[key] == value, f"method.{key}"


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "method"])
def test_method_option_builds(option):
    cfg = compose_rerank([f"method={option}"])

    method = common.make_method(cfg.method)

    assert method.describe() == OmegaConf.to_container(cfg.method)


def test_unknown_key_override_fails():
    with pytest.raises(ConfigCompositionException) as info:
        compose_rerank(["method.kk=3"])
    assert any(isinstance(e, ConfigAttributeError) for e in exception_chain(info.value))


def test_wrong_type_override_fails():
    with pytest.raises(ConfigCompositionException) as info:
        compose_rerank(["method.k=ten"])
    assert any(isinstance(e, ValidationError) for e in exception_chain(info.value))


def test_wrong_type_top_level_fails():
    with pytest.raises(ConfigCompositionException) as info:
        compose_rerank(["top_k=ten"])
    assert any(isinstance(e, ValidationError) for e in exception_chain(info.value))


@pytest.fixture(scope="module")
def conf_copy(tmp_path_factory):
    """A copy of conf/ with two broken method files: an unknown key and a wrong type."""
    root = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(CONF_DIR, root)
    (root / "method" / "unknown_key.yaml").write_text("defaults:\n  - nia_schema\n  - _self_\nkk: 3\n")
    (root / "method" / "wrong_type.yaml").write_text("defaults:\n  - nia_schema\n  - _self_\nk: ten\n")
    return root


def test_unknown_key_file_fails(conf_copy):
    with pytest.raises(ConfigCompositionException) as info:
        compose_rerank(["method=unknown_key"], config_dir=conf_copy)
    assert "kk" in str(info.value)
    assert any(isinstance(e, ConfigKeyError) for e in exception_chain(info.value))


def test_wrong_type_file_fails(conf_copy):
    with pytest.raises(ConfigCompositionException) as info:
        compose_rerank(["method=wrong_type"], config_dir=conf_copy)
    assert any(isinstance(e, ValidationError) for e in exception_chain(info.value))


# --- end-to-end runs -----------------------------------------------------------------------


def run_script(cwd, *overrides, drop_env=()):
    """Run experiments/rerank.py on the CPU from cwd and return the finished process."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env and k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, str(SCRIPT), *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default config (NIA on the test split) without a logger: (process, run dir)."""
    cwd = tmp_path_factory.mktemp("default")
    run_dir = cwd / "run"
    return run_script(cwd, "logger=none", f"hydra.run.dir={run_dir}"), run_dir


@pytest.fixture(scope="module")
def default_results(default_run):
    process, run_dir = default_run
    assert process.returncode == 0, process.stdout + process.stderr
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_run_exits_zero(default_run):
    process, _ = default_run

    assert process.returncode == 0, process.stdout + process.stderr


@pytest.mark.slow
def test_results_top_keys(default_results):
    for key in ("dataset", "split", "protocol", "methods", "timing_s", "config"):
        assert key in default_results, key
    assert default_results["split"] == "test"
    assert default_results["protocol"] == "inductive"
    assert set(default_results["methods"]) == {"cosine", "nia"}


@pytest.mark.slow
def test_results_config_is_composed(default_results):
    config = default_results["config"]

    assert config["method"]["name"] == "nia"
    assert config["logger"]["name"] == "none"
    assert config["top_k"] == 100


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cosine", "nia"])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_results_metric_keys(default_results, method, direction):
    entry = default_results["methods"][method][direction]

    for key in METRIC_KEYS:
        assert key in entry, key
    assert entry["n_queries"] == 250


@pytest.mark.slow
def test_results_cosine_matches_numpy(default_results):
    features = np.load(SHIPPED_FILE, allow_pickle=False).astype(np.float64)
    test_pairs = np.random.default_rng(0).permutation(500)[250:]
    images, captions = features[0][test_pairs], features[1][test_pairs]
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    sims = captions @ images.T
    negatives_above = (sims >= np.diag(sims)[:, None]).sum(axis=1) - 1
    expected = 100.0 * np.mean(negatives_above == 0)

    assert default_results["methods"]["cosine"]["t2i"]["R@1"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.slow
def test_default_logger_writes_offline_run(tmp_path):
    # WANDB_MODE is removed from the environment: the project must select offline mode itself.
    run_dir = tmp_path / "run"
    process = run_script(tmp_path, f"hydra.run.dir={run_dir}", drop_env=("WANDB_MODE",))

    assert process.returncode == 0, process.stdout + process.stderr
    assert (run_dir / "results.json").is_file()
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("run-*.wandb"))


@pytest.mark.slow
@pytest.mark.parametrize(("override", "words"), [
    ("method.k=100000", ("nia.k=100000", "Lower k")),
    ("method.weighting=sofmax", ("nia.weighting", "'sofmax'")),
])
def test_bad_setting_clean_error(tmp_path, override, words):
    run_dir = tmp_path / "run"
    process = run_script(tmp_path, "logger=none", f"hydra.run.dir={run_dir}", override)
    output = process.stdout + process.stderr
    error_lines = [line for line in output.splitlines() if "ERROR" in line]

    assert process.returncode != 0
    assert "Traceback" not in output
    assert len(error_lines) == 1, output
    for word in words:
        assert word in error_lines[0], word
    assert not (run_dir / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("override", "hint"), [("topk=5", "Did you mean 'top_k'?"),
                                              ("method=nai", "Did you mean 'nia'?")])
def test_typo_gets_closest_name(tmp_path, override, hint):
    run_dir = tmp_path / "run"
    process = run_script(tmp_path, "logger=none", f"hydra.run.dir={run_dir}", override)
    output = process.stdout + process.stderr
    error_lines = [line for line in output.splitlines() if "ERROR" in line]

    assert process.returncode == 1
    assert "Traceback" not in output
    assert len(error_lines) == 1, output
    assert hint in error_lines[0]
    assert not (run_dir / "results.json").exists()
