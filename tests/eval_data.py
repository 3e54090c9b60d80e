"""Shared set-up of the evaluation tests: tiny clips (one without sound), tiny adapters."""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import numpy as np
import torch

from selva_core.data.synthetic import make_synthetic_dataset, write_video
from selva_core.pipeline import SelvaPipeline

CLIP_SECONDS = 1.2
SILENT = "aaa_silent"  # sorts first: a clip without sound before the others


@functools.lru_cache(maxsize=1)
def tiny_pipeline() -> SelvaPipeline:
    """The tiny model with random weights (fast; independent of the bundled files), built once
    per test session: evaluation, sweeps and nodes leave the pipeline they are given as found
    (adapters and training go onto forks)."""
    if "trained" in inspect.signature(SelvaPipeline.tiny).parameters:
        return SelvaPipeline.tiny(seed=0, trained=False)
    return SelvaPipeline.tiny(seed=0)


def make_clips(folder: Path, *, silent: bool = True) -> Path:
    """bounce_000 and hum_000 (with sound) and, first by name, a video without any sound."""
    make_synthetic_dataset(folder, clips_per_class=1, duration=CLIP_SECONDS, seed=0)
    if silent:
        frames = np.zeros((int(CLIP_SECONDS * 25), 64, 64, 3), np.uint8)
        frames[:, 16:40, 20:44] = 220
        write_video(folder / f"{SILENT}.mp4", frames, fps=25)
    return folder


def make_adapter(path: Path, pipe: SelvaPipeline, seed: int = 1,
                 variant: str | None = None) -> Path:
    """A rank-2 adapter on a fork of ``pipe``'s generator with random non-zero factors."""
    from safetensors.torch import load_file, save_file

    from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter

    gen = pipe.fork().generator
    attach_lora(gen, LoRAConfig(rank=2, targets=("attn",)))
    g = torch.Generator().manual_seed(seed)
    for p in gen.parameters():
        if p.requires_grad:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.5)
    save_adapter(gen, path)
    if variant is not None:  # pretend it was trained for another model variant
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata())
        meta["model_variant"] = variant
        save_file(load_file(str(path)), str(path), metadata=meta)
    return path


def spec_text(data_dir: Path, out: Path, adapters: list[dict], **extra) -> str:
    spec = {"data_dir": str(data_dir), "output_dir": str(out), "steps": 1, "seeds": [3],
            "adapters": adapters, **extra}
    return json.dumps(spec)


def make_tiny_clap(folder: Path) -> Path:
    """A tiny random CLAP model folder (transformers format; made locally, no download)."""
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
        RobertaTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    text = ClapTextConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=80)
    audio = ClapAudioConfig(hidden_size=64, patch_embeds_hidden_size=32, depths=[1, 1],
                            num_attention_heads=[2, 2], window_size=8, spec_size=256,
                            num_mel_bins=64, projection_hidden_size=32)
    torch.manual_seed(0)
    ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                         projection_dim=16)).save_pretrained(folder)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({ch: 4 + i for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz")})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(
        folder)
    ClapFeatureExtractor(feature_size=64, truncation="rand_trunc").save_pretrained(folder)
    return folder
