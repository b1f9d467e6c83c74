"""Seeded synthetic embeddings with the statistics that matter to re-ranking CLIP retrieval.

The benchmark needs galleries far larger than any shipped data set, so it
draws them. Each item has a latent content vector with an anisotropic
spectrum (variance of coordinate i proportional to (i + 1)^-decay). An image
(gallery item) is normalise(content + image offset + noise), a caption
(query) of it is normalise(its content + caption offset + noise). The two
offsets are fixed, nearly orthogonal directions: the modality gap, which
makes every caption closer to every other caption than to most images. A few
gallery items lean toward the mean caption direction; they are hubs, close to
many queries. With the defaults, matched pairs score about 0.27, random
cross-modal pairs about 0.10 and random same-modality pairs about 0.39. The
shipped CLIP ViT-B/16 COCO embeddings (nia_jax.data.coco500) give 0.31, 0.16
and 0.52. Cosine R@1 of 5,000 captions over 5,000 synthetic images is about
0.6, and each of the 20 hubs is among the 10 nearest images of about 30 of
those captions, where a typical image is among them for 2.

Everything is a pure function of (settings, seed, row): a gallery item's
rows are drawn from a generator seeded by its chunk of ``CHUNK`` rows, so a
large gallery can be written chunk by chunk to a ``.npy`` file (see
:func:`write_gallery`) and never has to fit in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("nia_jax.experiments.synthetic")

#: Gallery rows drawn from one generator; part of the data's definition, not a setting.
CHUNK = 65536


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """Settings of one synthetic retrieval task.

    Attributes:
      n_queries: captions to retrieve with.
      n_gallery: images in the gallery.
      n_bank: unlabelled captions in the query bank and images in the gallery bank.
      dim: embedding dimension.
      decay: spectrum exponent of the content.
      gap: norm of each modality offset, relative to the content's norm (1).
      shared: cosine between the two offsets; above 0, random cross-modal
        pairs score above 0, as in CLIP.
      noise: norm of the per-sample noise, relative to the content's norm.
      n_hubs: gallery items pulled toward the mean caption direction.
      hub_pull: how far they are pulled (norm of the added caption offset).
      seed: the seed of everything.
    """

    n_queries: int
    n_gallery: int
    n_bank: int = 5000
    dim: int = 512
    decay: float = 1.0
    gap: float = 1.5
    shared: float = 0.25
    noise: float = 1.6
    n_hubs: int = 20
    hub_pull: float = 0.1
    seed: int = 0

    def key(self) -> str:
        """Return a short hash of the settings (the cache folder name)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True) + f"chunk={CHUNK}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _scales(cfg: Synthetic) -> np.ndarray:
    scales = (np.arange(cfg.dim) + 1.0) ** (-cfg.decay / 2)
    return scales / np.linalg.norm(scales)  # E||content||^2 = 1


def _offsets(cfg: Synthetic) -> tuple[np.ndarray, np.ndarray]:
    """Return the image and caption offsets (d,), each of norm ``gap``, with cosine ``shared``."""
    rng = np.random.default_rng([cfg.seed, 1])
    basis, _ = np.linalg.qr(rng.standard_normal((cfg.dim, 3)))
    common, own = np.sqrt(cfg.shared), np.sqrt(1.0 - cfg.shared)
    return (cfg.gap * (common * basis[:, 0] + own * basis[:, 1]),
            cfg.gap * (common * basis[:, 0] + own * basis[:, 2]))


def _content(rng: np.random.Generator, n: int, scales: np.ndarray) -> np.ndarray:
    return rng.standard_normal((n, scales.size)) * scales


def _noise(rng: np.random.Generator, n: int, cfg: Synthetic) -> np.ndarray:
    return rng.standard_normal((n, cfg.dim)) * (cfg.noise / np.sqrt(cfg.dim))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gallery_chunk(cfg: Synthetic, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (content, unit image rows) of gallery chunk ``index`` (rows index*CHUNK onward)."""
    lo = index * CHUNK
    n = min(CHUNK, cfg.n_gallery - lo)
    rng = np.random.default_rng([cfg.seed, 2, index])
    content = _content(rng, n, _scales(cfg))
    image_offset, caption_offset = _offsets(cfg)
    rows = content + image_offset + _noise(rng, n, cfg)
    hubs = np.arange(lo, lo + n) < cfg.n_hubs
    rows[hubs] += cfg.hub_pull * caption_offset / cfg.gap
    return content, _unit(rows)


def owners(cfg: Synthetic) -> np.ndarray:
    """Return the gallery item of each query (n_queries,).

    Every item has captions when there are more queries than items (COCO's
    five per image); otherwise items are drawn without replacement.
    """
    rng = np.random.default_rng([cfg.seed, 3])
    if cfg.n_queries >= cfg.n_gallery:
        return rng.permutation(np.arange(cfg.n_queries) % cfg.n_gallery)
    return np.sort(rng.choice(cfg.n_gallery, cfg.n_queries, replace=False))


def _captions(cfg: Synthetic, content: np.ndarray, stream: int) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 4, stream])
    _, caption_offset = _offsets(cfg)
    return _unit(content + caption_offset + _noise(rng, content.shape[0], cfg))


def banks(cfg: Synthetic) -> tuple[np.ndarray, np.ndarray]:
    """Return (query bank, gallery bank): unpaired captions and images of fresh content."""
    rng = np.random.default_rng([cfg.seed, 5])
    scales = _scales(cfg)
    image_offset, _ = _offsets(cfg)
    query_bank = _captions(cfg, _content(rng, cfg.n_bank, scales), stream=1)
    gallery_bank = _unit(_content(rng, cfg.n_bank, scales) + image_offset + _noise(rng, cfg.n_bank, cfg))
    return query_bank, gallery_bank


def make(cfg: Synthetic, gallery_path: Path | None = None) -> dict[str, np.ndarray]:
    """Return queries, positives (n_queries,), banks and the gallery of one task.

    With ``gallery_path`` the gallery is written there chunk by chunk as a
    ``.npy`` file and returned as a read-only ``np.memmap``. Otherwise it is
    returned in memory. Either way the rows are the same.
    """
    own = owners(cfg)
    n_chunks = -(-cfg.n_gallery // CHUNK)
    if gallery_path is not None:
        gallery_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = gallery_path.with_suffix(".tmp.npy")
        gallery = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(cfg.n_gallery, cfg.dim))
    else:
        gallery = np.empty((cfg.n_gallery, cfg.dim), dtype=np.float32)
    query_content = np.empty((cfg.n_queries, cfg.dim))
    for index in range(n_chunks):
        content, rows = gallery_chunk(cfg, index)
        lo = index * CHUNK
        gallery[lo:lo + rows.shape[0]] = rows
        mine = (own >= lo) & (own < lo + rows.shape[0])
        query_content[mine] = content[own[mine] - lo]
        if n_chunks > 4:
            log.info("gallery chunk %d/%d written", index + 1, n_chunks)
    if gallery_path is not None:
        gallery.flush()
        del gallery
        tmp.replace(gallery_path)
        gallery = np.load(gallery_path, mmap_mode="r")
    query_bank, gallery_bank = banks(cfg)
    return {
        "queries": _captions(cfg, query_content, stream=0),
        "positives": own.astype(np.int64),
        "gallery": gallery,
        "query_bank": query_bank,
        "gallery_bank": gallery_bank,
    }


def cached(cfg: Synthetic, cache_dir: Path, memmap: bool) -> dict[str, np.ndarray]:
    """Return :func:`make`'s arrays, generated once into ``cache_dir/<settings hash>/``.

    With ``memmap`` the gallery is a read-only ``np.memmap`` of the cached
    ``.npy``; otherwise it is loaded into memory.
    """
    folder = Path(cache_dir) / cfg.key()
    names = ("queries", "positives", "query_bank", "gallery_bank")
    done = folder / "settings.json"
    if not done.exists():
        log.info("generating synthetic data %s into %s", cfg, folder)
        arrays = make(cfg, gallery_path=folder / "gallery.npy")
        for name in names:
            np.save(folder / f"{name}.npy", arrays[name])
        done.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    arrays = {name: np.load(folder / f"{name}.npy") for name in names}
    arrays["gallery"] = np.load(folder / "gallery.npy", mmap_mode="r" if memmap else None)
    return arrays


def describe(arrays: dict[str, np.ndarray], sample: int = 2000, seed: int = 0) -> dict[str, float]:
    """Return mean cosines of matched, random cross-modal and random same-modality pairs, on a sample."""
    rng = np.random.default_rng(seed)
    q, g = arrays["queries"], arrays["gallery"]
    pick = np.sort(rng.choice(q.shape[0], min(sample, q.shape[0]), replace=False))
    qs = q[pick]
    matched = np.sum(qs * np.asarray(g[arrays["positives"][pick]]), axis=1)
    gs = np.asarray(g[np.sort(rng.choice(g.shape[0], min(sample, g.shape[0]), replace=False))])
    return {
        "matched": float(matched.mean()),
        "cross_modal": float(np.mean(qs @ gs.T)),
        "captions": float(np.mean(qs @ qs.T)),
        "images": float(np.mean(gs @ gs.T)),
    }
