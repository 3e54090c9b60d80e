"""``inspect``: run every check of :mod:`selva_core.dataset.checks` over a training folder.

The folder is read as the trainer reads it (:func:`selva_core.data.scan_dataset`: clips,
their audio, prompts); a clip the trainer would skip is listed with its reason. Per clip the
audio (the same-stem file, else the video's own track on the picture's timeline) is checked
as stored (clipping, DC, stereo, band) and as the model hears it (mono at the variant's rate:
silence, noise, offset against the picture, fingerprint, round trip); the picture's packet
times and rotation are read without decoding it all. A clip made by ``prepare`` also carries
the checks of its source's own audio (``source:`` flags). Near duplicates are grouped across
clips; a group the trainer's default train/validation split would cut in two is named.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from selva_core.data import SkipReport, scan_dataset
from selva_core.data.audio import align_to_picture, decode_audio, resample, to_mono
from selva_core.data.errors import BadClipError
from selva_core.data.video import decode_frames
from selva_core.dataset import checks
from selva_core.dataset.cutting import CUT_FPS, small_grey
from selva_core.dataset.prepare import sidecar_of
from selva_core.dataset.roundtrip import RoundTrip, round_trip
from selva_core.variants import DEFAULT_VARIANT, TRAIN_DURATION_S, get_variant

log = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.1  # the trainer's --val_fraction default


@dataclass
class ClipReport:
    """One clip's figures; ``heard`` / ``round_trip`` are kept for the HTML page."""

    name: str
    video: Path | None
    audio: Path | None
    prompt: str
    duration: float
    checks: dict[str, checks.Check]
    source: dict | None = None
    heard: np.ndarray | None = field(default=None, repr=False)
    round_trip: RoundTrip | None = field(default=None, repr=False)
    fingerprint: np.ndarray | None = field(default=None, repr=False)

    @property
    def flags(self) -> list[str]:
        found = [c.name for c in self.checks.values() if c.flagged]
        for item in (self.source or {}).get("source_checks", []):
            if item.get("flagged"):
                found.append(f"source:{item['name']}")
        return found


@dataclass
class Inspection:
    """Every clip's report, near-duplicate groups, those the default split cuts, skips."""

    folder: Path
    variant: str
    duration: float
    clips: list[ClipReport]
    duplicates: list[list[str]]
    straddling: list[list[str]]
    skipped: list[str]
    round_trip: bool
    sample_rate: int


def _audio_of(clip) -> tuple[np.ndarray, int, np.ndarray]:
    """(channels as stored, their rate, mono on the picture's timeline)."""
    if clip.audio_path is not None:
        decoded = decode_audio(clip.audio_path)
        return decoded.samples, decoded.sample_rate, to_mono(decoded.samples, decoded.channels)
    decoded = decode_audio(clip.video_path, from_video=True)
    mono = align_to_picture(clip.video_path, to_mono(decoded.samples, decoded.channels),
                            decoded.sample_rate, decoded.offset)
    return decoded.samples, decoded.sample_rate, mono


def inspect_clip(clip, *, rate: int, duration: float, pipeline=None,
                 max_lsd: float = checks.ROUND_TRIP_LSD_DB) -> ClipReport:
    """All per-clip checks of one :class:`~selva_core.data.clips.ClipSource`."""
    raw, sr, mono = _audio_of(clip)
    heard = resample(mono, sr, rate)
    found = [checks.clipping(raw), checks.silence(heard, rate), checks.dc_offset(raw),
             checks.low_snr(heard, rate), checks.band_limited(mono, sr, sr, rate),
             checks.stereo(raw), checks.too_short(heard.shape[0] / rate, duration)]
    if clip.video_path is not None:
        timing = checks.picture_timing(clip.video_path)
        frames = decode_frames(clip.video_path, fps=CUT_FPS, transform=small_grey)
        found += [checks.variable_frame_rate(timing), checks.rotation(timing),
                  checks.av_offset(heard, rate, frames, CUT_FPS)]
    rt = None
    if pipeline is not None and heard.size:
        rt = round_trip(pipeline, heard, rate)
        found.append(checks.Check(
            "round_trip", rt.lsd_db, max_lsd, bool(rt.lsd_db > max_lsd), "dB LSD",
            "log-spectral distance after the VAE and vocoder: the best any adapter can reach"))
    folder = (clip.video_path or clip.audio_path).parent
    return ClipReport(clip.name, clip.video_path, clip.audio_path, clip.prompt,
                      heard.shape[0] / rate, {c.name: c for c in found},
                      sidecar_of(folder, clip.name), heard, rt,
                      checks.fingerprint(heard, rate) if heard.size else None)


def default_split(names: list[str], val_fraction: float = DEFAULT_VAL_FRACTION) -> set[str]:
    """The clips the trainer holds out for validation by default."""
    from selva_core.data.split import split_examples

    _, val = split_examples([SimpleNamespace(name=n) for n in names], val_fraction)
    return {e.name for e in val}


def _mark_duplicates(reports: list[ClipReport]) -> tuple[list[list[str]], list[list[str]]]:
    usable = [r for r in reports if r.fingerprint is not None]
    groups = checks.duplicate_groups([r.name for r in usable], [r.fingerprint for r in usable])
    held_out = default_split([r.name for r in reports])
    straddling = [g for g in groups if 0 < len(held_out.intersection(g)) < len(g)]
    member = {name: g for g in groups for name in g}
    mat = np.stack([r.fingerprint for r in usable]) if usable else np.zeros((0, 0))
    for i, r in enumerate(usable):
        sims = mat @ mat[i]
        sims[i] = -1.0
        best = float(sims.max()) if sims.size > 1 else math.nan
        group = member.get(r.name)
        rule = "no other clip sounds this alike"
        if group is not None:
            others = ", ".join(n for n in group if n != r.name)
            rule = f"sounds like {others}"
            if group in straddling:
                rule += "; the trainer's default split puts them on both sides"
        r.checks["near_duplicate"] = checks.Check(
            "near_duplicate", best, checks.DUPLICATE_FP_CORR, group is not None,
            "fingerprint correlation", rule)
    return groups, straddling


def inspect_folder(folder: str | Path, *, variant: str = DEFAULT_VARIANT,
                   duration: float = TRAIN_DURATION_S, pipeline=None,
                   max_lsd: float = checks.ROUND_TRIP_LSD_DB,
                   progress: Callable[[int, int], None] | None = None) -> Inspection:
    """Check every clip of ``folder`` (``pipeline``: the model for the round trip, or None)."""
    folder = Path(folder)
    rate = pipeline.sample_rate if pipeline is not None else get_variant(variant).sample_rate
    skips = SkipReport()
    clips = scan_dataset(folder, on_bad_clip="skip", report=skips)
    reports: list[ClipReport] = []
    skipped = skips.lines()
    for i, clip in enumerate(clips):
        try:
            reports.append(inspect_clip(clip, rate=rate, duration=duration, pipeline=pipeline,
                                        max_lsd=max_lsd))
        except BadClipError as error:
            log.warning("skipping: %s", error)
            skipped.append(str(error))
        if progress is not None:
            progress(i + 1, len(clips))
    groups, straddling = _mark_duplicates(reports)
    return Inspection(folder, pipeline.variant.name if pipeline is not None else variant,
                      duration, reports, groups, straddling, skipped, pipeline is not None, rate)
