"""What a run leaves for a person to read: the JSON-lines log, curves, audio samples, summary.

* ``train_log.jsonl``: one JSON object per line: ``{"kind": "train", "step", "loss", "lr",
  "grad_norm", ...}`` after every optimiser step, ``{"kind": "val", "step", "val_loss",
  "per_t": [...]}`` after every validation, plus ``start`` / ``checkpoint`` / ``end`` events.
* ``loss_curve.png``: training loss (raw and smoothed), validation loss and learning rate.
* ``samples/step_XXXXXX.wav`` + ``.png``: a validation clip generated at each checkpoint
  (fixed seed, CFG on) and its spectrogram.

Plots use matplotlib's object API with the Agg canvas, so no display and no global backend
switch are needed. Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selva_core.atomic import (
    OutOfSpaceError,
    is_out_of_space,
    savefig_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)


# --- JSON lines --------------------------------------------------------------------------------
class JsonlLog:
    """Append-only JSON-lines log; ``enabled=False`` (non-zero DDP ranks) writes nothing."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")
        except OSError as exc:  # a torn last line is skipped by read_jsonl
            if is_out_of_space(exc):
                raise OutOfSpaceError(self.path, exc.errno, exc.strerror) from exc
            raise

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run replays them); atomic."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.read() if int(r.get("step", 0)) <= step]
        write_text_atomic(self.path, "".join(
            json.dumps(r, sort_keys=True, allow_nan=True) + "\n" for r in kept))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete records of a JSON-lines file (a torn last line from a kill is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is incomplete (run killed while writing?); skipped",
                            path, n)
    return records


# --- plots -------------------------------------------------------------------------------------
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: Path) -> None:
    savefig_atomic(path, fig)


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard-style smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_curves(records: Iterable[dict[str, Any]], path: Path, title: str = "") -> None:
    """Training loss (raw + smoothed), validation loss and learning rate against the step."""
    records = list(records)
    train = [r for r in records if r.get("kind") == "train" and _finite(r.get("loss"))]
    val = [r for r in records if r.get("kind") == "val" and _finite(r.get("val_loss"))]
    fig = _new_figure(9, 6)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.94, bottom=0.09, hspace=0.08)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        ax_loss.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train (raw)")
        ax_loss.plot(steps, smooth(losses), color="tab:blue", lw=1.6, label="train (smoothed)")
        ax_lr.plot(steps, [r["lr"] for r in train], color="tab:green", lw=1.2)
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-",
                     color="tab:orange", lw=1.6, ms=4, label="validation")
    ax_loss.set_ylabel("flow-matching loss")
    ax_loss.grid(alpha=0.3)
    if train or val:
        ax_loss.legend(loc="upper right")
    ax_loss.set_title(title or "LoRA training")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimiser step")
    ax_lr.grid(alpha=0.3)
    _save_figure(fig, path)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def save_spectrogram_png(waveform: torch.Tensor | np.ndarray, sample_rate: int, path: Path,
                         title: str = "") -> None:
    """Log-magnitude STFT spectrogram (n_fft 1024, hop 256, Hann) of a mono waveform."""
    wav = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).flatten()
    n_fft, hop = 1024, 256
    if wav.numel() < n_fft:
        wav = torch.nn.functional.pad(wav, (0, n_fft - wav.numel()))
    spec = torch.stft(wav, n_fft, hop_length=hop, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-5))
    db = db.clamp_min(db.max() - 80.0).numpy()
    fig = _new_figure(8, 3.5)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.15)
    ax = fig.subplots()
    dur = wav.numel() / sample_rate
    image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                      extent=(0.0, dur, 0.0, sample_rate / 2000.0))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (kHz)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="dB", pad=0.01)
    _save_figure(fig, path)


# --- the one-screen summary -----------------------------------------------------------------
def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable end-of-run summary (the CLI prints it; it is also saved as JSON)."""

    def fmt(x: Any, spec: str = ".4f") -> str:
        return format(x, spec) if _finite(x) else "n/a"

    lines = [
        "=" * 72,
        f"SelVA LoRA training {'finished' if summary.get('completed') else 'stopped'}: "
        f"{summary.get('status', '')}",
        "=" * 72,
        f"variant        {summary.get('variant')}   " + (
            f"textual inversion of {summary['token']} ({summary.get('num_vectors')} vector(s))"
            if summary.get("token") else
            f"rank {summary.get('rank')}   alpha {summary.get('alpha')}   init "
            f"{summary.get('init')}   targets {', '.join(summary.get('target', []))}"),
        f"adapted layers {summary.get('adapted_layers')}   trainable parameters "
        f"{summary.get('trainable_params', 0):,}",
        f"data           {summary.get('train_examples')} training examples, "
        f"{summary.get('val_examples')} validation examples "
        f"({summary.get('skipped_clips', 0)} clips skipped)",
    ]
    left_out = summary.get("audio_seconds_left_out") or 0.0
    if left_out > 0:
        lines.append(f"               {left_out:.1f} s of clip audio beyond the windows not "
                     f"used (--window {summary.get('window', 'first')}"
                     f"{'; --window all uses it' if summary.get('window') == 'first' else ''})")
    lines += [
        f"steps          {summary.get('steps_done')} / {summary.get('steps')}   effective batch "
        f"{summary.get('effective_batch')}   processes {summary.get('world_size', 1)}",
        f"time           {fmt(summary.get('train_time_s'), '.1f')} s training, "
        f"{fmt(summary.get('clips_per_s'), '.2f')} clips/s",
        f"train loss     first {fmt(summary.get('first_train_loss'))}   last (smoothed) "
        f"{fmt(summary.get('last_train_loss'))}",
        f"val loss       base model {fmt(summary.get('val_loss_base'))}   final "
        f"{fmt(summary.get('val_loss_final'))}",
    ]
    sync = summary.get("sample_sync") or {}
    if sync:
        def figs(rec: dict[str, Any] | None) -> str:
            if not rec:
                return "n/a"
            return (f"{fmt(rec.get('env_corr_lag0'), '.2f')} (best "
                    f"{fmt(rec.get('env_corr_best'), '.2f')} at "
                    f"{fmt(rec.get('env_best_lag_ms'), '+.0f')} ms)")

        lines.append(f"sample sync    {sync.get('clip')}: envelope corr. with its audio, lag 0: "
                     f"base {figs(sync.get('base'))} -> {(sync.get('last') or {}).get('tag', '')} "
                     f"{figs(sync.get('last'))}")
    if summary.get("peak_memory_mb") is not None:
        lines.append(
            f"memory         peak {summary['peak_memory_mb']:.0f} MB "
            f"({summary.get('peak_memory_method', '')}); base weights "
            f"{str(summary.get('base_dtype', 'torch.float32')).replace('torch.', '')}, "
            f"gradient checkpointing {'on' if summary.get('gradient_checkpointing') else 'off'}")
    surgery = summary.get("surgery") or {}
    if surgery:
        lines.append(f"surgery        {surgery.get('decision', 'n/a')}: val loss "
                     f"{fmt(surgery.get('val_loss_before'))} -> "
                     f"{fmt(surgery.get('val_loss_after'))}  {surgery.get('reason', '')}")
    intruders = summary.get("intruders") or {}
    if intruders:
        lines.append(f"intruders      {intruders.get('summary', '')}")
    lines += [
        "-" * 72,
        f"adapter        {summary.get('adapter_path')}" + (
            f"  ({summary['adapter_mb']:.2f} MB, {summary.get('adapter_storage')})"
            if summary.get("adapter_mb") else ""),
        f"output folder  {summary.get('output_dir')}",
        "               train_log.jsonl, loss_curve.png, samples/, checkpoints/, "
        "intruders.json/png",
    ]
    if summary.get("message"):
        lines.append(f"note           {summary['message']}")
    lines.append("=" * 72)
    return "\n".join(lines)
