"""Learn NIA's continuous settings on the dev split by gradient descent, then report them once on test.

    python experiments/fit.py                          # from conf/tuned/nia.yaml, else the NIA defaults
    python experiments/fit.py ~tuned@method            # from conf/method/nia.yaml
    python experiments/fit.py compare_grid=false logger=none max_steps=50

nia_jax.fitting.fit learns tau, lam, w, beta, gamma and eta (those the static
settings use) with Adam on a smooth surrogate of R@1. It fits on part of
tune_split's queries and stops early on the rest, while k, weighting, pool and
form stay as configured. With compare_grid=true, tune.py's grid search
(conf/grid/nia.yaml, the same selection rule) runs on tune_split in this
process, so both tuning wall times come from one machine. Then cosine, the
starting values, the fitted values and the grid's choice are evaluated once
on eval_split.

Outputs in the run directory:

* results.json: test metrics of every method, a ``fitting`` section (learning
  curve, start and learned values, steps, wall time), the grid search's
  ``tuning`` section and a ``comparison`` of fitted against grid-tuned NIA;
* fitted_nia.yaml: the learned values as a method config. Copy it to
  conf/tuned/nia.yaml, or to conf/tuned/fitted_nia.yaml and select it with
  ``tuned@method=fitted_nia`` (rerank.py) or ``tuned@methods.nia=fitted_nia``
  (compare.py);
* ranks.npz: per-query test ranks for paired comparisons;
* wandb/: the learning curve and the test metrics (offline by default).

experiments/report_fit.py renders the comparison as Markdown.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import numpy as np
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import report_fit  # noqa: E402
import schema  # noqa: E402
import tune  # noqa: E402

import nia_jax  # noqa: E402
from nia_jax import fitting  # noqa: E402
from nia_jax.data.task import RetrievalTask  # noqa: E402
from nia_jax.errors import ConfigError, NiaError  # noqa: E402
from nia_jax.metrics import paired_difference_ci  # noqa: E402

log = logging.getLogger("nia_jax.experiments.fit")
schema.register_schemas()

DIRECTIONS = ("t2i", "i2t")


def fit_settings(cfg: DictConfig) -> fitting.FitSettings:
    """Build the library's FitSettings from the run config."""
    learn = None if cfg.learn is None else tuple(cfg.learn)
    return fitting.FitSettings(
        surrogate=cfg.surrogate, temperature=cfg.temperature, learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps, final_lr_ratio=cfg.final_lr_ratio,
        patience=cfg.patience, min_delta=cfg.min_delta, holdout=cfg.holdout, seed=cfg.fit_seed,
        top_k=cfg.top_k, learn=learn, margin=cfg.margin, keep_start_if_worse=cfg.keep_start_if_worse,
    )


def load_split(cfg: DictConfig, split: str) -> dict[str, RetrievalTask]:
    """Load both directions of one split, which must be plain (unfolded) retrieval tasks."""
    tasks = common.load_tasks(OmegaConf.merge(cfg, {"dataset": {"split": split}}))
    for direction, task in tasks.items():
        if not isinstance(task, RetrievalTask):
            raise ConfigError(f"fit.py needs plain retrieval tasks, but {cfg.dataset.name} split={split} gives "
                              f"{type(task).__name__} for {direction}. Use a data set with a dev split.")
    return tasks


def dev_scores(method: nia_jax.Reranker, tasks: dict, cfg: DictConfig) -> dict:
    """Return a method's R@1 per direction, mean R@1 and rsum on the tuning split (no intervals)."""
    metrics = {d: nia_jax.evaluate(method, t, top_k=cfg.top_k, block_size=cfg.block_size, n_boot=0).metrics
               for d, t in tasks.items()}
    scores = {f"{d}_R@1": metrics[d]["R@1"] for d in metrics}
    scores["mean_R@1"] = round(float(np.mean([metrics[d]["R@1"] for d in metrics])), 4)
    scores["rsum"] = round(sum(metrics[d]["rsum"] for d in metrics), 4)
    return scores


def r1_summary(entry: dict) -> dict:
    """Return the R@1 figures of one results.json method entry."""
    summary = {f"{d}_R@1": entry[d]["R@1"] for d in DIRECTIONS}
    summary["mean_R@1"] = round((entry["t2i"]["R@1"] + entry["i2t"]["R@1"]) / 2, 4)
    summary["rsum"] = entry["rsum"]
    return summary


def paired_r1(ranks: dict, a: str, b: str, cfg: DictConfig) -> dict:
    """Return the per-direction paired R@1 difference a - b with its bootstrap 95% interval."""
    out = {}
    for d in DIRECTIONS:
        hit_a = 100.0 * (ranks[f"{a}/{d}"] == 1)
        hit_b = 100.0 * (ranks[f"{b}/{d}"] == 1)
        mean, low, high = paired_difference_ci(hit_a, hit_b, n_boot=cfg.n_boot, seed=cfg.seed)
        out[d] = {"difference": round(mean, 4), "ci95": [round(low, 4), round(high, 4)]}
    return out


def grid_entry(grid_payload: dict, entries: dict) -> dict:
    """Return the comparison entry of the grid search from tune.run's payload."""
    tuning = grid_payload["tuning"]
    return {
        "tuning_s": tuning["tune_s"],
        "tuning_work": f"{tuning['n_settings']} settings, one evaluation each",
        "dev": {k: tuning["chosen_dev"][k] for k in ("t2i_R@1", "i2t_R@1", "mean_R@1", "rsum")},
        "test": r1_summary(entries["nia_grid"]),
        "settings": tuning["chosen"],
        "selection": tuning["selection_rule"],
    }


def run(cfg: DictConfig, run_dir: Path, wb=None) -> tuple[dict, dict]:
    """Fit on tune_split, optionally search the grid there too, and evaluate everything on eval_split.

    Returns (results.json payload, per-query test ranks keyed ``<method>/<direction>``).
    """
    start = common.make_method(cfg.method)
    if not isinstance(start, nia_jax.NIA):
        raise ConfigError(f"method={start.name}: fit.py learns NIA's settings only; use method=nia.")
    if cfg.tune_split == cfg.eval_split:
        raise ConfigError(f"tune_split and eval_split are both {cfg.tune_split!r}; fitting must use another split.")
    settings = fit_settings(cfg)
    settings.validate()
    tune_tasks = load_split(cfg, cfg.tune_split)
    eval_tasks = load_split(cfg, cfg.eval_split)

    def log_step(entry: dict) -> None:
        if wb is not None:
            wb.log({f"fit/{k}": v for k, v in entry.items() if k != "step"}, step=entry["step"])

    learn = settings.learn if settings.learn is not None else fitting.active_hyperparameters(start)
    log.info("fitting %s of %s on %s", list(learn), start, cfg.tune_split)
    result = fitting.fit(start, tune_tasks, settings, on_step=log_step)
    fitted = result.method
    log.info("fitted in %.1f s: %s", result.seconds, result.learned())

    grid_payload = None
    if cfg.compare_grid:
        grid_payload, _, grid_ranks = tune.run(cfg, run_dir)

    # One evaluation on the evaluation split. tune.run has evaluated the grid's choice there.
    methods = {"cosine": nia_jax.make_reranker("cosine"), "nia_start": start, "nia_fitted": fitted}
    entries, timing, ranks = common.evaluate_methods(methods, eval_tasks, cfg)

    fitting_section = result.to_dict()
    fitting_section["tune_split"] = cfg.tune_split
    fitting_section["start_dev"] = dev_scores(start, tune_tasks, cfg)
    fitting_section["fitted_dev"] = dev_scores(fitted, tune_tasks, cfg)
    comparison = {
        "fitted": {
            "tuning_s": round(result.seconds, 2),
            "tuning_work": f"{result.steps} Adam steps, one loss and gradient each",
            "dev": fitting_section["fitted_dev"],
            "test": r1_summary(entries["nia_fitted"]),
            "settings": fitted.describe(),
        },
        "start": {"dev": fitting_section["start_dev"], "test": r1_summary(entries["nia_start"]),
                  "settings": start.describe()},
    }
    if grid_payload is not None:
        entries["nia_grid"] = grid_payload["methods"][start.name]
        timing["nia_grid"] = grid_payload["timing_s"][start.name]
        ranks.update({f"nia_grid/{d}": grid_ranks[f"{start.name}/{d}"] for d in DIRECTIONS})
        comparison["grid"] = grid_entry(grid_payload, entries)
        comparison["fitted_minus_grid_R@1"] = paired_r1(ranks, "nia_fitted", "nia_grid", cfg)
    comparison["fitted_minus_start_R@1"] = paired_r1(ranks, "nia_fitted", "nia_start", cfg)

    payload = {
        "dataset": eval_tasks["t2i"].dataset,
        "split": cfg.eval_split,
        "protocol": cfg.protocol.name,
        "methods": entries,
        "timing_s": timing,
        "fitting": fitting_section,
        "comparison": comparison,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "environment": common.environment(),
    }
    if grid_payload is not None:
        payload["tuning"] = grid_payload["tuning"]
    return payload, ranks


def fitted_config_text(cfg: DictConfig, payload: dict) -> str:
    """Return the learned values as a method config file, with how they were learned in its header."""
    section = payload["fitting"]
    learned = section["learned"]
    start = section["start"]
    settings = section["settings"]
    names = section["learned_names"]
    header = (
        f"# nia settings learned by experiments/fit.py on {cfg.dataset.name}, split={cfg.tune_split}, "
        f"protocol={cfg.protocol.name}:\n"
        f"# {', '.join(names)} fitted by Adam on the {settings['surrogate']} surrogate "
        f"(temperature {settings['temperature']}), step {section['best_step']} of {section['steps']}.\n"
        f"# Started from {', '.join(f'{n}={start[n]:g}' for n in names)}; the other settings were kept.\n"
    )
    if section["kept_start"]:
        header += (f"# The fitted values scored a lower {cfg.tune_split} R@1 than the starting values, "
                   "so these are the starting values.\n")
    header += "# Each setting is documented in nia_jax.rerankers.nia.NIA.\n"
    values = {k: v for k, v in payload["comparison"]["fitted"]["settings"].items() if k != "name"}
    values.update({n: learned[n] for n in names})
    return header + "defaults:\n  - /method/nia_schema@_here_\n  - _self_\n" + yaml.safe_dump(values, sort_keys=False)


@hydra.main(version_base="1.3", config_path="../conf", config_name="fit")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    tags = [f"dataset:{cfg.dataset.name}", f"protocol:{cfg.protocol.name}", f"split:{cfg.eval_split}",
            "method:nia", "fitting"]
    with common.wandb_run(cfg, run_dir, name=f"fit-nia-{cfg.dataset.name}", tags=tags) as wb:
        try:
            payload, ranks = run(cfg, run_dir, wb)
        except NiaError as exc:
            common.fail_run(exc)
        common.log_metrics(wb, payload["methods"])
        if wb is not None:
            for name in ("fitted", "grid"):
                entry = payload["comparison"].get(name)
                if entry is not None:
                    wb.summary[f"comparison/{name}/tuning_s"] = entry["tuning_s"]
                    wb.summary.update({f"comparison/{name}/test_{k}": v for k, v in entry["test"].items()})

    config_text = fitted_config_text(cfg, payload)
    (run_dir / "fitted_nia.yaml").write_text(config_text)
    common.write_ranks_atomic(run_dir / "ranks.npz", ranks)
    common.write_json_atomic(run_dir / "results.json", payload)
    if cfg.export_dir is not None:
        export = Path(hydra.utils.to_absolute_path(cfg.export_dir)) / "fitted_nia.yaml"
        export.parent.mkdir(parents=True, exist_ok=True)
        export.write_text(config_text)
        print(f"exported the learned setting to {export}")

    section = payload["fitting"]
    print(f"fitted on {cfg.tune_split} in {section['fit_s']:.1f} s, {section['steps']} steps "
          f"(best {section['best_step']}): " + ", ".join(
              f"{n} {section['start'][n]:.4g} -> {section['learned'][n]:.4g}" for n in section["learned_names"]))
    print(common.format_table(payload["methods"], payload["protocol"], payload["split"]))
    print()
    print(report_fit.render(payload))
    print(f"results: {run_dir / 'results.json'}")


if __name__ == "__main__":
    common.check_command_line("fit")
    main()
