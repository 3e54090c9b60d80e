"""From a :class:`TrainConfig` to a trained adapter: the whole job ``train_lora.py`` runs.

1. join the torchrun process group if there is one (:mod:`.distributed`);
2. build the pipeline: the official weights of ``--variant`` (downloaded into ``--models_dir``
   when missing; the VAE encoder is kept for the audio targets), or the tiny random model;
3. find the clips (:func:`selva_core.data.scan_dataset`) and extract or reuse their features
   (:func:`selva_core.training.feature_cache.build_feature_cache`); under DDP process 0
   extracts first and the others then read the same cache;
4. free the feature encoders, split train/validation by clip, train (:class:`LoRATrainer`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from selva_core.data import SkipReport, scan_dataset
from selva_core.training.config import TrainConfig
from selva_core.training.distributed import DistContext, barrier, init_distributed, shutdown
from selva_core.training.feature_cache import (
    CacheStats,
    FeatureCacheSettings,
    build_feature_cache,
)
from selva_core.training.trainer import LoRATrainer, TrainHooks, TrainResult, save_config
from selva_core.training.validation import split_examples
from selva_core.variants import get_variant

log = logging.getLogger(__name__)

TINY_PIPELINE_SEED = 0  # the tiny random model every tiny run (and its feature cache) uses


def build_pipeline(cfg: TrainConfig, device: torch.device):
    """The pipeline of ``cfg.variant`` on ``device`` (fp32 weights; autocast does bf16)."""
    from selva_core.pipeline import SelvaPipeline

    if get_variant(cfg.variant).is_tiny:
        return SelvaPipeline.tiny(seed=TINY_PIPELINE_SEED, device=device, duration=cfg.duration)
    return SelvaPipeline.from_pretrained(cfg.variant, models_dir=cfg.models_dir, device=device,
                                         need_vae_encoder=True)


def default_model_tag(cfg: TrainConfig) -> str:
    """Names the encoder weights in the feature-cache key (tiny random models differ by seed)."""
    return f"tiny seed {TINY_PIPELINE_SEED}" if get_variant(cfg.variant).is_tiny else ""


def prepare_examples(cfg: TrainConfig, pipeline, dist: DistContext, model_tag: str
                     ) -> tuple[list, dict[str, Any]]:
    """Scan the dataset and build (or reuse) the feature cache; returns examples and info."""
    report = SkipReport()
    clips = scan_dataset(cfg.data_dir, on_bad_clip=cfg.on_bad_clip, report=report)
    settings = FeatureCacheSettings(variant=cfg.variant, duration=cfg.duration,
                                    window_policy=cfg.window, model_tag=model_tag)
    stats = CacheStats()

    def build():
        return build_feature_cache(clips, pipeline, cfg.cache_path, settings,
                                   on_bad_clip=cfg.on_bad_clip,
                                   progress=dist.is_main and not cfg.quiet, report=report,
                                   stats=stats)

    if dist.is_main:
        examples = build()
    barrier(dist)
    if not dist.is_main:
        examples = build()
    if len(report):
        log.warning("%d clip(s) skipped:\n%s", len(report), report.format())
    info = {"clips": len(clips), "skipped_clips": len(report),
            "skipped": [str(s) for s in report], "windows": len(examples),
            "features_reused": stats.reused, "features_extracted": stats.extracted,
            "window": cfg.window, "audio_seconds_used": round(stats.seconds_used, 3),
            "audio_seconds_left_out": round(stats.seconds_left_out, 3)}
    if stats.seconds_left_out > 0.5 and cfg.window == "first":
        log.warning("--window first: %.1f s of the clips' audio lies beyond the first %g s "
                    "window of each clip and is not trained on (--window all uses it)",
                    stats.seconds_left_out, cfg.duration)
    return examples, info


# What a run writes in its output folder (removed by --overwrite; the feature cache is kept).
RUN_ARTEFACTS = ("checkpoints", "samples", "train_log.jsonl", "loss_curve.png", "summary.json",
                 "adapter_final.safetensors", "intruders.json", "intruders.png", "surgery.json",
                 "config.json", "train.log")


def check_output_dir(cfg: TrainConfig) -> None:
    """Refuse to start a fresh run over an existing one unless --overwrite (then clear it)."""
    out = cfg.output_path
    found = [name for name in RUN_ARTEFACTS[:6] if (out / name).exists()]
    if not found or cfg.resume or cfg.resume_from is not None:
        return
    if not cfg.overwrite:
        raise FileExistsError(
            f"{out} already holds a training run ({', '.join(found)}); pass --resume to "
            "continue it, --overwrite to start over (its checkpoints are deleted), or choose "
            "another --output_dir"
        )
    for name in RUN_ARTEFACTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists() and name != "train.log":
            path.unlink()
    log.warning("--overwrite: removed the previous run's files from %s", out)


def run_training(cfg: TrainConfig, *, pipeline=None, hooks: TrainHooks | None = None,
                 model_tag: str | None = None) -> TrainResult:
    """Run one training job end to end (see the module docstring).

    ``pipeline``: use this pipeline instead of building one (tests, notebooks); its generator
    is trained in place. ``model_tag``: names non-official encoder weights in the cache key.
    """
    cfg.validate()
    dist = init_distributed(cfg.device)
    try:
        if dist.is_main:
            check_output_dir(cfg)
            save_config(cfg, cfg.output_path)
        barrier(dist)
        if pipeline is None:
            pipeline = build_pipeline(cfg, dist.device)
        else:
            pipeline.to(dist.device)
        tag = default_model_tag(cfg) if model_tag is None else model_tag
        examples, info = prepare_examples(cfg, pipeline, dist, tag)
        pipeline.free_encoders()
        train, val = split_examples(examples, cfg.val_fraction, cfg.val_clips)
        log.info("%d training and %d validation examples", len(train), len(val))
        info["val_clip_names"] = sorted({e.name for e in val})
        trainer = LoRATrainer(cfg, pipeline.generator, train, val, pipeline=pipeline,
                              dist=dist, hooks=hooks, data_info=info)
        return trainer.run()
    finally:
        shutdown(dist)


def output_files(out: Path) -> list[str]:
    """Relative paths of everything a run wrote (for summaries and tests)."""
    return sorted(str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file())
