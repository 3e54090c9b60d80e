"""From a :class:`TrainConfig` to a trained adapter: the whole job ``train_lora.py`` runs.

1. check the folders (:func:`check_folders`): the output and cache folders must be writable
   folders, an existing run is only continued with --resume (checked against the checkpoint
   before anything is extracted) or replaced with --overwrite; nothing existing changes
   before these checks pass;
2. join the torchrun process group if there is one (:mod:`.distributed`);
3. find the clips (:func:`selva_core.data.scan_dataset`; a missing or empty data folder fails
   here, before any model loads);
4. get the pipeline: ``SelvaPipeline.build`` of ``--variant`` (fp32 weights, VAE encoder
   kept for the audio targets), or a fork of the caller's pipeline (its generator structure is
   the trainer's own, its encoders stay loaded, no adapter is left on the caller's generator);
5. extract or reuse the clips' features
   (:func:`selva_core.feature_cache.build_feature_cache`); under DDP process 0
   extracts first and the others then read the same cache. Ctrl-C or ``should_stop`` here
   ends the job with status ``interrupted`` (the features extracted so far stay cached);
6. free the feature encoders, split train/validation by clip, train (:class:`LoRATrainer`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from selva_core.atomic import UnusableFolderError, check_writable_folder
from selva_core.data import SkipReport, scan_dataset
from selva_core.data.split import split_examples
from selva_core.dataset.report import keep_duplicates_together, warn_flagged
from selva_core.feature_cache import (
    TINY_PIPELINE_SEED,
    CacheStats,
    ExtractionStopped,
    FeatureCacheSettings,
    build_feature_cache,
    default_model_tag,
)
from selva_core.model.precision import reset_peak_memory
from selva_core.run_folder import CONSOLE_LOG_FILE, RUN_ARTEFACTS, RUN_MARKERS, RunFolder
from selva_core.training import checkpoint as ckpt
from selva_core.training.config import TrainConfig
from selva_core.training.distributed import DistContext, barrier, init_distributed, shutdown
from selva_core.training.record import adapter_identity
from selva_core.training.report import read_jsonl
from selva_core.training.trainer import (
    LoRATrainer,
    TrainHooks,
    TrainResult,
    check_rank,
    resolve_run_dtypes,
)

log = logging.getLogger(__name__)

PADDING_WARN_SHARE = 0.5  # warn when less than this share of the windows is real audio


def build_pipeline(cfg: TrainConfig, device: torch.device):
    """The pipeline of ``cfg.variant`` on ``device`` (fp32 weights; autocast does bf16).

    ``offload="auto"``: on a GPU too small to hold every network at once they rest in host
    memory and move to the GPU for each use; the trainer moves the generator there for good
    and stores its frozen weights in ``--base_dtype``."""
    from selva_core.pipeline import SelvaPipeline

    return SelvaPipeline.build(cfg.variant, models_dir=cfg.models_dir, device=device,
                               precision="fp32", offload="auto", need_vae_encoder=True,
                               seed=TINY_PIPELINE_SEED)


# --- folders ----------------------------------------------------------------------------------
def holds_a_run(out: Path) -> list[str]:
    """What in ``out`` belongs to a run that trained (a checkpoint, the final adapter or a
    logged step), or run-like files (``samples/`` ...) no run of ours started; empty when the
    folder holds no run or only the leftovers of a run that stopped before its first step."""
    run, found = RunFolder(out), []
    manager = ckpt.CheckpointManager(run.checkpoints_dir)
    if manager.manifest_path.is_file():
        try:
            if manager.entries():
                found.append(run.checkpoints_dir.name)
        except (ckpt.CheckpointError, ValueError, OSError):
            found.append(run.checkpoints_dir.name)  # damaged: never cleared silently
    found += [f.name for f in (run.final_adapter, run.final_embedding) if f.exists()]
    if run.log_path.is_file() and any(r.get("kind") == "train"
                                      for r in read_jsonl(run.log_path)):
        found.append(run.log_path.name)
    if not found and not run.started:
        # Run-like names without a run of ours having started here: not ours to clear.
        found = [name for name in RUN_MARKERS if (out / name).exists()]
    return found


def check_resume(cfg: TrainConfig) -> None:
    """The checkpoint to resume exists and trains the same adapter with the same seed; checked
    before any feature is extracted and before anything in the folder changes."""
    manager = ckpt.CheckpointManager(RunFolder(cfg.output_path).checkpoints_dir)
    entry = manager.find(cfg.resume_from)
    source = manager.folder(entry)
    state = manager.load_state(entry)
    ckpt.check_identity(state.identity, adapter_identity(cfg), source)
    old_seed = state.config.get("seed")
    if old_seed is not None and old_seed != cfg.seed:
        raise ckpt.CheckpointError(
            f"cannot resume from {source}: it was trained with --seed {old_seed}, this run "
            f"has --seed {cfg.seed}; use --seed {old_seed} or a new --output_dir")


def check_writable(cfg: TrainConfig) -> None:
    """The output folder (and its samples/ and checkpoints/) and the cache folder are folders
    this process can write into; else one ``UnusableFolderError`` naming the path."""
    run = RunFolder(cfg.output_path)
    check_writable_folder(run.path, "--output_dir")
    for folder in (run.samples_dir, run.checkpoints_dir):
        if folder.exists():
            check_writable_folder(folder, f"--output_dir ({folder.name}/)")
    check_writable_folder(cfg.cache_path, "--cache_dir")


def no_checkpoint_yet(cfg: TrainConfig) -> bool:
    """``--resume`` on a folder whose run never finished a checkpoint (killed while writing
    its first one, or before): such a run starts again from step 0 instead of blocking its
    own folder. A damaged manifest, ``--resume-from`` or a finished adapter never count."""
    if not cfg.resume or cfg.resume_from is not None:
        return False
    run = RunFolder(cfg.output_path)
    if not run.started or run.final_adapter.exists():
        return False
    try:
        return not ckpt.CheckpointManager(run.checkpoints_dir).entries()
    except (ckpt.CheckpointError, ValueError, OSError):
        return False  # check_resume names the damage


def resume_advice(cfg: TrainConfig) -> str:
    """How to continue after the run stopped on an error it cannot fix itself (a full disk):
    from the newest checkpoint, or from step 0 when none was written (features are kept)."""
    try:
        rows = ckpt.CheckpointManager(RunFolder(cfg.output_path).checkpoints_dir).entries()
    except (ckpt.CheckpointError, ValueError, OSError):
        rows = []
    if rows:
        return (f"the newest checkpoint (step {rows[-1].step}) is intact: rerun with --resume "
                "to continue from it")
    if no_checkpoint_yet(dataclasses.replace(cfg, resume=True, resume_from=None)):
        return ("no checkpoint was written yet: rerun with --resume (it starts from step 0; "
                "the features extracted so far are reused)")
    return "rerun with the same flags (the features extracted so far are reused)"


def _check_not_data_folder(cfg: TrainConfig) -> None:
    """The output folder is not the data folder (its logs, checkpoints and charts would land
    among the clips, and be scanned with them)."""
    if not cfg.data_dir or cfg.demo:
        return
    data, out = Path(cfg.data_dir), cfg.output_path
    try:
        same = data.exists() and out.exists() and os.path.samefile(data, out)
    except OSError:
        same = False
    if same or data.resolve() == out.resolve():
        raise UnusableFolderError(f"--output_dir {out} is the data folder (--data_dir {data}); "
                                  "the run's logs, checkpoints and charts would land among "
                                  "the clips: choose an --output_dir outside it")


def refuse_folder(cfg: TrainConfig) -> None:
    """Every reason to refuse the output and cache folders, checked without changing anything
    in them (not even a log line): not writable, the data folder itself, another run without
    --resume / --overwrite, or a checkpoint that cannot be resumed."""
    check_writable(cfg)
    _check_not_data_folder(cfg)
    if cfg.resume or cfg.resume_from is not None:
        if not no_checkpoint_yet(cfg):
            check_resume(cfg)
        return
    found = holds_a_run(cfg.output_path)
    if found and not cfg.overwrite:
        raise FileExistsError(
            f"{cfg.output_path} already holds a training run ({', '.join(found)}); pass "
            "--resume to continue it, --overwrite to start over (its checkpoints are deleted), "
            "or choose another --output_dir"
        )


def check_folders(cfg: TrainConfig) -> None:
    """Everything about the output and cache folders that can fail (:func:`refuse_folder`),
    checked before anything in them changes; then, for a fresh run with --overwrite, the
    previous run is removed (and the leftovers of a run that stopped before its first step,
    or before its first checkpoint on --resume, are always removed)."""
    out = cfg.output_path
    refuse_folder(cfg)
    start_over = no_checkpoint_yet(cfg)
    if cfg.resume_from is not None or (cfg.resume and not start_over):
        return
    found = holds_a_run(out)
    if start_over:
        log.warning("--resume: %s holds no checkpoint yet (the run stopped before writing its "
                    "first one); starting again from step 0", out)
    removed = []
    for name in RUN_ARTEFACTS:
        path = out / name
        if name == CONSOLE_LOG_FILE or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(name)
    if found and not start_over:
        log.warning("--overwrite: removed the previous run's files from %s", out)
    elif removed:
        log.info("removed what a run that stopped before its first checkpoint left in %s (%s)",
                 out, ", ".join(removed))


# --- data ---------------------------------------------------------------------------------------
def scan(cfg: TrainConfig) -> tuple[list, SkipReport]:
    """The dataset's clips (a missing or empty folder fails here, before any model loads)."""
    report = SkipReport()
    clips = scan_dataset(cfg.data_dir, on_bad_clip=cfg.on_bad_clip, report=report)
    warn_flagged(cfg.data_dir, [c.name for c in clips])  # the folder's dataset_report.json
    return clips, report


def prepare_examples(cfg: TrainConfig, pipeline, dist: DistContext, model_tag: str,
                     found: tuple[list, SkipReport] | None = None,
                     should_stop: Callable[[], bool] | None = None
                     ) -> tuple[list, dict[str, Any]]:
    """Build (or reuse) the feature cache of the scanned clips (``found``, default: scan
    now); returns the examples and what the summary says about the data. ``should_stop`` is
    polled before each clip (:class:`~selva_core.feature_cache.ExtractionStopped`)."""
    clips, report = found if found is not None else scan(cfg)
    settings = FeatureCacheSettings(variant=cfg.variant, duration=cfg.duration,
                                    window_policy=cfg.window, model_tag=model_tag)
    stats = CacheStats()

    def build():
        return build_feature_cache(clips, pipeline, cfg.cache_path, settings,
                                   on_bad_clip=cfg.on_bad_clip,
                                   progress=dist.is_main and not cfg.quiet, report=report,
                                   stats=stats, should_stop=should_stop)

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
    share = stats.seconds_used / (len(examples) * cfg.duration) if examples else 1.0
    info["audio_share_of_windows"] = round(share, 4)
    if share < PADDING_WARN_SHARE:
        log.warning("most of the training windows are padding: the clips' audio fills %.0f %% "
                    "of %d windows of %g s (the rest is silence the model learns to make); "
                    "a shorter --duration fits these clips better", 100 * share,
                    len(examples), cfg.duration)
    return examples, info


def _warn_batch_larger_than_data(cfg: TrainConfig, train: list, world_size: int) -> None:
    per_step = cfg.batch_size * world_size
    if train and per_step > len(train):
        log.warning("--batch_size %d%s is larger than the training set (%d windows): every "
                    "batch repeats examples; a smaller --batch_size gives more distinct steps",
                    cfg.batch_size, f" x {world_size} processes" if world_size > 1 else "",
                    len(train))


def _interrupted_during_extraction(cfg: TrainConfig) -> TrainResult:
    message = (f"interrupted during feature extraction; the features extracted so far are kept "
               f"in {cfg.cache_path} and a rerun with the same flags continues from there")
    log.warning("%s", message)
    return TrainResult("interrupted", 0, cfg.output_path, None,
                       {"status": message, "completed": False, "stage": "features",
                        "steps_done": 0, "output_dir": str(cfg.output_path)})


# --- the job ----------------------------------------------------------------------------------
def run_training(cfg: TrainConfig, *, pipeline=None, hooks: TrainHooks | None = None,
                 model_tag: str | None = None) -> TrainResult:
    """Run one training job end to end (see the module docstring).

    ``pipeline``: train with this pipeline's networks instead of building one; the run uses
    ``pipeline.fork()``, so the caller's pipeline keeps its encoders, its generator carries no
    adapter afterwards and its weights are untouched. ``hooks``: callbacks, incl.
    ``should_stop`` (polled every step: a resumable checkpoint, status ``interrupted``).
    ``model_tag``: names non-official encoder weights in the cache key.
    """
    cfg.validate()
    start_over = no_checkpoint_yet(cfg)  # every process decides before process 0 clears it
    dist = init_distributed(cfg.device)
    try:
        resolve_run_dtypes(cfg, dist.device)  # a contradicting --precision fails before any work
        reset_peak_memory(dist.device)  # the summary's peak memory is this run's
        if dist.is_main:
            check_folders(cfg)
        barrier(dist)
        if start_over:
            cfg = dataclasses.replace(cfg, resume=False)  # nothing to resume: from step 0
        found = scan(cfg)
        if pipeline is None:
            pipeline = build_pipeline(cfg, dist.device)
        else:
            pipeline = pipeline.fork()
            if pipeline.device != dist.device:
                pipeline.to(dist.device)
        if cfg.method == "lora":
            check_rank(pipeline.generator, cfg)
        tag = default_model_tag(cfg.variant) if model_tag is None else model_tag
        try:
            examples, info = prepare_examples(cfg, pipeline, dist, tag, found,
                                              hooks.should_stop if hooks else None)
        except (KeyboardInterrupt, ExtractionStopped):
            return _interrupted_during_extraction(cfg)
        clip_text, t5 = pipeline.clip_text, pipeline.t5  # textual inversion encodes per step
        pipeline.free_encoders()
        train, val = split_examples(examples, cfg.val_fraction, cfg.val_clips)
        train, val = keep_duplicates_together(cfg.data_dir, train, val)
        log.info("%d training and %d validation examples", len(train), len(val))
        _warn_batch_larger_than_data(cfg, train, dist.world_size)
        info["val_clip_names"] = sorted({e.name for e in val})
        if cfg.method == "textual_inversion":
            from selva_core.training.textual_inversion import TextualInversionTrainer

            trainer = TextualInversionTrainer(cfg, pipeline.generator, train, val,
                                              clip_text=clip_text, t5=t5, pipeline=pipeline,
                                              dist=dist, hooks=hooks, data_info=info)
        else:
            trainer = LoRATrainer(cfg, pipeline.generator, train, val, pipeline=pipeline,
                                  dist=dist, hooks=hooks, data_info=info)
        return trainer.run()
    finally:
        shutdown(dist)
