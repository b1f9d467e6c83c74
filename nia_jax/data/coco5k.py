"""COCO 5K test split (Karpathy) and its five 1K folds, for embeddings that users bring.

The package ships the split's ground truth in ``files/coco5k_karpathy_test``
(sources in its PROVENANCE.md). It contains the COCO image id of each of the
25,000 caption rows (five per image, image j owning rows 5j..5j+4), the
caption annotation ids of the same rows, and the ECCV Caption and CxC
extended positives.

Caption counts:

* 25,000 rows: the standard split, five captions per image.
* 25,010 rows: a variant that some toolkits produce by keeping every
  sentence of the Karpathy split file, where a few test images have a sixth
  caption. Which image a row belongs to cannot be inferred from the count, so
  the user gives the image id of each row (``caption_image_ids``). R@K on the
  variant is close to, but not the same as, the standard numbers (ten more t2i
  queries, ten more i2t positives).

Folds (``coco1k``): fold f holds images 1000f..1000f+999 and their captions;
each fold is ranked on its own gallery, its own transductive banks and its own
neighbours, and metrics are averaged over the five folds.

ECCV Caption and CxC positives are defined on the 5K split and scored only by
``coco5k``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from importlib import resources

import numpy as np

from nia_jax.data.external import (EmbeddingFiles, Modalities, check_ids, check_split, load_modalities,
                                   make_task)
from nia_jax.data.io import load_ids
from nia_jax.data.task import FoldedTask, RetrievalTask
from nia_jax.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

NAME = "coco5k"
FOLDS_NAME = "coco1k"
FOLDER = "coco5k_karpathy_test"
N_IMAGES = 5000
N_CAPTIONS = 25000
N_CAPTIONS_VARIANT = 25010
N_FOLDS = 5
# Extended ground truths and the metrics reported for each (as <name>_<metric>).
EXTENDED = {
    "eccv": ("R@1", "R@5", "R@10", "mAP@R", "R-Precision"),
    "cxc": ("R@1", "R@5", "R@10"),
}


def data_dir():
    """Return the folder of the shipped files (a ``Traversable``)."""
    return resources.files("nia_jax.data") / "files" / FOLDER


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@functools.cache
def caption_image_ids() -> np.ndarray:
    """Return the COCO image id of each of the 25,000 caption rows (int64, Karpathy test order)."""
    text = (data_dir() / "testall_ids.txt").read_text()
    return _read_only(np.array([int(line) for line in text.split()], dtype=np.int64))


@functools.cache
def image_ids() -> np.ndarray:
    """Return the COCO image id of each of the 5,000 gallery images (int64)."""
    return _read_only(caption_image_ids()[::5].copy())


@functools.cache
def caption_ids() -> np.ndarray:
    """Return the COCO caption annotation id of each of the 25,000 caption rows (int64)."""
    with resources.as_file(data_dir() / "coco_test_ids.npy") as path:
        return _read_only(np.load(path, allow_pickle=False).astype(np.int64))


@functools.cache
def extended_ground_truth(name: str) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Return (caption id -> image ids, image id -> caption ids) of ``eccv`` or ``cxc``."""
    if name not in EXTENDED:
        raise ConfigError(f"extended ground truth: expected one of {sorted(EXTENDED)}, got {name!r}.")
    out = []
    for kind in ("caption_to_image", "image_to_caption"):
        raw = json.loads((data_dir() / f"{name}_{kind}.json").read_text())
        out.append({int(k): [int(v) for v in values] for k, values in raw.items()})
    return out[0], out[1]


@dataclasses.dataclass(frozen=True)
class CaptionRows:
    """Mapping of the user's caption rows onto the split.

    Attributes:
      caption_image: the image row (0..4999) of each caption row.
      caption_ids: the COCO caption annotation id of each row, or None when unknown.
      variant: ``standard`` (25,000 rows) or ``25010``.
    """

    caption_image: np.ndarray
    caption_ids: np.ndarray | None
    variant: str


def _count_error(mods: Modalities) -> InputError:
    """Explain image and caption counts that do not fit the split."""
    expected = (f"COCO 5K test needs {N_IMAGES:,} images and {N_CAPTIONS:,} captions (five per image), or "
                f"{N_CAPTIONS_VARIANT:,} captions in the variant that keeps a sixth caption for a few images")
    if mods.scored:
        shape = mods.scores_t2i.shape
        hint = (" The matrix looks transposed: rows must be captions, columns images."
                if shape[0] == N_IMAGES and shape[1] in (N_CAPTIONS, N_CAPTIONS_VARIANT) else "")
        return InputError(f"dataset.similarity has shape {shape} (captions x images); {expected}.{hint}")
    hints = []
    if mods.images.shape[1] == N_IMAGES:
        hints.append("the image array looks transposed: save it as (5000, d)")
    if mods.texts.shape[1] in (N_CAPTIONS, N_CAPTIONS_VARIANT):
        hints.append("the text array looks transposed: save it as (n_captions, d)")
    if mods.images.shape[0] in (N_CAPTIONS, N_CAPTIONS_VARIANT) and mods.texts.shape[0] == N_IMAGES:
        hints.append("the image and text files look swapped")
    hint = (" Hint: " + "; ".join(hints) + ".") if hints else ""
    return InputError(f"got {mods.describe()}; {expected}.{hint}")


def resolve_rows(mods: Modalities, files: EmbeddingFiles) -> CaptionRows:
    """Check the row counts and, where ids are given, the row order; log which split was found."""
    if mods.n_images != N_IMAGES or mods.n_texts not in (N_CAPTIONS, N_CAPTIONS_VARIANT):
        raise _count_error(mods)
    shipped = f"{FOLDER}/testall_ids.txt in the nia_jax package (nia_jax.data.coco5k)"
    if files.image_ids is not None:
        check_ids("image", files.image_ids, load_ids(files.image_ids), image_ids(),
                  shipped=shipped + ", every fifth line")
    user_image_ids = None if files.caption_image_ids is None else load_ids(files.caption_image_ids)
    user_caption_ids = None if files.caption_ids is None else load_ids(files.caption_ids)
    if mods.n_texts == N_CAPTIONS:
        logger.info("coco5k: found %s caption rows, the standard COCO 5K test split (five captions per image).",
                    f"{N_CAPTIONS:,}")
        if user_image_ids is not None:
            check_ids("caption image", files.caption_image_ids, user_image_ids, caption_image_ids(), shipped=shipped)
        if user_caption_ids is not None:
            check_ids("caption annotation", files.caption_ids, user_caption_ids, caption_ids(),
                      shipped=f"{FOLDER}/coco_test_ids.npy in the nia_jax package")
        return CaptionRows(_read_only(np.arange(N_CAPTIONS) // 5), caption_ids(), "standard")
    return _resolve_variant(files, user_image_ids, user_caption_ids)


def _resolve_variant(files: EmbeddingFiles, user_image_ids, user_caption_ids) -> CaptionRows:
    """Map the rows of the 25,010-caption variant through the user's caption -> image id file."""
    if user_image_ids is None:
        raise InputError(
            f"found {N_CAPTIONS_VARIANT:,} caption rows: the COCO 5K variant that keeps every sentence of the "
            "Karpathy split file, where a few test images have a sixth caption. The standard split has "
            f"{N_CAPTIONS:,} rows, exactly five per image. With the extra rows the image of each row cannot be "
            "inferred, so give dataset.caption_image_ids=FILE (the COCO image id of each caption row, one per line, "
            "JSON list or .npy), or export five captions per image to get the standard split."
        )

    path = files.caption_image_ids
    if user_image_ids.shape != (N_CAPTIONS_VARIANT,) or user_image_ids.dtype.kind != "i":
        raise InputError(f"{path}: expected {N_CAPTIONS_VARIANT:,} integer image ids, one per caption row, got "
                         f"{user_image_ids.shape[0]:,} of type {user_image_ids.dtype}.")
    row_of_image = {int(i): r for r, i in enumerate(image_ids())}
    unknown = [int(i) for i in user_image_ids if int(i) not in row_of_image]
    if unknown:
        raise InputError(f"{path}: {len(unknown)} caption rows name images outside the COCO 5K test split "
                         f"(first: {unknown[:3]}).")

    caption_image = np.array([row_of_image[int(i)] for i in user_image_ids], dtype=np.int64)
    counts = np.bincount(caption_image, minlength=N_IMAGES)
    if counts.min() < 5:
        raise InputError(f"{path}: image {int(image_ids()[counts.argmin()])} has {counts.min()} caption rows; "
                         "every test image has at least five.")
    extra = np.flatnonzero(counts > 5)
    logger.info("coco5k: found %s caption rows, the variant where %d images keep more than five captions "
                "(image ids %s); scoring it with the caption -> image ids of %s. Its R@K are close to but not the "
                "same as those of the standard 25,000-caption split.", f"{N_CAPTIONS_VARIANT:,}", extra.size,
                image_ids()[extra][:10].tolist(), path)
    ann = None
    if user_caption_ids is not None:
        ann = _check_variant_caption_ids(files.caption_ids, user_caption_ids, caption_image)
    return CaptionRows(_read_only(caption_image), ann, "25010")


def _check_variant_caption_ids(path, user_ids: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Check the variant's caption annotation ids against the 25,000 shipped ones."""
    if (user_ids.shape != (N_CAPTIONS_VARIANT,) or user_ids.dtype.kind != "i"
            or np.unique(user_ids).size != user_ids.size):
        raise InputError(f"{path}: expected {N_CAPTIONS_VARIANT:,} distinct integer caption annotation ids.")
    row_of_caption = {int(c): r for r, c in enumerate(user_ids)}
    missing = [int(c) for c in caption_ids() if int(c) not in row_of_caption]
    if missing:
        raise InputError(f"{path}: {len(missing)} caption ids of the standard split are missing "
                         f"(first: {missing[:3]}); the variant holds all 25,000 plus the sixth captions.")
    rows = np.array([row_of_caption[int(c)] for c in caption_ids()])
    wrong = np.flatnonzero(caption_image[rows] != np.arange(N_CAPTIONS) // 5)
    if wrong.size:
        raise InputError(f"{path}: caption {int(caption_ids()[wrong[0]])} sits on a row whose image id "
                         "(dataset.caption_image_ids) is not its COCO image; the two id files disagree.")
    return _read_only(user_ids.astype(np.int64))


def ground_truth(rows: CaptionRows) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return (t2i positives: image row per caption, i2t positives: caption rows per image)."""
    order = np.argsort(rows.caption_image, kind="stable")
    bounds = np.searchsorted(rows.caption_image[order], np.arange(N_IMAGES + 1))
    return rows.caption_image, [order[bounds[i]:bounds[i + 1]] for i in range(N_IMAGES)]


def extended_positives(rows: CaptionRows, name: str) -> dict[str, tuple[np.ndarray, list[list[int]], np.ndarray]]:
    """Map an extended ground truth onto the rows: ``{direction: (query rows, positives, listed counts)}``.

    Listed positives absent from the rows (two ECCV captions are not among
    the 25,000) count in the listed totals but cannot be retrieved.
    """
    caption_to_image, image_to_caption = extended_ground_truth(name)
    row_of_caption = {int(c): r for r, c in enumerate(rows.caption_ids)}
    row_of_image = {int(i): r for r, i in enumerate(image_ids())}
    out = {}
    for direction, mapping, query_row, gallery_row in (
            ("t2i", caption_to_image, row_of_caption, row_of_image),
            ("i2t", image_to_caption, row_of_image, row_of_caption)):
        entries = []
        for query, listed in mapping.items():
            found = [gallery_row[g] for g in listed if g in gallery_row]
            if query in query_row and found:
                entries.append((query_row[query], found, len(listed)))
        entries.sort()
        absent = sum(n - len(f) for _, f, n in entries)
        if absent:
            logger.info("coco5k %s: %d positive(s) listed by %s are not among the rows; they count towards R.",
                        direction, absent, name)
        out[direction] = (np.array([e[0] for e in entries]), [e[1] for e in entries],
                          np.array([e[2] for e in entries]))
    return out


def load_tasks(files: EmbeddingFiles, protocol: str, *, split: str = "test",
               folds: bool = False) -> dict[str, RetrievalTask | FoldedTask]:
    """Build the COCO 5K tasks (``folds=False``) or the COCO 1K fold tasks (``folds=True``).

    Returns ``{"t2i": ..., "i2t": ...}``: RetrievalTasks with the extended
    ground truths named in ``files.extended_metrics``, or FoldedTasks of
    five folds.
    """
    name = FOLDS_NAME if folds else NAME
    check_split(name, split)
    if files.ground_truth_t2i is not None or files.ground_truth_i2t is not None:
        raise ConfigError(f"{name}: the ground truth is shipped with the package; dataset.ground_truth_t2i and "
                          "ground_truth_i2t apply to dataset=custom. Use dataset.caption_image_ids to map rows.")
    unknown = sorted(set(files.extended_metrics) - set(EXTENDED))
    if unknown:
        raise ConfigError(f"dataset.extended_metrics: unknown {unknown}; available: {sorted(EXTENDED)}.")
    if folds and files.extended_metrics:
        raise ConfigError(f"{name}: ECCV Caption and CxC are defined on the whole 5K split; set "
                          "dataset.extended_metrics=[] here and use dataset=coco5k for them.")
    mods = load_modalities(name, files, protocol)
    rows = resolve_rows(mods, files)
    t2i, i2t = ground_truth(rows)
    if folds:
        return _folded(mods, rows, protocol, split)
    tasks = {
        "t2i": make_task("t2i", mods, t2i, protocol=protocol, split=split, dataset=name),
        "i2t": make_task("i2t", mods, i2t, protocol=protocol, split=split, dataset=name),
    }
    for extra in files.extended_metrics:
        if rows.caption_ids is None:
            logger.warning("coco5k: %s metrics skipped: the caption annotation ids of the %s-row variant are "
                           "unknown; give dataset.caption_ids=FILE to score them.", extra, f"{rows.caption_image.size:,}")
            continue
        for direction, (query_rows, positives, listed) in extended_positives(rows, extra).items():
            tasks[direction] = tasks[direction].with_extended(extra, query_rows, positives, listed,
                                                              metrics=EXTENDED[extra])
    return tasks


def fold_rows(rows: CaptionRows) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return, per fold, (image rows, caption rows): 1,000 consecutive images and their captions."""
    size = N_IMAGES // N_FOLDS
    out = []
    for f in range(N_FOLDS):
        images = np.arange(f * size, (f + 1) * size)
        captions = np.flatnonzero((rows.caption_image >= f * size) & (rows.caption_image < (f + 1) * size))
        out.append((images, captions))
    return out


def _folded(mods: Modalities, rows: CaptionRows, protocol: str, split: str) -> dict[str, FoldedTask]:
    per_direction: dict[str, list] = {"t2i": [], "i2t": []}
    for f, (images, captions) in enumerate(fold_rows(rows)):
        local_image = rows.caption_image[captions] - images[0]
        t2i = local_image
        order = np.argsort(local_image, kind="stable")
        bounds = np.searchsorted(local_image[order], np.arange(images.size + 1))
        i2t = [order[bounds[i]:bounds[i + 1]] for i in range(images.size)]
        fold_split = f"{split}/fold{f}"
        per_direction["t2i"].append((make_task("t2i", mods, t2i, query_rows=captions, gallery_rows=images,
                                               protocol=protocol, split=fold_split, dataset=FOLDS_NAME), captions))
        per_direction["i2t"].append((make_task("i2t", mods, i2t, query_rows=images, gallery_rows=captions,
                                               protocol=protocol, split=fold_split, dataset=FOLDS_NAME), images))
    return {d: FoldedTask(d, tuple(t for t, _ in items), tuple(r for _, r in items), split, FOLDS_NAME, protocol)
            for d, items in per_direction.items()}
