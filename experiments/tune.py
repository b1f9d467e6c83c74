"""Tune a re-ranker on the dev split by grid search, then report it once on the test split.

    python experiments/tune.py grid=nia method=nia      # the NIA default's sweep
    python experiments/tune.py grid=nnn method=nnn

Every combination of the grid (conf/grid/<name>.yaml) is evaluated in this
process; traced hyperparameters reuse one compilation per static setting.
The setting with the highest dev rsum (R@1 + R@5 + R@10 of both directions)
is evaluated once on the test split beside cosine. rsum is the usual
model-selection figure in image-text retrieval, and ``selection=mean_r1``
ranks by mean R@1 instead.
results.json records the grid, every dev score, the chosen values and the
test metrics; tuned_<method>.yaml contains the chosen values as a method config.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import time
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import schema  # noqa: E402

import nia_jax  # noqa: E402
from nia_jax.errors import ConfigError, NiaError  # noqa: E402

log = logging.getLogger("nia_jax.experiments.tune")
schema.register_schemas()


def grid_points(base: nia_jax.Reranker, grid: dict) -> list[nia_jax.Reranker]:
    """Return one re-ranker per combination of the grid values, in grid order."""
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(grid) - fields)
    if unknown:
        raise ConfigError(f"grid: {base.name} has no setting(s) {unknown}; valid settings: {sorted(fields)}.")
    names = list(grid)
    points = []
    for values in itertools.product(*(grid[n] for n in names)):
        method = dataclasses.replace(base, **dict(zip(names, values)))
        method.validate()
        points.append(method)
    return points


SELECTIONS = {
    "rsum": "highest rsum (R@1 + R@5 + R@10 of both directions) on the tuning split; ties by mean R@1, then grid order",
    "mean_r1": "highest mean R@1 over t2i and i2t on the tuning split; ties by rsum, then grid order",
}


def selection_key(score: dict, selection: str) -> tuple:
    """Return the sort key of one grid point's tuning scores (larger is better)."""
    if selection == "rsum":
        return score["rsum"], score["mean_R@1"], -score["index"]
    return score["mean_R@1"], score["rsum"], -score["index"]


def run(cfg: DictConfig, run_dir: Path) -> tuple[dict, dict, dict]:
    """Search the grid on the tuning split and evaluate the winner on the evaluation split."""
    common.apply_search_options(cfg)
    if cfg.selection not in SELECTIONS:
        raise ConfigError(f"selection: expected one of {sorted(SELECTIONS)}, got {cfg.selection!r}.")
    if cfg.tune_split == cfg.eval_split:
        raise ConfigError(f"tune_split and eval_split are both {cfg.tune_split!r}; tuning must use another split.")
    base = common.make_method(cfg.method)
    grid = OmegaConf.to_container(cfg.grid, resolve=True)
    points = grid_points(base, grid)
    tune_tasks = common.load_tasks(OmegaConf.merge(cfg, {"dataset": {"split": cfg.tune_split}}))
    eval_tasks = common.load_tasks(OmegaConf.merge(cfg, {"dataset": {"split": cfg.eval_split}}))
    log.info("tuning %s over %d settings on %s", base.name, len(points), cfg.tune_split)

    start = time.perf_counter()
    scores = []
    for i, method in enumerate(points):
        dev = {d: nia_jax.evaluate(method, t, top_k=cfg.top_k, block_size=cfg.block_size, n_boot=0).metrics
               for d, t in tune_tasks.items()}
        mean_r1 = (dev["t2i"]["R@1"] + dev["i2t"]["R@1"]) / 2
        rsum = dev["t2i"]["rsum"] + dev["i2t"]["rsum"]
        scores.append({"index": i, "settings": {n: getattr(method, n) for n in grid},
                       "t2i_R@1": dev["t2i"]["R@1"], "i2t_R@1": dev["i2t"]["R@1"],
                       "mean_R@1": round(mean_r1, 4), "rsum": round(rsum, 4)})
    tune_s = time.perf_counter() - start
    best = max(scores, key=lambda r: selection_key(r, cfg.selection))
    chosen = points[best["index"]]
    log.info("chosen %s (dev mean R@1 %.2f, rsum %.1f) after %.1f s", best["settings"], best["mean_R@1"],
             best["rsum"], tune_s)

    methods = {"cosine": nia_jax.make_reranker("cosine"), chosen.name: chosen}
    entries, timing, ranks = common.evaluate_methods(methods, eval_tasks, cfg)
    tuned = {k: v for k, v in chosen.describe().items()}
    payload = {
        "dataset": eval_tasks["t2i"].dataset,
        "split": cfg.eval_split,
        "protocol": cfg.protocol.name,
        "methods": entries,
        "timing_s": timing,
        "tuning": {
            "method": chosen.name,
            "tune_split": cfg.tune_split,
            "selection": cfg.selection,
            "selection_rule": SELECTIONS[cfg.selection],
            "grid": grid,
            "n_settings": len(points),
            "chosen": tuned,
            "chosen_dev": best,
            "dev_scores": scores,
            "tune_s": round(tune_s, 2),
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
        "environment": common.environment(),
    }
    return payload, tuned, ranks


def tuned_config_text(cfg: DictConfig, tuned: dict, n_settings: int) -> str:
    """Return the chosen setting as a method config file, with how it was chosen in its header."""
    grid_text = " ".join(f"{k}={','.join(map(str, v))}" for k, v in OmegaConf.to_container(cfg.grid).items())
    header = (f"# {tuned['name']} settings chosen by experiments/tune.py on {cfg.dataset.name}, "
              f"split={cfg.tune_split}, protocol={cfg.protocol.name}:\n"
              f"# {SELECTIONS[cfg.selection]}, among {n_settings} settings.\n"
              f"# Grid: {grid_text}\n"
              f"# Each setting is documented in the re-ranker's class in nia_jax.rerankers.\n")
    defaults = f"defaults:\n  - /method/{tuned['name']}_schema@_here_\n  - _self_\n"
    values = {k: v for k, v in tuned.items() if k != "name"}
    # yaml.safe_dump({}) writes "{}", which is not valid after the defaults list.
    body = yaml.safe_dump(values, sort_keys=False) if values else ""
    return header + defaults + body


@hydra.main(version_base="1.3", config_path="../conf", config_name="tune")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        payload, tuned, ranks = run(cfg, run_dir)
    except NiaError as exc:
        common.fail_run(exc)

    tags = [f"method:{tuned['name']}", f"dataset:{cfg.dataset.name}", f"protocol:{cfg.protocol.name}",
            f"split:{cfg.eval_split}"]
    with common.wandb_run(cfg, run_dir, name=f"tune-{tuned['name']}-{cfg.dataset.name}", tags=tags) as wb:
        common.log_metrics(wb, payload["methods"])

    config_text = tuned_config_text(cfg, tuned, payload["tuning"]["n_settings"])
    (run_dir / f"tuned_{tuned['name']}.yaml").write_text(config_text)
    common.write_ranks_atomic(run_dir / "ranks.npz", ranks)
    common.write_json_atomic(run_dir / "results.json", payload)
    if cfg.export_dir is not None:
        export = Path(hydra.utils.to_absolute_path(cfg.export_dir)) / f"{tuned['name']}.yaml"
        export.parent.mkdir(parents=True, exist_ok=True)
        export.write_text(config_text)
        print(f"exported the chosen setting to {export}")

    chosen = payload["tuning"]["chosen_dev"]
    print(f"chosen on {cfg.tune_split} by {cfg.selection}: {chosen['settings']} "
          f"(dev mean R@1 {chosen['mean_R@1']:.2f}, rsum {chosen['rsum']:.1f})")
    print(common.format_table(payload["methods"], payload["protocol"], payload["split"]))
    print(f"results: {run_dir / 'results.json'}")


if __name__ == "__main__":
    common.check_command_line("tune")
    main()
