"""Render the results.json of an experiments/fit.py run as a Markdown section.

    python experiments/report_fit.py outputs/fit/<date>                # prints the section
    python experiments/report_fit.py outputs/fit/<date>/results.json --output fit.md

The section contains a test table (cosine, NIA at its starting values, fitted
NIA and grid-tuned NIA, with tuning wall times), the paired R@1 differences
between fitted and grid-tuned NIA, and the starting, fitted and grid-tuned
values. Every figure is read from the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRACED = ("tau", "lam", "w", "beta", "gamma", "eta")
ROWS = (
    ("cosine", "cosine", None),
    ("nia_start", "NIA, starting values", "start"),
    ("nia_fitted", "NIA, fitted", "fitted"),
    ("nia_grid", "NIA, grid-tuned", "grid"),
)


def _r1(entry: dict, direction: str) -> str:
    metrics = entry[direction]
    low, high = metrics["R@1_ci95"]
    return f"{metrics['R@1']:.1f} [{low:.1f}, {high:.1f}]"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _difference(pair: dict) -> str:
    low, high = pair["ci95"]
    return f"{pair['difference']:+.1f} [{low:+.1f}, {high:+.1f}]"


def render(payload: dict) -> str:
    """Return the Markdown section of one fit.py results.json payload."""
    methods = payload["methods"]
    comparison = payload["comparison"]
    fitting = payload["fitting"]
    settings = fitting["settings"]
    lines = [
        f"### Learned versus grid-tuned NIA ({payload['dataset']}, {payload['split']} split, "
        f"{payload['protocol']} protocol)",
        "",
        f"Both were tuned on the {fitting['tune_split']} split. The fit used Adam on the "
        f"{settings['surrogate']} surrogate (temperature {settings['temperature']}), with "
        f"{settings['holdout']:.0%} of the {fitting['tune_split']} queries held out for early stopping. "
        "Tuning times are wall-clock seconds in one process, compilation included.",
        "",
        "| method | t2i R@1 [95% CI] | i2t R@1 [95% CI] | mean R@1 | rsum | tuning | tuning time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label, part in ROWS:
        if key not in methods:
            continue
        entry = methods[key]
        mean = (entry["t2i"]["R@1"] + entry["i2t"]["R@1"]) / 2
        work, seconds = "-", "-"
        if part in ("fitted", "grid") and part in comparison:
            work = comparison[part]["tuning_work"]
            seconds = f"{comparison[part]['tuning_s']:.1f}"
        lines.append(f"| {label} | {_r1(entry, 't2i')} | {_r1(entry, 'i2t')} | {mean:.1f} | "
                     f"{entry['rsum']:.1f} | {work} | {seconds} |")

    pairs = [("fitted_minus_grid_R@1", "fitted minus grid-tuned"),
             ("fitted_minus_start_R@1", "fitted minus starting values")]
    present = [(key, label) for key, label in pairs if key in comparison]
    if present:
        lines += ["", "Paired R@1 differences on the same test queries, with bootstrap 95% intervals:", ""]
        lines += ["| comparison | t2i | i2t |", "|---|---|---|"]
        for key, label in present:
            lines.append(f"| {label} | {_difference(comparison[key]['t2i'])} | "
                         f"{_difference(comparison[key]['i2t'])} |")

    columns = [("start", "start"), ("fitted", "fitted")]
    if "grid" in comparison:
        columns.append(("grid", "grid-tuned"))
    names = ("k", "weighting", "pool", "form") + TRACED
    lines += ["", "| setting | " + " | ".join(label for _, label in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for name in names:
        cells = [_value(comparison[part]["settings"].get(name, "-")) for part, _ in columns]
        marker = " (learned)" if name in fitting["learned_names"] else ""
        lines.append(f"| {name}{marker} | " + " | ".join(cells) + " |")
    lines += ["", fit_summary(payload)]
    return "\n".join(lines) + "\n"


def fit_summary(payload: dict) -> str:
    """Return one paragraph on how the fit ended and how its dev R@1 compares."""
    fitting, comparison = payload["fitting"], payload["comparison"]
    split = fitting["tune_split"]
    text = f"The fit ran {fitting['steps']} steps"
    if fitting["stopped_early"]:
        text += " and stopped early"
    text += f". The lowest held-out loss came at step {fitting['best_step']}."
    if fitting["kept_start"]:
        best = fitting["curve"][fitting["best_step"]]
        values = ", ".join(f"{name}={best[name]:.4g}" for name in fitting["learned_names"])
        text += (f" Those values ({values}) scored a {split} R@1 of {best['tune_R@1']:.1f} over both directions' "
                 "queries, lower than the starting values, so the starting values were kept.")
    text += (f" {split.capitalize()} mean R@1 is {comparison['start']['dev']['mean_R@1']:.1f} at the start "
             f"and {comparison['fitted']['dev']['mean_R@1']:.1f} fitted")
    if "grid" in comparison:
        text += f", against {comparison['grid']['dev']['mean_R@1']:.1f} for the grid's choice"
        if comparison["start"]["settings"] == comparison["grid"]["settings"]:
            text += ". The fit started from the grid's choice, so its tuning time adds to the grid's"
    return text + "."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a fit.py run directory or its results.json")
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown here instead of stdout")
    args = parser.parse_args(argv)
    path = args.run / "results.json" if args.run.is_dir() else args.run
    if not path.is_file():
        sys.exit(f"report_fit.py: {path} not found; pass a fit.py run directory or its results.json.")
    with open(path) as handle:
        payload = json.load(handle)
    if "fitting" not in payload or "comparison" not in payload:
        sys.exit(f"report_fit.py: {path} has no 'fitting' and 'comparison' sections; is it from experiments/fit.py?")
    text = render(payload)
    if args.output is None:
        print(text, end="")
    else:
        args.output.write_text(text)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
