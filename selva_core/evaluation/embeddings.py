"""Optional embedding metrics: CLAP text-audio score and a FAD-style distance (CLAP space).

Both need a CLAP model, which no pip package ships: they run only when the spec names a local
model folder (``"clap_model": "models/clap-htsat-unfused"``, a Hugging Face ``ClapModel``
such as ``laion/clap-htsat-unfused`` downloaded by the user), loaded with
``local_files_only=True`` -- never a silent download. Without it both are skipped and the
summary says why.

* ``clap_score``: cosine similarity of the render's CLAP audio embedding (48 kHz) and the
  clip prompt's text embedding (higher = closer to the prompt).
* ``fad_clap`` (per adapter x strength): the Fréchet distance between the Gaussians fitted to
  the CLAP audio embeddings of the renders and of the reference recordings. It is FAD's
  formula in CLAP's embedding space, not the standard VGGish FAD; with the few clips of a
  typical evaluation the covariances are rank-deficient, so compare values within one
  evaluation only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CLAP_RATE = 48000


def _nonnegative(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise (tiny negatives, and positives at the
    level of float64's precision where the matrix is singular) set to zero."""
    tol = np.abs(eigenvalues).max(initial=0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two sets of rows.

    ``Tr((S_a S_b)^(1/2))`` is taken as ``Tr((R S_b R)^(1/2))`` with ``R = S_a^(1/2)``: the same
    value (similar matrices), but of a symmetric positive semi-definite matrix, so two
    eigendecompositions give it exactly even when the covariances are singular (fewer clips than
    embedding dimensions, the usual case), where a general matrix square root is unstable.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa = np.atleast_2d(np.cov(a, rowvar=False, bias=True))
    sb = np.atleast_2d(np.cov(b, rowvar=False, bias=True))
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(_nonnegative(w))) @ v.T
    trace_covmean = np.sqrt(_nonnegative(np.linalg.eigvalsh(root_a @ sb @ root_a))).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * trace_covmean)


class ClapScorer:
    """CLAP embeddings of audio and text from a local transformers ``ClapModel`` folder."""

    def __init__(self, model, feature_extractor, tokenizer, device):
        self.model = model.eval().requires_grad_(False).to(device)
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    @staticmethod
    def _pooled(out: Any) -> torch.Tensor:
        t = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(t.float(), dim=-1)

    @torch.no_grad()
    def audio_embedding(self, wave: Any, sample_rate: int) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if sample_rate != CLAP_RATE:
            from selva_core.data.audio import resample

            wave = resample(wave, sample_rate, CLAP_RATE)
        inputs = self.feature_extractor(wave, sampling_rate=CLAP_RATE, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return self._pooled(self.model.get_audio_features(**inputs))[0].cpu().numpy()

    @torch.no_grad()
    def text_embedding(self, text: str) -> np.ndarray:
        inputs = self.tokenizer([text], padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return self._pooled(self.model.get_text_features(**inputs))[0].cpu().numpy()

    @staticmethod
    def score(text_emb: np.ndarray, audio_emb: np.ndarray) -> float:
        return float(np.dot(text_emb, audio_emb) / (
            np.linalg.norm(text_emb) * np.linalg.norm(audio_emb) + 1e-12))


def create_clap(path: str | None, device: torch.device | str = "cpu"
                ) -> tuple[ClapScorer | None, dict[str, Any]]:
    """(scorer, status) for the spec's ``clap_model``; never downloads."""
    if not path:
        return None, {"status": "off", "reason": (
            "no 'clap_model' in the spec: CLAP score and the FAD-style distance are skipped "
            "(give the folder of a local CLAP model, e.g. laion/clap-htsat-unfused)")}
    folder = Path(path)
    if not folder.is_dir():
        reason = f"clap_model {folder} is not a folder; give a local CLAP model folder"
        log.warning("CLAP unavailable: %s", reason)
        return None, {"status": "unavailable", "reason": reason}
    try:
        from transformers import AutoFeatureExtractor, AutoTokenizer, ClapModel

        model = ClapModel.from_pretrained(str(folder), local_files_only=True)
        fe = AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # missing files, another model type: report and go on
        reason = f"cannot load a CLAP model from {folder} ({exc})"
        log.warning("CLAP unavailable: %s", reason)
        return None, {"status": "unavailable", "reason": reason}
    return ClapScorer(model, fe, tok, device), {"status": "ok", "source": str(folder)}


__all__ = ["ClapScorer", "create_clap", "frechet_distance"]
