"""Run every configured re-ranker on one data set and protocol, in one table.

    python experiments/compare.py                           # every method, inductive, test split
    python experiments/compare.py protocol=transductive
    python experiments/compare.py include=[cosine,nia,nnn] logger=none

Method settings come from conf/method/<name>.yaml (dev-tuned values where
experiments/tune.py exported them). Prints the table and writes results.json
in the Hydra run directory.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import schema  # noqa: E402

import nia_jax  # noqa: E402
from nia_jax.errors import ConfigError, NiaError  # noqa: E402

log = logging.getLogger("nia_jax.experiments.compare")
schema.register_schemas()


def selected_methods(cfg: DictConfig) -> dict[str, nia_jax.Reranker]:
    """Build the re-rankers to run, cosine first, in config order."""
    names = list(cfg.methods)
    if cfg.include is not None:
        unknown = sorted(set(cfg.include) - set(names))
        if unknown:
            raise ConfigError(f"include: no configured method(s) {unknown}; configured: {names}.")
        names = [n for n in names if n in cfg.include]
    if "cosine" not in names:
        names.insert(0, "cosine")
    methods = {}
    for name in names:
        method_cfg = cfg.methods.get(name) or OmegaConf.create({"name": name})
        methods[name] = common.make_method(method_cfg)
    return methods


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluate the selected methods on both directions; return results.json's content."""
    common.apply_search_options(cfg)
    methods = selected_methods(cfg)
    tasks = common.load_tasks(cfg)
    with common.wandb_run(cfg, run_dir, name=f"compare-{cfg.dataset.name}-{cfg.protocol.name}",
                          tags=[f"dataset:{cfg.dataset.name}", f"protocol:{cfg.protocol.name}",
                                f"split:{cfg.dataset.split}", f"encoder:{cfg.encoder.model}"]) as wb:
        entries, timing, ranks = common.evaluate_methods(methods, tasks, cfg)
        for name, method in methods.items():
            entries[name]["settings"] = method.describe()
            # Methods designed to normalise over the evaluated queries (dsl, kreciprocal) use the
            # query bank in their place under the inductive protocol, so the run's protocol holds.
            entries[name]["protocol"] = cfg.protocol.name
            entries[name]["designed_transductive"] = method.transductive
        common.log_metrics(wb, entries)
    return ranks, {
        "dataset": tasks["t2i"].dataset,
        "split": cfg.dataset.split,
        "protocol": cfg.protocol.name,
        "methods": entries,
        "timing_s": timing,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "environment": common.environment(),
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        ranks, payload = run(cfg, run_dir)
    except NiaError as exc:
        common.fail_run(exc)
    common.write_ranks_atomic(run_dir / "ranks.npz", ranks)
    common.write_json_atomic(run_dir / "results.json", payload)
    common.print_results(payload, run_dir)


if __name__ == "__main__":
    common.check_command_line("compare")
    main()
