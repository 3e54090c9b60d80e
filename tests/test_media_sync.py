"""Sound and picture are aligned on the container's timeline by their streams' start times."""

from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np
import pytest

from selva_core.data import scan_dataset
from selva_core.data.audio import load_mono
from selva_core.data.video import decode_frames, probe_video

SR = 16000
FPS = 25


def mux_offset_clip(path, *, video_start: float, audio_start: float, event: float,
                    seconds: float = 2.0, audio_codec: str = "pcm_s16le"):
    """A clip whose picture flashes white and whose sound clicks at the same container time
    ``event``; the video stream starts at ``video_start`` s, the audio at ``audio_start`` s."""
    with av.open(str(path), mode="w") as container:
        vs = container.add_stream("mpeg4", rate=FPS)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        vs.codec_context.time_base = Fraction(1, FPS)
        vs.bit_rate = 2_000_000
        astream = container.add_stream(audio_codec, rate=SR, layout="mono")
        first = round(video_start * FPS)
        for i in range(round(seconds * FPS)):
            level = 255 if abs((first + i) / FPS - event) < 1e-6 else 0
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), level, np.uint8),
                                               format="rgb24")
            frame.pts = first + i
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode(None):
            container.mux(packet)
        n = round(seconds * SR)
        t = audio_start + np.arange(n) / SR
        wave = 0.01 * np.sin(2 * np.pi * 220 * t)
        click = np.abs(t - event) < 0.005
        wave[click] = 0.8 * np.sin(2 * np.pi * 1000 * t[click])
        step = 1024
        for at in range(0, n, step):
            frame = av.AudioFrame.from_ndarray(
                wave[None, at: at + step].astype(np.float32), format="flt", layout="mono")
            frame.sample_rate = SR
            frame.pts = round(audio_start * SR) + at
            frame.time_base = Fraction(1, SR)
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)
    return path


def click_time(wave: np.ndarray) -> float:
    return float(np.argmax(np.abs(wave))) / SR


def flash_frame(frames) -> int:
    return int(frames.float().mean(dim=(1, 2, 3)).argmax())


@pytest.mark.parametrize(
    "video_start, audio_start",
    [(0.0, 0.5), (0.48, 0.0), (0.0, 0.0)],
    ids=["audio-late", "audio-early", "together"],
)
def test_audio_and_picture_are_aligned_by_stream_start(tmp_path, caplog, video_start,
                                                       audio_start):
    event = 1.2  # container time of the flash and the click
    path = mux_offset_clip(tmp_path / "clip.mkv", video_start=video_start,
                           audio_start=audio_start, event=event)
    info = probe_video(path)
    assert info.audio_offset == pytest.approx(audio_start - video_start, abs=2e-3)
    with caplog.at_level(logging.INFO, logger="selva_core.data.audio"):
        wave = load_mono(path, SR, from_video=True)
    frames = decode_frames(path)
    expected = event - video_start  # seconds after the first picture
    assert flash_frame(frames) == round(expected * FPS)
    assert click_time(wave) == pytest.approx(expected, abs=0.006)
    messages = [r.getMessage() for r in caplog.records]
    if audio_start > video_start:
        assert any("clip.mkv: the audio track starts 0.500 s after the picture" in m
                   for m in messages)
    elif audio_start < video_start:
        assert any("clip.mkv: the audio track starts 0.480 s before the picture" in m
                   for m in messages)
    else:
        assert not any("the audio track starts" in m for m in messages)


def test_scan_measures_a_late_audio_track_from_the_picture(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    mux_offset_clip(folder / "clip.mkv", video_start=0.0, audio_start=0.5, event=1.2)
    (clip,) = scan_dataset(folder, on_bad_clip="stop")
    wave = load_mono(clip.video_path, SR, from_video=True)
    assert wave.shape[0] == pytest.approx(2.5 * SR, abs=2)  # 0.5 s of silence + 2 s of sound
    assert np.abs(wave[: round(0.5 * SR) - 1]).max() == 0.0
