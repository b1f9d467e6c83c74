"""Data sets whose embeddings (or scores) the user brings: COCO 5K/1K, Flickr30K 1K and custom.

The package ships the ground truth of the standard test splits (see
:mod:`nia_jax.data.coco5k` and :mod:`nia_jax.data.f30k`); the user gives the
files of their model in an :class:`EmbeddingFiles`. For ``custom`` the rows
of the two files are paired (row i of the images matches row i of the
texts) unless a ground-truth file gives other pairs.

Protocols for these data sets:

* ``inductive``: the banks are user files of samples disjoint from the
  evaluated ones (for example the training split, encoded by the same model),
  given as ``image_bank`` and ``text_bank``. Both are required.
* ``transductive``: the evaluated queries and gallery are the banks; no bank
  file is read.

A precomputed score matrix (``similarity``) replaces the embeddings for
models that only output scores; it supports ranking by those scores only
(the cosine method), under either protocol, and reads no bank.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from nia_jax.data.io import load_embeddings, load_ids, load_positives, load_scores
from nia_jax.data.task import PROTOCOLS, RetrievalTask
from nia_jax.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

EXTERNAL = ("coco5k", "coco1k", "f30k1k", "custom")
SPLIT = "test"


@dataclasses.dataclass(frozen=True)
class EmbeddingFiles:
    """The user's files for one external data set.

    Attributes:
      image_embeddings, text_embeddings: (n, d) embedding files (``.npy``,
        ``.npz`` or ``.safetensors``), float32, float16 or bfloat16.
      image_key, text_key: array names inside ``.npz``/``.safetensors`` files.
      similarity: a score matrix (n_texts, n_images) used instead of the
        embeddings: rows are captions, columns images. The i2t direction uses
        its transpose unless ``similarity_i2t`` (n_images, n_texts) is given.
      similarity_key: array name for both score files.
      image_bank, text_bank (+ ``_key``): bank embeddings for the inductive
        protocol, disjoint from the evaluated samples.
      mmap: memory-map ``.npy`` files (read rows from disk when used).
      ground_truth_t2i: custom only; for each caption row, its positive image
        rows (JSON or ``.npy``, see :func:`nia_jax.data.io.load_positives`).
      ground_truth_i2t: custom only; for each image row, its positive caption rows.
      image_ids: the id of each image row, checked against the shipped order.
      caption_image_ids: the image id of each caption row (COCO: checked
        against the shipped order; required for the 25,010-caption variant).
      caption_ids: COCO caption annotation ids of the caption rows (maps the
        ECCV Caption and CxC positives in the 25,010-caption variant).
      extended_metrics: extra ground truths to score (``eccv``, ``cxc``; COCO 5K only).
      dim: expected embedding dimension (None: not checked).
      norm_policy: what to do with rows that are not unit-norm (see
        :func:`nia_jax._validation.as_embeddings`).
    """

    image_embeddings: str | None = None
    text_embeddings: str | None = None
    image_key: str | None = None
    text_key: str | None = None
    similarity: str | None = None
    similarity_i2t: str | None = None
    similarity_key: str | None = None
    image_bank: str | None = None
    text_bank: str | None = None
    image_bank_key: str | None = None
    text_bank_key: str | None = None
    mmap: bool = False
    ground_truth_t2i: str | None = None
    ground_truth_i2t: str | None = None
    image_ids: str | None = None
    caption_image_ids: str | None = None
    caption_ids: str | None = None
    extended_metrics: tuple[str, ...] = ()
    dim: int | None = None
    norm_policy: str = "warn"

    def resolve(self, root: str | Path | None) -> "EmbeddingFiles":
        """Return a copy whose relative paths are taken from the folder ``root``."""
        if root is None:
            return self
        changes = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, str) and not field.name.endswith("_key") and field.name != "norm_policy":
                changes[field.name] = str(Path(root) / value)
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Modalities:
    """The loaded inputs: embeddings of both modalities, or score matrices of both directions."""

    images: np.ndarray | None = None
    texts: np.ndarray | None = None
    scores_t2i: np.ndarray | None = None  # (n_texts, n_images)
    scores_i2t: np.ndarray | None = None  # (n_images, n_texts)
    image_bank: np.ndarray | None = None
    text_bank: np.ndarray | None = None

    @property
    def scored(self) -> bool:
        return self.scores_t2i is not None

    @property
    def n_images(self) -> int:
        return self.scores_t2i.shape[1] if self.scored else self.images.shape[0]

    @property
    def n_texts(self) -> int:
        return self.scores_t2i.shape[0] if self.scored else self.texts.shape[0]

    def describe(self) -> str:
        if self.scored:
            return f"similarity matrix of shape {self.scores_t2i.shape} (captions x images)"
        return f"image embeddings {self.images.shape}, text embeddings {self.texts.shape}"


def check_split(dataset: str, split: str) -> None:
    """Raise ConfigError unless ``split`` is ``test``, the one split of an external data set."""
    if split != SPLIT:
        raise ConfigError(
            f"dataset.split: {dataset} is evaluated as one split, {SPLIT!r}, got {split!r}. "
            "Tune settings on another data set (for example coco500_clip_vitb16, which has a dev split), "
            "then evaluate them here."
        )


def load_modalities(dataset: str, files: EmbeddingFiles, protocol: str) -> Modalities:
    """Load embeddings or scores, and the banks the protocol needs, with their checks."""
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}.")

    embeddings = files.image_embeddings is not None or files.text_embeddings is not None
    if files.similarity is not None:
        if embeddings:
            raise ConfigError(f"{dataset}: give either dataset.similarity or the two embedding files, not both.")
        if files.image_bank or files.text_bank:
            logger.info("%s: bank files are not used with a similarity matrix.", dataset)
        t2i = load_scores(files.similarity, files.similarity_key, mmap=files.mmap)
        if files.similarity_i2t is not None:
            i2t = load_scores(files.similarity_i2t, files.similarity_key, mmap=files.mmap)
            if i2t.shape != t2i.shape[::-1]:
                raise InputError(
                    f"{files.similarity_i2t}: the i2t score matrix has shape {i2t.shape}; with "
                    f"{files.similarity} of shape {t2i.shape} (captions x images) it must be {t2i.shape[::-1]} "
                    "(images x captions)."
                )
        else:
            i2t = t2i.T
        return Modalities(scores_t2i=t2i, scores_i2t=i2t)

    if files.similarity_i2t is not None:
        raise ConfigError(f"{dataset}: dataset.similarity_i2t needs dataset.similarity (captions x images) as well.")
    missing = [k for k in ("image_embeddings", "text_embeddings") if getattr(files, k) is None]
    if missing:
        raise ConfigError(
            f"{dataset}: set {' and '.join('dataset.' + k for k in missing)} to your embedding file(s) "
            "(.npy, .npz or .safetensors), or dataset.similarity to a score matrix."
        )

    policy = files.norm_policy
    images = load_embeddings(files.image_embeddings, files.image_key, norm_policy=policy, mmap=files.mmap)
    texts = load_embeddings(files.text_embeddings, files.text_key, norm_policy=policy, mmap=files.mmap)
    if images.shape[1] != texts.shape[1]:
        hint = ""
        # A transposed matrix has as many rows as the other has columns, and usually fewer rows than columns.
        suspects = [which for which, this, other in (("image", images, texts), ("text", texts, images))
                    if this.shape[0] == other.shape[1] and this.shape[0] < this.shape[1]]
        if len(suspects) == 1:
            hint = f" The {suspects[0]} array looks transposed: save embeddings as (n, d), one row per sample."
        raise InputError(
            f"{files.image_embeddings} has shape {images.shape} and {files.text_embeddings} has shape "
            f"{texts.shape}: the embedding dimensions (columns) differ.{hint} Use both modalities from one model."
        )
    if files.dim is not None and images.shape[1] != files.dim:
        hint = " It looks transposed: save it as (n, d)." if images.shape[0] == files.dim else ""
        raise InputError(
            f"{files.image_embeddings}: embeddings have {images.shape[1]} columns (shape {images.shape}), but the "
            f"encoder config says dim={files.dim}.{hint} Set encoder.dim (and encoder.model) to the model that "
            "produced the files, or encoder.dim=null to skip the check."
        )

    image_bank = text_bank = None
    if protocol == "inductive":
        if files.image_bank is None or files.text_bank is None:
            raise ConfigError(
                f"{dataset}: protocol=inductive needs bank files disjoint from the evaluated samples: "
                "dataset.image_bank=... and dataset.text_bank=... (for example embeddings of the training split's "
                "images and captions, from the same model). Without them run protocol=transductive, which uses the "
                "evaluated queries and gallery themselves as banks."
            )
        image_bank = load_embeddings(files.image_bank, files.image_bank_key, dim=images.shape[1],
                                     norm_policy=policy, mmap=files.mmap)
        text_bank = load_embeddings(files.text_bank, files.text_bank_key, dim=images.shape[1],
                                    norm_policy=policy, mmap=files.mmap)
        _warn_shared_rows(dataset, "image_bank", image_bank, images)
        _warn_shared_rows(dataset, "text_bank", text_bank, texts)
    elif files.image_bank or files.text_bank:
        logger.info("%s: protocol=transductive uses the evaluated samples as banks; the bank files are not read.",
                    dataset)
    return Modalities(images, texts, image_bank=image_bank, text_bank=text_bank)


def _warn_shared_rows(dataset: str, name: str, bank: np.ndarray, evaluated: np.ndarray) -> None:
    """Warn when bank rows equal evaluated rows: a sign that the banks are not disjoint."""
    shared = len(_row_keys(bank) & _row_keys(evaluated))
    if shared:
        logger.warning(
            "%s: %d row(s) of dataset.%s equal evaluated rows. Inductive banks must not contain the evaluated "
            "samples (identical captions can explain a few).", dataset, shared, name)


def _row_keys(array: np.ndarray, chunk: int = 8192) -> set[bytes]:
    """Return the normalised rows (rounded to 5 decimals) as bytes, reading ``chunk`` rows at a time."""
    keys: set[bytes] = set()
    for start in range(0, array.shape[0], chunk):
        block = np.asarray(array[start:start + chunk], dtype=np.float32)
        block = (block / np.linalg.norm(block, axis=1, keepdims=True)).round(5) + 0.0  # + 0.0 folds -0.0 into 0.0
        keys.update(row.tobytes() for row in block)
    return keys


def make_task(direction: str, mods: Modalities, positives, *, query_rows=None, gallery_rows=None,
              protocol: str, split: str, dataset: str) -> RetrievalTask:
    """Build one direction from the loaded inputs, optionally on a subset of rows.

    ``positives`` are gallery indices local to ``gallery_rows``. Rows are
    copied (to float32, normalised) only here, for the rows used.
    """
    def take(array, rows):
        return array if rows is None else array[np.asarray(rows)]

    if mods.scored:
        scores = mods.scores_t2i if direction == "t2i" else mods.scores_i2t
        if query_rows is not None or gallery_rows is not None:
            rows = np.arange(scores.shape[0]) if query_rows is None else np.asarray(query_rows)
            cols = np.arange(scores.shape[1]) if gallery_rows is None else np.asarray(gallery_rows)
            scores = np.asarray(scores[rows])[:, cols]
        return RetrievalTask.from_scores(direction, scores, positives, protocol=protocol, split=split,
                                         dataset=dataset)
    query, gallery = (mods.texts, mods.images) if direction == "t2i" else (mods.images, mods.texts)
    query_bank, gallery_bank = ((mods.text_bank, mods.image_bank) if direction == "t2i"
                                else (mods.image_bank, mods.text_bank))
    return RetrievalTask.build(
        direction, take(query, query_rows), take(gallery, gallery_rows), positives, protocol=protocol,
        query_bank=query_bank, gallery_bank=gallery_bank, split=split, dataset=dataset, norm_policy="normalise",
    )


def invert(lists: list[np.ndarray], n_targets: int) -> list[list[int]]:
    """Turn query -> positive lists into target -> query lists (targets without any stay empty)."""
    out: list[list[int]] = [[] for _ in range(n_targets)]
    for query, targets in enumerate(lists):
        for target in np.asarray(targets).tolist():
            if 0 <= target < n_targets:
                out[target].append(query)
    return out


def check_ids(kind: str, path: str, user_ids: np.ndarray, expected: np.ndarray, *, shipped: str) -> None:
    """Raise InputError unless the user's ids equal the shipped ids row by row."""
    if user_ids.shape != expected.shape:
        raise InputError(f"{path}: {user_ids.shape[0]} {kind} ids, but the split has {expected.shape[0]} rows.")
    if user_ids.dtype.kind != expected.dtype.kind:
        raise InputError(f"{path}: {kind} ids of type {user_ids.dtype} cannot be compared with the shipped "
                         f"{expected.dtype} ids ({shipped}).")
    differ = np.flatnonzero(user_ids != expected)
    if differ.size:
        row = int(differ[0])
        same_set = np.array_equal(np.sort(user_ids), np.sort(expected))
        hint = ("They are the same ids in another order: reorder your embedding rows (and ids) to the shipped order."
                if same_set else "They are not the ids of this split.")
        raise InputError(
            f"{path}: {kind} row order differs from the shipped split at row {row} "
            f"(got {user_ids[row]}, expected {expected[row]}, {differ.size} rows differ). {hint} "
            f"Shipped order: {shipped}."
        )


def load_custom(files: EmbeddingFiles, protocol: str, *, split: str = SPLIT,
                name: str = "custom") -> dict[str, RetrievalTask]:
    """Build the t2i and i2t tasks of a custom data set.

    Without ground-truth files the rows are paired: caption row i matches
    image row i, so both files need the same row count. With
    ``ground_truth_t2i`` (caption -> image rows) the i2t ground truth is its
    inverse, and images that no caption names are left out of the i2t
    queries (they stay in the t2i gallery); ``ground_truth_i2t`` works the
    other way round. With both files, each is used as given.
    """
    check_split(name, split)
    if files.extended_metrics:
        raise ConfigError(f"{name}: dataset.extended_metrics (ECCV Caption, CxC) apply to coco5k only.")
    for key in ("image_ids", "caption_image_ids", "caption_ids"):
        if getattr(files, key) is not None:
            raise ConfigError(f"{name}: dataset.{key} applies to coco5k, coco1k and f30k1k; custom data sets "
                              "take their ground truth from dataset.ground_truth_t2i / ground_truth_i2t.")
    mods = load_modalities(name, files, protocol)
    n_images, n_texts = mods.n_images, mods.n_texts
    t2i = None if files.ground_truth_t2i is None else load_positives(files.ground_truth_t2i)
    i2t = None if files.ground_truth_i2t is None else load_positives(files.ground_truth_i2t)
    if t2i is None and i2t is None:
        if n_images != n_texts:
            raise InputError(
                f"{name}: without a ground-truth file, caption row i is paired with image row i, so the row counts "
                f"must match; got {mods.describe()}. Give dataset.ground_truth_t2i=FILE (for each caption row, "
                "its positive image rows) or check that the matrix is not transposed."
            )
        t2i = [np.array([i]) for i in range(n_texts)]
        i2t = [np.array([i]) for i in range(n_images)]
    for label, lists, n_queries, n_gallery, path in (
            ("ground_truth_t2i", t2i, n_texts, n_images, files.ground_truth_t2i),
            ("ground_truth_i2t", i2t, n_images, n_texts, files.ground_truth_i2t)):
        if lists is not None and len(lists) != n_queries:
            raise InputError(f"{path}: {label} has {len(lists)} queries, but there are {n_queries} "
                             f"{'caption' if label.endswith('t2i') else 'image'} rows ({mods.describe()}).")
    if i2t is None:
        i2t = invert(t2i, n_images)
    if t2i is None:
        t2i = invert(i2t, n_texts)
    tasks = {}
    for direction, lists, n_gallery in (("t2i", t2i, n_images), ("i2t", i2t, n_texts)):
        rows = [i for i, p in enumerate(lists) if len(p)]
        if len(rows) < len(lists):
            logger.info("%s %s: %d of %d queries have no positive and are left out of this direction.",
                        name, direction, len(lists) - len(rows), len(lists))
        if not rows:
            raise InputError(f"{name} {direction}: no query has a positive; check the ground-truth file.")
        query_rows = None if len(rows) == len(lists) else rows
        tasks[direction] = make_task(direction, mods, [lists[i] for i in rows], query_rows=query_rows,
                                     protocol=protocol, split=split, dataset=name)
    logger.info("%s: %s; %d t2i and %d i2t queries, protocol=%s.", name, mods.describe(),
                tasks["t2i"].n_queries, tasks["i2t"].n_queries, protocol)
    return tasks


def load_external(name: str, files: EmbeddingFiles, protocol: str, *, split: str = SPLIT) -> dict:
    """Build the tasks of an external data set: ``{"t2i": task, "i2t": task}``.

    For ``coco1k`` each value is a :class:`nia_jax.data.task.FoldedTask`.
    """
    from nia_jax.data import coco5k, f30k

    if name in ("coco5k", "coco1k"):
        return coco5k.load_tasks(files, protocol, split=split, folds=name == "coco1k")
    if name == "f30k1k":
        return f30k.load_tasks(files, protocol, split=split)
    if name == "custom":
        return load_custom(files, protocol, split=split)
    raise ConfigError(f"unknown external data set {name!r}; expected one of {EXTERNAL}.")
