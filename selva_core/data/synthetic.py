"""A synthetic demo dataset of moving shapes with matching sounds, and a small clip writer.

Six classes whose sound follows the picture, so a model can learn the link:

* ``bounce``: a circle flies around and bounces off the walls; the audio is a short click
  (decaying 2 kHz burst) at the exact moment of every wall hit.
* ``hum``: a square glides up and down; the audio is a tone whose pitch follows the shape's
  height (higher on screen = higher pitch), phase-continuous.
* ``blip``: a disc blinks on a few times (0.12-0.3 s each); while it is visible the audio is a
  hiss (band-passed noise, 1-6 kHz) that starts with the blink and fades fast.
* ``beep``: a square lights up two or three times (0.25-0.55 s each); while it is lit the audio
  is a steady buzz (noise band-passed to 2-4 kHz), switched on and off with 5 ms ramps.
* ``swell``: a circle swells and shrinks (0.5-1.2 cycles a second); the audio is a rush (noise
  band-passed to 3-6 kHz) whose amplitude follows the square of the circle's growth.
* ``burst``: a disc flashes on a few times (0.25-0.5 s each); while it is visible the audio is
  a hiss (band-passed noise, 1-6 kHz) that starts with the flash and fades slowly (time
  constant: the flash's length) until it goes dark. No part of the tiny base
  (``scripts/train_tiny_base.py``) hears this class (:data:`HELD_OUT_CLASS`): the demo's LoRA
  teaches it.

``beep`` and ``swell`` are the classes the tiny base's generator learns
(:data:`BASE_CLASSES`): their events are visible as large changes of the picture and last long
enough to survive SelVA's sync-token layout (a click's 5 ms do not), their sound lies in the
1-6 kHz band that :mod:`selva_core.audio.sync` scores, and it is noise, not a tone: the tiny
codec plays noise bands (a tone of one or two mel bins comes back near-silent). The codec
learns every class but ``burst`` (:data:`CODEC_CLASSES`); ``bounce``, ``hum`` and ``blip`` are
there for it and for tests. ``burst``'s events last as long as ``beep``'s, so an adapter can
place them (``blip``'s are too short for SelVA's sync-token layout at this scale, see
``benchmarks/bench_sync.py --layout_ceiling``), and its sound (a fading hiss from 1 kHz up) is
one the base's generator does not make.

Everything is drawn from ``numpy.random.default_rng((seed, class, clip))``, where ``class`` is
the class's position in :data:`CLASS_PROMPTS` (so a class's clips do not depend on which other
classes are asked for), and the dataset is deterministic given the seed (byte for byte).
Clips are MPEG-4 Part 2 ``.mp4`` files with the audio muxed in as AAC, plus a ``prompts.txt``.
:func:`write_video` and :func:`write_tone_clip` are also what the tests use to make small clips
of any layout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np

from selva_core.atomic import atomic_path, write_text_atomic
from selva_core.audio import wav
from selva_core.data.prompts import PROMPTS_FILENAME

log = logging.getLogger(__name__)

CLASS_PROMPTS: dict[str, str] = {
    "bounce": "a ball bouncing off the walls, with a sharp click at every hit",
    "hum": "a square gliding up and down with a humming tone that rises as it climbs",
    "blip": "a disc blinking on and off, with a short blip of hiss at every blink",
    "beep": "a square lighting up now and then, with a steady buzz for as long as it is lit",
    "swell": "a circle swelling and shrinking, with a rushing noise that grows louder as it grows",
    "burst": "a disc flashing on and off, with a burst of hissing noise at every flash",
}
#: The classes the shipped tiny base's generator is trained on, the one held out of every part
#: of it (the demo's LoRA teaches it), and those its codec (VAE + vocoder) learns.
BASE_CLASSES = ("beep", "swell")
HELD_OUT_CLASS = "burst"
CODEC_CLASSES = tuple(c for c in CLASS_PROMPTS if c != HELD_OUT_CLASS)
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_INT_FORMATS = {"s16": np.int16, "s32": np.int32}
_CONTAINER_AUDIO = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".avi": "pcm_s16le",
                    ".webm": "libopus"}


def _video_codec(suffix: str) -> str:
    # MPEG-4 Part 2 everywhere but WebM: in every FFmpeg build, fast, and byte-for-byte
    # deterministic (libx264 output was seen to vary between runs at identical input).
    return "libvpx" if suffix == ".webm" else "mpeg4"


def write_video(
    path: str | Path,
    frames: np.ndarray,
    *,
    fps: float = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    audio_codec: str | None = None,
) -> Path:
    """Encode ``frames`` (uint8 ``(T, H, W, 3)``) and optional ``audio`` (float
    ``(channels, samples)`` or ``(samples,)``) into ``path``; the container follows the suffix.

    Written to a hidden temporary name and renamed into place (atomic).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CONTAINER_AUDIO:
        raise ValueError(f"{path}: cannot write a {suffix!r} video; use one of "
                         f"{', '.join(_CONTAINER_AUDIO)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    rate = round(fps) if float(fps).is_integer() else Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format=None) as container:
        vstream = container.add_stream(_video_codec(suffix), rate=rate)
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        time_base = 1 / Fraction(rate)
        vstream.codec_context.time_base = time_base
        vstream.bit_rate = 4_000_000  # near-lossless at demo sizes; files stay small
        astream = None
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            audio = audio[None] if audio.ndim == 1 else audio
            layout = _LAYOUTS[audio.shape[0]]
            codec = audio_codec or _CONTAINER_AUDIO[suffix]
            astream = container.add_stream(codec, rate=sample_rate, layout=layout)
            if codec == "aac":  # the default two-loop coder is ~10x slower for no gain here
                astream.codec_context.options = {"aac_coder": "fast"}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            # explicit timestamps: some muxers (AVI) mis-guess them otherwise
            frame.pts = index
            frame.time_base = time_base
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode(None):
            container.mux(packet)
        if astream is not None:
            fmt = astream.codec_context.format.name
            data = np.ascontiguousarray(audio)
            if fmt.rstrip("p") in _INT_FORMATS:
                dtype = _INT_FORMATS[fmt.rstrip("p")]
                data = (np.clip(data, -1, 1) * np.iinfo(dtype).max).astype(dtype)
            elif fmt.rstrip("p") == "dbl":
                data = data.astype(np.float64)
            if not fmt.endswith("p"):  # packed formats take one (1, samples*channels) row
                data = np.ascontiguousarray(data.T).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = 0
            for packet in astream.encode(frame):
                container.mux(packet)
            for packet in astream.encode(None):
                container.mux(packet)
    return path


def _triangle(u: np.ndarray) -> np.ndarray:
    """Unfolded coordinate in wall-widths -> position in [0, 1] after reflections."""
    frac = np.mod(u, 2.0)
    return np.where(frac <= 1.0, frac, 2.0 - frac)


def _bounce_clip(rng, n_frames, fps, size, n_samples, sample_rate):
    radius = size * rng.uniform(0.08, 0.14)
    span = size - 2 * radius
    speed = rng.uniform(0.6, 1.4, size=2) * rng.choice([-1, 1], size=2)  # wall-widths / s
    u0 = rng.uniform(0, 1, size=2)
    t_frames = np.arange(n_frames) / fps
    pos = radius + span * _triangle(u0[None] + speed[None] * t_frames[:, None])  # (T, 2) x, y
    hits: list[float] = []
    duration = n_samples / sample_rate
    for axis in range(2):  # wall hits: the unfolded coordinate crosses an integer
        v = speed[axis]
        first = math.floor(u0[axis]) + 1 if v > 0 else math.ceil(u0[axis]) - 1
        k = first
        while True:
            t = (k - u0[axis]) / v
            if t >= duration:
                break
            hits.append(t)
            k += 1 if v > 0 else -1
    audio = np.zeros(n_samples, np.float32)
    click_len = int(0.03 * sample_rate)
    tt = np.arange(click_len) / sample_rate
    click = (np.sin(2 * np.pi * 2000 * tt) * np.exp(-tt / 0.006)).astype(np.float32)
    for t in hits:
        i = int(round(t * sample_rate))
        n = min(click_len, n_samples - i)
        audio[i: i + n] += 0.6 * click[:n]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    bg, fg = rng.integers(0, 60, size=3), rng.integers(160, 256, size=3)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for i, (x, y) in enumerate(pos):
        mask = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
        frames[i] = np.where(mask[..., None], fg, bg)
    return frames, audio


def _hum_clip(rng, n_frames, fps, size, n_samples, sample_rate):
    half = size * rng.uniform(0.08, 0.12)
    rate_hz = rng.uniform(0.3, 0.8)
    phase = rng.uniform(0, 2 * np.pi)
    x_c = rng.uniform(half, size - half)
    low, high = half, size - half

    def height(t):  # y of the square's centre (pixels from the top)
        return low + (high - low) * 0.5 * (1 + np.sin(2 * np.pi * rate_hz * t + phase))

    t_audio = np.arange(n_samples) / sample_rate
    up = 1.0 - (height(t_audio) - low) / (high - low)  # 1 at the top, 0 at the bottom
    freq = 200.0 + 600.0 * up
    ph = 2 * np.pi * np.cumsum(freq) / sample_rate
    audio = (0.3 * np.sin(ph) + 0.08 * np.sin(2 * ph)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    bg, fg = rng.integers(0, 60, size=3), rng.integers(160, 256, size=3)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for i, y in enumerate(height(np.arange(n_frames) / fps)):
        mask = (np.abs(xx - x_c) <= half) & (np.abs(yy - y) <= half)
        frames[i] = np.where(mask[..., None], fg, bg)
    return frames, audio


def _band_noise(rng, n_samples, sample_rate, low_hz, high_hz):
    """White noise band-passed to ``low_hz``-``high_hz`` (zeroed FFT bins), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))
    freqs = np.fft.rfftfreq(n_samples, 1 / sample_rate)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    noise = np.fft.irfft(spectrum, n_samples)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _flash_clip(rng, n_frames, fps, size, n_samples, sample_rate, *, shortest, longest, fade):
    """A disc lit for a few spans (one per equal slot of the clip, ``shortest``-``longest`` s
    each), a 1-6 kHz hiss while it is lit: 5 ms attack, then exponential decay with time
    constant ``fade`` times the span's length."""
    duration = n_samples / sample_rate
    count = max(1, int(rng.integers(2, 5) * duration / 2.0 + 0.5))
    slot = duration / count  # one flash per slot, placed at random inside it
    radius = size * rng.uniform(0.15, 0.25)
    centre = rng.uniform(radius, size - radius, size=2)
    noise = _band_noise(rng, n_samples, sample_rate, 1000, 6000)
    envelope = np.zeros(n_samples)
    visible = np.zeros(n_frames, bool)
    t_frames = np.arange(n_frames) / fps
    for k in range(count):
        length = rng.uniform(shortest, min(longest, 0.8 * slot))
        start = k * slot + rng.uniform(0, slot - length)
        i0, i1 = round(start * sample_rate), min(n_samples, round((start + length) * sample_rate))
        tt = np.arange(i1 - i0) / sample_rate
        envelope[i0:i1] = np.minimum(1.0, tt / 0.005) * np.exp(-tt / (fade * length))
        visible |= (t_frames >= start) & (t_frames < start + length)
    audio = (0.25 * envelope * noise).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    bg, fg = rng.integers(0, 60, size=3), rng.integers(160, 256, size=3)
    mask = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    frames[:] = bg.astype(np.uint8)
    frames[visible] = np.where(mask[..., None], fg, bg).astype(np.uint8)
    return frames, audio


def _on_spans(rng, duration: float, low: float, high: float) -> list[tuple[float, float]]:
    """Two or three (start, end) spans of ``low``-``high`` s, one per equal slot of the clip
    (a 2 s clip), placed at random inside it."""
    count = max(1, int(rng.integers(2, 4) * duration / 2.0 + 0.5))
    slot = duration / count
    spans = []
    for k in range(count):
        length = rng.uniform(low, min(high, 0.85 * slot))
        start = k * slot + rng.uniform(0, slot - length)
        spans.append((start, start + length))
    return spans


def _beep_clip(rng, n_frames, fps, size, n_samples, sample_rate):
    spans = _on_spans(rng, n_samples / sample_rate, 0.25, 0.55)
    half = size * rng.uniform(0.15, 0.25)
    centre = rng.uniform(half, size - half, size=2)
    t = np.arange(n_samples) / sample_rate
    envelope = np.zeros(n_samples)
    for start, end in spans:  # flat while lit, 5 ms ramps at both ends
        envelope = np.maximum(envelope, np.clip(np.minimum(t - start, end - t) / 0.005, 0, 1))
    audio = (0.2 * envelope * _band_noise(rng, n_samples, sample_rate, 2000, 4000))
    audio = audio.astype(np.float32)
    t_frames = np.arange(n_frames) / fps
    lit = np.zeros(n_frames, bool)
    for start, end in spans:
        lit |= (t_frames >= start) & (t_frames < end)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    bg, fg = rng.integers(0, 60, size=3), rng.integers(160, 256, size=3)
    mask = (np.abs(xx - centre[0]) <= half) & (np.abs(yy - centre[1]) <= half)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    frames[:] = bg.astype(np.uint8)
    frames[lit] = np.where(mask[..., None], fg, bg).astype(np.uint8)
    return frames, audio


def _swell_clip(rng, n_frames, fps, size, n_samples, sample_rate):
    rate_hz = rng.uniform(0.5, 1.2)
    phase = rng.uniform(0, 2 * np.pi)
    low, high = size * 0.05, size * rng.uniform(0.3, 0.45)
    centre = rng.uniform(high, size - high, size=2) if size > 2 * high else np.full(2, size / 2)

    def grown(t):  # 0 (smallest) .. 1 (largest)
        return 0.5 * (1 + np.sin(2 * np.pi * rate_hz * t + phase))

    t = np.arange(n_samples) / sample_rate
    noise = _band_noise(rng, n_samples, sample_rate, 3000, 6000)
    audio = (0.25 * grown(t) ** 2 * noise).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    bg, fg = rng.integers(0, 60, size=3), rng.integers(160, 256, size=3)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for i, g in enumerate(grown(np.arange(n_frames) / fps)):
        radius = low + (high - low) * g
        mask = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
        frames[i] = np.where(mask[..., None], fg, bg)
    return frames, audio


_MAKERS = {"bounce": _bounce_clip, "hum": _hum_clip,
           "blip": partial(_flash_clip, shortest=0.12, longest=0.3, fade=0.5),
           "beep": _beep_clip, "swell": _swell_clip,
           "burst": partial(_flash_clip, shortest=0.25, longest=0.5, fade=1.0)}
_CLASS_INDEX = {name: i for i, name in enumerate(CLASS_PROMPTS)}


def synthetic_clip(
    name: str, clip: int, *, duration: float = 2.0, seed: int = 0, fps: int = 25,
    size: int = 64, sample_rate: int = 16000,
) -> tuple[np.ndarray, np.ndarray]:
    """One clip of class ``name`` in memory: (frames uint8 (T, H, W, 3), audio float32 (L,)),
    exactly what :func:`make_synthetic_dataset` encodes for ``<name>_<clip>``."""
    if name not in _MAKERS:
        raise ValueError(f"unknown synthetic class {name!r}; choose from {sorted(_MAKERS)}")
    rng = np.random.default_rng((seed, _CLASS_INDEX[name], clip))
    n_frames = max(1, round(duration * fps))
    n_samples = round(duration * sample_rate)
    return _MAKERS[name](rng, n_frames, fps, size, n_samples, sample_rate)


def make_synthetic_dataset(
    out_dir: str | Path,
    *,
    classes: Sequence[str] = ("bounce", "hum"),
    clips_per_class: int = 4,
    duration: float = 2.0,
    seed: int = 0,
    fps: int = 25,
    size: int = 64,
    sample_rate: int = 16000,
    write_wav: bool = False,
) -> list[Path]:
    """Write ``clips_per_class`` clips per class as ``<class>_<nnn>.mp4`` plus ``prompts.txt``.

    ``write_wav`` also writes the exact audio as a same-stem ``.wav`` (which then takes
    priority over the muxed AAC track). Returns the video paths, sorted by name.
    """
    unknown = [c for c in classes if c not in _MAKERS]
    if unknown:
        raise ValueError(f"unknown synthetic classes {unknown}; choose from {sorted(_MAKERS)}")
    if clips_per_class < 1 or duration <= 0 or size < 16 or size % 2:
        raise ValueError("need clips_per_class >= 1, duration > 0 and an even size >= 16")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    lines = ["# synthetic SelVA demo dataset: clip name: prompt"]
    for name in classes:
        for clip in range(clips_per_class):
            frames, audio = synthetic_clip(name, clip, duration=duration, seed=seed, fps=fps,
                                           size=size, sample_rate=sample_rate)
            path = out_dir / f"{name}_{clip:03d}.mp4"
            write_video(path, frames, fps=fps, audio=audio, sample_rate=sample_rate)
            if write_wav:
                wav.write_wav(path.with_suffix(".wav"), audio, sample_rate)
            lines.append(f"{path.name}: {CLASS_PROMPTS[name]}")
            paths.append(path)
    write_text_atomic(out_dir / PROMPTS_FILENAME, "\n".join(lines) + "\n")
    log.info("wrote %d synthetic clips to %s", len(paths), out_dir)
    return sorted(paths)


def write_tone_clip(
    path: str | Path,
    *,
    duration: float,
    fps: float = 25,
    size: int = 32,
    sample_rate: int = 16000,
    channels: int = 1,
    freq: float = 440.0,
    amplitude: float = 0.3,
    with_audio: bool = True,
) -> Path:
    """A minimal test clip: frame ``i`` is flat grey of level ``(8 i) % 256`` (so decoded
    frames can be identified), audio a sine of ``freq`` Hz on every channel (channel ``c``
    scaled by ``(c + 1) / channels``), muxed into the video when ``with_audio``."""
    n_frames = max(1, round(duration * fps))
    levels = (8 * np.arange(n_frames)) % 256
    frames = np.broadcast_to(levels[:, None, None, None], (n_frames, size, size, 3))
    audio = None
    if with_audio:
        t = np.arange(round(duration * sample_rate)) / sample_rate
        tone = amplitude * np.sin(2 * np.pi * freq * t)
        audio = np.stack([tone * (c + 1) / channels for c in range(channels)]).astype(np.float32)
    return write_video(path, frames.astype(np.uint8), fps=fps, audio=audio,
                       sample_rate=sample_rate)
