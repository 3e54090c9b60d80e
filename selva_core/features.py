"""Conditioning features of one or more clips, ready for the generator, and their file format.

Extracting features needs the big encoders (TextSynch, FLAN-T5, CLIP text); sampling needs
only the generator. :class:`ConditionFeatures` is the hand-over between the two, so features
can be cached on disk (``.safetensors`` with metadata) and the encoders freed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .atomic import save_safetensors_atomic

FORMAT_NAME = "selva.condition_features"
FORMAT_VERSION = 1


@dataclass
class ConditionFeatures:
    """What the generator is conditioned on, for a batch of B clips.

    ``text_clip_f`` (B, 77, text_dim): per-token CLIP-text features of the prompts.
    ``sync_f`` (B, sync_N, sync_dim): TextSynch features of the 25 fps frames.
    ``clip_f`` (B, clip_N, clip_dim) or ``None``: CLIP-visual features; ``None`` means "use
    the generator's learned empty CLIP token", which is what SelVA inference always does.
    ``duration`` is the clip length in seconds the features were extracted for, ``prompts``
    one prompt per clip and ``variant`` the model variant they belong to.
    """

    text_clip_f: torch.Tensor
    sync_f: torch.Tensor
    duration: float
    prompts: list[str]
    variant: str
    clip_f: torch.Tensor | None = None
    extra: dict[str, str] = field(default_factory=dict)  # free-form metadata (e.g. source file)

    def __post_init__(self):
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        self.prompts = [str(p) for p in self.prompts]
        self.duration = float(self.duration)
        if not math.isfinite(self.duration) or self.duration <= 0:
            raise ValueError(f"ConditionFeatures.duration must be > 0 s, got {self.duration!r}")
        tensors = {"text_clip_f": self.text_clip_f, "sync_f": self.sync_f}
        if self.clip_f is not None:
            tensors["clip_f"] = self.clip_f
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"ConditionFeatures.{name} must be a (B, N, D) tensor, got {got}")
        batch = {name: t.shape[0] for name, t in tensors.items()}
        if len(set(batch.values())) != 1:
            raise ValueError(f"ConditionFeatures tensors disagree on the batch size: {batch}")
        if len(self.prompts) != self.batch_size:
            raise ValueError(
                f"ConditionFeatures has {self.batch_size} clips but {len(self.prompts)} prompts"
            )

    @property
    def batch_size(self) -> int:
        return int(self.text_clip_f.shape[0])

    @property
    def prompt(self) -> str:
        """The first prompt (the usual batch of one)."""
        return self.prompts[0]

    @property
    def device(self) -> torch.device:
        return self.sync_f.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A copy with every tensor moved (and floating tensors cast when ``dtype`` is given)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(
            self,
            text_clip_f=move(self.text_clip_f),
            sync_f=move(self.sync_f),
            clip_f=move(self.clip_f),
            prompts=list(self.prompts),
            extra=dict(self.extra),
        )

    # --- file format ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the features as ``.safetensors`` (atomically); metadata holds the rest."""

        path = Path(path)
        tensors = {"text_clip_f": self.text_clip_f, "sync_f": self.sync_f}
        if self.clip_f is not None:
            tensors["clip_f"] = self.clip_f
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "variant": self.variant,
            "duration": repr(self.duration),
            "prompts": json.dumps(self.prompts, ensure_ascii=False),
            "prompt": self.prompt,
            "extra": json.dumps(self.extra, ensure_ascii=False),
        }
        return save_safetensors_atomic(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu"):
        """Read features written by :meth:`save`; a foreign or newer file raises ValueError."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"condition features file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc})") from exc
        if metadata.get("format") != FORMAT_NAME:
            raise ValueError(
                f"{path} is not a SelVA condition-features file (format "
                f"{metadata.get('format')!r}); extract the features again."
            )
        version = int(metadata.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{path} was written by a newer version (format {version} > {FORMAT_VERSION}); "
                f"update the pack or extract the features again."
            )
        missing = [k for k in ("text_clip_f", "sync_f") if k not in tensors]
        if missing:
            raise ValueError(f"{path} lacks the tensors {missing}; extract the features again.")
        return cls(
            text_clip_f=tensors["text_clip_f"],
            sync_f=tensors["sync_f"],
            clip_f=tensors.get("clip_f"),
            duration=float(metadata["duration"]),
            prompts=json.loads(metadata["prompts"]),
            variant=metadata["variant"],
            extra=json.loads(metadata.get("extra", "{}")),
        )
