"""Collect the results.json files of a Hydra multirun into a CSV, a Markdown page and plots.

    python experiments/aggregate.py multirun/nia_ablation/2025-01-31_12-00-00
    python experiments/aggregate.py multirun/nia_ablation/<date> --output docs/ablation.md
    python experiments/aggregate.py multirun/nia_sweep_w_eta/<date> --heatmap method.w method.eta

Every job directory below the given folder is read from disk (no W&B API):
``results.json`` for the metrics and ``.hydra/`` for the job's overrides and
number. The outputs are

* ``results.csv``: one row per job x method x direction. The ``sweep.<key>``
  columns hold each swept setting (a key whose override differs between jobs,
  or that the sweep declares), and every metric has its own column. A 95%
  interval ``[lo, hi]`` becomes ``<metric>_ci95_lo`` and ``<metric>_ci95_hi``;
* ``failed_runs.csv``: every job that did not produce a readable results.json.
  That covers a job folder without results.json (``failed``), a results.json
  that does not parse (``unreadable``), and a job the sweep planned but never
  started (``not_run``). The file is always written, so an empty one means
  that nothing failed;
* ``summary.json``: the swept keys, the counts and the failed jobs;
* PNG plots: R@1 against each swept numeric setting, a heatmap of two swept
  settings, and a bar chart of every job with 95% intervals;
* a Markdown page with the plots, the table and the failures.

Without ``--output`` everything goes to ``<multirun dir>/aggregate/`` (the page
is ``results.md`` there). ``--output docs/ablation.md`` writes the page there
and the CSVs and plots to ``docs/ablation/``. Every file is written to a
temporary name first and then renamed into place.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

DIRECTIONS = ("t2i", "i2t")
# Identifying columns of results.csv, before the sweep.<key> columns and the metrics.
ID_COLUMNS = ("run", "job", "dataset", "split", "protocol", "method", "direction", "settings")
SWEEP_PREFIX = "sweep."
FAILED_COLUMNS = ("run", "job", "status", "reason", "overrides")
BASELINE = "cosine"  # the method every rerank.py job runs beside the re-ranked one
SKIP_DIRS = {"wandb", ".submitit", ".hydra", "__pycache__"}
PLOT_PATTERNS = ("r1_vs_*.png", "heatmap_*.png", "bars.png")
MAX_BARS = 120  # above this many (job, method) pairs the bar chart is left out
MAX_HEATMAP_VALUES = 12  # the automatic heatmap needs two settings with at most this many values
MAX_LINES = 6  # above this many combinations of the other swept settings a curve shows their best


# --- reading a multirun ----------------------------------------------------------------------


@dataclass
class Job:
    """A job of a sweep: its folder, overrides and, when it finished, its results."""

    path: Path
    run: str  # folder relative to the aggregated root, "." for the root itself
    num: int | None = None
    overrides: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # .hydra/config.yaml, unresolved
    choices: dict = field(default_factory=dict)  # hydra.runtime.choices
    hydra: dict = field(default_factory=dict)  # .hydra/hydra.yaml's hydra node
    results: dict | None = None
    status: str = "ok"  # ok, failed, unreadable or not_run
    reason: str = ""


@dataclass
class Collection:
    """The jobs read below one root, finished and failed, and the swept keys."""

    root: Path
    jobs: list[Job]
    swept: list[str]  # override keys, for example method.k or +experiment

    @property
    def ok(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "ok"]

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.status != "ok"]


def _load_yaml(path: Path) -> Any:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _key(override: str) -> str:
    """Return the key of a ``key=value`` override string, as Hydra writes it (``+experiment``, ``method.k``)."""
    return override.split("=", 1)[0]


def _value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def column_name(key: str) -> str:
    """Return the results.csv column of a swept override key: ``+experiment`` -> ``sweep.experiment``."""
    return SWEEP_PREFIX + key.lstrip("+~")


def _walk_jobs(root: Path, exclude: Path | None) -> Iterable[Path]:
    """Yield every folder below root (root included) that contains .hydra/ or results.json."""
    for folder, dirs, files in os.walk(root):
        current = Path(folder)
        if exclude is not None and current.resolve() == exclude:
            dirs[:] = []
            continue
        if ".hydra" in dirs or "results.json" in files:
            yield current
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)


def _error_reason(folder: Path) -> str:
    """Return the last ERROR line of the job's Hydra log files, or a generic reason."""
    last = ""
    for log in sorted(folder.glob("*.log")):
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                if "[ERROR]" in line:
                    last = line.split("] - ", 1)[-1].strip()
    return last or "no results.json: the job stopped before writing it (see its .log file)"


def read_job(folder: Path, root: Path) -> Job:
    """Read one job folder; a missing or broken results.json sets the status instead of raising."""
    rel = folder.relative_to(root).as_posix()
    job = Job(path=folder, run=rel)
    hydra_dir = folder / ".hydra"
    with contextlib.suppress(OSError, yaml.YAMLError):
        job.overrides = [str(o) for o in _load_yaml(hydra_dir / "overrides.yaml") or []]
    with contextlib.suppress(OSError, yaml.YAMLError):
        job.config = _load_yaml(hydra_dir / "config.yaml") or {}
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        hydra_cfg = _load_yaml(hydra_dir / "hydra.yaml")["hydra"]
        job.hydra = hydra_cfg
        job.choices = dict(hydra_cfg["runtime"]["choices"] or {})
        job.num = int(hydra_cfg["job"]["num"])
    results_file = folder / "results.json"
    if not results_file.exists():
        job.status, job.reason = "failed", _error_reason(folder)
        return job
    try:
        with open(results_file) as handle:
            results = json.load(handle)
        if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
            raise ValueError("no 'methods' object")
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        job.status, job.reason = "unreadable", f"results.json does not parse: {exc}"
        return job
    job.results = results
    return job


def _planned_jobs(hydra_cfg: dict) -> tuple[list[list[str]] | None, int | None, list[str]]:
    """Return (planned override lists, planned job count, declared swept keys) of one sweep.

    ``hydra_cfg`` is the hydra node of the sweep's multirun.yaml or, for
    sweepers that write none (Optuna), of one job's .hydra/hydra.yaml. The
    basic sweeper's plan is rebuilt with Hydra's own expansion, so job number
    i gets the i-th list. Optuna's plan is only a count (n_trials).
    """
    try:
        sweeper = hydra_cfg["sweeper"]
        task = [str(o) for o in hydra_cfg["overrides"]["task"] or []]
    except (KeyError, TypeError):
        return None, None, []
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    target = str(sweeper.get("_target_", ""))
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(params + task)
    except Exception:  # a grammar error: the sweep itself could not have started
        return None, None, []
    declared = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    if target.endswith("BasicSweeper"):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        try:
            plan = BasicSweeper.split_arguments(parsed, None)[0]
        except Exception:
            return None, None, declared
        return plan, len(plan), declared
    if "optuna" in target.lower():
        return None, int(sweeper.get("n_trials") or 0) or None, declared
    return None, None, declared


def _sweeps(root: Path, jobs: list[Job]) -> dict[Path, dict]:
    """Map each sweep folder below root to its hydra node.

    A basic sweeper's folder contains multirun.yaml. The Optuna sweeper writes
    none, so the parent folder of a multirun job outside any such folder counts
    as a sweep folder, described by the job's own hydra.yaml.
    """
    sweeps: dict[Path, dict] = {}
    for path in sorted(root.rglob("multirun.yaml")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
            sweeps[path.parent] = _load_yaml(path)["hydra"]
    for job in jobs:
        if job.hydra.get("mode") != "MULTIRUN" or any(s in job.path.parents for s in sweeps):
            continue
        sweeps.setdefault(job.path.parent, job.hydra)
    return sweeps


def collect(root: Path, exclude: Path | None = None) -> Collection:
    """Read every job below root, add the planned jobs that never started, and find the swept keys."""
    root = Path(root)
    jobs = [read_job(folder, root) for folder in _walk_jobs(root, exclude.resolve() if exclude else None)]
    declared: list[str] = []
    for sweep_dir, hydra_cfg in _sweeps(root, jobs).items():
        plan, count, keys = _planned_jobs(hydra_cfg)
        declared += [k for k in keys if k not in declared]
        found = {j.num for j in jobs if j.num is not None and sweep_dir in j.path.parents}
        for num in range(count or 0):
            if num in found:
                continue
            run = (sweep_dir.relative_to(root) / f"#{num}").as_posix()
            overrides = plan[num] if plan is not None else []
            jobs.append(Job(path=sweep_dir, run=run, num=num, overrides=list(overrides), status="not_run",
                            reason="no job folder: the sweep stopped before this job started"))
    jobs.sort(key=lambda j: (str(Path(j.run).parent), j.num if j.num is not None else -1, j.run))
    values: dict[str, set] = {}
    order: list[str] = list(declared)
    for job in jobs:
        for override in job.overrides:
            key = _key(override)
            if key.startswith("hydra.") or key.startswith("+hydra."):
                continue
            values.setdefault(key, set()).add(_value(override))
            if key not in order:
                order.append(key)
    swept = [k for k in order if k in declared or len(values.get(k, ())) > 1]
    return Collection(root=root, jobs=jobs, swept=swept)


# --- rows ------------------------------------------------------------------------------------


def _lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def swept_value(job: Job, key: str) -> Any:
    """Return a swept setting's value in one job: typed from its config, else the override's text."""
    plain = key.lstrip("+~").split("@", 1)[0]
    for tree in ((job.results or {}).get("config"), job.config):
        value = _lookup(tree or {}, plain)
        if value is not None and not isinstance(value, (dict, list)):
            return value
    for override in job.overrides:
        if _key(override) == key:
            return _value(override)
    return job.choices.get(plain, "")


def _settings_text(settings: dict | None) -> str:
    if not settings:
        return ""
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k != "name")


def rows_of(job: Job, swept: list[str]) -> list[dict]:
    """The results.csv rows of one finished job: one per method and direction."""
    results = job.results or {}
    config = results.get("config") or {}
    configured = config.get("method") if isinstance(config.get("method"), dict) else {}
    rows = []
    for method, entry in results["methods"].items():
        settings = entry.get("settings")
        if settings is None and configured.get("name") == method:
            settings = configured
        for direction in DIRECTIONS:
            metrics = entry.get(direction)
            if not isinstance(metrics, dict):
                continue
            row = {"run": job.run, "job": job.num, "dataset": results.get("dataset"),
                   "split": results.get("split"), "protocol": entry.get("protocol", results.get("protocol")),
                   "method": method, "direction": direction, "settings": _settings_text(settings)}
            for key in swept:
                row[column_name(key)] = swept_value(job, key)
            for name, value in metrics.items():
                if isinstance(value, (list, tuple)) and len(value) == 2:
                    row[f"{name}_lo"], row[f"{name}_hi"] = value
                elif isinstance(value, (int, float, str, bool)) or value is None:
                    row[name] = value
            rows.append(row)
    return rows


def table_rows(collection: Collection) -> tuple[list[dict], list[str]]:
    """Return all rows of the finished jobs and the CSV columns, identifying columns first."""
    rows = [row for job in collection.ok for row in rows_of(job, collection.swept)]
    columns = list(ID_COLUMNS) + [column_name(k) for k in collection.swept]
    for row in rows:
        columns += [c for c in row if c not in columns]
    return rows, columns


def failed_rows(collection: Collection) -> list[dict]:
    return [{"run": j.run, "job": j.num, "status": j.status, "reason": j.reason,
             "overrides": " ".join(j.overrides)} for j in collection.failed]


# --- files -----------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def csv_text(rows: list[dict], columns: Iterable[str]) -> str:
    """CSV with a header; None becomes an empty cell, floats keep every digit (repr)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


TEXT_COLUMNS = {"run", "dataset", "split", "protocol", "method", "direction", "settings", "status", "reason",
                "overrides"}


def read_csv(path: Path) -> list[dict]:
    """Read a results.csv (or failed_runs.csv) back.

    Numeric cells become int or float and empty cells None, except in the
    text columns (run, method, ...), which stay strings.
    """
    with open(path, newline="") as handle:
        return [{k: (v if k in TEXT_COLUMNS else _parse_cell(v)) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def swept_columns(rows: list[dict]) -> list[str]:
    """Return the sweep.<key> columns of results.csv rows, in column order."""
    return [c for c in (rows[0] if rows else {}) if c.startswith(SWEEP_PREFIX)]


# --- tables ----------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _r1(row: dict | None) -> str:
    if row is None:
        return ""
    if row.get("R@1_ci95_lo") is None:
        return f"{row['R@1']:.1f}"
    return f"{row['R@1']:.1f} [{row['R@1_ci95_lo']:.1f}, {row['R@1_ci95_hi']:.1f}]"


def paired(rows: list[dict]) -> list[dict]:
    """Join the t2i and i2t rows of each (job, method): one record with both, in row order.

    A record whose method, settings, context and metrics equal an earlier
    record's (cosine, repeated by every rerank.py job) is kept once, with
    ``repeats`` counting the jobs it stands for.
    """
    records: dict[tuple, dict] = {}
    for row in rows:
        rec = records.setdefault((row["run"], row["method"]), {
            "run": row["run"], "job": row["job"], "method": row["method"], "settings": row.get("settings"),
            "context": (row.get("dataset"), row.get("split"), row.get("protocol")),
            "swept": {c: row[c] for c in row if c.startswith(SWEEP_PREFIX)}, "repeats": 1})
        rec[row["direction"]] = row
    unique: dict[tuple, dict] = {}
    for rec in records.values():
        metrics = tuple(tuple(sorted((k, v) for k, v in (rec.get(d) or {}).items()
                                     if k not in ("run", "job") and not k.startswith(SWEEP_PREFIX)))
                        for d in DIRECTIONS)
        key = (rec["method"], rec["settings"], rec["context"], metrics)
        if key in unique:
            unique[key]["repeats"] += 1
        else:
            unique[key] = rec
    out = list(unique.values())
    for rec in out:
        rows_ = [rec.get(d) for d in DIRECTIONS]
        rec["mean_R@1"] = (sum(r["R@1"] for r in rows_) / 2) if all(rows_) else None
    return out


def markdown_table(rows: list[dict]) -> str:
    """Render the Markdown table: one line per (job, method) with its swept settings, R@1 and interval per direction, mean R@1 and rsum.

    A baseline repeated identically in every job is shown once, marked ``(all N)``.
    """
    records = paired(rows)
    swept = swept_columns(rows)
    contexts = {rec["context"] for rec in records}
    methods = {rec["method"] for rec in records}
    show_settings = len(methods) > 2
    header = ["run"] + [c[len(SWEEP_PREFIX):] for c in swept]
    # Split and protocol get columns when they vary and are not swept columns already.
    context_columns = [(i, name) for i, name in ((1, "split"), (2, "protocol"))
                       if len({c[i] for c in contexts}) > 1 and name not in header]
    header += [name for _, name in context_columns]
    header += ["method"] + (["settings"] if show_settings else [])
    header += ["t2i R@1 [95% CI]", "i2t R@1 [95% CI]", "mean R@1", "t2i rsum", "i2t rsum"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rec in records:
        repeated = rec["repeats"] > 1
        cells = [f"(all {rec['repeats']})" if repeated else rec["run"]]
        cells += ["" if repeated else _fmt(rec["swept"].get(c)) for c in swept]
        cells += [_fmt(rec["context"][i]) for i, _ in context_columns]
        cells += [rec["method"]] + ([rec["settings"] or ""] if show_settings else [])
        t2i, i2t = rec.get("t2i"), rec.get("i2t")
        cells += [_r1(t2i), _r1(i2t), "" if rec["mean_R@1"] is None else f"{rec['mean_R@1']:.2f}",
                  "" if t2i is None else f"{t2i['rsum']:.1f}", "" if i2t is None else f"{i2t['rsum']:.1f}"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def failed_table(failed: list[dict]) -> str:
    lines = ["| run | status | reason | overrides |", "|---|---|---|---|"]
    for row in failed:
        cells = [row["run"], row["status"], row["reason"], f"`{row['overrides']}`" if row["overrides"] else ""]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def best_record(rows: list[dict]) -> dict | None:
    """Return the (job, method) record with the highest mean R@1, excluding the baseline unless it is the only method."""
    records = [r for r in paired(rows) if r["mean_R@1"] is not None]
    candidates = [r for r in records if r["method"] != BASELINE] or records
    return max(candidates, key=lambda r: r["mean_R@1"], default=None)


# --- plots -----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric_swept(rows: list[dict]) -> list[str]:
    """Swept columns whose values are all numbers and take at least two values."""
    out = []
    for col in swept_columns(rows):
        values = [r.get(col) for r in rows]
        if values and all(_is_number(v) for v in values) and len(set(values)) > 1:
            out.append(col)
    return out


def _label(col: str) -> str:
    return col[len(SWEEP_PREFIX):] if col.startswith(SWEEP_PREFIX) else col


def _short_names(cols: list[str]) -> dict[str, str]:
    """Map each column to its last dotted part (method.k -> k), or to its full label where two would clash."""
    last = {c: _label(c).rsplit(".", 1)[-1] for c in cols}
    return {c: (name if list(last.values()).count(name) == 1 else _label(c)) for c, name in last.items()}


def _slug(col: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", _label(col)).strip("_")


def _reranked(rows: list[dict]) -> list[dict]:
    out = [r for r in rows if r["method"] != BASELINE]
    return out or rows


def _baseline_level(rows: list[dict], direction: str) -> float | None:
    """Return the cosine R@1 of a direction when it is the same in every job (for a reference line), else None."""
    values = {r["R@1"] for r in rows if r["method"] == BASELINE and r["direction"] == direction}
    return values.pop() if len(values) == 1 else None


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _errors(points: list[dict]) -> list[list[float]] | None:
    if any(p.get("R@1_ci95_lo") is None for p in points):
        return None
    return [[p["R@1"] - p["R@1_ci95_lo"] for p in points], [p["R@1_ci95_hi"] - p["R@1"] for p in points]]


def plot_curve(rows: list[dict], col: str, path: Path) -> Path:
    """Plot R@1 against one swept setting, one panel per direction, with 95% intervals.

    Each combination of the other swept settings gets its own line, up to
    MAX_LINES lines. With more combinations, one line shows the best R@1 over
    them at each value. Values off a grid (an Optuna study) are drawn as points.
    """
    plt = _pyplot()
    data = [r for r in _reranked(rows) if _is_number(r.get(col))]
    others = [c for c in swept_columns(rows) if c != col]
    groups: dict[tuple, list[dict]] = {}
    for r in data:
        groups.setdefault((r["method"],) + tuple(r.get(c) for c in others), []).append(r)
    best_only = len(groups) > MAX_LINES
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    xs_all = sorted({r[col] for r in data})
    # An Optuna study gives each job its own values: no grid to join by lines.
    per_x = [sum(1 for r in data if r[col] == x and r["direction"] == DIRECTIONS[0]) for x in xs_all]
    scattered = best_only and all(n == 1 for n in per_x)
    for ax, direction in zip(axes, DIRECTIONS):
        if best_only:
            by_x: dict[tuple, dict] = {}
            for r in data:
                if r["direction"] == direction:
                    key = (r["method"], r[col])
                    if key not in by_x or r["R@1"] > by_x[key]["R@1"]:
                        by_x[key] = r
            lines = {}
            kind = "one point per job" if scattered else f"best over {', '.join(map(_label, others))}"
            for (method, _), r in sorted(by_x.items(), key=lambda kv: kv[0][1]):
                lines.setdefault(f"{method} ({kind})", []).append(r)
        else:
            lines = {}
            for key, members in groups.items():
                label = ", ".join([key[0]] + [f"{_label(c)}={_fmt(v)}" for c, v in zip(others, key[1:])])
                lines[label] = sorted((r for r in members if r["direction"] == direction), key=lambda r: r[col])
        for label, points in lines.items():
            if points:
                style = "none" if scattered else "-"
                ax.errorbar([p[col] for p in points], [p["R@1"] for p in points], yerr=_errors(points),
                            marker="o", linestyle=style, capsize=3, label=label)
        level = _baseline_level(rows, direction)
        if level is not None:
            ax.axhline(level, color="grey", linestyle="--", label=f"{BASELINE}")
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 50:
            ax.set_xscale("log")
        if len(xs_all) <= MAX_HEATMAP_VALUES:  # a grid: tick exactly the swept values
            ax.set_xticks(xs_all, [_fmt(x) for x in xs_all])
            ax.minorticks_off()
        ax.set_title(direction)
        ax.set_xlabel(_label(col))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("R@1 (%), 95% CI")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"R@1 against {_label(col)}")
    _save(fig, path)
    return path


def plot_heatmap(rows: list[dict], col_x: str, col_y: str, path: Path) -> Path:
    """Plot a heatmap of R@1 over two swept settings, one panel per direction (best over any other setting)."""
    plt = _pyplot()
    data = [r for r in _reranked(rows) if _is_number(r.get(col_x)) and _is_number(r.get(col_y))]
    xs = sorted({r[col_x] for r in data})
    ys = sorted({r[col_y] for r in data})
    others = [c for c in swept_columns(rows) if c not in (col_x, col_y)]

    fig, axes = plt.subplots(1, 2, figsize=(2 * (2.4 + 0.75 * len(xs)), 2.0 + 0.45 * len(ys)),
                             layout="constrained")
    for ax, direction in zip(axes, DIRECTIONS):
        grid = [[math.nan] * len(xs) for _ in ys]
        for r in data:
            if r["direction"] == direction:
                i, j = ys.index(r[col_y]), xs.index(r[col_x])
                if math.isnan(grid[i][j]) or r["R@1"] > grid[i][j]:
                    grid[i][j] = r["R@1"]

        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        low, high = image.get_clim()
        for i, j in itertools.product(range(len(ys)), range(len(xs))):
            if not math.isnan(grid[i][j]):
                light = high > low and (grid[i][j] - low) / (high - low) > 0.6
                ax.text(j, i, f"{grid[i][j]:.1f}", ha="center", va="center", fontsize=8,
                        color="black" if light else "white")
        ax.set_xticks(range(len(xs)), [_fmt(x) for x in xs])
        ax.set_yticks(range(len(ys)), [_fmt(y) for y in ys])
        ax.set_xlabel(_label(col_x))
        ax.set_ylabel(_label(col_y))
        ax.set_title(direction)
        fig.colorbar(image, ax=ax, label="R@1 (%)")

    note = f" (best over {', '.join(map(_label, others))})" if others else ""
    fig.suptitle(f"R@1 over {_label(col_x)} and {_label(col_y)}{note}")
    _save(fig, path)
    return path


def plot_bars(rows: list[dict], path: Path) -> Path | None:
    """Plot horizontal bars: R@1 of every (job, method) per direction with its 95% interval.

    A baseline repeated identically by every job is drawn once, first.
    """
    plt = _pyplot()
    records = paired(rows)
    records.sort(key=lambda r: (r["repeats"] == 1,))
    if not records or len(records) > MAX_BARS:
        return None
    swept = swept_columns(rows)
    short = _short_names(swept)
    labels = []
    for rec in records:
        parts = [rec["method"] + (f" (all {rec['repeats']} jobs)" if rec["repeats"] > 1 else "")]
        if rec["repeats"] == 1:
            parts += [f"{short[c]}={_fmt(rec['swept'].get(c))}" for c in swept]
        labels.append(", ".join(parts))
    height = 0.38
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * len(records)))
    for offset, direction in zip((-height / 2, height / 2), DIRECTIONS):
        points = [rec.get(direction) for rec in records]
        ys = [i + offset for i, p in enumerate(points) if p is not None]
        present = [p for p in points if p is not None]
        err = _errors(present)
        bars = ax.barh(ys, [p["R@1"] for p in present], height=height, xerr=err, capsize=2, label=direction)
        level = _baseline_level(rows, direction)
        if level is not None:
            ax.axvline(level, color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1,
                       label=f"{BASELINE} {direction}")
    ax.set_yticks(range(len(records)), labels, fontsize=8)
    ax.set_ylim(len(records) - 0.5, -0.5)  # first record on top
    ax.set_xlabel("R@1 (%), 95% CI")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False, fontsize=8)
    ax.set_title("R@1 per job and method", pad=22)
    _save(fig, path)
    return path


def make_plots(rows: list[dict], folder: Path, heatmap: tuple[str, str] | None = None) -> list[tuple[str, Path]]:
    """Draw every plot that the rows allow into folder; return (caption, path) pairs.

    PNGs of an earlier aggregation in folder that this one does not redraw are removed.
    """
    folder = Path(folder)
    plots: list[tuple[str, Path]] = []
    numeric = numeric_swept(rows)
    for col in numeric:
        plots.append((f"R@1 against {_label(col)}, per direction.", plot_curve(rows, col, folder / f"r1_vs_{_slug(col)}.png")))
    pair = None
    if heatmap is not None:
        pair = tuple(c if c.startswith(SWEEP_PREFIX) else SWEEP_PREFIX + c.lstrip("+~") for c in heatmap)
        missing = [c for c in pair if c not in numeric]
        if missing:
            raise SystemExit(f"--heatmap: {', '.join(map(_label, missing))} is not a swept numeric setting; "
                             f"swept numeric settings: {', '.join(map(_label, numeric)) or 'none'}.")
    else:
        # Automatically only over a grid: two settings with few distinct values each.
        gridded = [c for c in numeric if len({r[c] for r in rows}) <= MAX_HEATMAP_VALUES]
        pair = (gridded[0], gridded[1]) if len(gridded) >= 2 else None
    if pair is not None:
        path = folder / f"heatmap_{_slug(pair[0])}_{_slug(pair[1])}.png"
        plots.append((f"R@1 over {_label(pair[0])} and {_label(pair[1])}.", plot_heatmap(rows, *pair, path)))
    bars = plot_bars(rows, folder / "bars.png")
    if bars is not None:
        plots.append(("R@1 of every job and method with its 95% bootstrap interval.", bars))
    keep = {p.resolve() for _, p in plots}
    for pattern in PLOT_PATTERNS:
        for old in folder.glob(pattern):
            if old.resolve() not in keep:
                old.unlink()
    return plots


# --- page ------------------------------------------------------------------------------------


def render_page(collection: Collection, rows: list[dict], failed: list[dict], plots: list[tuple[str, Path]],
                page: Path, title: str, command: str) -> str:
    """Render the Markdown page: what was aggregated, the plots, the table and the failed jobs."""
    finished = collection.ok
    contexts = sorted({(r.get("dataset"), r.get("split"), r.get("protocol")) for r in rows}, key=str)
    job_types = sorted({str(_lookup((j.results or {}).get("config") or {}, "logger.job_type"))
                        for j in finished} - {"None"})
    lines = [f"# {title}", "",
             f"Generated by `{command}` from the results.json files below `{collection.root.as_posix()}`; "
             "rerun that command rather than editing this page.", "",
             f"- jobs: {len(finished)} finished, {len(failed)} failed or missing",
             f"- swept: {', '.join(f'`{k}`' for k in collection.swept) or 'nothing'}",
             "- data: " + "; ".join(f"{d}, split {s}, {p} protocol" for d, s, p in contexts)]
    if job_types:
        lines.append(f"- W&B job type: {', '.join(job_types)}")
    builds = sorted({(str(env.get("nia_jax")), str(env.get("git_commit"))[:12], str(env.get("jax")))
                     for j in finished for env in [(j.results or {}).get("environment") or {}]})
    if builds:
        lines.append("- code: " + "; ".join(f"nia_jax {v}, commit {c}, JAX {jx}" for v, c, jx in builds))
    best = best_record(rows)
    if best is not None:
        where = ", ".join(f"{_label(c)}={_fmt(v)}" for c, v in best["swept"].items()) or best["run"]
        lines.append(f"- highest mean R@1 over t2i and i2t: {best['mean_R@1']:.2f}, {best['method']} at {where}")
    lines += ["", "R@1 is in percent; brackets hold the 95% bootstrap interval over queries. "
              "`(all N)` marks a baseline that came out identical in N jobs and is shown once.", ""]
    for caption, path in plots:
        rel = os.path.relpath(path, page.parent)
        lines += [f"![{caption}]({Path(rel).as_posix()})", "", caption, ""]
    lines += ["## Results", "", markdown_table(rows) if rows else "No finished job.", ""]
    lines += ["## Failed or missing jobs", ""]
    lines += [failed_table(failed), ""] if failed else ["None.", ""]
    return "\n".join(lines)


def aggregate(root: Path, output: Path | None = None, heatmap: tuple[str, str] | None = None,
              title: str | None = None, command: str | None = None) -> dict:
    """Aggregate root into files; return summary.json's content (with the written paths)."""
    root = Path(root)
    if output is None:
        folder = root / "aggregate"
        page = folder / "results.md"
    else:
        page = Path(output)
        folder = page.parent / page.stem
    collection = collect(root, exclude=folder)
    rows, columns = table_rows(collection)
    failed = failed_rows(collection)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "results.csv", csv_text(rows, columns))
    write_text_atomic(folder / "failed_runs.csv", csv_text(failed, FAILED_COLUMNS))
    plots = make_plots(rows, folder, heatmap) if rows else []
    command = command or f"python experiments/aggregate.py {root.as_posix()}"
    text = render_page(collection, rows, failed, plots, page, title or f"Sweep {root.name}", command)
    write_text_atomic(page, text)
    summary = {
        "root": root.as_posix(), "swept": collection.swept, "n_jobs": len(collection.ok),
        "n_rows": len(rows), "failed": failed, "page": page.as_posix(),
        "csv": (folder / "results.csv").as_posix(), "failed_csv": (folder / "failed_runs.csv").as_posix(),
        "plots": [p.as_posix() for _, p in plots],
    }
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a multirun folder (or any folder with job folders below it)")
    parser.add_argument("--output", type=Path, default=None,
                        help="Markdown page to write; its CSVs and plots go to a folder of the same stem beside it")
    parser.add_argument("--heatmap", nargs=2, metavar=("X", "Y"), default=None,
                        help="two swept numeric settings for the heatmap (default: the first two)")
    parser.add_argument("--title", default=None, help="title of the Markdown page")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any job failed or is missing")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"aggregate.py: {args.root} is not a folder", file=sys.stderr)
        return 2
    command_line = " ".join(["python experiments/aggregate.py", args.root.as_posix()]
                     + ([f"--output {args.output.as_posix()}"] if args.output else [])
                     + ([f"--heatmap {' '.join(args.heatmap)}"] if args.heatmap else [])
                     + ([f"--title '{args.title}'"] if args.title else []))
    summary = aggregate(args.root, args.output, tuple(args.heatmap) if args.heatmap else None, args.title, command_line)
    print(f"{summary['n_jobs']} finished jobs, {summary['n_rows']} rows; swept: {', '.join(summary['swept']) or 'nothing'}")
    if summary["failed"]:
        print(f"{len(summary['failed'])} failed or missing jobs (also in {summary['failed_csv']}):")
        for row in summary["failed"]:
            print(f"  {row['run']} [{row['status']}] {row['reason']}  {row['overrides']}")
    print(f"wrote {summary['csv']}, {summary['failed_csv']}, {summary['page']} and {len(summary['plots'])} plots")
    if summary["n_jobs"] == 0 and not summary["failed"]:
        print(f"aggregate.py: no job folder below {args.root}", file=sys.stderr)
        return 1
    return 1 if (args.strict and summary["failed"]) else 0


if __name__ == "__main__":
    sys.exit(main())
