"""The embedded real data set: CLIP ViT-B/16 embeddings of 500 COCO val2017 pairs.

Source: Liang et al., "Mind the Gap: Understanding the Modality Gap in
Multi-modal Contrastive Representation Learning", NeurIPS 2022, repository
Weixin-Liang/Modality-Gap (MIT licence, shipped beside the files). Row i of
the images matches row i of the captions.

Splits: a fixed permutation (``numpy.random.default_rng(seed).permutation(500)``)
puts its first 250 pairs in ``dev`` and the other 250 in ``test``. Under the
inductive protocol the banks of a split are the other half's captions and
images; the gallery-modality bank is shuffled by a second seeded permutation
so that no method can use the row pairing of the two banks.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from nia_jax.data.task import PROTOCOLS, RetrievalTask
from nia_jax.errors import InputError

NAME = "coco500_clip_vitb16"
N_PAIRS = 500
SPLITS = ("dev", "test", "all")
VARIANTS = {"clip": "features_clip.npy", "random": "features_clip_random.npy"}


def data_dir():
    """Return the folder of the shipped files (a ``Traversable``)."""
    return resources.files("nia_jax.data") / "files" / NAME


def load_features(variant: str = "clip") -> tuple[np.ndarray, np.ndarray]:
    """Return (images, captions), each (500, 512) float32, as shipped.

    ``variant="random"`` gives the negative control: the same inputs through a
    randomly initialised CLIP, where retrieval is at chance level.
    """
    if variant not in VARIANTS:
        raise InputError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}.")
    with resources.as_file(data_dir() / VARIANTS[variant]) as path:
        features = np.load(path, allow_pickle=False)
    return features[0], features[1]


def load_metadata() -> list[dict]:
    """Return the 500 pair records ``{idx, image_id, coco_url, caption}``."""
    return json.loads((data_dir() / "derived_pairs_metadata.json").read_text())


def split_indices(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (evaluated pair indices, bank pair indices) of a split."""
    if split not in SPLITS:
        raise InputError(f"split: expected one of {SPLITS}, got {split!r}.")
    perm = np.random.default_rng(seed).permutation(N_PAIRS)
    dev, test = perm[: N_PAIRS // 2], perm[N_PAIRS // 2:]
    if split == "dev":
        return dev, test
    if split == "test":
        return test, dev
    return np.arange(N_PAIRS), np.empty(0, dtype=np.int64)


def load_tasks(split: str = "test", protocol: str = "inductive", *, variant: str = "clip",
               seed: int = 0) -> dict[str, RetrievalTask]:
    """Return the ``t2i`` and ``i2t`` tasks of one split of the embedded data.

    The ``all`` split (500 pairs) has no disjoint half, so it only supports the
    transductive protocol.
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}.")
    if split == "all" and protocol == "inductive":
        raise InputError("split='all' uses every pair, so no inductive bank is left; use dev or test, "
                         "or protocol='transductive'.")
    images, captions = load_features(variant)
    evaluated, bank = split_indices(split, seed)
    # The gallery-modality bank is shuffled apart from the query-modality bank.
    bank_shuffle = np.random.default_rng(seed + 1).permutation(bank.size)
    positives = np.arange(evaluated.size)
    name = NAME if variant == "clip" else f"{NAME}_random"
    tasks = {}
    for direction, (q, g) in {"t2i": (captions, images), "i2t": (images, captions)}.items():
        tasks[direction] = RetrievalTask.build(
            direction, q[evaluated], g[evaluated], positives, protocol=protocol,
            query_bank=q[bank] if protocol == "inductive" else None,
            gallery_bank=g[bank][bank_shuffle] if protocol == "inductive" else None,
            split=split, dataset=name, norm_policy="normalise",
        )
    return tasks
