"""SelVA Sampler: features -> AUDIO at the model's rate, any duration (``pipeline.render``)."""

from __future__ import annotations

import math

from comfy_api.latest import io

from selva_core.variants import CFG_STRENGTH, NEGATIVE_PROMPT, SAMPLING_STEPS

from .common import (
    CATEGORY,
    FEATURES_TYPE,
    MODEL_TYPE,
    SelvaModel,
    hidden_node_id,
    node_error,
    on_device,
    progress_callback,
    reported,
)

NODE = "Sampler"
SelvaModelType = io.Custom(MODEL_TYPE)
SelvaFeaturesType = io.Custom(FEATURES_TYPE)


class SelvaSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelVASampler",
            display_name="SelVA Sampler",
            category=CATEGORY,
            description=(
                "Generates audio for the features (Euler flow matching with CFG). Clips longer "
                "than the window are rendered in overlapping windows joined by a crossfade. "
                "Output: AUDIO at the model's sample rate, one item per clip."),
            inputs=[
                SelvaModelType.Input("model", tooltip="The SelVA model (from the Model "
                                                      "Loader, or with adapters from a LoRA "
                                                      "Loader)."),
                SelvaFeaturesType.Input("features", tooltip="The video's features from the "
                                                            "Feature Extractor."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Empty: the prompt the features were extracted with. "
                                        "Otherwise replaces the generator's text condition "
                                        "(the video features keep their extraction prompt; "
                                        "re-extract for a full change)."),
                io.String.Input("negative_prompt", multiline=True, default=NEGATIVE_PROMPT,
                                tooltip="Sounds to steer away from (replaces the empty text "
                                        "in the unconditional branch)."),
                io.Float.Input("duration", default=0.0, min=0.0, max=3600.0, step=0.01,
                               tooltip="Seconds of audio (0: the features' duration; at most "
                                       "that)."),
                io.Int.Input("steps", default=SAMPLING_STEPS, min=1, max=500,
                             tooltip="Euler steps per window."),
                io.Float.Input("cfg", default=CFG_STRENGTH, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance strength."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1,
                             control_after_generate=True,
                             tooltip="Noise seed: the same seed gives the same sound."),
                io.Float.Input("window_s", default=8.0, min=0.0, max=3600.0, step=0.01,
                               tooltip="Window length for long clips (the models were trained "
                                       "on 8 s); 0: one window for the whole clip."),
            ],
            outputs=[io.Audio.Output(display_name="audio")],
        )

    @classmethod
    def execute(cls, model: SelvaModel, features, prompt: str = "",
                negative_prompt: str = NEGATIVE_PROMPT, duration: float = 0.0,
                steps: int = SAMPLING_STEPS, cfg: float = CFG_STRENGTH, seed: int = 0,
                window_s: float = 8.0) -> io.NodeOutput:
        from selva_core.prompting import with_prompt

        pipeline = model.pipeline
        duration = _check_duration(duration, features)
        window = _check_window(window_s)
        if features.variant != pipeline.variant.name:
            raise node_error(NODE, "features",
                             f"the features were extracted by a {features.variant} model but "
                             f"this model is {pipeline.variant.name}",
                             "extract them with the same Model Loader")
        if not math.isfinite(float(cfg)):
            raise node_error(NODE, "cfg", f"must be a finite number, got {cfg!r}")
        callback = progress_callback(hidden_node_id(cls))
        with on_device(model) as pipe:
            if prompt.strip():
                with reported(NODE, "prompt"):
                    features = with_prompt(pipe, features, prompt)
            with reported(NODE):
                wave = pipe.render(
                    features, seed=int(seed), num_steps=int(steps), cfg_strength=float(cfg),
                    negative_prompt=negative_prompt if negative_prompt.strip() else None,
                    duration=duration, window_s=window if window else duration,
                    progress_callback=callback,
                )
        audio = {"waveform": wave.detach().float().cpu().unsqueeze(1).contiguous(),
                 "sample_rate": int(pipeline.sample_rate)}
        return io.NodeOutput(audio)


def _check_duration(duration: float, features) -> float:
    duration = float(duration)
    if not math.isfinite(duration) or duration < 0:
        raise node_error(NODE, "duration", f"must be 0 or a positive number of seconds, got "
                         f"{duration!r}")
    if duration == 0:
        return float(features.duration)
    if duration > features.duration + 1e-6:
        raise node_error(
            NODE, "duration", f"{duration:g} s is longer than the features "
            f"({features.duration:.2f} s)", "extract features for a longer stretch of video "
            f"(duration 0 in the Feature Extractor takes the whole video) or set duration to "
            f"at most {features.duration:.2f}")
    return duration


def _check_window(window_s: float) -> float:
    from selva_core.variants import min_duration

    window_s = float(window_s)
    if not math.isfinite(window_s) or window_s < 0 or 0 < window_s < 2 * min_duration():
        raise node_error(NODE, "window_s", f"{window_s!r} s is not a usable window",
                         f"use 0 (one window) or at least {2 * min_duration():.2f} s "
                         "(8 s is what the models were trained on)")
    return window_s


NODES = [SelvaSampler]
