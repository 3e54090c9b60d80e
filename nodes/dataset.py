"""SelVA Dataset Prepare, SelVA Dataset Inspector and SelVA VAE Round Trip: the dataset
tools of ``python -m selva_core.dataset`` as nodes.

They run exactly the library code the command runs (:mod:`selva_core.dataset`): Prepare cuts
videos into a training folder (progress per source; Cancel stops between clips, every clip
written is whole and a rerun continues), the Inspector writes the folder's report and returns
its summary and the clips x checks image, the Round Trip passes AUDIO through the model's VAE
and vocoder so one can hear what the model can represent. Relative folders: sources and the
inspected folder under ComfyUI's input folder, the prepared folder under its output folder.
"""

from __future__ import annotations

import os

from comfy_api.latest import io

from .common import (
    CATEGORY,
    MODEL_TYPE,
    SelvaModel,
    hidden_node_id,
    node_error,
    on_device,
    progress_callback,
    reported,
    resolve_user_path,
)

SelvaModelType = io.Custom(MODEL_TYPE)
PREPARE_NODE = "Dataset Prepare"
INSPECT_NODE = "Dataset Inspector"
ROUND_TRIP_NODE = "VAE Round Trip"


def _variant_options() -> list[str]:
    from selva_core.variants import VARIANTS

    return list(VARIANTS)


def _summary_image(array):
    """A uint8 (H, W, 3) array as an IMAGE (1, H', W', 3), cells enlarged for the UI."""
    import torch

    tensor = torch.from_numpy(array.copy()).float() / 255.0
    scale = max(1, 256 // max(1, max(array.shape[:2])))
    tensor = tensor.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return tensor.unsqueeze(0)


def _needs_encoder(node: str, model: SelvaModel) -> None:
    if getattr(model.pipeline.vae, "encoder", None) is None:
        raise node_error(node, "model", "the model was loaded without the VAE encoder that the "
                         "round trip needs", "turn on 'for_training' in the Model Loader")


class SelvaDatasetPrepare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from selva_core.dataset.defaults import DEFAULT_LUFS
        from selva_core.variants import DEFAULT_VARIANT

        return io.Schema(
            node_id="SelVADatasetPrepare",
            display_name="SelVA Dataset Prepare",
            category=CATEGORY,
            description=(
                "Cuts videos of any length into training clips where the sound is active and "
                "no shot cut falls inside (CLIP.mp4 with the original frames, CLIP.wav "
                "loudness-normalised at the variant's rate, prompts.txt), as `python -m "
                "selva_core.dataset prepare`. Cancel stops between clips; run again to "
                "continue (done clips are skipped). Follow with the Dataset Inspector."),
            inputs=[
                io.String.Input("sources", multiline=True, default="my_footage",
                                tooltip="Video files or folders (searched recursively), one per "
                                        "line; relative paths are under ComfyUI's input "
                                        "folder."),
                io.String.Input("output_folder", default="selva_training_clips",
                                tooltip="Where the clips go (relative: under the output "
                                        "folder); not inside a source folder."),
                io.Combo.Input("variant", options=_variant_options(), default=DEFAULT_VARIANT,
                               tooltip="The model the clips are for (its audio rate)."),
                io.Float.Input("duration", default=8.0, min=0.64, max=60.0, step=0.01,
                               tooltip="Clip length in seconds (8: the official models' "
                                       "training window)."),
                io.Float.Input("hop", default=0.0, min=0.0, max=600.0, step=0.01,
                               tooltip="Seconds between clip starts; 0: the duration (no "
                                       "overlap)."),
                io.Float.Input("lufs", default=DEFAULT_LUFS, min=-60.0, max=-5.0, step=0.5,
                               tooltip="Loudness of the prepared sound (ITU-R BS.1770)."),
                io.Boolean.Input("compress", default=False,
                                 tooltip="Gentle compressor and peak limiter in the copies."),
                io.Int.Input("max_clips", default=0, min=0, max=100000,
                             tooltip="At most this many clips per source (0: no limit)."),
                io.String.Input("prompt", default="",
                                tooltip="Prompt of every clip; empty: the source's line in a "
                                        "prompts.txt beside it, else its folder's name."),
            ],
            outputs=[io.String.Output(display_name="summary"),
                     io.String.Output(display_name="folder")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, sources: str, output_folder: str, variant: str, duration: float = 8.0,
                hop: float = 0.0, lufs: float = -23.0, compress: bool = False,
                max_clips: int = 0, prompt: str = "") -> io.NodeOutput:
        from selva_core.dataset.prepare import PrepareSettings, prepare

        paths = [resolve_user_path(line, "input") for line in sources.splitlines()
                 if line.strip()]
        if not paths:
            raise node_error(PREPARE_NODE, "sources", "no source given",
                             "give video files or folders, one per line")
        out = resolve_user_path(output_folder or "selva_training_clips", "output")
        settings = PrepareSettings(variant=variant, duration=float(duration),
                                   hop=float(hop) or None, lufs=float(lufs),
                                   compress=bool(compress), max_clips=int(max_clips) or None,
                                   prompt=prompt.strip() or None)
        callback = progress_callback(hidden_node_id(cls))
        with reported(PREPARE_NODE, "sources"):
            result = prepare(paths, out, settings, progress=callback)
        lines = [f"{len(result.written)} clip(s) written, {len(result.existing)} already there, "
                 f"from {result.seconds:.0f} s of footage into {out}"]
        lines += [f"skipped {error}" for error in result.skipped]
        return io.NodeOutput("\n".join(lines), out)


class SelvaDatasetInspector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from selva_core.dataset.defaults import ROUND_TRIP_LSD_DB

        return io.Schema(
            node_id="SelVADatasetInspector",
            display_name="SelVA Dataset Inspector",
            category=CATEGORY,
            description=(
                "Checks every clip of a training folder (clipping, noise, silence, DC, band "
                "limit, stereo, length, frame rate, rotation, audio/video offset, near "
                "duplicates and, with a model, the VAE round trip) and writes "
                "dataset_report.json / .html into it, as `python -m selva_core.dataset "
                "inspect`. Outputs the summary and an image of clips x checks (red: "
                "flagged)."),
            inputs=[
                io.String.Input("folder", default="selva_training_clips",
                                tooltip="The training folder; relative: under the input "
                                        "folder, else under the output folder (where Dataset "
                                        "Prepare writes)."),
                io.Float.Input("duration", default=8.0, min=0.64, max=60.0, step=0.01,
                               tooltip="Training window in seconds: shorter clips are "
                                       "flagged."),
                SelvaModelType.Input("model", optional=True,
                                     tooltip="For the VAE round trip (load it with "
                                             "'for_training' on); none: no round trip."),
                io.Float.Input("max_round_trip_lsd", default=ROUND_TRIP_LSD_DB, min=0.0,
                               max=200.0, step=0.5,
                               tooltip="Flag clips whose round-trip log-spectral distance is "
                                       "above this (dB)."),
            ],
            outputs=[io.String.Output(display_name="report"),
                     io.Image.Output(display_name="summary_image"),
                     io.String.Output(display_name="html_path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, folder: str, duration: float = 8.0, model: SelvaModel | None = None,
                max_round_trip_lsd: float = 12.0) -> io.NodeOutput:
        from selva_core.dataset.inspect import inspect_folder
        from selva_core.dataset.report import format_summary, summary_image, write_report

        path = resolve_user_path(folder, "input")
        if not os.path.isdir(path):
            path = resolve_user_path(folder, "output")
        if not os.path.isdir(path):
            raise node_error(INSPECT_NODE, "folder", f"{folder} is not a folder under input/ "
                             "or output/", "give the training folder's path")
        callback = progress_callback(hidden_node_id(cls))
        if model is not None:
            _needs_encoder(INSPECT_NODE, model)
            with on_device(model) as pipe, reported(INSPECT_NODE, "folder"):
                result = inspect_folder(path, duration=float(duration), pipeline=pipe,
                                        max_lsd=float(max_round_trip_lsd), progress=callback)
        else:
            with reported(INSPECT_NODE, "folder"):
                result = inspect_folder(path, duration=float(duration), progress=callback)
        with reported(INSPECT_NODE, "folder"):
            paths = write_report(result)
        return io.NodeOutput(format_summary(result), _summary_image(summary_image(result)),
                             str(paths["html"]))


class SelvaVaeRoundTrip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelVAVaeRoundTrip",
            display_name="SelVA VAE Round Trip",
            category=CATEGORY,
            description=(
                "Passes audio through the model's VAE (encode, decode) and vocoder: what the "
                "model can represent of it, the ceiling of any adapter trained on it. Outputs "
                "the reconstruction at the model's rate and its log-spectral distance (dB) to "
                "the input."),
            inputs=[
                SelvaModelType.Input("model", tooltip="A model loaded with 'for_training' on "
                                                      "(the VAE encoder is needed)."),
                io.Audio.Input("audio", tooltip="Any rate and channel count; mixed to mono."),
            ],
            outputs=[io.Audio.Output(display_name="audio"),
                     io.String.Output(display_name="lsd_db")],
        )

    @classmethod
    def execute(cls, model: SelvaModel, audio) -> io.NodeOutput:
        import torch

        from selva_core.dataset.roundtrip import round_trip

        _needs_encoder(ROUND_TRIP_NODE, model)
        wave = audio["waveform"]
        if wave.ndim != 3 or wave.shape[-1] == 0:
            raise node_error(ROUND_TRIP_NODE, "audio", f"expected a (batch, channels, samples) "
                             f"waveform, got shape {tuple(wave.shape)}")
        callback = progress_callback(hidden_node_id(cls))
        outs, lsds = [], []
        with on_device(model) as pipe, reported(ROUND_TRIP_NODE, "audio"):
            for i, item in enumerate(wave):
                result = round_trip(pipe, item.float().cpu().numpy(), int(audio["sample_rate"]))
                outs.append(torch.from_numpy(result.audio))
                lsds.append(result.lsd_db)
                callback(i + 1, wave.shape[0])
        length = max(o.shape[0] for o in outs)
        batch = torch.stack([torch.nn.functional.pad(o, (0, length - o.shape[0])) for o in outs])
        return io.NodeOutput({"waveform": batch.unsqueeze(1).contiguous(),
                              "sample_rate": int(model.pipeline.sample_rate)},
                             ", ".join(f"{v:.2f}" for v in lsds))


NODES: list[type] = [SelvaDatasetPrepare, SelvaDatasetInspector, SelvaVaeRoundTrip]
