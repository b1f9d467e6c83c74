"""Structured-config schemas of the Hydra runners.

Every YAML file in ``conf/`` starts from one of these schemas, so a key that
is not declared here, or a value of the wrong type, fails when the config is
composed, before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from nia_jax.rerankers import available
from nia_jax.rerankers.base import reranker_class


@dataclass
class DatasetConfig:
    """The embeddings and the split that a run evaluates.

    ``coco500_clip_vitb16`` ships its embeddings and uses only name, variant,
    split and seed. The other data sets (coco5k, coco1k, f30k1k, custom) read
    the user's files named below; see docs/datasets.md.
    """

    name: str = MISSING  # coco500_clip_vitb16, coco5k, coco1k, f30k1k or custom
    variant: str = "clip"  # coco500 only: clip (real) or random (negative control)
    split: str = "test"  # coco500: dev, test, or all (transductive only); other data sets: test
    seed: int = 0  # coco500 only: seed of the dev/test permutation
    # --- user files (all data sets but coco500); relative paths start at encoder.embeddings_dir if set
    # The two embedding paths default to ??? (required): a data set config sets them to null when it needs none.
    image_embeddings: Optional[str] = MISSING  # (n_images, d) .npy, .npz or .safetensors
    text_embeddings: Optional[str] = MISSING  # (n_captions, d)
    image_key: Optional[str] = None  # array name inside an .npz/.safetensors file
    text_key: Optional[str] = None
    similarity: Optional[str] = None  # (n_captions, n_images) scores instead of embeddings (cosine only)
    similarity_i2t: Optional[str] = None  # (n_images, n_captions), if the model scores i2t differently
    similarity_key: Optional[str] = None
    image_bank: Optional[str] = None  # inductive protocol: bank embeddings disjoint from the evaluated ones
    text_bank: Optional[str] = None
    image_bank_key: Optional[str] = None
    text_bank_key: Optional[str] = None
    mmap: bool = False  # memory-map .npy files instead of reading them into memory
    ground_truth_t2i: Optional[str] = None  # custom: caption row -> positive image rows (JSON or .npy)
    ground_truth_i2t: Optional[str] = None  # custom: image row -> positive caption rows
    image_ids: Optional[str] = None  # id of each image row, checked against the shipped order
    caption_image_ids: Optional[str] = None  # image id of each caption row (checked; needed for COCO's 25,010 rows)
    caption_ids: Optional[str] = None  # COCO caption annotation id of each caption row (25,010 rows: ECCV/CxC)
    extended_metrics: list[str] = field(default_factory=list)  # coco5k: eccv and/or cxc


@dataclass
class EncoderConfig:
    """The model whose embeddings a run uses.

    ``precomputed``: embeddings were computed elsewhere and are read from
    files; model and dim describe them (dim, when set, is checked against the
    files). ``clip``: experiments/embed.py computes embeddings with the Flax
    CLIP encoder of nia_jax.encoders from a local checkpoint.
    """

    name: str = "precomputed"  # precomputed or clip
    model: Optional[str] = None  # the model that produced the embeddings, for the record
    dim: Optional[int] = None  # embedding dimension; checked against the files when set
    normalised: bool = True  # true: rows should be unit-norm (others are normalised with a warning)
    reject_unnormalised: bool = False  # true: fail the run on rows that are not unit-norm instead of normalising
    embeddings_dir: Optional[str] = None  # folder holding the embedding files; relative dataset paths start here
    checkpoint: Optional[str] = MISSING  # clip: local checkpoint folder (required there; precomputed sets null)
    batch_size: int = 64  # clip: images or captions encoded per batch
    dtype: str = "float32"  # clip: float32 or bfloat16 for the forward pass (outputs are float32)


@dataclass
class ProtocolConfig:
    """Whether the banks are disjoint from the evaluated samples."""

    name: str = "inductive"  # inductive or transductive


@dataclass
class LoggerConfig:
    """Weights & Biases settings; name=none disables logging."""

    name: str = "wandb"  # wandb or none
    mode: str = "offline"  # offline, online or disabled
    project: str = "nia_jax"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the sweep folder's name in a multirun, no group otherwise
    tags: list[str] = field(default_factory=list)
    job_type: str = "evaluation"  # evaluation, sweep or ablation; conf/experiment/ sets it
    init_timeout: float = 30.0  # seconds before an online run falls back to offline


def method_schema(cls: type) -> type:
    """Build the structured config of a re-ranker from its library dataclass.

    Field names, defaults and types follow the library, so a new setting or
    method needs no second declaration here. Literal and Optional types become
    their base type because OmegaConf validates plain types only; the library
    then checks the allowed values.
    """
    fields_ = [("name", str, field(default=cls.name))]
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        fields_.append((f.name, _plain_type(hint), field(default=f.default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields_)


def _plain_type(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return type(args[0])
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _plain_type(args[0])
    return hint


@dataclass
class RunConfig:
    """Top-level config of ``experiments/rerank.py``."""

    dataset: DatasetConfig = MISSING
    encoder: EncoderConfig = MISSING
    method: Any = MISSING
    protocol: ProtocolConfig = MISSING
    logger: LoggerConfig = MISSING
    top_k: int = 100  # candidates re-ranked per query (K)
    block_size: int = 1024  # queries per block
    gallery_block_size: Optional[int] = None  # gallery rows per search block; null: the whole gallery
    search_backend: str = "auto"  # top-K search: auto (faiss on CPU if installed), jax or faiss; ground truth: jax
    n_boot: int = 1000  # bootstrap resamples for the 95% intervals
    seed: int = 0  # bootstrap seed


@dataclass
class TuneConfig(RunConfig):
    """Top-level config of ``experiments/tune.py``: a grid searched on one split, reported on another."""

    grid: dict[str, list[Any]] = field(default_factory=dict)  # method setting -> values to try
    tune_split: str = "dev"  # split on which the grid is searched
    selection: str = "rsum"  # rsum (R@1+R@5+R@10, both directions) or mean_r1 (mean R@1 of both)
    eval_split: str = "test"  # split on which the chosen setting is reported, once
    export_dir: Optional[str] = None  # if set, also write the chosen setting to <export_dir>/<method>.yaml (conf/tuned)


@dataclass
class FitConfig(TuneConfig):
    """Top-level config of ``experiments/fit.py``: NIA's continuous settings learned on tune_split.

    The fields below set ``nia_jax.fitting.FitSettings``, with ``fit_seed`` as its
    seed and ``top_k`` shared with the evaluation. When ``compare_grid`` is true,
    the grid (``grid``, ``selection``) is searched too.
    """

    surrogate: str = "listwise"  # listwise (softmax cross-entropy over the K candidates) or smooth_ap
    temperature: float = 0.01  # surrogate temperature, in score units
    learning_rate: float = 0.1  # peak Adam step size in the unconstrained parameters
    max_steps: int = 100  # maximum Adam updates
    warmup_steps: int = 5  # updates of linear warm-up before the cosine decay
    final_lr_ratio: float = 0.1  # step size at max_steps as a fraction of the peak
    patience: int = 20  # updates without a held-out improvement before stopping
    min_delta: float = 1e-3  # smallest held-out loss decrease that counts as an improvement
    holdout: float = 0.2  # fraction of tune_split's queries held out for early stopping
    fit_seed: int = 0  # seed of the held-out split
    learn: Optional[list[str]] = None  # hyperparameters to learn; null: every one the static settings use
    margin: float = 0.01  # starting values closer than this to a bound are moved inside
    keep_start_if_worse: bool = True  # return the start if the fitted values score a lower tune_split R@1
    compare_grid: bool = True  # also run tune.py's grid search on tune_split and report it beside the fit


@dataclass
class CompareConfig:
    """Top-level config of ``experiments/compare.py``: several methods on one data set."""

    dataset: DatasetConfig = MISSING
    encoder: EncoderConfig = MISSING
    protocol: ProtocolConfig = MISSING
    logger: LoggerConfig = MISSING
    methods: dict[str, Any] = field(default_factory=dict)  # name -> method config
    include: Optional[list[str]] = None  # subset of methods to run; null runs all
    top_k: int = 100
    block_size: int = 1024
    gallery_block_size: Optional[int] = None  # gallery rows per search block; null: the whole gallery
    search_backend: str = "auto"  # top-K search: auto (faiss on CPU if installed), jax or faiss
    n_boot: int = 1000
    seed: int = 0


def register_schemas() -> None:
    """Register every schema with Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="tune_schema", node=TuneConfig)
    store.store(name="fit_schema", node=FitConfig)
    store.store(name="compare_schema", node=CompareConfig)
    store.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    store.store(group="encoder", name="encoder_schema", node=EncoderConfig)
    store.store(group="protocol", name="protocol_schema", node=ProtocolConfig)
    store.store(group="logger", name="logger_schema", node=LoggerConfig)
    for name in available():
        store.store(group="method", name=f"{name}_schema", node=method_schema(reranker_class(name)))
