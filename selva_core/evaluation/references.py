"""The reference side of an evaluation, and the scorers renders and references share.

:func:`write_references` copies each clip's reference sound (``reference/<stem><its
extension>``, the video's own track as a WAV) and its video as an MP4 browsers play with a
poster frame (:func:`page_video`), and measures the reference as the renders are measured.
:class:`Scorers` holds DeSync (:mod:`.desync`) and CLAP (:mod:`.embeddings`); :func:`fad` is the
CLAP Frechet distance of every adapter x strength's renders to the references.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selva_core.audio import metrics as M
from selva_core.audio.wav import write_wav
from selva_core.data.clips import ClipSource
from selva_core.data.errors import BadClipError
from selva_core.evaluation.clips import clip_key
from selva_core.evaluation.spec import EvalSpec

log = logging.getLogger(__name__)


# --- scorers: DeSync and CLAP ----------------------------------------------------------------
@dataclass
class Scorers:
    """DeSync and CLAP for renders and references (each off, or unavailable, when it cannot
    run: the summary says why); a clip's video features and a prompt's text embedding are
    computed once."""

    desync: Any = None
    clap: Any = None
    video_feats: dict[str, Any] = field(default_factory=dict)
    text_embs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, spec: EvalSpec, pipeline, summary: dict[str, Any]) -> Scorers:
        from selva_core.evaluation import desync as D
        from selva_core.evaluation import embeddings as E

        scorers = cls()
        if spec.desync:
            scorers.desync, summary["desync"] = D.create_scorer(
                pipeline.variant, path=spec.synchformer, models_dir=spec.models_dir,
                device=pipeline.device)
        else:
            summary["desync"] = {"status": "off", "reason": "'desync': false in the spec"}
        scorers.clap, summary["clap"] = E.create_clap(spec.clap_model, device=pipeline.device)
        return scorers

    def desync_of(self, clip: ClipSource, duration: float, wave: np.ndarray, sr: int
                  ) -> float | None:
        if self.desync is None or clip.video_path is None:
            return None
        key = clip_key(clip)
        if key not in self.video_feats:
            self.video_feats[key] = self.desync.video_features_from_file(clip.video_path,
                                                                         duration)
        return self.desync.score(self.video_feats[key], wave, sr)

    def clap_of(self, clip: ClipSource, wave: np.ndarray, sr: int) -> tuple[float | None, Any]:
        if self.clap is None:
            return None, None
        audio = self.clap.audio_embedding(wave, sr)
        if clip.prompt not in self.text_embs:
            self.text_embs[clip.prompt] = self.clap.text_embedding(clip.prompt)
        return self.clap.score(self.text_embs[clip.prompt], audio), audio


# --- references --------------------------------------------------------------------------------
def write_references(clips: list[ClipSource], durations: dict[str, float], out: Path, sr: int,
                     scorers: Scorers, summary: dict[str, Any],
                     motions: dict[str, tuple[np.ndarray, float]]) -> dict[str, np.ndarray]:
    """Copy each eval clip's reference sound and video; measure the reference (as a 16-bit
    WAV holds it, like the renders: :func:`~selva_core.audio.metrics.pcm16`); its
    onset-vs-motion figures show what the true sound scores on the clip's picture."""
    from selva_core.data.audio import load_mono

    ref_dir = out / "reference"
    ref_dir.mkdir(parents=True, exist_ok=True)
    waves: dict[str, np.ndarray] = {}
    rows = []
    for clip in clips:
        row: dict[str, Any] = {"clip": clip.name, "role": clip.role, "prompt": clip.prompt,
                               "duration": durations[clip_key(clip)], "has_audio": clip.has_audio,
                               "audio": None, "video": None, "metrics": {}}
        sub = "drift/" if clip.role == "drift" else ""
        if clip.video_path is not None:
            row["video"], row["poster"] = page_video(clip, out, f"reference/{sub}")
        if clip.role == "eval" and clip.has_audio:
            try:
                src = clip.audio_path or clip.video_path
                wave = load_mono(src, sr, from_video=clip.audio_path is None)
            except BadClipError as exc:
                row["has_audio"] = False
                row["reason"] = str(exc)
                log.warning("%s: reference sound unusable (%s); rendered without reference",
                            clip.name, exc)
            else:
                if clip.audio_path is not None:
                    rel = f"reference/{clip.name}{clip.audio_path.suffix.lower()}"
                    if not (out / rel).is_file():
                        shutil.copy2(clip.audio_path, out / rel)
                else:
                    rel = f"reference/{clip.name}.wav"
                    if not (out / rel).is_file():
                        write_wav(out / rel, wave, sr)
                row["audio"] = rel
                n = int(round(durations[clip_key(clip)] * sr))
                wave = M.pcm16(wave[:n])
                waves[clip_key(clip)] = wave
                row["metrics"] = M.spectral_metrics(wave, sr)
                if clip_key(clip) in motions:
                    row["metrics"].update(M.motion_metrics(wave, sr, motions[clip_key(clip)]))
                ds = scorers.desync_of(clip, durations[clip_key(clip)], wave, sr)
                if ds is not None:
                    row["metrics"]["desync_s"] = ds
                clap, emb = scorers.clap_of(clip, wave, sr)
                if clap is not None:
                    row["metrics"]["clap_score"] = clap
                    row["clap_embedding"] = save_embedding(out, rel, emb)
        elif clip.role == "eval":
            row["reason"] = "the clip has no sound (no audio track, no same-stem audio file)"
        rows.append(row)
    summary["reference_clips"] = rows
    summary["reference_avg"] = M.mean_metrics([r["metrics"] for r in rows if r["metrics"]])
    return waves


def page_video(clip: ClipSource, out: Path, folder: str) -> tuple[str, str | None]:
    """The clip's video as the page shows it (an MP4 browsers play) and its poster frame."""
    from selva_core.media import browser_video, write_poster

    rel = f"{folder}{clip.name}.mp4"
    poster: str | None = f"{folder}posters/{clip.name}.jpg"
    (out / poster).parent.mkdir(parents=True, exist_ok=True)
    try:
        if not (out / rel).is_file():
            browser_video(clip.video_path, out / rel)
    except Exception as exc:  # a picture the page cannot show must not stop the evaluation
        log.warning("%s: no browser-playable copy (%s); the page links the original", clip.name,
                    exc)
        rel = f"{folder}{clip.name}{clip.video_path.suffix.lower()}"
        if not (out / rel).is_file():
            shutil.copy2(clip.video_path, out / rel)
    try:
        if not (out / poster).is_file():
            write_poster(clip.video_path, out / poster)
    except Exception as exc:
        log.warning("%s: no poster frame (%s)", clip.name, exc)
        poster = None
    return rel, poster


def save_embedding(out: Path, audio_rel: str, emb: Any) -> str:
    """A render's (or reference's) CLAP embedding beside it as ``<name>.clap.safetensors``."""
    from selva_core.atomic import save_safetensors_atomic

    rel = str(Path(audio_rel).with_suffix(".clap.safetensors"))
    save_safetensors_atomic(out / rel, {"clap": torch.from_numpy(np.asarray(emb, np.float32))})
    return rel


def load_embeddings(out: Path, rels: list[str]) -> np.ndarray:
    """The CLAP embeddings saved at ``rels`` (relative to ``out``), one row each."""
    from safetensors.torch import load_file

    return np.stack([load_file(str(out / r))["clap"].numpy() for r in rels])


def fad(summary: dict[str, Any], clips) -> None:
    """FAD-style distance of every adapter x strength's renders to the references (CLAP)."""
    from selva_core.evaluation.embeddings import frechet_distance

    out = Path(summary["output_dir"])
    refs = [r["clap_embedding"] for r in summary.get("reference_clips", [])
            if r.get("clap_embedding") and (out / r["clap_embedding"]).is_file()]
    for row in summary["adapters"]:
        for group in row.get("by_strength", []):
            embs = [r["clap_embedding"] for r in row.get("clips", [])
                    if r["role"] == "eval" and r["strength"] == group["strength"]
                    and r.get("clap_embedding") and (out / r["clap_embedding"]).is_file()]
            if len(embs) >= 2 and len(refs) >= 2:
                group["fad_clap"] = frechet_distance(load_embeddings(out, embs),
                                                     load_embeddings(out, refs))
