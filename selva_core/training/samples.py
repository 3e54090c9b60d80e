"""Checkpoint samples: one validation clip rendered by the adapter being trained.

At the start (the base model), at every checkpoint and at the end of a run the trainer renders
the first validation clip (the first training clip without a validation split) from its
features with CFG and the run's seed into ``samples/<tag>.wav`` and a spectrogram ``.png``.
Each sample is also compared with the clip's own audio passed through the same VAE and vocoder
(:func:`~selva_core.audio.sync.envelope_sync`), so both sides share one representation; the
log keeps the figures and :func:`sample_sync` puts the base model's and the newest sample's
in the summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from selva_core.atomic import json_safe
from selva_core.audio.sync import ENVELOPE_PREFIX, envelope_sync
from selva_core.audio.wav import write_wav
from selva_core.features import ConditionFeatures
from selva_core.run_folder import RunFolder
from selva_core.training.config import TrainConfig
from selva_core.training.objective import ExampleStore, conditions
from selva_core.training.report import JsonlLog, save_spectrogram_png

log = logging.getLogger(__name__)

#: (the clip's features, its name, its true audio's raw latent)
SampleClip = tuple[ConditionFeatures, str, torch.Tensor]


def sample_clip(generator: torch.nn.Module, store: ExampleStore, cfg: TrainConfig,
                device: torch.device) -> SampleClip | None:
    """The sample clip of ``store`` (its first example): features, name and raw latent (its
    true audio, VAE-encoded); None for an empty store."""
    if not len(store):
        return None
    batch = store.batch([0]).to(device)
    _, sync, text = conditions(generator, batch)
    prompt = getattr(store.examples[0], "prompt", "") or ""
    return (ConditionFeatures(text_clip_f=text, sync_f=sync, duration=cfg.duration,
                              prompts=[prompt], variant=cfg.variant),
            store.name(0), batch.latent_mean)


def write_sample(clip: SampleClip, tag: str, step: int, *, pipeline, generator: torch.nn.Module,
                 cfg: TrainConfig, sample_rate: int, train_lengths,
                 autocast: Callable[[], AbstractContextManager], run: RunFolder,
                 train_log: JsonlLog) -> Path:
    """Render ``clip`` with CFG and ``cfg.seed`` into ``samples/<tag>.wav`` + ``.png`` and log
    its envelope figures against the clip's own audio. ``train_lengths``: the generator's
    training sequence lengths, restored afterwards (sampling may set the clip's)."""
    features, name, true_latent = clip
    was_training = generator.training
    generator.eval()
    try:
        with autocast():  # a half-precision base computes in its dtype
            latent = pipeline.sample(features, seed=cfg.seed, num_steps=cfg.sample_steps,
                                     cfg_strength=cfg.cfg_strength)
        wave = pipeline.decode(latent)[0].float().cpu()
        # The reference for the sync figures: the clip's own audio through the same VAE and
        # vocoder, so both sides are in one representation and aligned to the window.
        reference = pipeline.decode(true_latent.to(latent.dtype))[0].float().cpu()
    finally:
        generator.train(was_training)
        generator.update_seq_lengths(train_lengths)  # a no-op when they did not change
    wav_path = run.sample_wav(tag)
    write_wav(wav_path, wave.reshape(-1), sample_rate)
    save_spectrogram_png(wave.numpy(), sample_rate, wav_path.with_suffix(".png"),
                         title=f"{name}: {tag} (cfg {cfg.cfg_strength:g}, seed {cfg.seed})")
    figures = envelope_sync(wave, reference, sample_rate)
    train_log.write({"kind": "sample", "step": step, "tag": tag, "clip": name,
                     "wav": wav_path.relative_to(run.path).as_posix(),
                     **json_safe(figures.as_dict(ENVELOPE_PREFIX)), "time": time.time()})
    log.info("step %d: sample %s: envelope correlation with the clip's audio %.3f at lag 0, "
             "%.3f at %+.0f ms", step, tag, figures.corr_lag0, figures.corr_best,
             figures.best_lag_ms)
    return wav_path


def sample_sync(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The validation samples' envelope figures for the summary: the base model's (step 0)
    and the newest sample's (the final one once the run has finished); None without
    samples."""
    samples = [r for r in records if r.get("kind") == "sample"]
    if not samples:
        return None
    keys = [f"{ENVELOPE_PREFIX}{k}" for k in ("corr_lag0", "best_lag_ms", "corr_best")]

    def pick(rec: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if rec is None else {"tag": rec.get("tag"), "step": rec.get("step"),
                                         **{k: rec.get(k) for k in keys}}

    base = next((r for r in samples if r.get("step") == 0), None)
    last = samples[-1] if samples[-1] is not base else None
    return {"clip": samples[-1].get("clip"), "base": pick(base), "last": pick(last)}
