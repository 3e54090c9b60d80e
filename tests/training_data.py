"""Shared test set-up for the trainer tests: synthetic clips, the tiny pipeline, a warm cache."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

from selva_core.data import scan_dataset
from selva_core.data.synthetic import make_synthetic_dataset
from selva_core.feature_cache import (
    CachedExample,
    FeatureCacheSettings,
    build_feature_cache,
)
from selva_core.pipeline import SelvaPipeline


class TinyTrainingSet(NamedTuple):
    pipe: SelvaPipeline
    data_dir: Path
    cache_dir: Path
    examples: list[CachedExample]


def tiny_training_set(root: Path, *, clips_per_class: int, seed: int,
                      duration: float = 1.0) -> TinyTrainingSet:
    """Generate ``2 * clips_per_class`` synthetic clips under ``root`` and cache their features
    with ``SelvaPipeline.tiny(seed=0)``."""
    data_dir, cache_dir = root / "clips", root / "cache"
    make_synthetic_dataset(data_dir, clips_per_class=clips_per_class, duration=duration,
                           seed=seed)
    pipe = SelvaPipeline.tiny(seed=0, duration=duration, trained=False)
    settings = FeatureCacheSettings(variant="tiny_16k", duration=duration,
                                    window_policy="first", model_tag="tiny seed 0")
    examples = build_feature_cache(scan_dataset(data_dir), pipe, cache_dir, settings,
                                   progress=False)
    return TinyTrainingSet(pipe, data_dir, cache_dir, examples)


def fresh(pipe):
    """A pipeline sharing the frozen networks but owning a fresh copy of the generator."""
    p = copy.copy(pipe)
    p.generator = copy.deepcopy(pipe.generator)
    return p
