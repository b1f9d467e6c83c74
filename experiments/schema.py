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
    """Which embeddings and which split are evaluated."""

    name: str = MISSING  # data set id, for example coco500_clip_vitb16
    variant: str = "clip"  # clip (real) or random (negative control)
    split: str = "test"  # dev, test, or all (transductive only)
    seed: int = 0  # seed of the dev/test permutation


@dataclass
class EncoderConfig:
    """The model whose embeddings a run uses; precomputed means read from files."""

    name: str = "precomputed"
    model: str = MISSING  # for example openai/clip-vit-base-patch16
    dim: int = MISSING  # embedding dimension
    normalised: bool = True  # whether the stored rows are already L2-normalised


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
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "evaluation"
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
    n_boot: int = 1000
    seed: int = 0


def register_schemas() -> None:
    """Register every schema with Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="tune_schema", node=TuneConfig)
    store.store(name="compare_schema", node=CompareConfig)
    store.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    store.store(group="encoder", name="encoder_schema", node=EncoderConfig)
    store.store(group="protocol", name="protocol_schema", node=ProtocolConfig)
    store.store(group="logger", name="logger_schema", node=LoggerConfig)
    for name in available():
        store.store(group="method", name=f"{name}_schema", node=method_schema(reranker_class(name)))
