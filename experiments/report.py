"""Render docs/results.md from the results.json files of a reproduce_results.sh run.

    python experiments/report.py results/coco500 --output docs/results.md

Every figure in the output is read from those files (and the ranks.npz beside
them for paired intervals); nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


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
