"""Speed and memory of the search and of every re-ranker on seeded synthetic CLIP-like embeddings.

    python experiments/benchmark.py                   # every case (see docs/benchmarks.md for the time)
    python experiments/benchmark.py case=coco5k       # one case
    python experiments/benchmark.py report_from=outputs/benchmark/<run>/benchmark.json   # docs only

Per case (conf/benchmark.yaml) it times, as the median of ``repeats`` runs
after one run that compiles:

* ``gemm_numpy_s`` / ``gemm_jax_s``: the bare similarity products over the
  same query and gallery blocks as the search, results discarded.
  ``gemm_floor_s`` (also ``gemm_s``) is the faster of the two;
* ``topk_jax_s``: :func:`nia_jax.search.search` with the JAX backend (a
  memory-mapped gallery is streamed from disk); ``topk_faiss_s``: faiss
  ``IndexFlatIP``, index build included;
* ``topk_s``: the default path, ``nia_jax.rerank`` with the cosine method;
* ``nia_s``, ``nia_neighbour_s`` and ``<anchor>_s``: ``nia_jax.rerank`` end
  to end (validation, preparation, search, re-scoring), same K;
* ``nia_numpy_s``: ``experiments/numpy_nia.py``, NIA in plain NumPy.

A measurement whose first run takes longer than ``max_repeat_s`` runs once;
its time is then that run minus its compilation time. ``compile_s`` is the
compilation time of each measurement (JAX's tracing, lowering and XLA
compile events), ``runs`` the number of timed runs, ``peak_rss_mib`` the
process's peak resident memory during the case. Results go to
benchmark.json in the Hydra run directory, written after every case, and
docs/benchmarks.md is regenerated from them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy_nia  # noqa: E402
import schema  # noqa: E402
import synthetic  # noqa: E402

log = logging.getLogger("nia_jax.experiments.benchmark")
ROOT = Path(__file__).resolve().parent.parent
DOCS_PAGE = "docs/benchmarks.md"  # the committed report that docs=auto writes
ANCHORS = ("nnn", "csls", "qbnorm_is", "qbnorm_dis", "dualis", "dsl", "sinkhorn", "dbsn", "invgc", "kreciprocal",
           "aqe", "dba")
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


@dataclass
class CaseConfig:
    """One benchmark case: sizes, blocks, repeats, and methods left out with the reason."""

    n_queries: int = 1000
    n_gallery: int = 1000
    n_bank: int = 5000
    dim: int = 512
    memmap: bool = False  # write the gallery to a .npy file and pass the np.memmap
    repeats: int = 3  # timed runs after the compiling one; 0 times the compiling run, less its compilation
    block_size: int = 1024
    gallery_block_size: Optional[int] = None
    skip: dict[str, str] = field(default_factory=dict)


@dataclass
class BenchmarkConfig:
    """Top-level config of ``experiments/benchmark.py``."""

    methods: dict[str, Any] = field(default_factory=dict)
    cases: dict[str, CaseConfig] = field(default_factory=dict)
    case: str = "all"
    top_k: int = 100
    search_backend: str = "auto"
    seed: int = 0
    cache_dir: str = "outputs/benchmark_cache"
    docs: Optional[str] = "auto"  # auto: docs/benchmarks.md after case=all only
    report_from: Optional[str] = None
    max_repeat_s: float = 60.0


schema.register_schemas()
ConfigStore.instance().store(name="benchmark_schema", node=BenchmarkConfig)


# --- measuring ------------------------------------------------------------------------------


class CompileClock:
    """Sum of JAX's compilation event durations (seconds) since the last :meth:`reset`."""

    def __init__(self):
        import jax

        self.total = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            self.total += duration

    def reset(self) -> float:
        total, self.total = self.total, 0.0
        return total


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux), so each case reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        log.warning("cannot reset the peak RSS (/proc/self/clear_refs); peaks accumulate over cases")


def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(run: Callable[[], Any], repeats: int, max_repeat_s: float, clock: CompileClock) -> dict:
    """Run once (compiling), then ``repeats`` timed runs unless the first was slow; return the timings."""
    clock.reset()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    compile_s = clock.reset()
    if first > max_repeat_s or repeats < 1:
        return {"seconds": max(first - compile_s, 0.0), "compile_s": compile_s, "runs": 1}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    compile_s += clock.reset()  # stays 0 unless a timed run recompiled, which would be a bug
    return {"seconds": statistics.median(times), "compile_s": compile_s, "runs": repeats}


def numpy_gemm(queries, gallery, block, gallery_block):
    """Multiply every query block with every gallery block in NumPy; discard the products."""
    out = np.empty((block, gallery_block), dtype=np.float32)
    for lo in range(0, queries.shape[0], block):
        q = queries[lo:lo + block]
        for g_lo in range(0, gallery.shape[0], gallery_block):
            g = gallery[g_lo:g_lo + gallery_block]
            np.matmul(q, g.T, out=out[: q.shape[0], : g.shape[0]])


def jax_gemm_runner(queries, gallery, block, gallery_block):
    """Return a function that multiplies the same blocks with a jitted product on device arrays."""
    import jax
    import jax.numpy as jnp

    product = jax.jit(lambda q, g: jnp.dot(q, g.T, preferred_element_type=jnp.float32))
    q_blocks = [jnp.asarray(queries[lo:lo + block]) for lo in range(0, queries.shape[0], block)]
    g_blocks = [jnp.asarray(gallery[lo:lo + gallery_block]) for lo in range(0, gallery.shape[0], gallery_block)]

    def run():
        for q in q_blocks:
            jax.block_until_ready([product(q, g) for g in g_blocks])

    return run


# --- one case ---------------------------------------------------------------------------------


def run_case(name: str, case: CaseConfig, cfg: DictConfig, clock: CompileClock, progress) -> dict:
    import jax.numpy as jnp

    import nia_jax
    from nia_jax import search

    reset_peak_rss()
    started = time.perf_counter()
    spec = synthetic.Synthetic(n_queries=case.n_queries, n_gallery=case.n_gallery, n_bank=case.n_bank,
                               dim=case.dim, seed=cfg.seed)
    data = synthetic.cached(spec, ROOT / cfg.cache_dir, memmap=case.memmap)
    queries, gallery_file = data["queries"], data["gallery"]
    gallery = np.ascontiguousarray(gallery_file)  # in memory, for the products and the methods
    banks = {"query_bank": data["query_bank"], "gallery_bank": data["gallery_bank"]}
    k = cfg.top_k
    width = case.gallery_block_size or case.n_gallery
    record: dict[str, Any] = {
        "case": dataclasses.asdict(spec) | {"memmap": case.memmap, "block_size": case.block_size,
                                            "gallery_block_size": case.gallery_block_size, "top_k": k,
                                            "repeats": case.repeats},
        "data": synthetic.describe(data),
        "compile_s": {}, "runs": {}, "skipped": {}, "errors": {},
        "load_average_start": list(os.getloadavg()),
    }
    options = dict(top_k=k, block_size=case.block_size, gallery_block_size=case.gallery_block_size,
                   search_backend=cfg.search_backend)

    def timed(key: str, run: Callable[[], Any], repeats: int = case.repeats):
        progress.set_postfix_str(f"{name}: {key}")
        try:
            result = measure(run, repeats, cfg.max_repeat_s, clock)
        except Exception as exc:  # a method that fails must not lose the other results
            log.exception("%s %s failed", name, key)
            record["errors"][key] = f"{type(exc).__name__}: {exc}"
            record[f"{key}_s"] = None
        else:
            record[f"{key}_s"] = round(result["seconds"], 4)
            record["compile_s"][key] = round(result["compile_s"], 4)
            record["runs"][key] = result["runs"]
            log.info("%s %-16s %9.3f s (compile %.2f s, %d runs)", name, key, result["seconds"],
                     result["compile_s"], result["runs"])
        progress.update(1)

    timed("gemm_numpy", lambda: numpy_gemm(queries, gallery, case.block_size, width))
    timed("gemm_jax", jax_gemm_runner(queries, gallery, case.block_size, width))
    record["gemm_floor_s"] = min(v for v in (record["gemm_numpy_s"], record["gemm_jax_s"]) if v is not None)
    record["gemm_s"] = record["gemm_floor_s"]  # the floor under its short name

    device_gallery = jnp.asarray(gallery)
    source = gallery_file if case.memmap else device_gallery
    timed("topk_jax", lambda: search.search(queries, source, k, block_size=case.block_size,
                                            gallery_block_size=case.gallery_block_size, backend="jax"))
    if search.faiss_available():
        # The same source as the default path: the file for a memory-mapped case.
        timed("topk_faiss", lambda: search.search(queries, gallery_file, k, block_size=case.block_size,
                                                  backend="faiss"))
    else:
        record["topk_faiss_s"] = None
        record["skipped"]["topk_faiss"] = "faiss is not installed (pip install 'nia_jax[faiss]')"
        progress.update(1)
    del device_gallery

    def rerank(method):
        return lambda: nia_jax.rerank(method, queries, gallery_file, **banks, **options)

    timed("topk", rerank(nia_jax.make_reranker("cosine")))
    nia = common.make_method(cfg.methods.nia)
    timed("nia", rerank(nia))
    try:
        numpy_method = numpy_nia.rerank
        timed("nia_numpy", lambda: numpy_method(nia, queries, gallery, top_k=k, block_size=case.block_size, **banks))
        candidates, scores = numpy_nia.rerank(nia, queries[:case.block_size], gallery, top_k=k,
                                              block_size=case.block_size, **banks)
        mine = nia_jax.rerank(nia, queries[:case.block_size], gallery, **banks, **options)
        same = np.all(candidates == mine.candidates, axis=1)
        record["nia_numpy_check"] = {"same_candidates": float(same.mean()),
                                     "max_abs_diff": float(np.abs(scores[same] - mine.scores[same]).max())}
    except NotImplementedError as exc:
        record["nia_numpy_s"] = None
        record["skipped"]["nia_numpy"] = str(exc)
        progress.update(1)
    for key in ["nia_neighbour", *ANCHORS]:
        if key in case.skip:
            record[f"{key}_s"] = None
            record["skipped"][key] = case.skip[key]
            progress.update(1)
            continue
        timed(key, rerank(common.make_method(cfg.methods[key])))
    record["peak_rss_mib"] = peak_rss_mib()
    record["load_average_end"] = list(os.getloadavg())
    record["case_s"] = round(time.perf_counter() - started, 1)
    return record


def machine() -> dict:
    """Describe the machine and the versions the numbers belong to."""
    import jax
    import jaxlib

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or None
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "platform": platform.platform(),
        "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "numpy": np.__version__, "faiss": faiss_version, "devices": [str(d) for d in jax.devices()],
        "git_commit": commit, "git_dirty": bool(changed),
    }


# --- the report -----------------------------------------------------------------------------------


def _seconds(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _ratio(value, reference) -> str:
    if value is None or not reference:
        return "n/a"
    return f"{value / reference:.2f}x"


def render_report(payload: dict) -> str:
    """Return docs/benchmarks.md for a benchmark.json payload."""
    m, cases = payload["machine"], payload["cases"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python experiments/benchmark.py` (conf/benchmark.yaml) from "
        f"`{payload.get('source', 'benchmark.json')}`, a copy of the run's benchmark.json. Rerun it, or pass "
        "`report_from=` a benchmark.json, to regenerate this file instead of editing it.",
        "",
        f"Run of {payload['date']} at commit `{m['git_commit']}`"
        f"{' with uncommitted changes to tracked files' if m.get('git_dirty') else ''}, "
        f"{payload['total_s'] / 60:.1f} minutes in all.",
        "",
        "## Machine",
        "",
        "| CPU | cores | memory | Python | jax / jaxlib | NumPy | faiss |",
        "|---|---|---|---|---|---|---|",
        f"| {m['cpu']} | {m['cores']} | {m['memory_gib']} GiB | {m['python']} | {m['jax']} / {m['jaxlib']} "
        f"| {m['numpy']} | {m['faiss'] or 'not installed'} |",
        "",
        "The machine is shared with other jobs: the load average at the start and end of each case is in",
        "the table below. Ratios compare numbers measured in the same run, which the load affects alike.",
        "",
        "## Cases",
        "",
        "Synthetic CLIP-like embeddings (experiments/synthetic.py): an anisotropic content spectrum, a",
        "modality gap between captions (queries) and images (gallery), and 20 hub images. Every method",
        "gets a query bank and a gallery bank of `bank` rows.",
        "",
        "| case | queries | gallery | bank | d | K | memory-mapped | query block | gallery block | timed runs | "
        "matched / random cosine | load average | case time | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in cases.items():
        c = r["case"]
        load = f"{r['load_average_start'][0]:.1f} / {r['load_average_end'][0]:.1f}"
        lines.append(
            f"| {name} | {c['n_queries']:,} | {c['n_gallery']:,} | {c['n_bank']:,} | {c['dim']} | {c['top_k']} "
            f"| {'yes' if c['memmap'] else 'no'} | {c['block_size']} | {c['gallery_block_size'] or 'whole'} "
            f"| {c['repeats'] or '1, less compile'} | {r['data']['matched']:.2f} / {r['data']['cross_modal']:.2f} "
            f"| {load} "
            f"| {r['case_s'] / 60:.1f} min | {r['peak_rss_mib'] / 1024:.1f} GiB |")
    lines += [
        "",
        "## Search and NIA",
        "",
        "Seconds (median), then the ratio to the GEMM floor (the faster of NumPy's and JAX's bare",
        "similarity products over the same blocks) and, for the searches, to faiss `IndexFlatIP`.",
        "`topk` is the default path: `nia_jax.rerank` with the cosine method, end to end. `nia` is",
        "conf/method/nia.yaml (the library default, hubness term only); `nia_neighbour` its neighbour form",
        "(k = 10, softmax); `nia_numpy` the default NIA in plain NumPy (experiments/numpy_nia.py).",
        "",
        "| case | GEMM NumPy | GEMM JAX | top-K JAX | faiss | topk (default) | nia | nia_numpy | nia_neighbour |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in cases.items():
        floor, faiss_s = r["gemm_floor_s"], r.get("topk_faiss_s")

        def cell(key, vs_faiss=False):
            value = r.get(f"{key}_s")
            text = f"{_seconds(value)} s ({_ratio(value, floor)})"
            if vs_faiss and faiss_s:
                text += f", {_ratio(value, faiss_s)} faiss"
            return text

        lines.append(
            f"| {name} | {_seconds(r['gemm_numpy_s'])} s | {_seconds(r['gemm_jax_s'])} s "
            f"| {cell('topk_jax', True)} | {cell('topk_faiss')} | {cell('topk', True)} | {cell('nia')} "
            f"| {cell('nia_numpy')} | {cell('nia_neighbour')} |")
    lines += ["", "## Every re-ranker", "",
              "Seconds end to end (preparation included) and the ratio to the case's GEMM floor.", ""]
    names = list(cases)
    lines.append("| method | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for key in ["topk", "nia", "nia_neighbour", *ANCHORS]:
        row = []
        for name in names:
            r = cases[name]
            if key in r["skipped"]:
                row.append("skipped")
            elif key in r["errors"]:
                row.append("failed")
            else:
                value = r.get(f"{key}_s")
                row.append(f"{_seconds(value)} s ({_ratio(value, r['gemm_floor_s'])})")
        lines.append(f"| {'topk (cosine)' if key == 'topk' else key} | " + " | ".join(row) + " |")
    lines += ["", "Skipped or failed:", ""]
    for name, r in cases.items():
        for key, reason in {**r["skipped"], **r["errors"]}.items():
            lines.append(f"* {name}, {key}: {reason}")
    lines += ["", "## Compilation", "",
              "Seconds of tracing, lowering and XLA compilation in each measurement's first run (not in the",
              "times above). Hyperparameters are traced, so a sweep over them compiles once (tests/test_scale.py,",
              "`test_sweep_compiles_once`).", "",
              "| case | " + " | ".join(["topk", "nia", "nia_neighbour", "nnn", "sinkhorn", "kreciprocal"]) + " |",
              "|---|" + "---|" * 6]
    for name, r in cases.items():
        values = [r["compile_s"].get(key) for key in ("topk", "nia", "nia_neighbour", "nnn", "sinkhorn",
                                                      "kreciprocal")]
        lines.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.1f}" for v in values) + " |")
    lines += ["", "## Targets", ""] + _targets(cases) + ["", *NOTES]
    return "\n".join(lines).rstrip() + "\n"


def _targets(cases: dict) -> list[str]:
    out = []
    coco = cases.get("coco5k")
    if coco:
        ratio = coco["nia_s"] / coco["gemm_floor_s"] if coco.get("nia_s") else None
        verdict = "met" if ratio is not None and ratio <= 3 else "not met"
        out.append(f"* NIA end to end at coco5k at most 3x the GEMM floor: {verdict} "
                   f"({_ratio(coco.get('nia_s'), coco['gemm_floor_s'])}).")
    for name, r in cases.items():
        if r.get("topk_faiss_s") and r.get("topk_s"):
            verdict = "met" if r["topk_s"] <= r["topk_faiss_s"] else "not met"
            out.append(f"* {name}: default top-K path, `rerank` with faiss under `search_backend: auto` "
                       f"({_seconds(r['topk_s'])} s), no slower than faiss alone ({_seconds(r['topk_faiss_s'])} s): "
                       f"{verdict} ({_ratio(r['topk_s'], r['topk_faiss_s'])}). The JAX search takes "
                       f"{_ratio(r.get('topk_jax_s'), r['topk_faiss_s'])} faiss's time.")
    for name, r in cases.items():
        if r.get("nia_s") and r.get("nia_numpy_s"):
            verdict = "met" if r["nia_s"] < r["nia_numpy_s"] else "not met"
            out.append(f"* {name}: NIA faster than NumPy NIA: {verdict} "
                       f"({r['nia_numpy_s'] / r['nia_s']:.1f}x faster).")
    # NOTE: the anchors have no timed NumPy form, so that target stays unmeasured.
    out.append("* NIA faster than every anchor's NumPy form: not measured. The anchors' NumPy forms in "
               "tests/reference_anchors.py are float64 test references that loop in Python over items "
               "and sets, so their times would not be a fair baseline, and no vectorised NumPy anchors exist.")
    if "g1m" in cases:
        g1m = cases["g1m"]["case"]
        rss = cases["g1m"]["peak_rss_mib"] / 1024
        line = (f"* g1m within 24 GiB: {'met' if rss <= 24 else 'not met'} (peak RSS {rss:.1f} GiB "
                f"at {g1m['n_queries']:,} queries, a {g1m['n_bank']:,}-row bank).")
        if g1m["n_queries"] < 10_000:
            # Estimate, not a run: queries add only the (n_queries, K) output to memory,
            # 8 MB at 10,000 x 100, so more queries cost time rather than memory.
            line += " The 10,000-query size was not run."
        out.append(line)
    return out


# --- main -------------------------------------------------------------------------------------------


NOTES = [
    "## Notes",
    "",
    "* Times are wall-clock seconds on a machine whose two cores other jobs share, so single numbers",
    "  move by tens of percent between runs (the load average is in the case table); compare ratios",
    "  within one run.",
    "* `topk` and every method run `nia_jax.rerank` end to end, so they include validating and",
    "  normalising the inputs, which the bare searches (`topk_jax`, `faiss`) also do for their own",
    "  inputs. With faiss under it, the default path adds the JAX re-scoring blocks. For a",
    "  memory-mapped gallery it also loads the whole gallery into memory and onto the JAX device,",
    "  because the re-rankers score candidates against it, while faiss alone streams the file into",
    "  its index. At g1m that is most of the gap to faiss. Profiled by hand after the 2026-12-05",
    "  run on the same data, `rerank` spent 12.6 s in faiss's search and 6.3 s loading and",
    "  validating the 10^6 rows (`nia_jax.search.load_rows`). It spent 1.8 s copying them between",
    "  NumPy and JAX and 1.3 s adding them to the index. At g1m each number is a single run.",
    "* g1m is reduced from 10,000 queries to 2,000 and from a 5,000-row bank to 1,000 rows, so that",
    "  it runs in about 10 minutes here. Every bank method codes the 10^6 gallery items over the",
    "  bank, and every method searches the 10^6 items for each query. At the full sizes the case",
    "  would take roughly 30 to 40 minutes, an estimate from scaling each method's search time by",
    "  the queries and its coding time by the bank. Its measurements run once, less compilation.",
    "* The JAX search computes every score in products of exactly 512 gallery columns",
    "  (`nia_jax.kernels.similarity.TILE`) so that scores do not depend on block sizes. `lax.top_k`",
    "  on XLA:CPU runs on one core, about 30 us per row of 5,000 scores at K = 100, which is most of",
    "  the gap between the search and the GEMM floor. faiss's search uses both cores, and the",
    "  default `search_backend: auto` uses faiss on CPU (docs/scaling.md).",
    "* NIA's default configuration (hubness term only) costs the search plus one coding of the",
    "  gallery over the query bank. Its neighbour form also needs each query's kNN over the query",
    "  bank: one more product of the query block with the bank, here as large as the coco5k",
    "  gallery. It also needs two products of d numbers per candidate, so its floor is about four",
    "  GEMM-floor units at coco5k before any top-K work.",
]


def write_report(payload: dict, path: Path) -> None:
    """Write the report and, beside it, a copy of the results it comes from (``<name>.json``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    copy = path.with_suffix(".json")
    payload = {**payload, "source": str(copy.relative_to(ROOT)) if copy.is_relative_to(ROOT) else str(copy)}
    common.write_json_atomic(copy, payload)
    path.write_text(render_report(payload))
    print(f"report: {path} (results: {copy})")


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    if cfg.report_from is not None:
        source = Path(hydra.utils.to_absolute_path(cfg.report_from))
        payload = json.loads(source.read_text())
        docs = DOCS_PAGE if cfg.docs == "auto" else cfg.docs
        if docs is not None:
            write_report(payload, ROOT / docs)
        return
    from tqdm import tqdm

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    names = list(cfg.cases) if cfg.case == "all" else [cfg.case]
    unknown = sorted(set(names) - set(cfg.cases))
    if unknown:
        raise SystemExit(f"case: unknown case(s) {unknown}; available: {sorted(cfg.cases)} or all.")
    clock = CompileClock()
    payload = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
               "config": OmegaConf.to_container(cfg, resolve=True), "cases": {}, "notes": NOTES,
               "source": str(run_dir.relative_to(ROOT) / "benchmark.json") if run_dir.is_relative_to(ROOT)
               else str(run_dir / "benchmark.json")}
    started = time.perf_counter()
    steps = len(names) * (7 + 1 + len(ANCHORS))
    with tqdm(total=steps, desc="benchmark", file=sys.stderr) as progress:
        for name in names:
            case = OmegaConf.to_object(cfg.cases[name])
            payload["cases"][name] = run_case(name, case, cfg, clock, progress)
            payload["total_s"] = round(time.perf_counter() - started, 1)
            common.write_json_atomic(run_dir / "benchmark.json", payload)
    print(f"results: {run_dir / 'benchmark.json'} ({payload['total_s'] / 60:.1f} minutes)")
    docs = cfg.docs
    if docs == "auto":
        # The committed page contains every case of one run, so one case alone must not replace it.
        docs = DOCS_PAGE if cfg.case == "all" else None
        if docs is None:
            print(f"case={cfg.case} runs one case, so docs/benchmarks.md was left unchanged. Pass "
                  f"docs=<path> to write a report of this run, or report_from={run_dir / 'benchmark.json'}.")
    if docs is not None:
        write_report(payload, ROOT / docs)


if __name__ == "__main__":
    common.check_command_line("benchmark")
    main()
