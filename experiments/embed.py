"""Compute CLIP embeddings of an image folder and a caption file from a local checkpoint.

    python experiments/embed.py encoder.checkpoint=/models/clip-vit-b16 images=/data/coco/val2014 \
        image_list=coco5k_test_images.txt captions=coco5k_test_captions.txt output_dir=emb/coco5k

Writes ``image_embeddings.npy`` and ``text_embeddings.npy`` (unit-norm
float32 rows, in the order of ``image_list`` and of the caption file),
``image_names.txt`` and ``embed.json`` (model, checkpoint, counts) to
``output_dir``, then prints the command that evaluates them. The checkpoint
folder is read from disk (config.json, model.safetensors or
flax_model.msgpack, vocab.json, merges.txt); no weights are downloaded.
Needs the optional extra: ``pip install 'nia_jax[clip]'``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))

import schema  # noqa: E402

from nia_jax.errors import NiaError  # noqa: E402

log = logging.getLogger("nia_jax.experiments.embed")


@dataclass
class EmbedConfig:
    """Top-level config of ``experiments/embed.py``."""

    encoder: schema.EncoderConfig = MISSING
    images: str = MISSING  # folder of the images
    image_list: Optional[str] = None  # file of image names (one a line) giving the row order; default: sorted folder
    captions: str = MISSING  # text file, one caption a line, in row order
    output_dir: str = MISSING  # folder for the .npy files and embed.json


def register() -> None:
    schema.register_schemas()
    ConfigStore.instance().store(name="embed_schema", node=EmbedConfig)


register()


def run(cfg: DictConfig) -> dict:
    """Encode the images and captions; write the files; return embed.json's content."""
    from nia_jax.encoders import ClipEncoder, list_images

    if cfg.encoder.name != "clip":
        raise NiaError(f"encoder={cfg.encoder.name}: embed.py computes embeddings with encoder=clip only.")
    encoder = ClipEncoder(cfg.encoder.checkpoint, batch_size=cfg.encoder.batch_size, dtype=cfg.encoder.dtype)
    if cfg.encoder.dim is not None and cfg.encoder.dim != encoder.dim:
        raise NiaError(f"encoder.dim={cfg.encoder.dim}, but the checkpoint projects to {encoder.dim} dimensions.")
    images = list_images(cfg.images, cfg.image_list)
    captions_path = Path(cfg.captions)
    if not captions_path.is_file():
        raise NiaError(f"{captions_path}: caption file not found.")
    captions = [line.strip() for line in captions_path.read_text(encoding="utf-8").splitlines()]
    while captions and not captions[-1]:
        captions.pop()  # blank lines at the end of the file
    blank = [number for number, caption in enumerate(captions, start=1) if not caption]
    if blank:
        # Dropping them would shift every later caption's row against the ground truth.
        raise NiaError(f"{captions_path}: {len(blank)} blank caption line(s) (first lines: {blank[:5]}). "
                       "Each line is one caption, in the order of the ground truth; remove or fill them.")
    start = time.perf_counter()
    log.info("encoding %d images and %d captions with %s", len(images), len(captions), cfg.encoder.checkpoint)
    image_embeddings = encoder.encode_images(images)
    text_embeddings = encoder.encode_texts(captions)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "image_embeddings.npy", image_embeddings)
    np.save(out / "text_embeddings.npy", text_embeddings)
    (out / "image_names.txt").write_text("".join(f"{p.name}\n" for p in images))
    meta = {
        "model": cfg.encoder.model, "checkpoint": str(cfg.encoder.checkpoint), "dim": encoder.dim,
        "dtype": cfg.encoder.dtype, "n_images": len(images), "n_captions": len(captions),
        "images": str(cfg.images), "image_list": cfg.image_list, "captions": str(captions_path),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (out / "embed.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


@hydra.main(version_base="1.3", config_path="../conf", config_name="embed")
def main(cfg: DictConfig) -> None:
    try:
        meta = run(cfg)
    except NiaError as exc:
        log.error("%s", exc)
        sys.exit(1)
    out = Path(cfg.output_dir)
    print(f"wrote {meta['n_images']} image and {meta['n_captions']} caption embeddings ({meta['dim']} dims) to {out}")
    print("evaluate them with, for example:\n"
          f"  python experiments/compare.py dataset=custom dataset.image_embeddings={out / 'image_embeddings.npy'} "
          f"dataset.text_embeddings={out / 'text_embeddings.npy'} encoder.model={meta['model']} "
          f"encoder.dim={meta['dim']} protocol=transductive")


if __name__ == "__main__":
    main()
