"""Flickr30K 1K test split (Karpathy), for embeddings that users bring.

1,000 images and 5,000 captions, five per image: caption row i belongs to
image row i // 5. The shipped ids (``files/f30k_karpathy_test``, see its
PROVENANCE.md) let users check their row order: ``image_ids`` may hold the
image's index in the Karpathy ``dataset_flickr30k.json`` list, its file name
(``1007129816.jpg``) or its Flickr photo id (``1007129816``).
"""

from __future__ import annotations

import functools
import logging
from importlib import resources

import numpy as np

from nia_jax.data.external import EmbeddingFiles, check_ids, check_split, load_modalities, make_task
from nia_jax.data.io import load_ids
from nia_jax.data.task import RetrievalTask
from nia_jax.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

NAME = "f30k1k"
FOLDER = "f30k_karpathy_test"
N_IMAGES = 1000
N_CAPTIONS = 5000


def data_dir():
    """Return the folder of the shipped files (a ``Traversable``)."""
    return resources.files("nia_jax.data") / "files" / FOLDER


@functools.cache
def caption_image_index() -> np.ndarray:
    """Return, per caption row, its image's index in the Karpathy Flickr30K list (int64, 5,000)."""
    array = np.array([int(x) for x in (data_dir() / "test_ids.txt").read_text().split()], dtype=np.int64)
    array.setflags(write=False)
    return array


@functools.cache
def image_names() -> np.ndarray:
    """Return the file name of each of the 1,000 gallery images."""
    return np.array((data_dir() / "derived_test_image_names.txt").read_text().split())


def _check_image_ids(path: str) -> None:
    user_ids = load_ids(path)
    shipped = f"{FOLDER}/test_ids.txt (every fifth line) and derived_test_image_names.txt in the nia_jax package"
    if user_ids.dtype.kind == "i":
        index = caption_image_index()[::5]
        photo = np.array([int(n.split(".")[0]) for n in image_names()], dtype=np.int64)
        # Karpathy list indices stay below 31,014; Flickr photo ids are far larger.
        expected = index if user_ids.size and user_ids.max() < 31014 else photo
        check_ids("image", path, user_ids, expected, shipped=shipped)
    else:
        names = np.array([str(n) if "." in str(n) else f"{n}.jpg" for n in user_ids])
        check_ids("image", path, names, image_names(), shipped=shipped)


def load_tasks(files: EmbeddingFiles, protocol: str, *, split: str = "test") -> dict[str, RetrievalTask]:
    """Build the t2i and i2t tasks of the Flickr30K 1K test split."""
    check_split(NAME, split)
    if files.extended_metrics:
        raise ConfigError(f"{NAME}: dataset.extended_metrics (ECCV Caption, CxC) apply to coco5k only.")
    for key in ("ground_truth_t2i", "ground_truth_i2t", "caption_ids"):
        if getattr(files, key) is not None:
            raise ConfigError(f"{NAME}: dataset.{key} does not apply; the ground truth is shipped (five captions "
                              "per image, caption row i belongs to image row i // 5).")

    mods = load_modalities(NAME, files, protocol)
    if mods.n_images != N_IMAGES or mods.n_texts != N_CAPTIONS:
        hint = ""
        if mods.scored and mods.scores_t2i.shape == (N_IMAGES, N_CAPTIONS):
            hint = " The matrix looks transposed: rows must be captions, columns images."
        elif not mods.scored and (mods.images.shape[1] == N_IMAGES or mods.texts.shape[1] == N_CAPTIONS):
            hint = " An array looks transposed: save embeddings as (n, d)."
        raise InputError(f"{NAME}: got {mods.describe()}; Flickr30K 1K test needs {N_IMAGES:,} images and "
                         f"{N_CAPTIONS:,} captions (five per image).{hint}")
    if files.image_ids is not None:
        _check_image_ids(files.image_ids)
    if files.caption_image_ids is not None:
        user_ids = load_ids(files.caption_image_ids)
        check_ids("caption image", files.caption_image_ids, user_ids, caption_image_index(),
                  shipped=f"{FOLDER}/test_ids.txt in the nia_jax package")

    t2i = np.arange(N_CAPTIONS) // 5
    i2t = np.arange(N_CAPTIONS).reshape(N_IMAGES, 5)
    logger.info("%s: %s, the Flickr30K 1K test split, protocol=%s.", NAME, mods.describe(), protocol)
    return {
        "t2i": make_task("t2i", mods, t2i, protocol=protocol, split=split, dataset=NAME),
        "i2t": make_task("i2t", mods, i2t, protocol=protocol, split=split, dataset=NAME),
    }
