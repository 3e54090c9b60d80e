"""The inspection's outputs: ``dataset_report.json``, ``dataset_report.html``, a summary image,
the one-screen console summary, and the trainer's warning about flagged clips.

* JSON: one entry per clip with every check (figure, threshold, unit, rule, verdict), its
  flags, the prepared clip's source record, plus the near-duplicate groups, those the
  trainer's default split cuts in two, and the clips the trainer would skip.
* HTML: one offline page (images inline as PNG data): per clip a strip of frames, the log-mel
  spectrograms of the original and of the round trip, and its flags with their figures.
* Summary image (``dataset_summary.png``): clips x checks, red where flagged.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path

import numpy as np

from selva_core.atomic import atomic_path, write_json_atomic, write_text_atomic
from selva_core.audio.metrics import mel_power
from selva_core.data.video import decode_frames
from selva_core.dataset import checks
from selva_core.dataset.inspect import ClipReport, Inspection

log = logging.getLogger(__name__)

REPORT_JSON = "dataset_report.json"
REPORT_HTML = "dataset_report.html"
SUMMARY_PNG = "dataset_summary.png"
STRIP_FRAMES = 6
STRIP_HEIGHT = 72
SPEC_MELS = 64
CELL = 14  # summary image cell size (pixels)
WARN_CLIPS = 20  # the trainer names at most this many flagged clips, then counts them


def _figure(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def report_dict(result: Inspection) -> dict:
    """The JSON report as a dict."""
    return {
        "folder": str(result.folder), "variant": result.variant,
        "duration": result.duration, "round_trip": result.round_trip,
        "thresholds": checks.THRESHOLDS,
        "clips": [{
            "name": r.name, "video": str(r.video) if r.video else None,
            "audio": str(r.audio) if r.audio else None, "prompt": r.prompt,
            "duration": r.duration, "flags": r.flags,
            "checks": {k: c.as_dict() for k, c in r.checks.items()},
            "source": r.source,
        } for r in result.clips],
        "near_duplicates": result.duplicates,
        "duplicates_across_split": result.straddling,
        "skipped": result.skipped,
    }


def format_summary(result: Inspection) -> str:
    """A one-screen summary: counts per flag with a few clip names, duplicates, skips."""
    flagged = [r for r in result.clips if r.flags]
    lines = [f"{len(result.clips)} clip(s) in {result.folder}, {len(flagged)} flagged"
             + ("" if result.round_trip else " (no VAE round trip)")]
    by_flag: dict[str, list[str]] = {}
    for r in result.clips:
        for f in r.flags:
            by_flag.setdefault(f, []).append(r.name)
    for flag, names in sorted(by_flag.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = ", ".join(names[:4]) + (f" (+{len(names) - 4})" if len(names) > 4 else "")
        lines.append(f"  {flag:<24} {len(names):>4}  {shown}")
    if result.round_trip and result.clips:
        trips = [r.checks["round_trip"] for r in result.clips if "round_trip" in r.checks]
        lsd = [c.value for c in trips]
        if lsd:
            lines.append(f"  round-trip LSD: median {float(np.median(lsd)):.1f} dB, worst "
                         f"{max(lsd):.1f} dB (threshold {trips[0].threshold:g})")
    for group in result.straddling:
        lines.append(f"  near duplicates on both sides of the default split (the trainer keeps "
                     f"them in training): {', '.join(group)}")
    if result.skipped:
        lines.append(f"  {len(result.skipped)} clip(s) the trainer would skip:")
        lines += [f"    - {s}" for s in result.skipped[:5]]
    return "\n".join(lines)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def frame_strip(video: Path, duration: float) -> np.ndarray | None:
    """STRIP_FRAMES frames spread over the clip, side by side, STRIP_HEIGHT pixels high."""
    import torch.nn.functional as F

    def shrink(block):
        h, w = block.shape[-2:]
        size = (STRIP_HEIGHT, max(1, round(w * STRIP_HEIGHT / h)))
        return F.interpolate(block.float(), size=size, mode="area").round().byte()

    fps = STRIP_FRAMES / max(duration, 1e-3)
    frames = decode_frames(video, fps=fps, num_frames=STRIP_FRAMES, transform=shrink)
    if frames.shape[0] == 0:
        return None
    return np.concatenate(list(frames.permute(0, 2, 3, 1).numpy()), axis=1)


def spectrogram_image(wave: np.ndarray, sample_rate: int, floor_db: float = 80.0
                      ) -> np.ndarray:
    """A log-mel spectrogram (low frequencies at the bottom) as an RGB image."""
    from matplotlib import colormaps

    mel = mel_power(wave, sample_rate, SPEC_MELS).T[::-1]
    db = 10.0 * np.log10(np.maximum(mel, 1e-12))
    db = np.clip((db - (db.max() - floor_db)) / floor_db, 0.0, 1.0)
    rgb = (colormaps["magma"](db)[..., :3] * 255).astype(np.uint8)
    return np.repeat(rgb, 2, axis=0)


def summary_image(result: Inspection) -> np.ndarray:
    """Clips (rows) x checks (columns): green fine, red flagged, grey not measured."""
    names = sorted({k for r in result.clips for k in r.checks} |
                   {f for r in result.clips for f in r.flags if f.startswith("source:")})
    rows = max(1, len(result.clips))
    img = np.full((rows * CELL, max(1, len(names)) * CELL, 3), 200, np.uint8)
    for i, r in enumerate(result.clips):
        for j, name in enumerate(names):
            if name.startswith("source:"):
                state = name in r.flags
            elif name in r.checks:
                state = r.checks[name].flagged
            else:
                continue
            img[i * CELL + 1:(i + 1) * CELL - 1, j * CELL + 1:(j + 1) * CELL - 1] = \
                (210, 60, 50) if state else (90, 170, 90)
    return img


def _clip_html(r: ClipReport, sample_rate: int) -> str:
    parts = [f"<section><h2>{html.escape(r.name)}</h2>",
             f"<p class=prompt>{html.escape(r.prompt)} &middot; {r.duration:.2f} s</p>"]
    if r.video is not None:
        try:
            strip = frame_strip(r.video, r.duration)
        except (ValueError, OSError) as error:
            log.debug("no frame strip for %s (%s)", r.video, error)
            strip = None
        if strip is not None:
            parts.append(f"<img alt='frames' src='{_data_uri(_png(strip))}'>")
    if r.heard is not None and r.heard.size:
        parts.append("<div class=specs><figure><figcaption>original</figcaption>"
                     f"<img src='{_data_uri(_png(spectrogram_image(r.heard, sample_rate)))}'>"
                     "</figure>")
        if r.round_trip is not None:
            rt = spectrogram_image(r.round_trip.audio, r.round_trip.sample_rate)
            parts.append("<figure><figcaption>VAE round trip "
                         f"({r.round_trip.lsd_db:.1f} dB LSD)</figcaption>"
                         f"<img src='{_data_uri(_png(rt))}'></figure>")
        parts.append("</div>")
    rows = []
    all_checks = [c.as_dict() for c in r.checks.values()]
    all_checks += [dict(c, name=f"source:{c['name']}")
                   for c in (r.source or {}).get("source_checks", [])]
    for c in all_checks:
        value = c["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
        cls = " class=flag" if c["flagged"] else ""
        rows.append(f"<tr{cls}><td>{html.escape(c['name'])}</td><td>{shown}</td>"
                    f"<td>{html.escape(str(c['threshold']))}</td><td>{html.escape(c['unit'])}"
                    f"</td><td>{html.escape(c['rule'])}</td></tr>")
    parts.append("<table><tr><th>check</th><th>figure</th><th>threshold</th><th>unit</th>"
                 "<th>rule</th></tr>" + "".join(rows) + "</table></section>")
    return "\n".join(parts)


def report_html(result: Inspection) -> str:
    """The offline page."""
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
             "padding:2px 6px}tr.flag{background:#fdd}.specs{display:flex;gap:1em}"
             "figure{margin:0}img{image-rendering:pixelated;max-width:100%}"
             ".specs img{width:420px;height:160px}"
             "pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}")
    body = "\n".join(_clip_html(r, result.sample_rate) for r in result.clips)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>SelVA dataset report"
            f"</title><style>{style}</style></head><body><h1>SelVA dataset report</h1>"
            f"<pre>{html.escape(format_summary(result))}</pre>{body}</body></html>\n")


def write_report(result: Inspection, out: Path | None = None) -> dict[str, Path]:
    """Write the JSON, HTML and summary image into ``out`` (default: the folder)."""
    out = Path(out or result.folder)
    paths = {"json": write_json_atomic(out / REPORT_JSON, report_dict(result)),
             "html": write_text_atomic(out / REPORT_HTML, report_html(result))}
    with atomic_path(out / SUMMARY_PNG) as tmp:
        tmp.write_bytes(_png(summary_image(result)))
    paths["image"] = out / SUMMARY_PNG
    return paths


def flagged_in_report(data_dir: str | Path) -> dict[str, list[str]]:
    """Clip name -> its flags, from the folder's ``dataset_report.json`` ({} without one)."""
    path = Path(data_dir) / REPORT_JSON
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {c["name"]: list(c.get("flags") or []) for c in data.get("clips", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        log.warning("%s: cannot be read (%s); rerun `python -m selva_core.dataset inspect %s`",
                    path, error, data_dir)
        return {}


def warn_flagged(data_dir: str | Path, names: list[str]) -> list[str]:
    """Log one warning per clip among ``names`` that the folder's report flags; the names."""
    flags = flagged_in_report(data_dir)
    hit = [n for n in names if flags.get(n)]
    for name in hit[:WARN_CLIPS]:
        log.warning("%s: flagged by %s: %s", name, REPORT_JSON, ", ".join(flags[name]))
    if hit:
        log.warning("%d of %d clip(s) flagged by the dataset report; see %s", len(hit),
                    len(names), Path(data_dir) / REPORT_HTML)
    return hit


def keep_duplicates_together(data_dir: str | Path, train: list, val: list) -> tuple[list, list]:
    """Move validation examples whose clip has a near duplicate among the training clips
    (the report's groups) into training, so validation never scores sound the adapter
    trained on; both keep their order. Without a report nothing changes."""
    from selva_core.data.split import clip_of

    path = Path(data_dir) / REPORT_JSON
    if not val or not path.is_file():
        return train, val
    try:
        groups = json.loads(path.read_text(encoding="utf-8")).get("near_duplicates") or []
    except (OSError, ValueError, AttributeError):
        return train, val
    training = {clip_of(e.name) for e in train}
    moved = {name for g in groups if training.intersection(g) for name in g} - training
    moved &= {clip_of(e.name) for e in val}
    if not moved:
        return train, val
    log.warning("%d validation clip(s) moved to training: near duplicates of training clips "
                "(%s): %s", len(moved), REPORT_JSON, ", ".join(sorted(moved)))
    return ([e for e in [*train, *val] if clip_of(e.name) in training | moved],
            [e for e in val if clip_of(e.name) not in moved])
