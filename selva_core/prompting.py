"""Change the text condition of extracted features without the video.

SelVA's features carry two text-dependent parts: the CLIP-text tokens that condition the
generator directly, and the sync features, which TextSynch computed from the frames steered
by the FLAN-T5 prompt. Without the frames only the first can be redone: :func:`with_prompt`
re-encodes the CLIP-text tokens for a new prompt and keeps the sync features (still steered by
the extraction prompt). Front ends offer this as a quick "prompt override"; for a full change
of the steering, extract the features again with the new prompt.

:func:`adapter_training_info` reads what an adapter file says about its training (the
prompt(s) and the settings), for front ends that show it next to the loaded adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .features import ConditionFeatures

PROMPT_KEYS = ("prompt", "prompts", "train_prompts", "training_prompts")


def with_prompt(pipeline, features: ConditionFeatures,
                prompt: str | Sequence[str]) -> ConditionFeatures:
    """A copy of ``features`` whose CLIP-text tokens are those of ``prompt``.

    ``prompt``: one prompt for every clip, or one per clip. The input features are not
    changed; the returned ones live where the input ones do.
    """
    prompts = [prompt] * features.batch_size if isinstance(prompt, str) else [str(p) for p in
                                                                             prompt]
    if len(prompts) != features.batch_size:
        raise ValueError(f"{len(prompts)} prompts for {features.batch_size} clips; give 1 or "
                         f"{features.batch_size}")
    clip_f = pipeline.encode_prompt(prompts)[0]
    extra = dict(features.extra)
    extra["extraction_prompts"] = " | ".join(features.prompts)
    return replace(features, text_clip_f=clip_f.to(features.text_clip_f.device,
                                                    features.text_clip_f.dtype),
                   prompts=prompts, extra=extra)


def adapter_training_info(metadata: Mapping[str, str],
                          source: str = "adapter") -> tuple[str, dict[str, Any]]:
    """(training prompt(s) joined by newlines, settings) from an adapter file's metadata.

    Settings: the adapter's own fields as the LoRA library reads them (model variant, kind,
    rank, alpha, targets, ...; old files included) plus what the trainer stored (steps,
    learning rate, ...). The prompt comes from the first of :data:`PROMPT_KEYS` the trainer
    stored; empty when the file does not say.
    """
    from .model.lora.io import parse_adapter_metadata

    info = parse_adapter_metadata(metadata, source)
    user = dict(info.user)
    settings: dict[str, Any] = {
        "model_variant": info.model_variant, "lora_kind": info.kind, "init": info.init,
        "rank": info.rank, "alpha": info.alpha, "use_rslora": info.use_rslora,
        "targets": list(info.targets), "storage": info.storage,
    }
    settings.update({k: v for k, v in user.items() if k not in PROMPT_KEYS})
    prompt: Any = next((user[k] for k in PROMPT_KEYS if user.get(k)), "")
    if isinstance(prompt, (list, tuple)):
        prompt = "\n".join(dict.fromkeys(str(p) for p in prompt))
    elif isinstance(prompt, dict):
        prompt = "\n".join(dict.fromkeys(str(p) for p in prompt.values()))
    return str(prompt), settings


__all__ = ["adapter_training_info", "with_prompt"]
