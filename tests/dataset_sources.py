"""Small sources with one defect each, for the dataset preparation and inspection tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from scipy.signal import butter, sosfilt

from selva_core.data.synthetic import write_video

SR = 16000
FPS = 25
SIZE = 32


def noise(seconds: float, level: float = 0.1, seed: int = 0, sr: int = SR) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(round(seconds * sr))
            ).astype(np.float32)


def lowpassed(x: np.ndarray, cutoff: float, sr: int = SR) -> np.ndarray:
    return sosfilt(butter(10, cutoff, fs=sr, output="sos"), x).astype(np.float32)


def moving(seconds: float, base: int = 80, fps: float = FPS) -> np.ndarray:
    """Grey frames with a bar sweeping across (steady motion, no cuts)."""
    n = round(seconds * fps)
    frames = np.full((n, SIZE, SIZE, 3), base, np.uint8)
    for i in range(n):
        frames[i, :, i % SIZE] = 255 - base
    return frames


def clip(path: Path, audio: np.ndarray, seconds: float | None = None, *, sr: int = SR,
         frames: np.ndarray | None = None) -> Path:
    """A video with ``audio`` ((samples,) or (channels, samples)); AVI keeps PCM exact."""
    audio = np.asarray(audio, np.float32)
    seconds = seconds if seconds is not None else audio.shape[-1] / sr
    frames = frames if frames is not None else moving(seconds)
    return write_video(path, frames, fps=FPS, audio=audio, sample_rate=sr)


def flashes(seconds: float, times: list[float], delay: float, sr: int = SR
            ) -> tuple[np.ndarray, np.ndarray]:
    """A disc flashing for one frame at ``times``; a 2-4 kHz burst ``delay`` s after each."""
    n = round(seconds * FPS)
    frames = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    audio = np.zeros(round(seconds * sr), np.float32)
    burst = noise(0.06, 0.5, seed=3)
    burst = sosfilt(butter(4, (2000, 4000), btype="band", fs=sr, output="sos"), burst)
    burst *= np.exp(-np.arange(burst.size) / (0.015 * sr))
    for t in times:
        frames[round(t * FPS), 8:24, 8:24] = 255
        a = round((t + delay) * sr)
        audio[a:a + burst.size] += burst[: audio.size - a]
    audio += noise(seconds, 0.002, seed=4)
    return frames, audio


def write_timed(path: Path, frames: np.ndarray, times: list[Fraction], *,
                audio: np.ndarray | None = None, sr: int = SR, rotation: int | None = None,
                time_base: Fraction = Fraction(1, 90000)) -> Path:
    """Frames at exact ``times`` (variable rate), an optional display rotation, AAC sound."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"qp": "0",
                                                                     "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], \
            "yuv420p"
        stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sr, layout="mono")
        for image, t in zip(frames, times):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = int(t / time_base)
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if astream is not None:
            frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = sr, 0
            for packet in astream.encode(frame):
                container.mux(packet)
            for packet in astream.encode(None):
                container.mux(packet)
    return path


def vfr_times(seconds: float, seed: int = 0) -> list[Fraction]:
    rng = np.random.default_rng(seed)
    times, t = [], Fraction(0)
    while t < seconds:
        times.append(t)
        t += Fraction(int(rng.integers(15, 70)), 1000)
    return times


def long_source(path: Path, seconds: float = 14.0, cut: float = 8.0,
                silent: tuple[float, float] = (2.0, 4.5)) -> Path:
    """Two shots (a hard cut at ``cut`` s) under noise with a silent stretch."""
    frames = moving(seconds)
    frames[round(cut * FPS):, :, :] = np.clip(frames[round(cut * FPS):].astype(int) + 120, 0,
                                              255).astype(np.uint8)
    audio = noise(seconds, 0.1, seed=1)
    a, b = (round(s * SR) for s in silent)
    audio[a:b] = 0.0
    return clip(path, audio, seconds, frames=frames)
