"""SelVA Feature Extractor: video (core VIDEO, or IMAGE frames + fps) + prompt -> features.

Frames are resampled by timestamps to 25 fps, optionally masked, and keyed by content
(:mod:`selva_core.frames`; a video file is decoded as uint8, never as float); the pipeline's
``extract_features`` does the rest.
"""

from __future__ import annotations

import math
import os

from comfy_api.latest import io

from .common import (
    CATEGORY,
    FEATURES_TYPE,
    MODEL_TYPE,
    SelvaModel,
    node_error,
    on_device,
    raise_if_interrupted,
    reported,
)

NODE = "Feature Extractor"
SelvaModelType = io.Custom(MODEL_TYPE)
SelvaFeaturesType = io.Custom(FEATURES_TYPE)

_CACHE = None


def content_cache():
    """The process-wide in-memory cache of extracted features, keyed by the frames' content
    (a few entries, on the CPU). Features of clip files on disk live in the package's one
    feature cache (:mod:`selva_core.feature_cache`, training and evaluation); a node's frames
    may come from no file, so they are keyed here by what they hold."""
    global _CACHE
    if _CACHE is None:
        from selva_core.frames import ContentCache

        _CACHE = ContentCache(max_entries=8)
    return _CACHE


class SelvaFeatureExtractor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelVAFeatureExtractor",
            display_name="SelVA Feature Extractor",
            category=CATEGORY,
            description=(
                "Turns a video and a prompt into SelVA conditioning features. Connect a core "
                "VIDEO, or IMAGE frames with their fps (e.g. from Video Helper Suite). Frames "
                "are resampled by timestamp to 25 fps; an optional mask greys out what should "
                "not make the sound."),
            inputs=[
                SelvaModelType.Input("model", tooltip="The SelVA model (from the Model "
                                                      "Loader) whose encoders read the "
                                                      "video."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What should sound (SelVA steers the video encoder "
                                        "with it)."),
                io.Video.Input("video", optional=True,
                               tooltip="A core VIDEO (Load Video). Leave empty when frames "
                                       "are connected."),
                io.Image.Input("images", optional=True,
                               tooltip="Video frames as an IMAGE batch; needs fps."),
                io.Float.Input("fps", default=0.0, min=0.0, max=1000.0, step=0.001,
                               tooltip="Frame rate of 'images' (0: only valid with 'video', "
                                       "whose own rate is used)."),
                io.Float.Input("duration", default=0.0, min=0.0, max=3600.0, step=0.01,
                               tooltip="Seconds of video to use from the start (0: the whole "
                                       "video)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional MASK (1 = the sound source), one for the clip "
                                      "or one per frame, same size as the video."),
                io.Float.Input("mask_strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How far the unmasked area is faded to grey (0: mask "
                                       "ignored)."),
            ],
            outputs=[
                SelvaFeaturesType.Output(display_name="features"),
                io.String.Output(display_name="info"),
            ],
        )

    @classmethod
    def execute(cls, model: SelvaModel, prompt: str, video=None, images=None, fps: float = 0.0,
                duration: float = 0.0, mask=None, mask_strength: float = 1.0) -> io.NodeOutput:
        from selva_core.frames import content_key

        prepared = _prepare(video, images, fps, duration, mask, mask_strength)
        key = content_key(model.uid, prepared.frames, prompt, prepared.duration)
        cache = content_cache()
        features = cache.get(key)
        info = prepared.summary
        if features is None:
            raise_if_interrupted()
            with on_device(model) as pipeline, reported(NODE):
                features = pipeline.extract_features(prepared.frames, prompt,
                                                     duration=prepared.duration)
            features = features.to("cpu")
            cache.put(key, features)
        else:
            info += " (cached)"
        return io.NodeOutput(features, info)


def _video_file(video) -> str | None:
    """The file behind a core VIDEO (Load Video's ``VideoFromFile``), when there is one."""
    source = getattr(video, "get_stream_source", None)
    path = source() if callable(source) else None
    if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
        return os.fspath(path)
    return None


def _prepare(video, images, fps: float, duration: float, mask, mask_strength: float):
    """25 fps frames from the connected source; one clear error otherwise.

    A video file is decoded from the file (uint8); other VIDEO values (made from frames) and
    IMAGE batches are resampled from their frames.
    """
    from selva_core.frames import FrameInputError, prepare_frames, prepare_video_file

    if video is not None and images is not None:
        raise node_error(NODE, "images", "both a video and frames are connected",
                         "connect only one of 'video' and 'images'")
    if video is not None:
        path = _video_file(video)
        if path is not None:
            with reported(NODE, "video"):
                try:
                    return prepare_video_file(path, duration=duration, mask=mask,
                                              mask_strength=mask_strength)
                except FrameInputError as exc:
                    if exc.input_name == "images":
                        exc.input_name = "video"
                    raise
        with reported(NODE, "video", fix="load the video again or connect its frames"):
            components = video.get_components()
        frames, rate = components.images, float(components.frame_rate)
        if frames is None or len(frames) == 0:
            raise node_error(NODE, "video", "the video has no frames",
                             "load a video with at least one frame")
        with reported(NODE):
            try:
                return prepare_frames(frames, rate, duration=duration, mask=mask,
                                      mask_strength=mask_strength)
            except FrameInputError as exc:
                if exc.input_name in ("images", "fps"):
                    exc.input_name = "video"
                raise
    if images is None:
        raise node_error(NODE, "images", "no frames: neither 'video' nor 'images' is connected",
                         "connect a VIDEO (Load Video) or an IMAGE batch with its fps")
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise node_error(NODE, "fps", f"frames need their frame rate, got fps = {fps!r}",
                         "set fps to the video's frame rate (e.g. the 'fps' output of Get "
                         "Video Components or the loaded_fps of Video Helper Suite)")
    if len(images) == 0:
        raise node_error(NODE, "images", "the IMAGE batch has no frames",
                         "connect a batch with at least one frame")
    with reported(NODE):
        return prepare_frames(images, fps, duration=duration, mask=mask,
                              mask_strength=mask_strength)


NODES = [SelvaFeatureExtractor]
