"""Writing generated sound onto video: MP4s with the sound muxed onto the source video (WAV files:
:func:`selva_core.audio.wav.write_wav`).

The writers are atomic (:func:`selva_core.atomic.atomic_path`): a file either appears
complete or not at all, and an existing file is replaced only by a finished one.

:func:`mux_audio` keeps the source picture as it is when it can: the video packets are copied
into the MP4 without decoding (no quality loss, fast). When the picture must be cut to the
sound's length, or its codec cannot be copied into MP4, the frames are decoded and encoded
again (H.264 when this FFmpeg has it, else MPEG-4 Part 2). The sound is encoded as AAC and
starts with the picture's first frame.

Web pages (the evaluation's listening page) need a picture that browsers play: with
``browser=True`` a picture in a codec Chromium and Firefox do not play from MP4 (e.g. MPEG-4
Part 2, the demo's clips) is re-encoded to H.264 (VP9 or AV1 when this FFmpeg lacks libx264);
H.264, VP9 and AV1 pictures are still copied. :func:`browser_video` makes such a copy of a
clip with its own sound, :func:`write_poster` a small JPEG of a clip's first frame.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from .atomic import atomic_path
from .audio.wav import channels_first

logger = logging.getLogger(__name__)

#: The picture is re-encoded (to cut it) only when it outlasts the sound by more than this.
TRIM_TOLERANCE_S = 0.05
_VIDEO_ENCODERS = ("libx264", "h264", "mpeg4")
#: Picture codecs that Chromium and Firefox both play from an MP4 file.
BROWSER_CODECS = frozenset({"h264", "vp9", "av1"})
_BROWSER_ENCODERS = ("libx264", "h264", "libvpx-vp9", "libsvtav1")
_LAYOUTS = {1: "mono", 2: "stereo"}  # the channel counts audio.wav.channels_first lets through


def _video_encoder(browser: bool = False) -> str:
    available = av.codecs_available
    names = _BROWSER_ENCODERS if browser else _VIDEO_ENCODERS
    found = next((c for c in names if c in available), None)
    if found is None:
        raise ValueError(f"this FFmpeg build has none of the encoders {', '.join(names)}")
    return found


def picture_codec(path: str | os.PathLike) -> str:
    """The codec name of the first video stream of ``path`` (e.g. ``h264``, ``mpeg4``)."""
    with av.open(str(path)) as source:
        return source.streams.video[0].codec_context.name


def _copy_video(source, stream, output, out) -> None:
    """Copy ``stream``'s packets into ``out`` unchanged, shifted to start at time 0."""
    first = None
    for packet in source.demux(stream):
        if packet.dts is None and packet.pts is None:
            continue  # the flushing packet
        if first is None:
            first = packet.dts if packet.dts is not None else packet.pts
        if packet.pts is not None:
            packet.pts -= first
        if packet.dts is not None:
            packet.dts -= first
        packet.stream = out
        output.mux(packet)


def _video_stream_for_encoding(stream, output, browser: bool = False):
    rate = stream.average_rate or Fraction(25)
    out = output.add_stream(_video_encoder(browser), rate=rate)
    # 4:2:0 pictures need even sizes (libx264 refuses odd ones): drop the last row / column
    out.width = max(2, stream.codec_context.width // 2 * 2)
    out.height = max(2, stream.codec_context.height // 2 * 2)
    out.pix_fmt = "yuv420p"
    out.codec_context.time_base = 1 / Fraction(rate)
    if out.codec_context.name == "mpeg4":
        out.bit_rate = 8_000_000
    return out


def _encode_video(source, stream, output, out, until: float | None) -> None:
    """Decode ``stream`` and encode its frames (up to ``until`` seconds) into ``out``."""
    rate = float(stream.average_rate or 25)
    origin = None
    index = 0
    for frame in source.decode(stream):
        t = frame.time if frame.time is not None else index / rate
        origin = t if origin is None else origin
        if until is not None and t - origin >= until - 1e-6:
            break
        image = frame.reformat(width=out.width, height=out.height, format="yuv420p")
        image.pts = index
        image.time_base = out.codec_context.time_base
        index += 1
        for packet in out.encode(image):
            output.mux(packet)
    for packet in out.encode(None):
        output.mux(packet)


def _audio_stream(output, channels: int, sample_rate: int):
    return output.add_stream("aac", rate=int(sample_rate), layout=_LAYOUTS[channels])


def _encode_audio(output, stream, audio: np.ndarray, sample_rate: int) -> None:
    fmt = stream.codec_context.format.name
    data = np.ascontiguousarray(audio)
    if not fmt.endswith("p"):  # packed formats take one (1, samples * channels) row
        data = np.ascontiguousarray(data.T).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=_LAYOUTS[audio.shape[0]])
    frame.sample_rate = int(sample_rate)
    frame.pts = 0
    for packet in stream.encode(frame):
        output.mux(packet)
    for packet in stream.encode(None):
        output.mux(packet)


def mux_audio(
    video_path: str | os.PathLike,
    wave: torch.Tensor | np.ndarray,
    sample_rate: int,
    out_path: str | os.PathLike,
    *,
    trim: bool = True,
    browser: bool = False,
) -> Path:
    """Write ``out_path`` (MP4): the picture of ``video_path`` with ``wave`` as its sound.

    ``wave``: (samples,) or (channels, samples) float in [-1, 1] at ``sample_rate``. Any sound
    the source video had is replaced. With ``trim`` (default) a picture longer than the sound
    is cut to it (re-encoded); otherwise, and when the lengths agree, the video packets are
    copied unchanged. ``browser``: the MP4 is for a web page, so a picture browsers do not
    play (codec not in ``BROWSER_CODECS``) is re-encoded to one they do, and the index goes
    first (``faststart``: a page reads the duration without loading the file). An unreadable
    source raises ``BadClipError`` naming it.
    """
    from .data.errors import BadClipError
    from .data.video import REENCODE_HINT, probe_video

    video_path, out_path = Path(video_path), Path(out_path)
    audio = channels_first(wave)
    sound_s = audio.shape[1] / float(sample_rate)
    info = probe_video(video_path)  # an unreadable source: BadClipError naming it
    cut = trim and info.duration > sound_s + TRIM_TOLERANCE_S
    must_encode = cut or (browser and picture_codec(video_path) not in BROWSER_CODECS)
    attempts = ("encode",) if must_encode else ("copy", "encode")
    options = {"movflags": "+faststart"} if browser else {}
    for attempt in attempts:
        try:
            with atomic_path(out_path) as tmp, av.open(str(video_path)) as source, \
                    av.open(str(tmp), mode="w", format="mp4", options=options) as output:
                stream = source.streams.video[0]
                # every stream is added before the first packet is written (the MP4 header)
                if attempt == "copy":
                    video_out = output.add_stream_from_template(stream)
                else:
                    video_out = _video_stream_for_encoding(stream, output, browser)
                audio_out = _audio_stream(output, audio.shape[0], sample_rate)
                if attempt == "copy":
                    _copy_video(source, stream, output, video_out)
                else:
                    _encode_video(source, stream, output, video_out, sound_s if cut else None)
                _encode_audio(output, audio_out, audio, sample_rate)
            return out_path
        except (av.FFmpegError, OSError, ValueError) as exc:
            if attempt == attempts[-1]:
                raise BadClipError(
                    video_path, f"cannot write {out_path} with its picture ({exc})",
                    REENCODE_HINT,
                ) from None
            logger.info("%s: the picture cannot be copied into MP4 (%s); re-encoding it",
                        video_path, exc)
    raise AssertionError("unreachable")


def browser_video(video_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """An MP4 of ``video_path`` that browsers play: the picture copied when its codec is in
    ``BROWSER_CODECS`` (the file itself is copied when it is already such an MP4), else
    re-encoded; its own sound as AAC (mono at the file's rate; silence when it has none)."""
    import shutil

    from .data.audio import load_mono
    from .data.video import probe_video

    video_path, out_path = Path(video_path), Path(out_path)
    info = probe_video(video_path)
    if video_path.suffix.lower() == ".mp4" and picture_codec(video_path) in BROWSER_CODECS:
        with atomic_path(out_path) as tmp:
            shutil.copyfile(video_path, tmp)
        return out_path
    rate = info.audio_sample_rate or 16000
    wave = None
    if info.has_audio and info.audio_problem is None:
        try:
            wave = load_mono(video_path, rate, from_video=True)
        except Exception as exc:  # the picture still belongs on the page
            logger.info("%s: its sound is left out of the page's copy (%s)", video_path, exc)
    if wave is None or wave.size == 0:
        wave = np.zeros(max(1, round(info.duration * rate)), np.float32)
    return mux_audio(video_path, wave, rate, out_path, trim=False, browser=True)


def write_poster(video_path: str | os.PathLike, out_path: str | os.PathLike,
                 width: int = 320) -> Path:
    """A JPEG of the first frame of ``video_path``, ``width`` pixels wide at most (what a page
    shows before the video is played)."""
    with av.open(str(video_path)) as source:
        frame = next(source.decode(source.streams.video[0]))
    w = min(width, frame.width) // 2 * 2 or 2
    h = max(2, round(frame.height * w / frame.width) // 2 * 2)
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    image = frame.reformat(width=w, height=h, format="yuvj420p")
    image.pts = 0
    data = b"".join(bytes(p) for p in [*ctx.encode(image), *ctx.encode(None)])
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_bytes(data)
    return out_path


__all__ = ["BROWSER_CODECS", "TRIM_TOLERANCE_S", "browser_video", "mux_audio",
           "picture_codec", "write_poster"]
