"""Render docs/results.md from the results.json files of a reproduce_results.sh run.

    python experiments/report.py results/coco500 --output docs/results.md

Every figure in the output is read from those files (and the ranks.npz beside
them for paired intervals); nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))


import report_fit  # noqa: E402

from nia_jax.metrics import paired_difference_ci  # noqa: E402

ANCHOR_EXCLUDE = {"cosine", "nia"}


def _load(path: Path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def _r1(entry: dict, direction: str) -> str:
    m = entry[direction]
    low, high = m["R@1_ci95"]
    return f"{m['R@1']:.1f} [{low:.1f}, {high:.1f}]"


def _settings(settings: dict) -> str:
    shown = {k: v for k, v in settings.items() if k != "name"}
    return ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()) or "-"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def comparison_table(run: dict) -> list[str]:
    """Markdown rows: one per method, both directions, R@1 with its 95% interval."""
    lines = [
        "| method | protocol | settings | t2i R@1 [95% CI] | t2i R@5 | t2i R@10 | i2t R@1 [95% CI] | i2t R@5 | i2t R@10 | rsum |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in run["methods"].items():
        t2i, i2t = entry["t2i"], entry["i2t"]
        lines.append(
            f"| {name} | {entry.get('protocol', run['protocol'])} | {_settings(entry.get('settings', {}))} "
            f"| {_r1(entry, 't2i')} | {t2i['R@5']:.1f} | {t2i['R@10']:.1f} "
            f"| {_r1(entry, 'i2t')} | {i2t['R@5']:.1f} | {i2t['R@10']:.1f} | {entry['rsum']:.1f} |"
        )
    return lines


def best_anchor(run: dict, direction: str) -> tuple[str, float]:
    """Return the inductive anchor with the highest test R@1 in one direction."""
    candidates = {n: e[direction]["R@1"] for n, e in run["methods"].items()
                  if n not in ANCHOR_EXCLUDE and e.get("protocol", run["protocol"]) == run["protocol"]}
    name = max(candidates, key=lambda n: (candidates[n], n))
    return name, candidates[name]


def verdict(run: dict, ranks: np.lib.npyio.NpzFile) -> list[str]:
    """Sentences comparing NIA with cosine and with the best anchor, with paired intervals."""
    lines = []
    for direction in ("t2i", "i2t"):
        nia = run["methods"]["nia"][direction]["R@1"]
        cosine = run["methods"]["cosine"][direction]["R@1"]
        anchor, anchor_r1 = best_anchor(run, direction)
        hit = {n: 100.0 * (ranks[f"{n}/{direction}"] == 1) for n in ("nia", anchor, "cosine")}
        d_anchor = paired_difference_ci(hit["nia"], hit[anchor])
        d_cosine = paired_difference_ci(hit["nia"], hit["cosine"])
        place = "reaches" if nia >= anchor_r1 else "falls short of"
        lines.append(
            f"- **{direction}**: NIA R@1 {nia:.1f} against cosine {cosine:.1f} "
            f"(paired difference {d_cosine[0]:+.1f}, 95% CI [{d_cosine[1]:+.1f}, {d_cosine[2]:+.1f}]); "
            f"it {place} the best {run['protocol']} anchor on this split, {anchor} at {anchor_r1:.1f} "
            f"(paired difference {d_anchor[0]:+.1f}, 95% CI [{d_anchor[1]:+.1f}, {d_anchor[2]:+.1f}])."
        )
    return lines


def alternative_selection_table(tune_dir: Path) -> list[str]:
    """Rows of the mean-R@1 selection: its choice and test R@1 per method."""
    lines = ["| method | chosen on dev by mean R@1 | dev R@1 t2i / i2t | test t2i R@1 [95% CI] | test i2t R@1 [95% CI] |",
             "|---|---|---|---|---|"]
    for path in sorted(tune_dir.glob("*/results.json")):
        run = _load(path)
        tuning = run["tuning"]
        dev = tuning["chosen_dev"]
        entry = run["methods"][tuning["method"]]
        lines.append(f"| {tuning['method']} | {_settings(dev['settings'])} | {dev['t2i_R@1']:.1f} / {dev['i2t_R@1']:.1f} "
                     f"| {_r1(entry, 't2i')} | {_r1(entry, 'i2t')} |")
    return lines


def tuning_table(tune_dir: Path) -> list[str]:
    lines = ["| method | grid | settings tried | chosen on dev | dev R@1 t2i / i2t | dev rsum | tuning time (s) |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted(tune_dir.glob("*/results.json")):
        tuning = _load(path)["tuning"]
        grid = "; ".join(f"{k} in {{{', '.join(_fmt(x) for x in v)}}}" for k, v in tuning["grid"].items()) or "-"
        dev = tuning["chosen_dev"]
        lines.append(f"| {tuning['method']} | {grid} | {tuning['n_settings']} | {_settings(dev['settings'])} "
                     f"| {dev['t2i_R@1']:.1f} / {dev['i2t_R@1']:.1f} | {dev['rsum']:.1f} | {tuning['tune_s']:.1f} |")
    return lines


# --- NIA tuned three ways: grid search, Optuna and gradient fitting ------------------------

CUTOFFS = (1, 5, 10)
DIRECTIONS = ("t2i", "i2t")
PAIRED_RESAMPLES, PAIRED_SEED = 1000, 0  # bootstrap of the paired test differences


@dataclasses.dataclass
class TunedNIA:
    """One way of tuning NIA on the dev split, with its single evaluation on the test split."""

    label: str
    searched: str  # what the tuner varied, and how
    evaluations: str  # how many dev evaluations (or optimiser steps) the tuning took
    values: dict  # NIA's settings as evaluated on test
    dev: dict  # dev figures of those values: rsum, t2i_R@1, i2t_R@1
    entry: dict  # results.json test entry: t2i, i2t, rsum
    ranks: dict  # direction -> per-query test rank of the positive (1 is the top)
    wall: str  # tuning wall time cell, seconds
    protocol: str
    tune_split: str
    eval_split: str


def _load_yaml(path: Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _nia_values(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "name"}


def grid_tuned(tune_dir: Path) -> TunedNIA:
    """Read tune.py's NIA grid search (results.json and ranks.npz of one tune run)."""
    run = _load(tune_dir / "results.json")
    ranks = np.load(tune_dir / "ranks.npz")
    tuning = run["tuning"]
    grid = "; ".join(f"{k} in {{{', '.join(_fmt(x) for x in v)}}}" for k, v in tuning["grid"].items() if len(v) > 1)
    dev = tuning["chosen_dev"]
    return TunedNIA(
        label="grid search (tune.py)", searched=grid, evaluations=f"{tuning['n_settings']} settings",
        values=_nia_values(tuning["chosen"]), dev={k: dev[k] for k in ("rsum", "t2i_R@1", "i2t_R@1")},
        entry=run["methods"]["nia"], ranks={d: ranks[f"nia/{d}"] for d in DIRECTIONS},
        wall=f"{tuning['tune_s']:.1f}",
        protocol=run["protocol"], tune_split=tuning["tune_split"], eval_split=run["split"],
    )


def optuna_study(optuna_dir: Path) -> dict:
    """Read the Optuna study that reproduce_results.sh writes under optuna_dir.

    optuna_dir contains sweep/ (one rerank.py trial per numbered folder and
    optimization_results.yaml), tuning.json (the study's wall time) and test/
    (compare.py's evaluation of the best setting). Raises ValueError when the test
    run did not evaluate the best trial's setting, or when the study's objective
    was not the dev rsum.
    """
    sweep = optuna_dir / "sweep"
    best = _load_yaml(sweep / "optimization_results.yaml")
    trials = sorted(((int(path.parent.name), _load(path)) for path in sweep.glob("*/results.json")),
                    key=lambda trial: trial[0])
    if not trials:
        raise ValueError(f"{sweep}: no trial results.json found; rerun the Optuna step of reproduce_results.sh.")
    swept = {key.removeprefix("method."): value for key, value in best["best_params"].items()}
    # Optuna 2.10 reports the earliest trial among those with the best value.
    matching = [(number, run) for number, run in trials
                if all(run["config"]["method"][name] == value for name, value in swept.items())]
    if not matching:
        raise ValueError(f"{sweep}: no trial ran the best parameters {best['best_params']}.")
    number, best_run = matching[0]
    if best_run["methods"]["nia"]["rsum"] != best["best_value"]:
        raise ValueError(f"{sweep}: the best value {best['best_value']} is not the best trial's dev rsum "
                         f"{best_run['methods']['nia']['rsum']}, so the study maximised another objective; "
                         "rerun it with the current experiments/rerank.py.")
    test = _load(optuna_dir / "test" / "results.json")
    chosen = _nia_values(best_run["config"]["method"])
    evaluated = _nia_values(test["methods"]["nia"]["settings"])
    if evaluated != chosen:
        raise ValueError(f"{optuna_dir / 'test'}: NIA was evaluated with {evaluated}, but the best trial "
                         f"(number {number}) ran {chosen}; rerun the test evaluation with the best parameters.")
    hydra_config = _load_yaml(sweep / str(number) / ".hydra" / "hydra.yaml")["hydra"]
    return {
        "best": best, "best_number": number, "best_run": best_run, "trials": trials, "test": test,
        "test_ranks": np.load(optuna_dir / "test" / "ranks.npz"), "timing": _load(optuna_dir / "tuning.json"),
        "sweeper": hydra_config["sweeper"],
    }


def optuna_tuned(study: dict) -> TunedNIA:
    """Describe an Optuna study (from optuna_study) as a TunedNIA."""
    sweeper = study["sweeper"]
    searched = "; ".join(f"{key.removeprefix('method.')} in {value}" for key, value in sweeper["params"].items())
    sampler = sweeper["sampler"]["_target_"].rsplit(".", 1)[-1].removesuffix("Sampler")
    best_entry = study["best_run"]["methods"]["nia"]
    nia_seconds = sum(run["timing_s"]["nia"] for _, run in study["trials"])
    test = study["test"]
    return TunedNIA(
        label=f"Optuna {sampler}, seed {sweeper['sampler']['seed']} (rerank.py -m)", searched=searched,
        evaluations=f"{len(study['trials'])} trials", values=_nia_values(test["methods"]["nia"]["settings"]),
        dev={"rsum": best_entry["rsum"], "t2i_R@1": best_entry["t2i"]["R@1"], "i2t_R@1": best_entry["i2t"]["R@1"]},
        entry=test["methods"]["nia"], ranks={d: study["test_ranks"][f"nia/{d}"] for d in DIRECTIONS},
        wall=f"{study['timing']['wall_s']:.1f} (NIA evaluations {nia_seconds:.1f})",
        protocol=test["protocol"], tune_split=study["best_run"]["split"], eval_split=test["split"],
    )


def gradient_tuned(fit_dir: Path) -> TunedNIA:
    """Read fit.py's gradient fit (results.json and ranks.npz of one fit run)."""
    run = _load(fit_dir / "results.json")
    ranks = np.load(fit_dir / "ranks.npz")
    fitting, fitted = run["fitting"], run["comparison"]["fitted"]
    start = ", ".join(f"{name}={_fmt(fitting['start'][name])}" for name in fitting["learned_names"])
    return TunedNIA(
        label="gradient fit (fit.py)", searched=f"{', '.join(fitting['learned_names'])} by Adam from {start}",
        evaluations=f"{fitting['steps']} Adam steps", values=_nia_values(fitted["settings"]),
        dev={k: fitted["dev"][k] for k in ("rsum", "t2i_R@1", "i2t_R@1")}, entry=run["methods"]["nia_fitted"],
        ranks={d: ranks[f"nia_fitted/{d}"] for d in DIRECTIONS}, wall=f"{fitting['fit_s']:.1f}",
        protocol=run["protocol"], tune_split=fitting["tune_split"], eval_split=run["split"],
    )


def _check_same_queries(tuned: list[TunedNIA]) -> None:
    """Raise ValueError unless every run was tuned and evaluated on the same splits and protocol."""
    reference = tuned[0]
    for other in tuned[1:]:
        for field in ("protocol", "tune_split", "eval_split"):
            if getattr(other, field) != getattr(reference, field):
                raise ValueError(f"{other.label}: {field} is {getattr(other, field)!r}, but {reference.label} has "
                                 f"{getattr(reference, field)!r}; paired differences need the same test queries.")
        for direction in DIRECTIONS:
            if other.ranks[direction].shape != reference.ranks[direction].shape:
                raise ValueError(f"{other.label}: {direction} has {other.ranks[direction].size} test queries, "
                                 f"{reference.label} {reference.ranks[direction].size}.")


def _test_row(label: str, entry: dict) -> str:
    cells = []
    for direction in DIRECTIONS:
        cells += [_r1(entry, direction), f"{entry[direction]['R@5']:.1f}", f"{entry[direction]['R@10']:.1f}"]
    return f"| {label} | " + " | ".join(cells) + f" | {entry['rsum']:.1f} |"


def _paired_cell(ranks: np.ndarray, reference: np.ndarray, cutoff: int) -> str:
    """Return the paired R@cutoff difference (points) with its bootstrap 95% interval."""
    mean, low, high = paired_difference_ci(100.0 * (ranks <= cutoff), 100.0 * (reference <= cutoff),
                                           n_boot=PAIRED_RESAMPLES, seed=PAIRED_SEED)
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


def tuner_comparison(root: Path) -> list[str]:
    """Return Markdown lines on NIA tuned by grid search, by Optuna and by gradient, each reported once on test.

    The grid run (tune/nia) is required. Optuna (optuna/) and the fit (fit/)
    are added when their folders exist.
    """
    grid = grid_tuned(root / "tune" / "nia")
    tuned = [grid]
    study = None
    if (root / "optuna").is_dir():
        study = optuna_study(root / "optuna")
        tuned.append(optuna_tuned(study))
    fit_run = None
    if (root / "fit").is_dir():
        fit_run = _load(root / "fit" / "results.json")
        tuned.append(gradient_tuned(root / "fit"))
    _check_same_queries(tuned)
    grid_run = _load(root / "tune" / "nia" / "results.json")
    cosine = grid_run["methods"]["cosine"]

    # Show the settings that a tuner varied or that differ between the rows.
    varied = {name for name, values in grid_run["tuning"]["grid"].items() if len(values) > 1}
    differing = {name for t in tuned for name, value in t.values.items() if value != grid.values[name]}
    listed = sorted(varied | differing, key=list(grid.values).index)
    lines = [
        f"Each tuner below tunes NIA on the {grid.tune_split} split, and its choice is evaluated once on the "
        f"{grid.eval_split} split under the {grid.protocol} protocol. The settings not listed are the same in "
        "every row: "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in grid.values.items() if k not in listed) + ".",
        "",
        "| tuner | searched | evaluations | chosen on dev | dev rsum | dev R@1 t2i / i2t | tuning time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tuned:
        values = ", ".join(f"{k}={_fmt(t.values[k])}" for k in listed)
        lines.append(f"| {t.label} | {t.searched} | {t.evaluations} | {values} | {t.dev['rsum']:.1f} "
                     f"| {t.dev['t2i_R@1']:.1f} / {t.dev['i2t_R@1']:.1f} | {t.wall} |")

    lines += [
        "",
        f"Test split, with 95% bootstrap intervals over the {grid.ranks['t2i'].size} queries of each direction:",
        "",
        "| method | t2i R@1 [95% CI] | t2i R@5 | t2i R@10 | i2t R@1 [95% CI] | i2t R@5 | i2t R@10 | rsum |",
        "|---|---|---|---|---|---|---|---|",
        _test_row("cosine", cosine),
        *(_test_row(f"NIA, {t.label}", t.entry) for t in tuned),
    ]
    if len(tuned) > 1:
        lines += [
            "",
            "Paired differences against the grid-tuned NIA on the same test queries (points, 95% bootstrap "
            f"interval, {PAIRED_RESAMPLES} resamples, seed {PAIRED_SEED}):",
            "",
            "| NIA tuned by | " + " | ".join(f"{d} R@{c}" for d in DIRECTIONS for c in CUTOFFS) + " |",
            "|---|" + "---|" * (len(DIRECTIONS) * len(CUTOFFS)),
        ]
        for t in tuned[1:]:
            cells = [_paired_cell(t.ranks[d], grid.ranks[d], c) for d in DIRECTIONS for c in CUTOFFS]
            lines.append(f"| {t.label} minus grid | " + " | ".join(cells) + " |")
    lines += ["", *_tuner_notes(grid, grid_run["tuning"]["selection_rule"], study, fit_run)]
    return lines


def _tuner_notes(grid: TunedNIA, grid_rule: str, study: dict | None, fit_run: dict | None) -> list[str]:
    """Bullets on how each tuner selects and what its wall time covers."""
    notes = [
        f"- Grid search: every setting is evaluated on {grid.tune_split}. The selection rule is the {grid_rule}. "
        "Its time covers the loop of dev evaluations only, without process start, imports and data loading.",
    ]
    if study is not None:
        sweeper = study["sweeper"]
        batches = "one at a time" if sweeper["n_jobs"] == 1 else f"in batches of {sweeper['n_jobs']}"
        reached = sum(run["methods"]["nia"]["rsum"] >= grid.dev["rsum"] for _, run in study["trials"])
        notes.append(
            f"- Optuna: {len(study['trials'])} trials, {batches}, maximise the same dev rsum, and ties go to the "
            f"earliest trial. The best was trial {study['best_number']} at dev rsum "
            f"{study['best']['best_value']:.1f} (grid: {grid.dev['rsum']:.1f}), and {reached} of "
            f"{len(study['trials'])} trials reached the grid's dev rsum or more. Its time is the whole "
            f"`rerank.py -m` process on {study['timing']['cpu_count']} CPU cores: imports, data loading and, in "
            f"every trial, a cosine evaluation, {study['best_run']['config']['n_boot']} bootstrap resamples and "
            "file writes besides NIA's dev evaluation, whose total is given in brackets."
        )
    if fit_run is not None:
        fitting = fit_run["fitting"]
        settings = fitting["settings"]
        notes.append(
            f"- Gradient fit: Adam on the {settings['surrogate']} surrogate (temperature {settings['temperature']}) "
            f"over {1 - settings['holdout']:.0%} of the {fitting['tune_split']} queries, early stopping on the "
            f"other {settings['holdout']:.0%}. It keeps its starting values if the fitted ones score a lower "
            f"{fitting['tune_split']} R@1 over both directions' queries, a rule on R@1 rather than rsum. Its "
            "time covers the Adam loop, compilation included. "
            + report_fit.fit_summary(fit_run)
        )
        if "grid" in fit_run["comparison"]:
            notes.append(
                f"- Wall times are single runs and vary with machine load: the same grid search took "
                f"{grid.wall} s in tune.py and {fit_run['comparison']['grid']['tuning_s']:.1f} s when fit.py "
                "repeated it."
            )
    return notes


ABLATION_LABELS = {
    "nia_hub_local": "hubness term, local part only (w = 0)",
    "nia_hub_global": "hubness term, global part only (w = 1, ridge leverage)",
    "nia_neighbour": "neighbour-space form <phi(q), phi(g)>, no hubness term",
    "nia_embedding": "embedding-space form, no hubness term",
}


def ablation_table(ablation_dir: Path, default: dict | None) -> list[str]:
    lines = ["| NIA variant | chosen on dev | dev R@1 t2i / i2t | test t2i R@1 [95% CI] | test i2t R@1 [95% CI] |",
             "|---|---|---|---|---|"]
    runs = [(ABLATION_LABELS.get(p.parent.name, p.parent.name), _load(p)) for p in sorted(ablation_dir.glob("*/results.json"))]
    if default is not None:
        runs.insert(0, ("default: local and global hubness fused (tuned w)", default))
    for label, run in runs:
        dev = run["tuning"]["chosen_dev"]
        entry = run["methods"]["nia"]
        lines.append(f"| {label} | {_settings(dev['settings'])} | {dev['t2i_R@1']:.1f} / {dev['i2t_R@1']:.1f} "
                     f"| {_r1(entry, 't2i')} | {_r1(entry, 'i2t')} |")
    return lines


def render(root: Path) -> str:
    inductive = _load(root / "compare_inductive" / "results.json")
    ranks = np.load(root / "compare_inductive" / "ranks.npz")
    out = [
        "# Results on the embedded COCO 500 CLIP ViT-B/16 set",
        "",
        f"Generated by `python experiments/report.py {root}` from the results.json files that",
        "`bash experiments/reproduce_results.sh` writes; do not edit by hand.",
        "",
        "## Protocol",
        "",
        "- Data: 500 COCO val2017 image-caption pairs embedded by OpenAI CLIP ViT-B/16 (one caption per image).",
        "- Splits: `numpy.random.default_rng(0).permutation(500)`; the first 250 pairs are `dev`, the rest `test`.",
        "- Inductive: the banks of a split are the other half's captions (query-modality bank of t2i) and images,",
        "  with the two banks shuffled apart so that no method can use their pairing. Transductive: the evaluated",
        "  queries and gallery are the banks. dsl and kreciprocal are designed to normalise over the evaluated",
        "  queries; under the inductive protocol they use the query bank in their place.",
        "- Tuning: every setting of a method's grid (conf/grid/) is evaluated on `dev`; the one with the highest",
        "  dev rsum (R@1 + R@5 + R@10 of both directions) is evaluated once on `test`. The same setting serves",
        "  both protocols. The first version of this protocol ranked by mean dev R@1 instead. With 250 dev",
        "  queries that rule picked isolated peaks: for NIA, k = 16 at a dev score that no neighbouring setting",
        "  reached, which then fell below cosine on test i2t. So rsum, which averages three cut-offs, became the",
        "  rule for every method, a change made after seeing that test figure. The choices of the mean-R@1",
        "  rule and their test figures are listed below as well.",
        "- Metrics: R@K with ties counted against the positive; 95% percentile bootstrap intervals over the 250",
        "  test queries (1000 resamples, seed 0). One query is 0.4 R@1 points.",
        f"- Software: nia_jax {inductive['environment']['nia_jax']}, JAX {inductive['environment']['jax']}, "
        f"commit {inductive['environment']['git_commit']}, {inductive['environment']['platform']}.",
        "",
        f"## Inductive comparison, test split (top-K = {inductive['config']['top_k']})",
        "",
        *comparison_table(inductive),
        "",
        "### NIA against cosine and the best anchor (paired bootstrap over the same queries)",
        "",
        *verdict(inductive, ranks),
        "",
    ]
    transductive_path = root / "compare_transductive" / "results.json"
    if transductive_path.is_file():
        out += ["## Transductive comparison, test split", "", *comparison_table(_load(transductive_path)), ""]
    if (root / "tune").is_dir():
        out += ["## Tuning on the dev split", "", *tuning_table(root / "tune"), ""]
    if (root / "tune_mean_r1").is_dir():
        out += ["## The mean-R@1 selection rule, for comparison (inductive, test split)", "",
                *alternative_selection_table(root / "tune_mean_r1"), ""]
    if (root / "tune" / "nia" / "results.json").is_file():
        out += ["## Tuning NIA: grid vs Optuna vs gradient", "", *tuner_comparison(root), ""]
    if (root / "ablation").is_dir():
        default_path = root / "tune" / "nia" / "results.json"
        default = _load(default_path) if default_path.is_file() else None
        out += ["## NIA ablation (inductive, each variant tuned on dev over its own grid)", "",
                *ablation_table(root / "ablation", default), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="output folder of experiments/reproduce_results.sh")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write (default: stdout)")
    args = parser.parse_args(argv)
    missing = [p for p in ("compare_inductive/results.json", "compare_inductive/ranks.npz") if not (args.root / p).is_file()]
    if missing:
        print(f"error: {args.root} lacks {missing}; run experiments/reproduce_results.sh first.", file=sys.stderr)
        return 1
    text = render(args.root) + "\n"
    if args.output is None:
        print(text, end="")
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
