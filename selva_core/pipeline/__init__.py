"""SelvaPipeline: frames + prompt -> condition features -> latent -> waveform, for users.

One object holds every network of a variant (generator, TextSynch, CLIP-text and FLAN-T5
encoders, mel VAE, BigVGAN vocoder, mel front end) and exposes the steps as separate methods,
so the ComfyUI nodes, ``train_lora.py`` and ``eval_adapters.py`` all call the same code.
The class (:mod:`.facade`) is a small facade over one module per job:

* :mod:`.construction` — build a pipeline (official weights, the shipped tiny weights, random);
* :mod:`.residency` — where the networks live: device moves, the per-run context, offload,
  freed encoders, and :class:`SharedResidency` (a base and its forks as one module for a
  memory manager);
* :mod:`.forking` — forks, and forks carrying adapters or textual-inversion tokens;
* :mod:`.encoding` — prompts, frames and audio into model space (``extract_features``,
  ``encode_audio``);
* :mod:`.rendering` — features -> latent -> waveform, one window or any length.

:mod:`.state` declares what a pipeline holds; the job modules depend on it, never on the
facade.
"""

from ..features import ConditionFeatures
from ..model.lora import AdapterLoadError
from .construction import PRECISION_CHOICES
from .construction import _local_text_encoder as _local_text_encoder
from .encoding import MAX_PAD_FRAMES, LatentMoments
from .facade import SelvaPipeline
from .forking import AppliedAdapter
from .rendering import (
    DEFAULT_OVERLAP_S,
    WINDOW_SEED_STRIDE,
    RenderWindow,
    crossfade_curves,
    plan_windows,
    window_seed,
)
from .residency import AUTO_OFFLOAD_MAX_SHARE, OFFLOAD_CHOICES, SharedResidency

__all__ = [
    "AUTO_OFFLOAD_MAX_SHARE",
    "DEFAULT_OVERLAP_S",
    "MAX_PAD_FRAMES",
    "OFFLOAD_CHOICES",
    "PRECISION_CHOICES",
    "WINDOW_SEED_STRIDE",
    "AdapterLoadError",
    "AppliedAdapter",
    "ConditionFeatures",
    "LatentMoments",
    "RenderWindow",
    "SelvaPipeline",
    "SharedResidency",
    "crossfade_curves",
    "plan_windows",
    "window_seed",
]
