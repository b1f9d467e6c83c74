"""Shared parts of the Hydra runners: data, W&B, results files and tables.

The library (``nia_jax``) imports neither Hydra nor W&B, so this module connects
them to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from omegaconf import DictConfig, OmegaConf

import nia_jax
from nia_jax.data import coco500
from nia_jax.data.external import EXTERNAL, EmbeddingFiles, load_external
from nia_jax.data.task import PROTOCOLS, FoldedTask, RetrievalTask
from nia_jax.errors import ConfigError, did_you_mean

log = logging.getLogger("nia_jax.experiments")
# JAX logs at INFO that it found no TPU on every start; Hydra shows INFO, so quieten it.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DATASETS = ("coco500_clip_vitb16",) + EXTERNAL
LOGGER_MODES = ("offline", "online", "disabled")
# DatasetConfig keys that name user files; only the external data sets read them.
FILE_KEYS = tuple(f.name for f in dataclasses.fields(EmbeddingFiles) if f.name not in ("dim", "norm_policy"))


def load_tasks(cfg: DictConfig) -> dict[str, RetrievalTask | FoldedTask]:
    """Build the t2i and i2t tasks named by the dataset and protocol configs.

    coco1k gives a FoldedTask per direction; nia_jax.evaluate averages its folds.
    """
    check_choice("dataset.name", cfg.dataset.name, DATASETS)
    check_choice("protocol.name", cfg.protocol.name, PROTOCOLS)
    if cfg.dataset.name == coco500.NAME:
        check_choice("dataset.split", cfg.dataset.split, coco500.SPLITS)
        check_choice("dataset.variant", cfg.dataset.variant, tuple(coco500.VARIANTS))
        set_keys = [k for k in FILE_KEYS if k in cfg.dataset.keys() and not OmegaConf.is_missing(cfg.dataset, k)
                    and cfg.dataset[k] not in (None, False, [])]
        if set_keys:
            raise ConfigError(f"{coco500.NAME} ships its embeddings; {['dataset.' + k for k in set_keys]} apply to "
                              f"the data sets {EXTERNAL}.")
        return coco500.load_tasks(cfg.dataset.split, cfg.protocol.name, variant=cfg.dataset.variant,
                                  seed=cfg.dataset.seed)
    return load_external(cfg.dataset.name, embedding_files(cfg), cfg.protocol.name, split=cfg.dataset.split)


def embedding_files(cfg: DictConfig) -> EmbeddingFiles:
    """Turn the dataset and encoder configs into the library's EmbeddingFiles."""
    missing = [k for k in FILE_KEYS if k in cfg.dataset.keys() and OmegaConf.is_missing(cfg.dataset, k)]
    if missing:
        raise ConfigError(
            f"{cfg.dataset.name}: set {', '.join('dataset.' + k + '=PATH' for k in missing)} (your model's "
            "embeddings), or set them to null and give dataset.similarity=PATH (a score matrix). See docs/datasets.md."
        )
    values = {k: cfg.dataset[k] for k in FILE_KEYS if k in cfg.dataset.keys()}
    values["extended_metrics"] = tuple(values.get("extended_metrics") or ())
    encoder = cfg.get("encoder") or {}
    values["dim"] = encoder.get("dim")
    values["norm_policy"] = norm_policy(encoder)
    return EmbeddingFiles(**values).resolve(encoder.get("embeddings_dir"))


def norm_policy(encoder) -> str:
    """Return what the loaders do with rows that are not unit-norm: warn, normalise or reject.

    ``encoder.reject_unnormalised`` selects reject; otherwise ``encoder.normalised``
    (rows are expected to be unit-norm) selects warn, and false selects normalise.
    """
    normalised = encoder.get("normalised", True)
    if not encoder.get("reject_unnormalised", False):
        return "warn" if normalised else "normalise"
    if not normalised:
        raise ConfigError("encoder.reject_unnormalised=true contradicts encoder.normalised=false (rows are not "
                          "expected to be unit-norm). Set encoder.normalised=true or encoder.reject_unnormalised=false.")
    return "reject"


def check_choice(key: str, value, choices) -> None:
    """Raise ConfigError naming ``key`` and the closest choice when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}.{did_you_mean(value, choices)} "
                          f"Expected one of: {', '.join(choices)}.")


def check_command_line(config_name: str, argv: list[str] | None = None, config_dir: str | Path = CONF_DIR) -> None:
    """Exit with status 1 and a one-line hint when the command line misspells a key or option.

    A runner calls this before its ``hydra.main`` function. It composes the
    config once with Hydra's compose API. When that fails on an unknown key, an
    unknown config group option or a value of the wrong type, it prints
    "ERROR: ... Did you mean ...?" to stderr and exits. Hydra's own messages
    for these cases name no close match and suggest ``+key=value``, which a
    structured config rejects anyway. ``+key=value`` for a key that the schema
    lacks is reported the same way. Any other failure, and command lines the
    check cannot reproduce (``--config-dir``, ``--config-path``, interval
    sweeps), are left to Hydra, which composes the config again and reports them.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if (args.help or args.hydra_help or args.shell_completion or args.experimental_rerun or args.config_dir
            or args.config_path):
        return
    try:
        overrides = [_first_sweep_value(o) for o in OverridesParser.create().parse_overrides(args.overrides)]
    except HydraException:
        return  # a malformed override or an interval sweep; Hydra reports or runs it
    # "+topk=5" adds a key that no runner reads, so the run would silently use top_k=100.
    # Composing without the "+" shows whether the key is unknown. A "+" before a config
    # group (+experiment=...) fails differently there and is left alone; "++" is kept.
    plain = [o[1:] if o.startswith("+") and not o.startswith("++") else o for o in overrides]
    for attempt, note in ((overrides, ""), (plain, " A leading + adds a key that the run does not read.")):
        try:
            with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
                compose(args.config_name or config_name, overrides=attempt)
        except Exception as exc:  # Hydra and OmegaConf raise many types; explain_config_error picks the known ones.
            message = explain_config_error(exc)
            if message is None:
                return
            if attempt is plain and "unknown config key" not in message:
                return
            print(f"ERROR: {message}{note}", file=sys.stderr)
            sys.exit(1)
        if plain == overrides:
            return


def _first_sweep_value(override) -> str:
    """Return the override as key=value, with a sweep (a,b,c or range) replaced by its first value."""
    if not override.is_sweep_override():
        return override.input_line
    first = next(iter(override.sweep_string_iterator()))
    return f"{override.get_key_element()}={first}"


def explain_config_error(exc: BaseException) -> str | None:
    """Return a one-line message with the closest valid name for a Hydra composition error, or None.

    Three errors get a message: an unknown key (``topk=5``, ``method.kk=3``),
    an unknown config group option (``method=nai``) and a value of the wrong
    type (``top_k=ten``). Any other error returns None.
    """
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for error in chain:
        if isinstance(error, MissingConfigException) and error.missing_cfg_file and "/" in error.missing_cfg_file:
            group, _, option = error.missing_cfg_file.rpartition("/")
            options = [o for o in (error.options or []) if not o.endswith("_schema")]
            return (f"{group}={option}: config group {group!r} has no option {option!r}."
                    f"{did_you_mean(option, options)} Available: {', '.join(options)}.")
        if isinstance(error, (ConfigAttributeError, ConfigKeyError)) and error.full_key:
            prefix = error.full_key.rpartition(".")[0]
            keys = _schema_fields(error.object_type)
            suggestions = [f"{prefix}.{k}" if prefix else k for k in keys]
            wanted = f"{prefix}.{error.key}" if prefix else str(error.key)
            listing = f" Valid keys{' under ' + prefix if prefix else ''}: {', '.join(keys)}." if keys else ""
            return f"{error.full_key}: unknown config key.{did_you_mean(wanted, suggestions)}{listing}"
        if isinstance(error, ValidationError) and error.full_key:
            reason = str(error.msg).splitlines()[0]
            default = _schema_fields(error.object_type).get(error.key, dataclasses.MISSING)
            example = ("" if default in (dataclasses.MISSING, "???", None)
                       else f" Type a value like {error.full_key}={default} (the default).")
            return f"{error.full_key}: invalid value: {reason}.{example}"
    # compare.py has methods, not a method group; Hydra's own message suggests +method=...
    if any(isinstance(e, ConfigCompositionException) and "Could not override 'method'" in str(e) for e in chain):
        return ("method: compare.py has no config group 'method' because it evaluates every method in "
                "conf/compare.yaml. Choose some with include=[nia,nnn] and change one with methods.nia.k=3.")
    return None


def _schema_fields(object_type) -> dict[str, Any]:
    """Return the field names of a structured-config class with their defaults ({} for anything else)."""
    if not (isinstance(object_type, type) and dataclasses.is_dataclass(object_type)):
        return {}
    fields = {}
    for f in dataclasses.fields(object_type):
        if f.default is not dataclasses.MISSING:
            fields[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = f.default_factory()
        else:
            fields[f.name] = dataclasses.MISSING
    return fields


def make_method(method_cfg: DictConfig) -> nia_jax.Reranker:
    """Build the re-ranker of a ``method`` config group entry and check its settings."""
    settings = OmegaConf.to_container(method_cfg, resolve=True)
    name = settings.pop("name")
    method = nia_jax.make_reranker(name, **settings)
    method.validate()
    return method


def apply_search_options(cfg: DictConfig) -> None:
    """Check the run's evaluation options and make its search options the defaults of ``nia_jax.rerank``."""
    from nia_jax.metrics import MIN_BOOT
    from nia_jax.ranking import set_search_defaults
    from nia_jax.search import SEARCH_BACKENDS

    check_choice("search_backend", cfg.search_backend, SEARCH_BACKENDS)
    # The runners report every recall with its interval, so they need resamples.
    if cfg.n_boot < MIN_BOOT:
        raise ConfigError(f"n_boot={cfg.n_boot}: the reported 95% intervals need at least {MIN_BOOT} "
                          "bootstrap resamples. Use n_boot=1000 (the default).")
    set_search_defaults(gallery_block_size=cfg.gallery_block_size, search_backend=cfg.search_backend)


def environment() -> dict[str, Any]:
    """Return versions, devices and the git commit, so a results file describes its run."""
    import jax

    commit, dirty = None, None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parent.parent
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
        commit = done.stdout.strip() or None
        if commit is not None:
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10, check=False)
            dirty = bool(status.stdout.strip())
    return {
        "nia_jax": nia_jax.__version__,
        "jax": jax.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "git_commit": commit,
        "git_dirty": dirty,  # True when tracked files differed from the commit
    }


def fail_run(exc: Exception) -> None:
    """Log a NiaError as one line and end the job with exit status 1.

    In a multirun the error is re-raised instead: Hydra records an ordinary
    exception as that job's failure and runs the remaining jobs, whereas
    SystemExit is not caught per job and would end the whole sweep.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    log.error("%s", exc)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise exc
    sys.exit(1)


def print_results(payload: dict, run_dir: Path) -> None:
    """Print the metric table, the ECCV Caption / CxC table where present, and the results path."""
    print(format_table(payload["methods"], payload["protocol"], payload["split"]))
    extended = format_extended_table(payload["methods"])
    if extended:
        print(extended)
    print(f"results: {run_dir / 'results.json'}")


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON to a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False)
            handle.write("\n")
        # mkstemp creates the file as 0600; give it the permissions of a normally created file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_ranks_atomic(path: Path, ranks: dict[str, "np.ndarray"]) -> None:
    """Write per-query ranks (``<method>/<direction>`` -> 1-based rank) to an .npz, atomically.

    Reports use them for paired bootstrap intervals between methods.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **{k: np.asarray(v, dtype=np.int64) for k, v in ranks.items()})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def method_entry(results: dict) -> dict:
    """Return the results.json entry of one method: its directions plus the six-recall rsum."""
    entry = {direction: r.metrics for direction, r in results.items()}
    if {"t2i", "i2t"} <= entry.keys():
        entry["rsum"] = round(entry["t2i"]["rsum"] + entry["i2t"]["rsum"], 4)
    return entry


def evaluate_methods(methods: dict, tasks: dict, cfg: DictConfig) -> tuple[dict, dict, dict]:
    """Evaluate each method once on every task and return (results.json entries, seconds, per-query ranks)."""
    entries, timing, ranks = {}, {}, {}
    for name, method in methods.items():
        log.info("evaluating %s", name)
        start = time.perf_counter()
        results = {d: nia_jax.evaluate(method, t, top_k=cfg.top_k, block_size=cfg.block_size,
                                       n_boot=cfg.n_boot, seed=cfg.seed) for d, t in tasks.items()}
        timing[name] = round(time.perf_counter() - start, 4)
        entries[name] = method_entry(results)
        ranks.update({f"{name}/{d}": r.per_query["rank"] for d, r in results.items()})
    return entries, timing, ranks


def format_table(methods: dict[str, dict], protocol: str, split: str) -> str:
    """Return a plain-text table: one row per method and direction, with 95% intervals."""
    header = f"{'method':<16} {'dir':<4} {'R@1 [95% CI]':<22} {'R@5':>6} {'R@10':>6} {'rsum':>7} {'medr':>5} {'mAP@R':>6}"
    lines = [f"protocol={protocol} split={split}", header, "-" * len(header)]
    for name, entry in methods.items():
        for direction in ("t2i", "i2t"):
            if direction not in entry:
                continue
            m = entry[direction]
            ci = m["R@1_ci95"]
            r1 = f"{m['R@1']:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"
            lines.append(f"{name:<16} {direction:<4} {r1:<22} {m['R@5']:>6.1f} {m['R@10']:>6.1f} "
                         f"{m['rsum']:>7.1f} {m['medr']:>5.0f} {m['mAP@R']:>6.1f}")
    return "\n".join(lines)


def mean_r1(entry: dict) -> float:
    """Return the mean R@1 over t2i and i2t of one method's results.json entry."""
    return round((entry["t2i"]["R@1"] + entry["i2t"]["R@1"]) / 2, 4)


def _multirun_job() -> tuple[str, int] | None:
    """Return (W&B group, job number) inside a Hydra multirun job, else None.

    The group names the sweep directory by its last two parts, for example
    ``nia_ablation-2025-01-31_12-00-00`` for ``multirun/nia_ablation/2025-01-31_12-00-00``,
    so every job of one multirun lands in one W&B group.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(hydra_cfg.sweep.dir)
    return "-".join(sweep_dir.parts[-2:]), int(hydra_cfg.job.num)


# Extended ground-truth columns of format_extended_table: (results key, column title).
EXTENDED_COLUMNS = (("eccv_mAP@R", "ECCV mAP@R"), ("eccv_R-Precision", "ECCV R-P"), ("eccv_R@1", "ECCV R@1"),
                    ("cxc_R@1", "CxC R@1"), ("cxc_R@5", "CxC R@5"), ("cxc_R@10", "CxC R@10"))


def format_extended_table(methods: dict[str, dict]) -> str:
    """Return the ECCV Caption / CxC table and the fold note, or "" when the results have neither."""
    lines = []
    folds = {e[d].get("n_folds") for e in methods.values() for d in ("t2i", "i2t") if d in e} - {None}
    if folds:
        lines.append(f"metrics above: means over {max(folds)} folds (per-fold values under 'folds' in results.json)")
    present = [(k, t) for k, t in EXTENDED_COLUMNS
               if any(k in e.get(d, {}) for e in methods.values() for d in ("t2i", "i2t"))]
    if present:
        header = f"{'method':<16} {'dir':<4} " + " ".join(f"{t:>10}" for _, t in present)
        lines += ["extended positives (ECCV Caption, CxC):", header, "-" * len(header)]
        for name, entry in methods.items():
            for direction in ("t2i", "i2t"):
                if direction in entry:
                    m = entry[direction]
                    cells = " ".join(f"{m[k]:>10.1f}" if k in m else f"{'-':>10}" for k, _ in present)
                    lines.append(f"{name:<16} {direction:<4} {cells}")
    return "\n".join(lines)


@contextlib.contextmanager
def wandb_run(cfg: DictConfig, run_dir: Path, *, name: str, tags: list[str]) -> Iterator[Any]:
    """Open a W&B run as the logger config sets it (offline by default) and always finish it.

    Yields None when ``logger.name`` is ``none``. In online mode an
    unreachable server makes ``wandb.init`` fail after ``logger.init_timeout``
    seconds; the run then continues offline with a warning. Inside a Hydra
    multirun, ``logger.group`` defaults to the sweep directory and the run name
    gets the job number.
    """
    if cfg.logger.name == "none" or cfg.logger.mode == "disabled":
        yield None
        return
    check_choice("logger.name", cfg.logger.name, ("wandb", "none"))
    check_choice("logger.mode", cfg.logger.mode, LOGGER_MODES)
    if not cfg.logger.init_timeout > 0:
        raise ConfigError(f"logger.init_timeout={cfg.logger.init_timeout} is out of range: expected seconds > 0, "
                          "for example logger.init_timeout=30.")
    import wandb

    os.environ["WANDB_MODE"] = cfg.logger.mode
    os.environ.setdefault("WANDB_SILENT", "true")
    group = cfg.logger.group
    job = _multirun_job()
    if job is not None:
        group = group or job[0]
        name = f"{name}-{job[1]}"
    init = dict(
        project=cfg.logger.project, entity=cfg.logger.entity, group=group,
        job_type=cfg.logger.job_type, tags=sorted(set(list(cfg.logger.tags) + tags)), name=name,
        dir=str(run_dir), config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous",
    )
    try:
        run = wandb.init(mode=cfg.logger.mode, settings=wandb.Settings(init_timeout=cfg.logger.init_timeout), **init)
    except Exception as exc:  # wandb raises its own CommError/UsageError types for network failures.
        if cfg.logger.mode != "online":
            raise
        # wandb's messages span several lines; the warning stays on one.
        reason = " ".join(str(exc).split())
        log.warning("W&B online init failed (%s); logging offline under %s instead.", reason, run_dir)
        os.environ["WANDB_MODE"] = "offline"
        run = wandb.init(mode="offline", **init)
    try:
        yield run
    except BaseException:
        run.finish(exit_code=1)  # the run shows as failed in W&B
        raise
    run.finish()


def log_metrics(run, methods: dict[str, dict]) -> None:
    """Log each method's metrics as ``<method>/<direction>/<metric>`` and the summary.

    Each method with both directions also gets ``<method>/mean_R@1``; rerank.py adds
    ``rsum``, the sweep objective.
    """
    if run is None:
        return
    flat = {}
    for method, entry in methods.items():
        for direction in ("t2i", "i2t"):
            for key, value in entry.get(direction, {}).items():
                if isinstance(value, (int, float)):
                    flat[f"{method}/{direction}/{key}"] = value
        if {"t2i", "i2t"} <= entry.keys():
            flat[f"{method}/mean_R@1"] = mean_r1(entry)
    run.log(flat)
    run.summary.update(flat)
