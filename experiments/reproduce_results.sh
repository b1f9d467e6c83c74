#!/usr/bin/env bash
# Regenerate docs/results.md from scratch on the embedded data (about 20-30 minutes on 2 CPU cores):
# tune every method on the dev split, export the chosen settings to conf/tuned/,
# compare all methods on the test split under both protocols, tune NIA by Optuna and by
# gradient as well, then render the report.
#   bash experiments/reproduce_results.sh [output folder, default results/coco500]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/coco500}"
methods="cosine,nia,nnn,csls,qbnorm_is,qbnorm_dis,dualis,dsl,sinkhorn,dbsn,invgc,kreciprocal,aqe,dba"
rm -rf "$out"
python experiments/tune.py -m "method=$methods" export_dir=conf/tuned logger=none \
  "hydra.sweep.dir=$out/tune" 'hydra.sweep.subdir=${method.name}'
python experiments/tune.py -m method=nia grid=nia_hub_local,nia_hub_global,nia_neighbour,nia_embedding logger=none \
  "hydra.sweep.dir=$out/ablation" 'hydra.sweep.subdir=${hydra:runtime.choices.grid}'
# The same search ranked by mean dev R@1 instead of rsum, reported beside it; nothing is exported.
python experiments/tune.py -m "method=$methods" selection=mean_r1 logger=none \
  "hydra.sweep.dir=$out/tune_mean_r1" 'hydra.sweep.subdir=${method.name}'
python experiments/compare.py logger=none "hydra.run.dir=$out/compare_inductive"
python experiments/compare.py protocol=transductive logger=none "hydra.run.dir=$out/compare_transductive"
# NIA tuned by Optuna instead of the grid: 30 TPE trials on dev with the grid's objective
# (dev rsum), timed as one process, then the best trial's setting evaluated once on test.
started=$(date +%s.%N)
python experiments/rerank.py -m +experiment=nia_optuna logger=none "hydra.sweep.dir=$out/optuna/sweep"
finished=$(date +%s.%N)
printf '{"tuner": "optuna", "wall_s": %s, "cpu_count": %s, "command": "%s", "description": "%s"}\n' \
  "$(awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.2f", b - a }')" "$(nproc)" \
  "python experiments/rerank.py -m +experiment=nia_optuna logger=none" \
  "wall_s: seconds of the whole study process above (trials in sweep/, on the dev split, objective dev rsum); test/ evaluates the best trial once on the test split" \
  > "$out/optuna/tuning.json"
best_overrides=$(python -c 'import sys, yaml
best = yaml.safe_load(open(sys.argv[1]))["best_params"]
print(" ".join("methods.nia." + key.removeprefix("method.") + "=" + repr(value) for key, value in best.items()))' \
  "$out/optuna/sweep/optimization_results.yaml")
# shellcheck disable=SC2086  # one word per override
python experiments/compare.py 'include=[cosine,nia]' $best_overrides logger=none "hydra.run.dir=$out/optuna/test"
# NIA's continuous settings learned by gradient on dev from the grid's choice (conf/tuned/nia.yaml),
# with the grid search repeated in the same process for a same-machine time, reported once on test.
python experiments/fit.py logger=none "hydra.run.dir=$out/fit"
python experiments/report.py "$out" --output docs/results.md
