"""``prepare``: cut raw footage into a training folder.

For every source video (files, or folders searched recursively): the picture is decoded once
at 25 fps as small grey frames to find shot cuts, the sound once (the video's own track, on
the picture's timeline, surround-aware mono downmix; :mod:`selva_core.data.audio`) and
resampled to the variant's rate. Windows of ``duration`` seconds every ``hop`` seconds that
stay inside one shot and whose sound is active (:mod:`selva_core.dataset.cutting`) become
clips named ``<source stem>_<start in ms>``:

* ``<clip>.mp4``: the source's own frames from the window's start to its end (each frame at
  its original time, the frame shown at the start first; turned upright), with the prepared
  sound as AAC. The picture's packets are copied when the cut allows it (a keyframe at the
  start, no B-frames, no rotation, a codec MP4 takes); otherwise it is re-encoded (H.264 when
  this FFmpeg has it) so the cut is frame-accurate;
* ``<clip>.wav``: the sound at the variant's rate, loudness-normalised to ``lufs``
  (BS.1770), optionally compressed and limited; the copy the trainer reads;
* ``.<clip>.prepare.json`` (hidden): the source, the window and the checks of the source's
  own audio there (clipping, DC, stereo, band), which the inspection report keeps (the
  copy's own picture is checked as it is: its frames are upright, their times the source's). It is
  written last: a clip is done when it exists, so a rerun skips done clips and redoes a clip
  an interruption cut short (an interrupted clip's files are removed).

A stereo source whose channels are phase-inverted is read from its first channel (the mono
mix would cancel). ``prompts.txt`` gets one line per new clip (``--prompt``, else the
source's line in a ``prompts.txt`` beside it, else its folder's name); existing lines stay.
Every write is atomic; a full disk stops the run with one line and leaves what was written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from selva_core.atomic import (
    atomic_path,
    remove_stale_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from selva_core.audio.wav import write_wav
from selva_core.data.audio import align_to_picture, decode_audio, resample, to_mono
from selva_core.data.clips import read_prompts
from selva_core.data.errors import BadClipError
from selva_core.data.prompts import PROMPTS_FILENAME, folder_prompt, parse_prompts
from selva_core.data.video import (
    REENCODE_HINT,
    VIDEO_EXTENSIONS,
    open_picture,
    probe_video,
    upright,
)
from selva_core.dataset import checks
from selva_core.dataset.cutting import (
    CUT_FPS,
    DEFAULT_MIN_LOUDNESS,
    plan_clips,
    shot_cuts,
    small_frames,
)
from selva_core.dataset.defaults import DEFAULT_LUFS
from selva_core.dataset.loudness import block_levels, normalize
from selva_core.media import _audio_stream, _encode_audio, _video_encoder
from selva_core.variants import DEFAULT_VARIANT, TRAIN_DURATION_S, get_variant

log = logging.getLogger(__name__)

SIDECAR = ".{name}.prepare.json"
DEFAULT_HOP_S = TRAIN_DURATION_S
X264_OPTIONS = {"crf": "18", "preset": "superfast"}


class PrepareError(ValueError):
    """A problem that stops the whole run (bad flags, output inside a source, disk full)."""


@dataclass(frozen=True)
class PrepareSettings:
    """What ``prepare`` makes; see the CLI's ``--help`` for each field."""

    variant: str = DEFAULT_VARIANT
    duration: float = TRAIN_DURATION_S
    hop: float | None = None
    min_loudness: float = DEFAULT_MIN_LOUDNESS
    lufs: float = DEFAULT_LUFS
    compress: bool = False
    max_clips: int | None = None
    prompt: str | None = None

    @property
    def step(self) -> float:
        return self.hop if self.hop is not None else self.duration


@dataclass
class PrepareResult:
    """Clips written, clips already there, sources skipped (one reason each)."""

    written: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    skipped: list[BadClipError] = field(default_factory=list)
    seconds: float = 0.0  # footage read (seconds of source)


def clip_name(source: Path, start: float) -> str:
    return f"{source.stem}_{int(round(start * 1000)):07d}"


def find_sources(sources: Sequence[str | Path], out: Path) -> list[Path]:
    """Every video among ``sources`` (folders searched recursively, ``out`` left out);
    an output folder inside a source folder is refused (its clips would become sources)."""
    out_r = out.resolve()
    found: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            src_r = src.resolve()
            if out_r == src_r or src_r in out_r.parents:
                raise PrepareError(f"{out}: the output folder is inside the source folder "
                                   f"{src}; choose an output folder outside it")
            found += sorted(p for p in src.rglob("*") if p.is_file()
                            and p.suffix.lower() in VIDEO_EXTENSIONS
                            and not p.name.startswith("."))
        elif src.is_file():
            if src.resolve().parent == out_r:
                raise PrepareError(f"{src}: the source lies in the output folder {out}; "
                                   "choose another output folder")
            found.append(src)
        else:
            raise PrepareError(f"{src}: no such file or folder; give video files or folders")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def source_prompt(source: Path, settings: PrepareSettings) -> str:
    """``--prompt``, else the source's line in a ``prompts.txt`` beside it, else its folder."""
    if settings.prompt:
        return settings.prompt
    entries, _ = read_prompts(source.parent, {source.stem})
    if source.stem in entries:
        return entries[source.stem].prompt
    return folder_prompt(source.parent)


def _aligned_channels(path: Path) -> tuple[np.ndarray, int, tuple[str, ...]]:
    decoded = decode_audio(path, from_video=True)
    rows = [align_to_picture(path, row, decoded.sample_rate, decoded.offset) if i == 0 else
            _shift_like(row, decoded.sample_rate, decoded.offset)
            for i, row in enumerate(decoded.samples)]
    return np.stack(rows), decoded.sample_rate, decoded.channels


def _shift_like(row: np.ndarray, sample_rate: int, offset: float) -> np.ndarray:
    """The same shift align_to_picture applies (it logs once, for the first channel)."""
    shift = round(offset * sample_rate)
    return np.concatenate([np.zeros(shift, row.dtype), row]) if shift > 0 else row[-shift:]


def _turned(frame) -> bool:
    """Does ``frame`` carry a display matrix (a phone's rotation)?"""
    return any(getattr(d, "type", None) is not None and d.type.name == "DISPLAYMATRIX"
               for d in frame.side_data)


def _copy_window(source: Path, start: float, end: float, audio: np.ndarray, sample_rate: int,
                 out_path: Path) -> bool:
    """Copy the picture's packets from ``start`` to ``end`` without decoding them, when the
    cut allows it: a keyframe exactly at ``start``, no B-frames (so every packet before
    ``end`` decodes without one after it), no display rotation (the copy is stored upright)
    and a codec MP4 takes. False (nothing written) otherwise."""
    eps = Fraction(1, 1000)
    try:
        with open_picture(source) as (src, stream, origin):
            context = stream.codec_context
            if context.has_b_frames:
                return False
            tb = stream.time_base
            if start > 0:
                src.seek(max(0, round((origin + Fraction(start)) / tb)), stream=stream,
                         backward=True)
            packets = []
            for packet in src.demux(stream):
                if packet.pts is None:
                    continue
                t = Fraction(packet.pts) * tb - origin
                if not packets:
                    if abs(t - Fraction(start)) > eps or not packet.is_keyframe or \
                            any(_turned(frame) for frame in packet.decode()):
                        return False
                elif t >= Fraction(end) - eps:
                    break
                packets.append(packet)
            if not packets:
                return False
            with atomic_path(out_path) as tmp, av.open(str(tmp), mode="w", format="mp4") as out:
                video = out.add_stream_from_template(stream)
                sound = _audio_stream(out, 1, sample_rate)
                first = packets[0].pts
                for packet in packets:
                    packet.pts -= first
                    packet.dts = packet.pts
                    packet.stream = video
                    out.mux(packet)
                _encode_audio(out, sound, audio[None].astype(np.float32), sample_rate)
    except (av.FFmpegError, ValueError) as error:
        log.debug("%s: the window at %.2f s cannot be copied (%s); re-encoding", source, start,
                  error)
        return False
    return True


def write_clip_video(source: Path, start: float, end: float, audio: np.ndarray,
                     sample_rate: int, out_path: Path) -> Path:
    """The source's frames from ``start`` to ``end`` (s from the picture's start) with
    ``audio`` (mono) as AAC, in an MP4 written atomically: the packets copied where the cut
    allows it (:func:`_copy_window`), else decoded and encoded again."""
    if _copy_window(source, start, end, audio, sample_rate, out_path):
        return out_path
    with open_picture(source) as (src, stream, origin):
        tb = stream.time_base
        rate = stream.average_rate or Fraction(25)
        if start > 0:
            src.seek(max(0, math.floor((origin + Fraction(start) - 1) / tb)), stream=stream,
                     backward=True)
        encoder = _video_encoder()
        out_tb = tb if encoder != "mpeg4" or tb.denominator <= 65535 else Fraction(1, 1000)
        with atomic_path(out_path) as tmp, av.open(str(tmp), mode="w", format="mp4") as out:
            streams: dict = {}
            held = None  # the last frame at or before start: shown first
            first = True

            def emit(frame, t: Fraction) -> None:
                image = None
                if _turned(frame):
                    image = upright(frame.to_ndarray(format="rgb24"), frame)
                height, width = image.shape[:2] if image is not None else \
                    (frame.height, frame.width)
                video = streams.get("video")
                if video is None:
                    video = streams["video"] = out.add_stream(encoder, rate=rate)
                    video.width, video.height = max(2, width // 2 * 2), max(2, height // 2 * 2)
                    video.pix_fmt = "yuv420p"
                    video.codec_context.time_base = out_tb
                    if encoder == "libx264":
                        video.codec_context.options = dict(X264_OPTIONS)
                    elif encoder == "mpeg4":
                        video.bit_rate = 8_000_000
                    streams["audio"] = _audio_stream(out, 1, sample_rate)
                if image is not None:
                    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                picture = frame.reformat(width=video.width, height=video.height,
                                         format="yuv420p")
                picture.pts = int(round(t / out_tb))
                picture.time_base = out_tb
                for packet in video.encode(picture):
                    out.mux(packet)

            last_pts = -1
            for frame in src.decode(stream):
                if frame.pts is None:
                    continue
                t = Fraction(frame.pts) * tb - origin
                if t <= Fraction(start) + Fraction(1, 10**6):
                    held = (frame, t)
                    continue
                if t >= Fraction(end) - Fraction(1, 10**6):
                    break
                if held is not None and first:
                    emit(held[0], Fraction(0))
                    first, last_pts = False, 0
                rel = t - Fraction(start)
                if int(round(rel / out_tb)) <= last_pts:
                    continue
                emit(frame, rel)
                first, last_pts = False, int(round(rel / out_tb))
            if first and held is not None:
                emit(held[0], Fraction(0))
            if "video" not in streams:
                raise BadClipError(source, f"no picture between {start:.2f} s and {end:.2f} s",
                                   REENCODE_HINT)
            for packet in streams["video"].encode(None):
                out.mux(packet)
            _encode_audio(out, streams["audio"], audio[None].astype(np.float32), sample_rate)
    return out_path


def _source_checks(raw: np.ndarray, mono: np.ndarray, source_rate: int, model_rate: int,
                   ) -> list[dict]:
    found = [checks.clipping(raw), checks.dc_offset(raw), checks.stereo(raw),
             checks.band_limited(mono, source_rate, source_rate, model_rate)]
    return [c.as_dict() for c in found]


def _remove(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


def prepare_source(source: Path, out: Path, settings: PrepareSettings, result: PrepareResult,
                   prompts: dict[str, str], progress: Callable[[], None] | None = None) -> None:
    """Cut one source into clips in ``out`` (see the module docstring)."""
    variant = get_variant(settings.variant)
    rate = variant.sample_rate
    info = probe_video(source)
    if not info.has_audio:
        raise BadClipError(source, "the video has no audio track; prepare cuts training "
                           "sound from the video's own track", "give videos with sound")
    raw, source_rate, channels = _aligned_channels(source)
    stereo = checks.stereo(raw)
    if stereo.flagged and stereo.value is not None and stereo.value <= checks.PHASE_CORR:
        log.warning("%s: its stereo channels are phase-inverted (correlation %.2f); the "
                    "copies use the first channel", source, stereo.value)
        mono = raw[0]
    else:
        mono = to_mono(raw, channels)
    heard = resample(mono, source_rate, rate)
    length = min(info.duration, heard.shape[0] / rate)
    result.seconds += info.duration
    times, small = small_frames(source)
    cuts = shot_cuts(small, times=times)
    plan = plan_clips(length, cuts, block_levels(heard, rate), duration=settings.duration,
                      hop=settings.step, min_loudness=settings.min_loudness,
                      max_clips=settings.max_clips)
    log.info("%s: %.1f s, %d shot cut(s), %d clip(s) (%d quiet window(s) skipped, %d shot(s) "
             "shorter than %.1f s)", source, length, len(plan.cuts), len(plan.clips), plan.quiet,
             plan.short_shots, settings.duration)
    prompt = source_prompt(source, settings)
    n = round(settings.duration * rate)
    for clip in plan.clips:
        name = clip_name(source, clip.start)
        wav, mp4 = out / f"{name}.wav", out / f"{name}.mp4"
        sidecar = out / SIDECAR.format(name=name)
        if sidecar.is_file() and wav.is_file() and mp4.is_file():
            result.existing.append(name)
            prompts.setdefault(name, prompt)
            continue
        a = round(clip.start * rate)
        window = heard[a:a + n]
        window = np.pad(window, (0, n - window.shape[0]))
        processed, lufs = normalize(window, rate, settings.lufs, compressor=settings.compress,
                                    name=name)
        sa, sb = round(clip.start * source_rate), round(clip.end * source_rate)
        own = _source_checks(raw[:, sa:sb], mono[sa:sb], source_rate, rate)
        written: list[Path] = []
        try:
            written.append(write_wav(wav, processed, rate))
            written.append(write_clip_video(source, clip.start, clip.end, processed, rate, mp4))
            write_json_atomic(sidecar, {
                "source": str(source.resolve()), "start": clip.start, "end": clip.end,
                "shot": clip.shot, "loudness_lufs": lufs if math.isfinite(lufs) else None,
                "compressed": settings.compress, "variant": variant.name,
                "source_checks": own})
        except BaseException:
            _remove(written)
            raise
        result.written.append(name)
        prompts.setdefault(name, prompt)
        if progress is not None:
            progress()


def write_prompts(out: Path, prompts: dict[str, str]) -> None:
    """Add a ``name: prompt`` line for each clip that has none yet; existing lines stay."""
    file = out / PROMPTS_FILENAME
    have: set[str] = set()
    text = ""
    if file.is_file():
        text = file.read_text(encoding="utf-8")
        entries, _ = parse_prompts(file, (".mp4", ".wav"))
        have = set(entries)
    new = [f"{name}: {prompt}" for name, prompt in sorted(prompts.items()) if name not in have]
    if not new:
        return
    if text and not text.endswith("\n"):
        text += "\n"
    write_text_atomic(file, text + "\n".join(new) + "\n")


def _save_prompts_anyway(out: Path, prompts: dict[str, str]) -> None:
    """``write_prompts`` on the way out of a failed run; a failure here is logged (the
    rerun writes the lines)."""
    try:
        write_prompts(out, prompts)
    except OSError as error:
        log.warning("%s: cannot write %s (%s); a rerun adds its lines", out, PROMPTS_FILENAME,
                    error.strerror or error)


def prepare(sources: Sequence[str | Path], out: str | Path, settings: PrepareSettings,
            progress: Callable[[int, int], None] | None = None) -> PrepareResult:
    """Cut every source into ``out``; bad sources are skipped with one line each.

    ``progress(done, total)`` counts sources and is also called after every clip (the same
    figures): a callback that raises (a UI's Cancel) stops between clips.

    Raises PrepareError for the output inside a source folder, or when writing fails (a full
    disk: what was written stays, a rerun continues); KeyboardInterrupt leaves no partial clip.
    """
    out = Path(out)
    if settings.duration * CUT_FPS < 16:
        raise PrepareError(f"--duration {settings.duration:g}: too short; SelVA needs at least "
                           "0.64 s")
    if settings.step <= 0:
        raise PrepareError(f"--hop {settings.step:g}: must be positive")
    found = find_sources(sources, out)
    if not found:
        raise PrepareError("no video files among the sources; give .mp4 .mov .mkv .webm .avi "
                           "files or folders holding them")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    result = PrepareResult()
    prompts: dict[str, str] = {}
    for i, source in enumerate(found):
        try:
            tick = (lambda i=i: progress(i, len(found))) if progress is not None else None
            prepare_source(source, out, settings, result, prompts, tick)
            write_prompts(out, prompts)
        except BadClipError as error:
            log.warning("skipping: %s", error)
            result.skipped.append(error)
        except OSError as error:
            _save_prompts_anyway(out, prompts)
            raise PrepareError(f"{out}: cannot write ({error.strerror or error}); free space "
                               "or choose another folder and rerun: the clips already "
                               "written are kept and skipped") from None
        except BaseException:  # Ctrl-C, a UI's Cancel: the clips written keep their prompts
            _save_prompts_anyway(out, prompts)
            raise
        if progress is not None:
            progress(i + 1, len(found))
    return result


def sidecar_of(folder: Path, name: str) -> dict | None:
    """A prepared clip's record (None for clips ``prepare`` did not make)."""
    path = folder / SIDECAR.format(name=name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
