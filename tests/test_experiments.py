"""Experiment configs, sweeps, W&B grouping, aggregation, the notebook and reruns from saved configs.

The composition tests enumerate conf/experiment/, conf/dataset/ and
conf/hydra/launcher/ on disk, so a new file is covered without editing this
module. The end-to-end tests start ``python experiments/rerank.py -m`` in a
subprocess on the CPU, with W&B offline. They are marked slow and still run
by default. Tests that need a Hydra plugin from the ``sweep`` extra are
skipped, with the reason shown, when that plugin is not installed.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CONF_DIR, EXPERIMENTS_DIR, REPO_ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import OmegaConf

import aggregate
import common
import report
import report_fit
import schema

schema.register_schemas()

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
LAUNCHERS = sorted(p.stem for p in (CONF_DIR / "hydra" / "launcher").glob("*.yaml"))
RERANK = EXPERIMENTS_DIR / "rerank.py"
AGGREGATE = EXPERIMENTS_DIR / "aggregate.py"
NOTEBOOK = REPO_ROOT / "notebooks" / "ablation.ipynb"
# Which plugin each config needs, as the module that provides it.
PLUGINS = {
    "optuna": "hydra_plugins.hydra_optuna_sweeper",
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
}
VOLATILE_KEYS = ("timing_s", "environment")  # allowed to differ between a run and its rerun


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def needed_plugin(path: Path) -> str | None:
    """The plugin module a config file's defaults name (optuna, joblib, submitit), or None."""
    text = path.read_text()
    for option, module in PLUGINS.items():
        if re.search(rf"^\s*-\s*(override\s+/hydra/\w+:\s*)?{option}\s*$", text, flags=re.M):
            return module
    return None


def skip_without_plugin(path: Path) -> None:
    module = needed_plugin(path)
    if module is not None and not has_module(module):
        pytest.skip(f"{path.name} needs {module.split('.')[-1].replace('_', '-')}, which is not installed: "
                    'pip install -e ".[sweep]"')


def primary_config(experiment: str) -> str:
    """The runner an experiment belongs to, read from the launch command in its header comment."""
    header = [line for line in (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text().splitlines()
              if line.startswith("#")]
    commands = [m.group(1) for line in header for m in [re.search(r"python experiments/(\w+)\.py", line)] if m]
    assert commands, f"{experiment}.yaml: no 'python experiments/<runner>.py' launch command in its header"
    return commands[0]


def compose_cfg(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def missing_job_keys(cfg) -> set[str]:
    """The ??? keys of a composed config outside its hydra node (which keeps some until run time)."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return set(OmegaConf.missing_keys(job))


def dataset_dummies(config_name: str, dataset: str) -> list[str]:
    """Overrides that give a data set option's missing (???) values dummy paths, for composition only."""
    cfg = compose_cfg(config_name, [f"dataset={dataset}"])
    missing = sorted(k for k in missing_job_keys(cfg) if k.startswith("dataset."))
    return [f"{key}=/nonexistent/{key.split('.')[-1]}" for key in missing]


def leaves(tree, prefix=""):
    """Yield (dotted key, value) for every scalar or list leaf of a nested dict."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaves(value, dotted + ".")
        else:
            yield dotted, value


def experiment_yaml(experiment: str) -> dict:
    return yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text()) or {}


def sweep_values(text: str) -> list[str]:
    """The values of one sweeper parameter to compose: every choice, or an interval's two ends."""
    override = OverridesParser.create().parse_override(f"key={text}")
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    value = override.value()
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        return list(override.sweep_string_iterator())
    assert isinstance(value, IntervalSweep), text
    return [str(value.start), str(value.end)]


# --- composition ---------------------------------------------------------------------------


def test_configs_found():
    for name in ("nia_ablation", "full_comparison", "nia_optuna", "nia_sweep_w_eta"):
        assert name in EXPERIMENTS
    for setting in ("k", "lam", "tau", "w", "beta", "gamma", "eta"):
        assert f"nia_sweep_{setting}" in EXPERIMENTS
    assert {"local_parallel", "slurm"} <= set(LAUNCHERS)
    assert DATASETS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_file_form(experiment):
    text = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text()
    body = experiment_yaml(experiment)

    assert text.startswith("# @package _global_\n")
    assert f"+experiment={experiment}" in text, "the header's launch command names the experiment"
    assert body.get("logger", {}).get("job_type") in ("sweep", "ablation", "evaluation")
    assert body.get("hydra", {}).get("sweeper", {}).get("params"), "an experiment declares its sweep"
    assert f"multirun/{experiment}/" in body["hydra"]["sweep"]["dir"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment, dataset):
    path = CONF_DIR / "experiment" / f"{experiment}.yaml"
    skip_without_plugin(path)
    runner = primary_config(experiment)
    overrides = [f"+experiment={experiment}", f"dataset={dataset}", *dataset_dummies(runner, dataset)]

    cfg = compose_cfg(runner, overrides)

    assert not missing_job_keys(cfg)
    for key, value in leaves({k: v for k, v in experiment_yaml(experiment).items() if k not in ("defaults", "hydra")}):
        assert OmegaConf.select(cfg, key) == value, key
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params == experiment_yaml(experiment)["hydra"]["sweeper"]["params"]
    if "method" in cfg:
        common.make_method(cfg.method)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_swept_values_compose(experiment):
    # Each value of each sweeper parameter, one at a time: a typo such as form=neighbor fails
    # here rather than in job 17 of a sweep.
    path = CONF_DIR / "experiment" / f"{experiment}.yaml"
    skip_without_plugin(path)
    runner = primary_config(experiment)
    params = experiment_yaml(experiment)["hydra"]["sweeper"]["params"]
    checked = 0
    for key, text in params.items():
        for value in sweep_values(str(text)):
            cfg = compose_cfg(runner, [f"+experiment={experiment}", f"{key}={value}"])
            if "method" in cfg:
                common.make_method(cfg.method)
            checked += 1
    assert checked >= len(params)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_composes(launcher):
    path = CONF_DIR / "hydra" / "launcher" / f"{launcher}.yaml"
    skip_without_plugin(path)
    own = yaml.safe_load(path.read_text())
    own.pop("defaults", None)

    cfg = compose_cfg("rerank", ["+experiment=nia_ablation", f"hydra/launcher={launcher}"])

    target = cfg.hydra.launcher._target_
    module, _, name = target.rpartition(".")
    assert hasattr(importlib.import_module(module), name), target
    for key, value in own.items():
        assert cfg.hydra.launcher[key] == value, key


def test_optuna_config_maximises_dev():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason='hydra-optuna-sweeper is not installed: pip install -e ".[sweep]"')
    cfg = compose_cfg("rerank", ["+experiment=nia_optuna"])

    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert str(cfg.hydra.sweeper.direction) in ("maximize", "Direction.maximize")
    assert cfg.hydra.sweeper.sampler.seed is not None
    assert cfg.dataset.split == "dev"


# --- aggregate.py on hand-made folders (no JAX) --------------------------------------------


def fake_results(r1_t2i: float, r1_i2t: float) -> dict:
    def direction(r1):
        return {"R@1": r1, "R@5": r1 + 10, "R@10": r1 + 20, "rsum": 3 * r1 + 30, "medr": 1.0,
                "R@1_ci95": [r1 - 5, r1 + 5]}
    entry = {"t2i": direction(r1_t2i), "i2t": direction(r1_i2t)}
    return {"dataset": "toy", "split": "dev", "protocol": "inductive",
            "methods": {"cosine": {"t2i": direction(50.0), "i2t": direction(52.0)}, "nia": entry},
            "config": {"method": {"name": "nia", "k": None}}}


def fake_sweep(root: Path, values: list[int]) -> Path:
    """A basic-sweeper multirun folder over method.k, as Hydra lays it out, with fake results."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "mode": "MULTIRUN",
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"method.k": ",".join(map(str, values))}},
        "overrides": {"task": ["logger=none"]}}}))
    for num, k in enumerate(values):
        job = root / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"method.k={k}", "logger=none"]))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "nia", "k": k}}))
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {
            "mode": "MULTIRUN", "job": {"num": num}, "runtime": {"choices": {"method": "nia"}}}}))
        results = fake_results(40.0 + k, 41.0 + k)
        results["config"]["method"]["k"] = k
        (job / "results.json").write_text(json.dumps(results))
    return root


def test_aggregate_lists_failed_jobs(tmp_path):
    root = fake_sweep(tmp_path / "sweep", [1, 2, 4, 8])
    shutil.rmtree(root / "1")  # planned, never started
    (root / "2" / "results.json").write_text("{not json")  # unreadable
    (root / "3" / "results.json").unlink()  # started, no results
    (root / "3" / "rerank.log").write_text("[2025-01-01 00:00:00,000][nia_jax][ERROR] - nia.k=8 is too large\n")

    summary = aggregate.aggregate(root)

    failed = {row["run"]: row for row in aggregate.read_csv(tmp_path / "sweep" / "aggregate" / "failed_runs.csv")}
    assert set(failed) == {"#1", "2", "3"}
    assert failed["#1"]["status"] == "not_run"
    assert "method.k=2" in failed["#1"]["overrides"]
    assert failed["2"]["status"] == "unreadable"
    assert failed["3"]["status"] == "failed"
    assert failed["3"]["reason"] == "nia.k=8 is too large"
    assert summary["n_jobs"] == 1
    page = Path(summary["page"]).read_text()
    for run in ("#1", "| 2 |", "| 3 |"):
        assert run in page


def test_aggregate_writes_output_folder(tmp_path):
    root = fake_sweep(tmp_path / "sweep", [1, 2, 4])
    page = tmp_path / "docs" / "page.md"

    summary = aggregate.aggregate(root, output=page)

    assert page.is_file()
    folder = tmp_path / "docs" / "page"
    with open(folder / "failed_runs.csv") as handle:
        assert handle.read().strip() == ",".join(aggregate.FAILED_COLUMNS)
    rows = aggregate.read_csv(folder / "results.csv")
    assert len(rows) == 3 * 2 * 2
    assert [r["sweep.method.k"] for r in rows if r["method"] == "nia" and r["direction"] == "t2i"] == [1, 2, 4]
    assert {p.name for p in folder.glob("*.png")} == {"r1_vs_method_k.png", "bars.png"}
    assert all(f"]({Path(p).relative_to(tmp_path / 'docs').as_posix()})" in page.read_text()
               for p in summary["plots"])
    assert not list(folder.glob(".*")), "no temporary file is left behind"


def test_aggregate_strict_exit_code(tmp_path):
    root = fake_sweep(tmp_path / "sweep", [1, 2])
    (root / "1" / "results.json").unlink()

    relaxed = aggregate.main([str(root)])
    strict = aggregate.main([str(root), "--strict"])

    assert relaxed == 0
    assert strict == 1


# --- report.py's tuning comparison on hand-made results (no JAX evaluation) -----------------

# Four test queries per direction. Rank 1 is a hit at R@1, rank <= 5 at R@5.
GRID_RANKS = {"t2i": [1, 1, 2, 6], "i2t": [1, 2, 1, 1]}  # R@1 50 / 75, R@5 75 / 100
OPTUNA_RANKS = {"t2i": [1, 1, 1, 6], "i2t": [1, 2, 1, 3]}  # R@1 75 / 50, R@5 75 / 100
NIA_STATIC = {"weighting": "uniform", "pool": "query_bank", "form": "none", "leave_one_out": True, "tau": 0.05,
              "beta": 0.0, "gamma": 0.5}


def recall_entry(ranks: dict) -> dict:
    """A results.json method entry whose R@K figures follow from the given ranks."""
    entry = {}
    for direction, values in ranks.items():
        values = np.asarray(values)
        recalls = {f"R@{k}": 100.0 * float(np.mean(values <= k)) for k in (1, 5, 10)}
        entry[direction] = {**recalls, "R@1_ci95": [recalls["R@1"] - 10, recalls["R@1"] + 10],
                            "rsum": sum(recalls.values())}
    entry["rsum"] = entry["t2i"]["rsum"] + entry["i2t"]["rsum"]
    return entry


def write_run(folder: Path, payload: dict, ranks: dict[str, dict] | None = None) -> None:
    """Write results.json (and ranks.npz with keys <method>/<direction>) as the runners lay them out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(payload))
    if ranks is not None:
        np.savez(folder / "ranks.npz", **{f"{name}/{d}": np.asarray(r) for name, by_direction in ranks.items()
                                          for d, r in by_direction.items()})


def nia_settings(k: int, lam: float, w: float, eta: float) -> dict:
    return {"name": "nia", "k": k, **NIA_STATIC, "lam": lam, "w": w, "eta": eta}


def fake_tuning_root(root: Path, *, optuna_test_lam: float = 2.0, fit_split: str = "test") -> Path:
    """A reproduce_results.sh output folder with a grid run, an Optuna study and a fit run."""
    cosine_ranks = {"t2i": [2, 1, 3, 6], "i2t": [1, 3, 1, 2]}
    grid_values = nia_settings(1, 10.0, 0.5, 0.75)
    write_run(root / "tune" / "nia", {
        "protocol": "inductive", "split": "test",
        "methods": {"cosine": recall_entry(cosine_ranks), "nia": recall_entry(GRID_RANKS)},
        "tuning": {"method": "nia", "tune_split": "dev",
                   "grid": {"k": [1, 2], "lam": [1.0, 10.0], "w": [0.5], "eta": [0.75], "form": ["none"]},
                   "n_settings": 4, "chosen": grid_values,
                   "selection_rule": "highest rsum on the tuning split; ties by mean R@1, then grid order",
                   "chosen_dev": {"settings": {"k": 1, "lam": 10.0}, "rsum": 500.0, "t2i_R@1": 64.0,
                                  "i2t_R@1": 66.0},
                   "tune_s": 12.5},
    }, {"cosine": cosine_ranks, "nia": GRID_RANKS})

    sweep = root / "optuna" / "sweep"
    sweeper = {"params": {"method.k": "int(interval(1, 4))", "method.lam": "tag(log, interval(0.1, 10.0))"},
               "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 0}, "n_jobs": 1, "n_trials": 2}
    for number, (k, lam, rsum, seconds) in enumerate([(1, 5.0, 490.0, 0.5), (2, 2.0, 502.0, 0.25)]):
        trial = {"split": "dev", "timing_s": {"cosine": 1.0, "nia": seconds},
                 "methods": {"nia": {"t2i": {"R@1": 60.0 + number}, "i2t": {"R@1": 62.0}, "rsum": rsum}},
                 "config": {"method": nia_settings(k, lam, 0.5, 0.75), "n_boot": 1000}}
        write_run(sweep / str(number), trial)
        (sweep / str(number) / ".hydra").mkdir()
        (sweep / str(number) / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": sweeper}}))
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": {"method.k": 2, "method.lam": 2.0}, "best_value": 502.0}))
    (root / "optuna" / "tuning.json").write_text(json.dumps({"tuner": "optuna", "wall_s": 20.25, "cpu_count": 2}))
    optuna_entry = recall_entry(OPTUNA_RANKS)
    optuna_entry["settings"] = nia_settings(2, optuna_test_lam, 0.5, 0.75)
    write_run(root / "optuna" / "test", {
        "protocol": "inductive", "split": "test",
        "methods": {"cosine": recall_entry(cosine_ranks), "nia": optuna_entry},
    }, {"cosine": cosine_ranks, "nia": OPTUNA_RANKS})

    write_run(root / "fit", {
        "protocol": "inductive", "split": fit_split, "methods": {"nia_fitted": recall_entry(GRID_RANKS)},
        "fitting": {"tune_split": "dev", "learned_names": ["lam", "w", "eta"],
                    "start": {"tau": 0.05, "lam": 10.0, "w": 0.5, "beta": 0.0, "gamma": 0.5, "eta": 0.75},
                    "settings": {"surrogate": "listwise", "temperature": 0.01, "holdout": 0.2},
                    "steps": 7, "best_step": 1, "stopped_early": True, "kept_start": True, "fit_s": 3.5,
                    "curve": [{"step": 0, "tune_R@1": 65.0, "lam": 10.0, "w": 0.5, "eta": 0.75},
                              {"step": 1, "tune_R@1": 64.5, "lam": 9.0, "w": 0.625, "eta": 0.875}]},
        "comparison": {
            "fitted": {"settings": grid_values, "dev": {"rsum": 500.0, "t2i_R@1": 64.0, "i2t_R@1": 66.0,
                                                        "mean_R@1": 65.0}},
            "start": {"settings": grid_values, "dev": {"mean_R@1": 65.0}},
            "grid": {"settings": grid_values, "dev": {"mean_R@1": 65.0}, "tuning_s": 9.75},
        },
    }, {"nia_fitted": GRID_RANKS})
    return root


def table_row(lines: list[str], first_cell: str) -> list[str]:
    """Return the cells of the Markdown table row that starts with first_cell."""
    rows = [line for line in lines if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, f"expected one row '{first_cell}', found {len(rows)}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_tuner_comparison_tuning_rows(tmp_path):
    lines = report.tuner_comparison(fake_tuning_root(tmp_path))

    grid = table_row(lines, "grid search (tune.py)")
    optuna = table_row(lines, "Optuna TPE, seed 0 (rerank.py -m)")
    fit = table_row(lines, "gradient fit (fit.py)")
    assert grid[1:] == ["k in {1, 2}; lam in {1, 10}", "4 settings", "k=1, lam=10", "500.0", "64.0 / 66.0", "12.5"]
    # The best trial is trial 1; its NIA evaluations took 0.5 + 0.25 s of the 20.25 s study.
    assert optuna[2:] == ["2 trials", "k=2, lam=2", "502.0", "61.0 / 62.0", "20.2 (NIA evaluations 0.8)"]
    assert fit[1:] == ["lam, w, eta by Adam from lam=10, w=0.5, eta=0.75", "7 Adam steps", "k=1, lam=10", "500.0",
                       "64.0 / 66.0", "3.5"]


def test_tuner_comparison_test_rows(tmp_path):
    lines = report.tuner_comparison(fake_tuning_root(tmp_path))

    assert table_row(lines, "cosine")[1:] == ["25.0 [15.0, 35.0]", "75.0", "100.0", "50.0 [40.0, 60.0]", "100.0",
                                              "100.0", "450.0"]
    assert table_row(lines, "NIA, grid search (tune.py)")[1:4] == ["50.0 [40.0, 60.0]", "75.0", "100.0"]
    assert table_row(lines, "NIA, Optuna TPE, seed 0 (rerank.py -m)")[1:] == [
        "75.0 [65.0, 85.0]", "75.0", "100.0", "50.0 [40.0, 60.0]", "100.0", "100.0", "500.0"]


def test_tuner_comparison_paired_differences(tmp_path):
    lines = report.tuner_comparison(fake_tuning_root(tmp_path))

    optuna = table_row(lines, "Optuna TPE, seed 0 (rerank.py -m) minus grid")
    fit = table_row(lines, "gradient fit (fit.py) minus grid")
    # Optuna gains query 3 at t2i R@1 and loses query 4 at i2t R@1; both are one query of four.
    assert optuna[1].startswith("+25.0 [")
    assert optuna[2] == "+0.0 [+0.0, +0.0]"
    assert optuna[4].startswith("-25.0 [")
    assert optuna[5] == "+0.0 [+0.0, +0.0]"
    assert fit[1:] == ["+0.0 [+0.0, +0.0]"] * 6


def test_tuner_comparison_notes(tmp_path):
    text = "\n".join(report.tuner_comparison(fake_tuning_root(tmp_path)))

    assert ("The settings not listed are the same in every row: weighting=uniform, pool=query_bank, form=none, "
            "leave_one_out=True, tau=0.05, beta=0, gamma=0.5, w=0.5, eta=0.75.") in text
    assert "The selection rule is the highest rsum on the tuning split; ties by mean R@1, then grid order." in text
    assert "The best was trial 1 at dev rsum 502.0 (grid: 500.0), and 1 of 2 trials reached" in text
    assert "(lam=9, w=0.625, eta=0.875) scored a dev R@1 of 64.5" in text
    assert "took 12.5 s in tune.py and 9.8 s when fit.py repeated it" in text


def test_tuner_comparison_grid_only(tmp_path):
    root = fake_tuning_root(tmp_path)
    shutil.rmtree(root / "optuna")
    shutil.rmtree(root / "fit")

    lines = report.tuner_comparison(root)

    assert table_row(lines, "grid search (tune.py)")[3] == "k=1, lam=10"
    assert not any("minus grid" in line for line in lines)
    assert not any(line.startswith("| Optuna") for line in lines)


def test_tuner_comparison_rejects_other_setting(tmp_path):
    root = fake_tuning_root(tmp_path, optuna_test_lam=3.0)

    with pytest.raises(ValueError, match="best trial"):
        report.tuner_comparison(root)


def test_tuner_comparison_rejects_other_objective(tmp_path):
    root = fake_tuning_root(tmp_path)
    best_path = root / "optuna" / "sweep" / "optimization_results.yaml"
    best = yaml.safe_load(best_path.read_text())
    best["best_value"] = 61.0  # the mean dev R@1 that an older rerank.py returned
    best_path.write_text(yaml.safe_dump(best))

    with pytest.raises(ValueError, match="another objective"):
        report.tuner_comparison(root)


def test_tuner_comparison_rejects_other_split(tmp_path):
    root = fake_tuning_root(tmp_path, fit_split="dev")

    with pytest.raises(ValueError, match="eval_split is 'dev'"):
        report.tuner_comparison(root)


def test_report_renders_tuning_section(tmp_path):
    root = fake_tuning_root(tmp_path)
    shutil.copytree(REPO_ROOT / "results" / "coco500" / "compare_inductive", root / "compare_inductive")

    text = report.render(root)

    assert "## Tuning NIA: grid vs Optuna vs gradient" in text
    assert text.index("## Tuning NIA") > text.index("## Inductive comparison")


def test_fit_summary_names_discarded_values(tmp_path):
    payload = json.loads((fake_tuning_root(tmp_path) / "fit" / "results.json").read_text())

    text = report_fit.fit_summary(payload)

    assert text.startswith("The fit ran 7 steps and stopped early. The lowest held-out loss came at step 1.")
    assert "so the starting values were kept" in text
    assert "against 65.0 for the grid's choice" in text


# --- end-to-end multiruns ------------------------------------------------------------------


def script_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(JAX_PLATFORMS="cpu", WANDB_MODE="offline", WANDB_SILENT="true")
    return env


def run_script(script: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=script_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def four_jobs(tmp_path_factory):
    """The four-job multirun over k and eta with offline W&B: (process, sweep dir)."""
    cwd = tmp_path_factory.mktemp("four_jobs")
    sweep_dir = cwd / "multirun" / "k_eta"
    process = run_script(RERANK, cwd, "-m", "method.k=1,2", "method.eta=0.5,1.0", "logger=wandb",
                         f"hydra.sweep.dir={sweep_dir}")
    return process, sweep_dir


@pytest.fixture(scope="module")
def four_jobs_ok(four_jobs):
    process, sweep_dir = four_jobs
    assert process.returncode == 0, process.stdout + process.stderr
    return sweep_dir


@pytest.fixture(scope="module")
def four_jobs_aggregated(four_jobs_ok):
    process = run_script(AGGREGATE, four_jobs_ok.parent, str(four_jobs_ok), timeout=120)
    assert process.returncode == 0, process.stdout + process.stderr
    return four_jobs_ok / "aggregate"


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


@pytest.mark.slow
def test_multirun_writes_results_and_wandb(four_jobs_ok):
    jobs = job_dirs(four_jobs_ok)

    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        results = json.loads((job / "results.json").read_text())
        assert set(results["methods"]) == {"cosine", "nia"}
        offline = list((job / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, job
        assert list(offline[0].glob("run-*.wandb")), job


@pytest.mark.slow
def test_multirun_job_overrides(four_jobs_ok):
    seen = set()
    for job in job_dirs(four_jobs_ok):
        config = json.loads((job / "results.json").read_text())["config"]
        seen.add((config["method"]["k"], config["method"]["eta"]))

    assert seen == {(1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0)}


@pytest.mark.slow
def test_wandb_runs_share_group(four_jobs_ok):
    # The offline run file stores the run record's strings verbatim (protobuf), so the group,
    # job type and tags can be checked without the W&B API.
    group = f"{four_jobs_ok.parent.name}-{four_jobs_ok.name}"
    for job in job_dirs(four_jobs_ok):
        data = next((job / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        for text in (group, "evaluation", "method:nia", "dataset:coco500_clip_vitb16", "split:test",
                     "protocol:inductive", "encoder:", f"-{job.name}", "mean_R@1"):
            assert text.encode() in data, (job.name, text)


@pytest.mark.slow
def test_aggregated_csv_equals_results(four_jobs_ok, four_jobs_aggregated):
    rows = aggregate.read_csv(four_jobs_aggregated / "results.csv")
    with open(four_jobs_aggregated / "failed_runs.csv") as handle:
        failed = list(csv.DictReader(handle))

    assert len(rows) == 4 * 2 * 2
    assert failed == []
    for row in rows:
        results = json.loads((four_jobs_ok / row["run"] / "results.json").read_text())
        metrics = results["methods"][row["method"]][row["direction"]]
        assert row["sweep.method.k"] == results["config"]["method"]["k"]
        assert row["sweep.method.eta"] == results["config"]["method"]["eta"]
        for key, value in metrics.items():
            if isinstance(value, list):
                assert [row[f"{key}_lo"], row[f"{key}_hi"]] == value, key
            else:
                assert row[key] == value, key
    assert (four_jobs_aggregated / "r1_vs_method_k.png").stat().st_size > 0
    assert (four_jobs_aggregated / "heatmap_method_k_method_eta.png").stat().st_size > 0


@pytest.mark.slow
def test_rerun_saved_config_reproduces(four_jobs_ok, tmp_path):
    job = job_dirs(four_jobs_ok)[1]
    rerun = tmp_path / "rerun"

    process = run_script(RERANK, tmp_path, "--config-path", str(job / ".hydra"), "--config-name", "config",
                         f"hydra.run.dir={rerun}")

    assert process.returncode == 0, process.stdout + process.stderr
    first = json.loads((job / "results.json").read_text())
    second = json.loads((rerun / "results.json").read_text())
    for key in VOLATILE_KEYS:
        assert key in first
        assert key in second
        first.pop(key)
        second.pop(key)
    assert first == second


@pytest.mark.slow
def test_results_record_environment(four_jobs_ok):
    results = json.loads((job_dirs(four_jobs_ok)[0] / "results.json").read_text())

    assert {"nia_jax", "jax", "devices", "git_commit"} <= set(results["environment"])
    assert "seed" in results["config"]
    assert "seed" in results["config"]["dataset"]
    assert (job_dirs(four_jobs_ok)[0] / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_notebook_table_matches_csv(four_jobs_aggregated, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason='nbformat is not installed: pip install -e ".[dev]"')
    nbclient = pytest.importorskip("nbclient", reason='nbclient is not installed: pip install -e ".[dev]"')
    csv_path = four_jobs_aggregated / "results.csv"
    monkeypatch.setenv("NIA_ABLATION_CSV", str(csv_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    table_cell = next(c for c in notebook.cells if "table" in c.metadata.get("tags", []))
    markdown = next(o["data"]["text/markdown"] for o in table_cell.outputs if "text/markdown" in o.get("data", {}))
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    displayed = {}
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        displayed[(cells["run"], cells["method"])] = cells
    rows = aggregate.read_csv(csv_path)
    for row in rows:
        run = row["run"] if (row["run"], row["method"]) in displayed else "(all 4)"
        cells = displayed[(run, row["method"])]
        value = float(cells[f"{row['direction']} R@1 [95% CI]"].split()[0])
        assert math.isclose(value, row["R@1"], abs_tol=0.05), (row["run"], row["method"], row["direction"])
    assert len(displayed) == 4 + 1  # four NIA jobs and the cosine line they share


@pytest.mark.slow
def test_failed_job_sweep_continues(tmp_path):
    sweep_dir = tmp_path / "multirun" / "with_failure"

    process = run_script(RERANK, tmp_path, "-m", "method.k=1,100000,2", "logger=none", f"hydra.sweep.dir={sweep_dir}")
    listed = run_script(AGGREGATE, tmp_path, str(sweep_dir), timeout=120)

    # The sweep as a whole reports the failure, but the jobs after it still ran.
    assert process.returncode != 0
    assert "nia.k=100000" in process.stdout + process.stderr
    assert (sweep_dir / "0" / "results.json").is_file()
    assert not (sweep_dir / "1" / "results.json").exists()
    assert (sweep_dir / "2" / "results.json").is_file()
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "nia.k=100000" in listed.stdout
    failed = aggregate.read_csv(sweep_dir / "aggregate" / "failed_runs.csv")
    assert [(r["run"], r["status"]) for r in failed] == [("1", "failed")]
    assert "nia.k=100000" in failed[0]["reason"]
    assert "method.k=100000" in failed[0]["overrides"]
    rows = aggregate.read_csv(sweep_dir / "aggregate" / "results.csv")
    assert {r["run"] for r in rows} == {"0", "2"}


@pytest.mark.slow
def test_optuna_maximises_dev_rsum(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason='hydra-optuna-sweeper is not installed: pip install -e ".[sweep]"')
    sweep_dir = tmp_path / "multirun" / "optuna"

    process = run_script(RERANK, tmp_path, "-m", "+experiment=nia_optuna", "hydra.sweeper.n_trials=3",
                         "logger=none", f"hydra.sweep.dir={sweep_dir}")

    assert process.returncode == 0, process.stdout + process.stderr
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    trials = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert len(trials) == 3
    assert all(t["split"] == "dev" for t in trials)
    objectives = [t["methods"]["nia"]["rsum"] for t in trials]  # tune.py's grid selection rule
    assert best["best_value"] == pytest.approx(max(objectives))
    assert best["best_value"] != pytest.approx(max(common.mean_r1(t["methods"]["nia"]) for t in trials))
    summary = aggregate.aggregate(sweep_dir)
    assert summary["n_jobs"] == 3
    assert not summary["failed"]
    assert {"method.k", "method.lam", "method.w", "method.eta"} <= set(summary["swept"])


@pytest.mark.slow
def test_joblib_launcher_runs_jobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher",
                        reason='hydra-joblib-launcher is not installed: pip install -e ".[sweep]"')
    sweep_dir = tmp_path / "multirun" / "joblib"

    process = run_script(RERANK, tmp_path, "-m", "method.k=1,100000", "logger=none", "hydra/launcher=local_parallel",
                         f"hydra.sweep.dir={sweep_dir}")

    assert process.returncode != 0  # job 1 fails ...
    assert (sweep_dir / "0" / "results.json").is_file()  # ... and job 0 still finishes
    assert "Joblib.Parallel(n_jobs=2" in process.stdout + process.stderr
