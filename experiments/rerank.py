"""Re-rank one data set with one method, beside the cosine baseline.

    python experiments/rerank.py                      # NIA on the embedded test split
    python experiments/rerank.py method=cosine logger=none
    python experiments/rerank.py protocol=transductive dataset.split=all

Prints a table and writes results.json (and an offline W&B run) in the Hydra
run directory; ``hydra.run.dir=...`` moves it.
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
from nia_jax.errors import NiaError  # noqa: E402

log = logging.getLogger("nia_jax.experiments.rerank")
schema.register_schemas()


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Evaluate cosine and the configured method on both directions; return results.json's content."""
    common.apply_search_options(cfg)
    method = common.make_method(cfg.method)
    tasks = common.load_tasks(cfg)
    methods = {"cosine": nia_jax.make_reranker("cosine")}
    methods[method.name] = method
    tags = [f"method:{method.name}", f"dataset:{cfg.dataset.name}", f"encoder:{cfg.encoder.model}",
            f"protocol:{cfg.protocol.name}", f"split:{cfg.dataset.split}"]
    with common.wandb_run(cfg, run_dir, name=f"{method.name}-{cfg.dataset.name}-{cfg.dataset.split}",
                          tags=tags) as wb:
        entries, timing, _ = common.evaluate_methods(methods, tasks, cfg)
        payload = {
            "dataset": tasks["t2i"].dataset,
            "split": cfg.dataset.split,
            "protocol": cfg.protocol.name,
            "methods": entries,
            "timing_s": timing,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "environment": common.environment(),
        }
        common.log_metrics(wb, {method.name: entries[method.name]})
        if wb is not None:
            # The headline keys (t2i/R@1, i2t/rsum, ...) are the re-ranked method's.
            wb.summary.update({f"{d}/{k}": v for d in ("t2i", "i2t")
                               for k, v in entries[method.name][d].items() if isinstance(v, (int, float))})
            wb.summary["mean_R@1"] = common.mean_r1(entries[method.name])
            wb.summary["rsum"] = entries[method.name]["rsum"]  # the sweep objective
    return payload


@hydra.main(version_base="1.3", config_path="../conf", config_name="rerank")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        payload = run(cfg, run_dir)
    except NiaError as exc:
        common.fail_run(exc)
    common.write_json_atomic(run_dir / "results.json", payload)
    common.print_results(payload, run_dir)
    # The sweep objective: the re-ranked method's rsum (R@1 + R@5 + R@10 of t2i and i2t)
    # on the configured split, the figure tune.py's grid search selects by. The Optuna
    # sweeper maximises it on dev (conf/experiment/nia_optuna.yaml).
    return payload["methods"][cfg.method.name]["rsum"]


if __name__ == "__main__":
    common.check_command_line("rerank")
    main()
