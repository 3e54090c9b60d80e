"""``python -m selva_core.generate INPUT``: sound for videos, without ComfyUI.

INPUT is one video or a folder of videos (``.mp4 .mov .mkv .webm .avi``, not searched
recursively). For every clip the command writes ``<output_dir>/<name>.wav`` (16-bit PCM) and
``<output_dir>/<name>.mp4`` (the clip's picture with the generated sound; the picture is
copied, or cut to ``--duration``). Clips of any length are rendered in overlapping windows
joined by a crossfade (:meth:`SelvaPipeline.render`).

The prompt of a clip: ``--prompt``, else its line in the folder's ``prompts.txt`` (the
training data format, ``name: prompt``), else empty. ``--adapter FILE[:STRENGTH]``
(repeatable) adds LoRA adapters and ``--embedding FILE`` (repeatable) textual-inversion
tokens the prompts may use; the base model is never changed.

A clip that cannot be used (unreadable, too short, a bad ``prompts.txt`` line) is reported in
one line and the rest are still done. ``<output_dir>/generate_summary.json`` lists every clip
with its files, settings and weight-free sync figures: the render's sound onsets against the
picture's motion energy (:func:`selva_core.audio.sync.motion_sync`; correlation at lag 0, best
lag within ±0.5 s, correlation there), also printed per clip at the end. Exit status: 0 when
every clip was done, 1 when some were skipped, 2 when none could be done or the command line,
weights or adapters are wrong.
``--variant tiny_16k`` uses the tiny test model (no downloads).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import (
    OutOfSpaceError,
    UnusableFolderError,
    check_writable_folder,
    json_safe,
    write_json_atomic,
)
from .audio.sync import MOTION_PREFIX, motion_energy, motion_energy_sync
from .audio.wav import write_wav
from .console import say
from .data.clips import group_files, read_prompts
from .data.errors import BadClipError
from .data.prompts import PROMPTS_FILENAME
from .data.video import VIDEO_EXTENSIONS, probe_video
from .flow_matching import DEFAULT_CONFIG
from .media import mux_audio
from .model.lora import AdapterLoadError, resolve_adapter_path
from .model.textual_inversion import FINAL_EMBEDDING_FILE
from .pipeline import (
    DEFAULT_OVERLAP_S,
    OFFLOAD_CHOICES,
    PRECISION_CHOICES,
    SelvaPipeline,
    plan_windows,
)
from .schema import cli_number
from .variants import (
    DEFAULT_VARIANT,
    NEGATIVE_PROMPT,
    SYNC_FPS,
    TRAIN_DURATION_S,
    VARIANTS,
    min_duration,
)
from .weights import WeightsError
from .window_features import encoder_frames

logger = logging.getLogger(__name__)


EXIT_OK, EXIT_SOME_SKIPPED, EXIT_NOTHING_DONE = 0, 1, 2
DEFAULT_OUTPUT_DIR = "selva_output"
SUMMARY_FILE = "generate_summary.json"


class UsageError(ValueError):
    """A wrong command line (reported like argparse's own errors, exit status 2)."""


def parse_adapter(text: str) -> tuple[Path, float]:
    """``FILE`` or ``FILE:STRENGTH`` -> (path, strength); the strength defaults to 1."""
    path, sep, tail = text.rpartition(":")
    if sep and path and not tail.startswith(("/", "\\")):
        try:
            strength = float(tail)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: the strength after ':' must be a number, e.g. style.safetensors:0.8"
            ) from None
        if not math.isfinite(strength):
            raise argparse.ArgumentTypeError(f"{text!r}: the strength must be finite")
        return Path(path), strength
    return Path(text), 1.0


def _duration(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < min_duration():
        raise argparse.ArgumentTypeError(
            f"must be at least {min_duration():.2f} s (one sync window), got {text}"
        )
    return value


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m selva_core.generate",
        description="Generate sound for videos with SelVA: a WAV and an MP4 (the video with "
                    "its new sound) per clip.",
        epilog=f"Per clip, {SUMMARY_FILE} in the output folder records the files and the "
               "weight-free sync figures (the render's 1-6 kHz onsets against the picture's "
               "motion energy: motion_corr_lag0, motion_best_lag_ms = the lag within +-0.5 s "
               "where they correlate best, positive when the sound is late, and "
               "motion_corr_best; null for silence). Exit status: 0 every clip done, 1 some "
               "clips skipped (one line each), 2 nothing done or a wrong command line / "
               "missing weights / bad adapter.",
    )
    p.add_argument("input", metavar="INPUT", type=Path,
                   help="a video file, or a folder of videos (not searched recursively)")
    p.add_argument("--prompt", default=None,
                   help="what the sound should be, e.g. 'a dog barking' (default: the clip's "
                        f"line in the folder's {PROMPTS_FILENAME}, else empty)")
    p.add_argument("--negative_prompt", default=NEGATIVE_PROMPT,
                   help="what to steer away from, e.g. 'music, speech' (default: none)")
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed; the same seed gives the same sound (default: 0)")
    p.add_argument("--steps", type=cli_number(integer=True, low=1),
                   default=DEFAULT_CONFIG.num_steps,
                   help=f"sampling steps (default: {DEFAULT_CONFIG.num_steps})")
    p.add_argument("--cfg", type=cli_number(), default=DEFAULT_CONFIG.cfg_strength,
                   help="classifier-free guidance strength; below 1 turns guidance off "
                        f"(default: {DEFAULT_CONFIG.cfg_strength})")
    p.add_argument("--duration", type=_duration, default=None,
                   help="seconds of each clip to score, from its start (default: the whole "
                        "clip; longer clips are rendered in crossfaded windows)")
    p.add_argument("--output_dir", type=Path, default=Path(DEFAULT_OUTPUT_DIR),
                   help=f"where the WAV and MP4 files go (default: ./{DEFAULT_OUTPUT_DIR})")
    p.add_argument("--variant", default=DEFAULT_VARIANT, choices=list(VARIANTS),
                   help=f"model variant (default: {DEFAULT_VARIANT}; tiny_16k is a tiny test "
                        "model that needs no download)")
    p.add_argument("--models_dir", type=Path, default=None,
                   help="folder holding the weights (default: the project's models folder)")
    p.add_argument("--download", action="store_true",
                   help="download missing weights into --models_dir (otherwise missing files "
                        "are listed with the download command)")
    p.add_argument("--adapter", type=parse_adapter, action="append", default=[],
                   metavar="FILE[:STRENGTH]",
                   help="LoRA adapter with its strength (default 1), e.g. "
                        "style.safetensors:0.8; a training run's folder means its "
                        "adapter_final.safetensors; repeat to stack adapters")
    p.add_argument("--embedding", type=Path, action="append", default=[], metavar="FILE",
                   help="textual-inversion embedding (train_lora.py --method "
                        "textual_inversion): prompts may then use its token, e.g. 'a "
                        "<metal-scrape> on a plate'; a training run's folder means its "
                        "embedding_final.safetensors; repeat for several tokens; stacks with "
                        "--adapter")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="weights' precision (default: auto = bf16 on a GPU that supports it, "
                        "fp32 otherwise)")
    p.add_argument("--offload", default="auto", choices=OFFLOAD_CHOICES,
                   help="where the networks rest between clips (default: auto)")
    p.add_argument("--overlap", type=cli_number(low=0), default=DEFAULT_OVERLAP_S,
                   help="seconds of overlap between the windows of a long clip "
                        f"(default: {DEFAULT_OVERLAP_S:g})")
    p.add_argument("--no_mp4", action="store_true", help="write only the WAV files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def check_overlap(overlap_s: float) -> None:
    """``--overlap`` leaves the render's windows room to advance (UsageError otherwise)."""
    window = TRAIN_DURATION_S
    try:
        plan_windows(4 * window, window, overlap_s)
    except ValueError as exc:
        raise UsageError(f"--overlap {overlap_s:g}: {exc}") from None


def find_videos(path: Path) -> list[Path]:
    """The video at ``path``, or the videos in the folder ``path`` (sorted by name; the
    folder is read by the package's clip grouping, :func:`~selva_core.data.clips.group_files`,
    keeping every video: two that share a stem are told apart by :func:`output_names`)."""
    if path.is_dir():
        videos = sorted(v for files in group_files(path).values() for v in files.videos)
        if not videos:
            raise UsageError(f"{path} holds no videos ({', '.join(VIDEO_EXTENSIONS)})")
        return videos
    if not path.exists():
        raise UsageError(f"{path} does not exist; give a video file or a folder of videos")
    return [path]


def output_names(videos: Sequence[Path]) -> dict[Path, str]:
    """Output stem per video: its name, with the extension added where two share a stem."""
    stems: dict[str, int] = {}
    for v in videos:
        stems[v.stem] = stems.get(v.stem, 0) + 1
    return {v: v.stem if stems[v.stem] == 1 else f"{v.stem}_{v.suffix.lstrip('.').lower()}"
            for v in videos}


def folder_prompts(folder: Path, videos: Sequence[Path]) -> tuple[dict[str, str],
                                                                  dict[str, str]]:
    """Prompts by clip stem from ``folder/prompts.txt`` and the error of each clip whose
    line cannot be used (both empty without the file)."""
    entries, errors = read_prompts(folder, {v.stem for v in videos})
    bad = {e.key: str(e) for e in errors if e.key is not None}
    for e in errors:
        if e.key is None:
            logger.warning("%s", e)
    return {k: e.prompt for k, e in entries.items()}, bad


def render_clip(pipe: SelvaPipeline, video: Path, prompt: str, args, progress=None
                ) -> tuple[torch.Tensor, np.ndarray]:
    """The sound for ``video`` (waveform (samples,) float32 on the CPU) and the motion energy
    of the frames the encoder saw (one value per frame at the sync rate)."""
    info = probe_video(video)
    duration = info.duration if args.duration is None else min(args.duration, info.duration)
    if duration < min_duration():
        raise BadClipError(video, f"it lasts {info.duration:.2f} s; SelVA needs at least "
                                  f"{min_duration():.2f} s", "use a longer clip")
    if args.duration is not None and info.duration < args.duration:
        logger.warning("%s lasts %.2f s, shorter than --duration %g s: its sound is %.2f s "
                       "long (all of the clip)", video, info.duration, args.duration,
                       info.duration)
    frames = encoder_frames(pipe, video, int(math.floor(duration * SYNC_FPS + 1e-6)))
    if frames.shape[0] == 0:
        raise BadClipError(video, "no picture could be decoded", "re-encode or remove it")
    try:
        features = pipe.extract_features(frames, prompt, duration=duration)
    except ValueError as exc:  # too few frames for the duration, e.g. a truncated file
        raise BadClipError(video, str(exc)) from None
    wave = pipe.render(features, seed=args.seed, num_steps=args.steps, cfg_strength=args.cfg,
                       negative_prompt=args.negative_prompt or None, overlap_s=args.overlap,
                       progress_callback=progress)
    return wave[0], motion_energy(frames)


def _sync_record(wave: torch.Tensor, sample_rate: int, motion: np.ndarray) -> dict[str, Any]:
    """The onset-vs-motion figures of one render; NaN (no timing to compare) as null."""
    figures = motion_energy_sync(wave, sample_rate, motion, SYNC_FPS).as_dict(MOTION_PREFIX)
    return json_safe({k: round(v, 4) for k, v in figures.items()})


def _sync_line(name: str, rec: dict[str, Any]) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    return (f"  {name}: onsets vs motion r = {fmt(rec['motion_corr_lag0'], '.2f')} at lag 0, "
            f"{fmt(rec['motion_corr_best'], '.2f')} at "
            f"{fmt(rec['motion_best_lag_ms'], '+.0f')} ms")


def _progress_bar(total: int | None, desc: str, quiet: bool, unit: str = "clip",
                  leave: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True,
                leave=leave)


def _step_progress(bar):
    """progress_callback(done, total) that drives ``bar`` (sampling steps over all windows)."""
    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    return update


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        videos = find_videos(args.input)
        args.adapter = [(resolve_adapter_path(path), strength)
                        for path, strength in args.adapter]
        check_writable_folder(args.output_dir, "--output_dir")
        check_overlap(args.overlap)
    except (UsageError, AdapterLoadError, UnusableFolderError) as exc:
        parser.error(str(exc))
    prompts, bad_lines = ({}, {}) if args.prompt is not None or not args.input.is_dir() \
        else folder_prompts(args.input, videos)
    try:
        pipe = SelvaPipeline.build(
            args.variant, models_dir=args.models_dir, device=args.device,
            precision=args.precision, offload=args.offload, download=args.download,
        )
        if args.adapter:
            pipe = pipe.with_adapters([(path, strength) for path, strength in args.adapter])
        if args.embedding:
            pipe = pipe.with_embeddings([p / FINAL_EMBEDDING_FILE if p.is_dir() else p
                                         for p in args.embedding])
    except (WeightsError, AdapterLoadError, ValueError, RuntimeError, OSError) as exc:
        say(f"error: {exc}", file=sys.stderr)
        return EXIT_NOTHING_DONE

    names = output_names(videos)
    records: list[dict[str, Any]] = []
    done: list[str] = []
    skipped: list[str] = []
    started = time.perf_counter()
    bar = _progress_bar(len(videos), "clips", args.quiet)
    for video in videos:
        name = names[video]
        bar.set_postfix_str(video.name)
        try:
            if video.stem in bad_lines:
                raise BadClipError(None, bad_lines[video.stem])
            prompt = args.prompt if args.prompt is not None else prompts.get(video.stem, "")
            steps = _progress_bar(None, name, args.quiet, unit="step", leave=False)
            try:
                wave, motion = render_clip(pipe, video, prompt, args, _step_progress(steps))
            finally:
                steps.close()
            write_wav(args.output_dir / f"{name}.wav", wave, pipe.sample_rate)
            if not args.no_mp4:
                mux_audio(video, wave, pipe.sample_rate, args.output_dir / f"{name}.mp4")
            records.append({"clip": name, "video": str(video), "prompt": prompt,
                            "wav": f"{name}.wav", "mp4": None if args.no_mp4 else f"{name}.mp4",
                            "seconds": round(wave.shape[-1] / pipe.sample_rate, 4),
                            **_sync_record(wave, pipe.sample_rate, motion)})
            done.append(name)
        except OutOfSpaceError as exc:  # every later clip would fail alike: stop here
            bar.close()
            say(f"error: {exc}; the {len(done)} clip(s) done before are complete in "
                f"{args.output_dir}: rerun for the rest once there is room", file=sys.stderr)
            return EXIT_NOTHING_DONE
        except (BadClipError, ValueError, OSError) as exc:
            text = str(exc) if str(video) in str(exc) else f"{video}: {exc}"
            bar.write(f"skipped {text}", file=sys.stderr)
            skipped.append(text)
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - started
    if records:
        write_json_atomic(args.output_dir / SUMMARY_FILE, {
            "variant": args.variant, "seed": args.seed, "steps": args.steps, "cfg": args.cfg,
            "adapters": [[str(p), s] for p, s in args.adapter],
            "embeddings": [str(p) for p in args.embedding], "clips": records,
            "skipped": skipped})
        say("weight-free sync (render onsets vs picture motion, 1-6 kHz, 20 ms; "
            "+ lag = sound late):\n" + "\n".join(_sync_line(r["clip"], r) for r in records))
    say(f"{len(done)} of {len(videos)} clip(s) done in {seconds:.1f} s "
          f"({args.variant}, {len(args.adapter)} adapter(s)); outputs in {args.output_dir}"
          + (f"; {len(skipped)} skipped" if skipped else ""))
    if not done:
        return EXIT_NOTHING_DONE
    return EXIT_SOME_SKIPPED if skipped else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
