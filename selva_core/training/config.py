"""The trainer's one configuration object and the command line generated from it.

Every flag of ``train_lora.py`` is a field of :class:`TrainConfig`; its help text, choices and
option strings live in the field's metadata, so the dataclass, the CLI and ``config.json``
in the output folder can never disagree. Flag names follow ComfyUI-SelVA's ``train_lora.py``
(``--data_dir``, ``--rank``, ``--lr`` ...), with dashed spellings accepted as aliases.

Defaults: rank 16 with the LoRA library's fixed alpha 32 (alpha/r = 2; rsLoRA off) on the
attention projections incl. the kernel-3 conv ``linear1``, AdamW lr 1e-4 with weight decay 0,
gradient clipping 1.0, logit-normal timesteps and 0.1 null-condition dropout exactly as MMAudio
and SelVA were pre-trained, a warm-up of 5 % of the steps then cosine decay counted in
optimiser steps, no dropout on the adapter's input.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selva_core.data.errors import ON_BAD_CLIP_CHOICES as BAD_CLIP_POLICIES
from selva_core.data.windows import WINDOW_POLICIES
from selva_core.model.lora.config import INIT_MODES
from selva_core.model.lora.kind import kind_names
from selva_core.model.precision import AUTOCAST_CHOICES, BASE_DTYPE_CHOICES
from selva_core.run_folder import RunFolder
from selva_core.schema import Schema, dataclass_schema, device_problem, option
from selva_core.training.schedule import SCHEDULE_KINDS as LR_SCHEDULES
from selva_core.variants import (
    CFG_STRENGTH,
    DEFAULT_VARIANT,
    SAMPLING_STEPS,
    TRAIN_DURATION_S,
    VARIANTS,
    min_duration,
)

TIMESTEP_MODES = ("logit_normal", "uniform")
METHODS = ("lora", "textual_inversion")
ADAPTER_DTYPES = ("auto", "fp32", "q16", "fp16")
DEFAULT_TARGETS = ("attn",)
WARMUP_FRACTION = 0.05  # default --warmup_steps: this share of --steps


def _opt(help_text: str, *flags: str, **declared: Any) -> dict[str, Any]:
    """A field's declaration (:func:`selva_core.schema.option`): help, extra option strings,
    choices, bounds; its CLI group defaults to ``training``. ``primary``: the extra spelling
    (e.g. ``--resume-from``) is the one usage shows; ``--field_name`` stays accepted."""
    return option(help_text, *flags, **{"group": "training", **declared})


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as ``config.json`` next to the adapter."""

    # --- data -------------------------------------------------------------------------------
    data_dir: str | None = field(default=None, metadata=_opt(
        "Folder of training clips: videos (.mp4/.mov/.mkv/.webm/.avi) with their sound, "
        "optionally a same-stem audio file (.wav/.flac/...) to use instead, and an optional "
        "prompts.txt with lines 'stem: prompt'. Required unless --demo.", group="data"))
    output_dir: str = field(default="lora_output", metadata=_opt(
        "Where the run writes everything: adapter_final.safetensors, checkpoints/, samples/, "
        "train_log.jsonl, curves, reports.", group="data"))
    cache_dir: str | None = field(default=None, metadata=_opt(
        "Feature cache folder (default: OUTPUT_DIR/feature_cache). Reused across runs: a clip "
        "is re-extracted only when its file, prompt or the settings change.", group="data"))
    duration: float = field(default=TRAIN_DURATION_S, metadata=_opt(
        f"Training window in seconds (the official generators were trained at "
        f"{TRAIN_DURATION_S:g} s; minimum {min_duration():.2f} s). Shorter clips are padded "
        "with the model's empty sync tokens.", group="data", low=min_duration(),
        want=f"a number of seconds >= {min_duration():.2f} (one sync window)"))
    window: str = field(default="first", metadata=_opt(
        "Which windows of a clip longer than --duration to train on: 'first' (one window per "
        "clip) or 'all' (consecutive windows, each its own example).",
        choices=WINDOW_POLICIES, group="data"))
    on_bad_clip: str = field(default="skip", metadata=_opt(
        "What to do with an unreadable or unusable clip: 'skip' it with a warning, or 'stop' "
        "with an error naming the file.", "--on-bad-clip", choices=BAD_CLIP_POLICIES,
        group="data", primary=True))
    val_fraction: float = field(default=0.1, metadata=_opt(
        "Share of the clips held out for validation (split by clip, never by window; at least "
        "one clip once the dataset has 4 or more). Ignored when --val_clips is given.",
        "--val-fraction", group="data", low=0.0, high=1.0, high_open=True))
    val_clips: int | None = field(default=None, metadata=_opt(
        "Exact number of clips held out for validation (0 disables validation, and with it "
        "the surgery decision).", "--val-clips", metavar="N", group="data", low=0))

    # --- model and adapter -------------------------------------------------------------------
    variant: str = field(default=DEFAULT_VARIANT, metadata=_opt(
        "Model variant to adapt; the adapter only loads on the same variant.",
        choices=tuple(VARIANTS), group="model"))
    models_dir: str | None = field(default=None, metadata=_opt(
        "Folder holding (or receiving) the model weights (default: the pipeline's models "
        "folder, e.g. ComfyUI's models/selva).", group="model"))
    rank: int = field(default=16, metadata=_opt(
        "LoRA rank r (16 is the common default; higher ranks help only with larger datasets).",
        group="model", low=1))
    alpha: float | None = field(default=None, metadata=_opt(
        "LoRA alpha; the update is scaled by alpha/rank (alpha/sqrt(rank) with --rsLoRA). "
        "Default: the LoRA library's fixed alpha, 32 (scale 2 at rank 16; the learning rate "
        "then carries over between ranks), or 8 with --rsLoRA.", group="model", low=0.0,
        low_open=True))
    target: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata=_opt(
        "Layers to adapt: presets of the LoRA library (qkv, attn = qkv + linear1, ffn, "
        "attn+ffn, all) or module-name patterns (a dotted suffix such as attn.qkv, a glob, or "
        "re:REGEX); several allowed, e.g. --target attn ffn.", metavar="PATTERN",
        group="model", check=lambda v: bool(v) and all(isinstance(x, str) and x for x in v),
        want="one or more module patterns or presets",
        nargs="+"))
    init: str = field(default="standard", metadata=_opt(
        "Adapter initialisation: 'standard' (A Kaiming-uniform, B = 0), 'gaussian' "
        "(A ~ N(0, 1/r), B = 0) or 'pissa' (principal singular directions of W; use a lower "
        "--lr).", choices=INIT_MODES, group="model"))
    lora_kind: str = field(default="lora", metadata=_opt(
        "Kind of adapter: 'lora' (W + s B A), 'dora' (weight-decomposed: the direction of "
        "W + s B A rescaled by a learned per-output magnitude), 'loraxs' (W + s B R A with "
        "A, B the frozen top-rank SVD basis of W and only the rank x rank core R trained), "
        "'ia3' (learned per-channel scales of each layer's output; of the input on ffn.w2; "
        "--rank and --alpha unused) or 'hra' (W H, H a product of --rank Householder "
        "reflections; even rank).",
        choices=tuple(kind_names()),
        group="model"))
    rslora: bool = field(default=False, metadata=_opt(
        "Rank-stabilised scaling alpha/sqrt(rank) instead of alpha/rank. Keep alpha fixed "
        "when you change the rank; do not combine with alpha = 2*rank.",
        "--rsLoRA", "--use_rslora", group="model"))
    adapter_dtype: str = field(default="auto", metadata=_opt(
        "Storage of adapter_final.safetensors: 'fp32' (exact), 'q16' (half the size: 16-bit "
        "fixed point on the SVD directions of the change, a small relative error), 'fp16' (half "
        "the size, a larger error), or 'auto': fp32, except q16 for PiSSA, whose file is a "
        "rank-2r delta (q16 brings it back to the size of a rank-r file). Checkpoint adapters "
        "use auto; "
        "training states stay fp32 for exact resume.",
        choices=ADAPTER_DTYPES, group="model"))
    lora_dropout: float = field(default=0.0, metadata=_opt(
        "Dropout on the adapter's input while training (0 = off); a regulariser for small "
        "datasets. Generation never drops.", "--lora-dropout", group="model", low=0.0, high=1.0,
        high_open=True))
    method: str = field(default="lora", metadata=_opt(
        "What to train: 'lora' (an adapter on the generator) or 'textual_inversion' (every "
        "network frozen; new vectors for --token in the CLIP-text and FLAN-T5 tables, written "
        "as OUTPUT_DIR/embedding_final.safetensors, a few KB).", choices=METHODS,
        group="model"))
    token: str | None = field(default=None, metadata=_opt(
        "Textual inversion: the new word, e.g. '<metal-scrape>' (not a real word). Training "
        "prompts are the clips' prompts with --init_word replaced by it (or it appended).",
        group="model"))
    init_word: str | None = field(default=None, metadata=_opt(
        "Textual inversion: the vectors start as this word's embeddings (default: the "
        "token's own text pieces).", group="model"))
    num_vectors: int = field(default=1, metadata=_opt(
        "Textual inversion: vectors per tower the token stands for.", group="model", low=1))

    # --- optimisation -------------------------------------------------------------------------
    lr: float = field(default=1e-4, metadata=_opt("Peak learning rate of AdamW.", low=0.0,
                                                  low_open=True))
    lora_plus_ratio: float = field(default=1.0, metadata=_opt(
        "LoRA+: learning rate of the B matrices = lr * ratio (1 = plain LoRA; the LoRA+ paper "
        "uses 4-16).", low=0.0, low_open=True))
    weight_decay: float = field(default=0.0, metadata=_opt(
        "AdamW weight decay (0: decay would pull PiSSA adapters toward zero and with them "
        "the pre-trained principal components).", low=0.0))
    steps: int = field(default=2000, metadata=_opt(
        "Number of OPTIMISER steps (each consumes batch_size x grad_accum x GPUs clips).", low=1))
    warmup_steps: int | None = field(default=None, metadata=_opt(
        f"Linear warm-up length in optimiser steps (default: {WARMUP_FRACTION:.0%}% of "
        "--steps, rounded).", low=0))
    lr_schedule: str = field(default="cosine", metadata=_opt(
        "After warm-up: 'cosine' decay to 0 at --steps, or 'constant'.",
        "--lr-schedule", choices=LR_SCHEDULES))
    batch_size: int = field(default=4, metadata=_opt(
        "Clips per forward pass on each GPU/process.", low=1))
    grad_accum: int = field(default=1, metadata=_opt(
        "Micro-batches accumulated per optimiser step (effective batch = batch_size x "
        "grad_accum x processes).", low=1))
    grad_clip: float = field(default=1.0, metadata=_opt(
        "Clip the global gradient norm of the adapter to this value (0 disables).", low=0.0))
    timestep_mode: str = field(default="logit_normal", metadata=_opt(
        "Distribution of the flow time t: 'logit_normal' (sigmoid of N(0, 1), as SelVA was "
        "trained) or 'uniform'.", choices=TIMESTEP_MODES))
    cond_dropout: float = field(default=0.1, metadata=_opt(
        "Probability of replacing the video (and, independently, the text) condition by the "
        "model's empty condition; keeps classifier-free guidance working (pre-training used "
        "0.1).", low=0.0, high=1.0, high_open=True))
    precision: str = field(default="auto", metadata=_opt(
        "'auto' = bf16 autocast on a GPU that supports it, fp32 on CPU (with a half "
        "--base_dtype: autocast in that dtype); 'bf16' or 'fp32' to force. Adapter weights are "
        "always kept in fp32.", choices=AUTOCAST_CHOICES))
    base_dtype: str = field(default="auto", metadata=_opt(
        "Storage of the frozen generator weights while training: 'fp32', 'bf16' or 'fp16' "
        "(half the memory of the largest tensors; adapters stay fp32 and every forward runs "
        "under autocast in that dtype, so --precision must be auto or the same dtype; fp16, "
        "for GPUs without native bf16, scales the loss), or 'auto' = bf16 on a GPU with native "
        "bf16 (Ampere or newer) unless --precision fp32, else fp32. The adapter file is the "
        "same whatever the base dtype (it holds no base weights), and a run may be resumed "
        "with another one.",
        "--base-dtype", choices=BASE_DTYPE_CHOICES))
    gradient_checkpointing: bool = field(default=False, metadata=_opt(
        "Recompute most of each MM-DiT block in the backward pass instead of keeping its "
        "activations (the few outputs dear to recompute are kept): much less memory per clip "
        "for some extra time; the gradients are the same. Works "
        "with several GPUs (torchrun / DDP) as it is, and a run may be resumed with it "
        "switched on or off.",
        "--gradient-checkpointing"))
    seed: int = field(default=42, metadata=_opt(
        "Seed of everything random (adapter init, clip order, noise, t); the same seed and "
        "data give the same adapter."))
    device: str = field(default="auto", metadata=_opt(
        "'auto' (cuda if available, else cpu), 'cpu' or 'cuda'. Under torchrun each process "
        "uses its LOCAL_RANK GPU.", check=device_problem))

    # --- checkpoints, validation, samples -----------------------------------------------------
    save_every: int = field(default=500, metadata=_opt(
        "Save a resumable checkpoint (adapter + training state) every N optimiser steps.",
        group="checkpoints", low=1))
    keep_checkpoints: int = field(default=0, metadata=_opt(
        "Keep only the newest N step checkpoints (0 keeps all).", group="checkpoints", low=0))
    keep_best: bool = field(default=False, metadata=_opt(
        "With --keep_checkpoints: also keep the checkpoint with the lowest validation loss "
        "(manifest.json lists each checkpoint's).", group="checkpoints"))
    resume: bool = field(default=False, metadata=_opt(
        "Continue from the newest checkpoint in OUTPUT_DIR/checkpoints (bit-identical to an "
        "uninterrupted run on the same machine).", group="checkpoints"))
    resume_from: int | None = field(default=None, metadata=_opt(
        "Continue from the checkpoint of this optimiser step (listed in "
        "OUTPUT_DIR/checkpoints/manifest.json); later ones are replaced as it trains on.",
        "--resume-from", metavar="STEP", group="checkpoints", primary=True, low=0))
    val_every: int = field(default=250, metadata=_opt(
        "Compute the deterministic validation loss every N optimiser steps (and at every "
        "checkpoint).", "--val-every", group="checkpoints", low=1))
    sample_steps: int = field(default=SAMPLING_STEPS, metadata=_opt(
        "Euler steps of the audio samples written at each checkpoint.", group="checkpoints", low=1))
    cfg_strength: float = field(default=CFG_STRENGTH, metadata=_opt(
        "Classifier-free guidance of the checkpoint samples (SelVA's default).",
        group="checkpoints", low=0.0))
    samples: bool = field(default=True, metadata=_opt(
        "Write a generated validation clip (WAV + spectrogram PNG) at every checkpoint and at "
        "the end (--no-samples to save the time).", group="checkpoints"))
    surgery: bool = field(default=True, metadata=_opt(
        "After training, try spectral surgery on the adapter and keep it only if the "
        "validation loss does not get worse (--no-surgery to skip).", group="checkpoints"))

    # --- run modes -----------------------------------------------------------------------------
    demo: bool = field(default=False, metadata=_opt(
        "Self-contained demo: teach the shipped tiny model a sound class it never heard "
        "(synthetic clips, no downloads) in about a minute on a CPU; OUTPUT_DIR/listen has "
        "true | base | adapted WAVs and demo_report.json.", group="run"))
    overwrite: bool = field(default=False, metadata=_opt(
        "Start a new run in an OUTPUT_DIR that already holds one: its checkpoints, log, "
        "samples, curves and adapter are deleted (the feature cache is kept). Without it such "
        "a folder needs --resume.", group="run"))
    quiet: bool = field(default=False, metadata=_opt(
        "Only warnings and the final summary on the console.", group="run"))

    # ------------------------------------------------------------------------------------------
    @property
    def effective_alpha(self) -> float:
        """alpha, or the LoRA library's documented default for the scaling rule."""
        from selva_core.model.lora.config import DEFAULT_ALPHA, DEFAULT_ALPHA_RSLORA

        if self.alpha is not None:
            return float(self.alpha)
        return DEFAULT_ALPHA_RSLORA if self.rslora else DEFAULT_ALPHA

    @property
    def warmup(self) -> int:
        """--warmup_steps, or its default: WARMUP_FRACTION of --steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(WARMUP_FRACTION * self.steps) if isinstance(self.steps, int) else 0

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)

    @property
    def cache_path(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        return RunFolder(self.output_path).default_cache_dir

    def validate(self, require_data: bool = True) -> TrainConfig:
        """Raise one clear ``ValueError`` listing every impossible setting; return self.

        ``require_data=False`` for library use with examples given directly (no data_dir).
        """
        problems: list[str] = []
        if require_data and not self.demo and not self.data_dir:
            problems.append("--data_dir is required (or use --demo for the synthetic demo)")
        train_config_schema().check_object(self, problems)
        if (isinstance(self.steps, int) and self.warmup_steps is not None
                and self.warmup_steps >= self.steps > 0):
            problems.append(f"--warmup_steps ({self.warmup_steps}) must be smaller than "
                            f"--steps ({self.steps})")
        if self.lora_kind in ("loraxs", "ia3", "hra") and str(self.init).startswith("pissa"):
            problems.append(f"--lora_kind {self.lora_kind} makes its own start; use --init "
                            "standard with it")
        if self.lora_kind == "hra" and isinstance(self.rank, int) and self.rank % 2:
            problems.append(f"--lora_kind hra needs an even --rank (reflections in equal pairs "
                            f"start as the identity), got {self.rank}")
        if (self.base_dtype in ("bf16", "fp16") and self.precision != "auto"
                and self.precision != self.base_dtype):
            problems.append(f"--base_dtype {self.base_dtype} needs every forward under "
                            f"{self.base_dtype} autocast, but --precision is {self.precision}; "
                            "use --precision auto with it (or --base_dtype fp32 to keep the "
                            "frozen weights in fp32)")
        if self.method == "textual_inversion" and not self.token:
            problems.append("--method textual_inversion needs --token (e.g. '<metal-scrape>')")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from ``to_dict`` output; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        return cls(**data)


# Fields that define the adapter's shape and meaning: a checkpoint can only be resumed when all
# of them match the current run.
ADAPTER_IDENTITY_FIELDS = ("variant", "lora_kind", "rank", "alpha", "target", "init", "rslora",
                           "duration")

_GROUP_TITLES = {
    "data": "data",
    "model": "model and adapter",
    "training": "optimisation",
    "checkpoints": "checkpoints, validation, samples and surgery",
    "run": "run modes",
}


def build_arg_parser(prog: str = "train_lora.py") -> argparse.ArgumentParser:
    """The CLI: one option per :class:`TrainConfig` field, help text from its metadata."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Train a LoRA adapter for SelVA (text-steered video-to-audio) on a folder of clips. "
            "Writes OUTPUT_DIR/adapter_final.safetensors, loadable in ComfyUI with the SelVA "
            "LoRA loader. Multi-GPU: torchrun --nproc_per_node N train_lora.py ... "
            "Several experiments from one JSON file (base settings + overrides, features "
            "extracted once, reruns resume): train_lora.py --sweep SWEEP.json "
            "(see docs/EVALUATION.md, Sweeps)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train_config_schema().add_arguments(parser, groups=_GROUP_TITLES)
    return parser


@functools.cache
def train_config_schema() -> Schema:
    """The declaration of every :class:`TrainConfig` field (from its ``_opt`` metadata): the
    checks of :meth:`TrainConfig.validate`, the CLI and the docs' flag table."""
    return dataclass_schema(TrainConfig, label="--{name}")


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse the command line into a validated :class:`TrainConfig` (errors exit with usage)."""
    parser = build_arg_parser()
    ns = parser.parse_args(argv)
    cfg = TrainConfig(**vars(ns))
    try:
        return cfg.validate()
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
