"""What an evaluation leaves for people: ``metrics.csv``, PNG charts and ``index.html``.

* ``metrics.csv``: one row per reference recording and per render (role, clip, adapter,
  strength, seed, files, every metric).
* ``metric_comparison.png``: one bar chart per metric, bars = reference (where the metric
  describes a sound on its own), baseline, then every adapter x strength, averaged over the
  evaluated clips and seeds; ``strength_curves.png`` (metrics against strength, one line per
  adapter) when an adapter has several strengths, and ``checkpoint_curves.png`` (metrics
  against the training step) when the spec listed a run folder.
* ``index.html``: the verdict (:mod:`.verdict`: which column is closest to the references,
  with the spread over seeds), a metric guide built from the registry, the charts, and the
  listening grid, one table per seed: rows are clips, columns reference / baseline / each
  adapter x strength; each cell holds a video player (the render muxed onto the clip's
  picture, which browsers play), an audio player (the WAV) and the render's metrics. Players
  load only metadata and show the clip's poster frame until played. The page reads on a
  phone: below 700 px the grid becomes one block per cell. Links are relative and nothing is
  fetched from the network, so the folder works offline and can be zipped.

Metrics whose model is off, missing or untrained (DeSync from the tiny variant's random test
Synchformer) are left out of every table and chart and named in the guide with the reason
(:func:`unavailable_metrics`).

Plots use matplotlib's object API on the Agg canvas (no display); files are written
atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from selva_core.atomic import savefig_atomic, write_text_atomic
from selva_core.audio import metrics as M
from selva_core.audio.metrics import MOTION_KEYS
from selva_core.evaluation.verdict import RANKING_METRIC, best_choice
from selva_core.evaluation.verdict import column_label as _col_label

CHART_FILE = "metric_comparison.png"
STRENGTH_CHART = "strength_curves.png"
CHECKPOINT_CHART = "checkpoint_curves.png"
CSV_FILE = "metrics.csv"
HTML_FILE = "index.html"
FAD_METRIC = {"key": "fad_clap", "label": "FAD-style distance (CLAP)", "unit": "",
              "better": "lower", "needs": "reference",
              "about": "distance between the renders' and the references' CLAP embeddings, "
                       "over all clips"}
SOUND_METRICS = ("hf_energy_ratio", "spectral_centroid_hz", "spectral_rolloff_hz",
                 "spectral_flatness", "temporal_variance", "desync_s", "clap_score",
                 *MOTION_KEYS)  # the reference's onsets vs motion: what the true sound scores
#: Status blocks of the summary and the metrics each one's model produces.
_STATUS_METRICS = {"desync": ("desync_s",), "clap": ("clap_score", "fad_clap")}
_NEEDS = {"reference": "against the clip's reference recording",
          "baseline": "against the render without the adapter (same clip and seed)",
          "video": "against the clip's picture (its motion energy)"}
NA = "n/a"  # a metric that is undefined here (a correlation on silence), never shown as 0


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _all_metrics(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = list(summary.get("metrics_info", []))
    rows.extend(dataclasses.asdict(m) for m in M.EXTRA_METRICS)
    return rows


def unavailable_metrics(summary: dict[str, Any]) -> dict[str, str]:
    """Metric key -> why the reports show it as unavailable: its model is missing or off, or
    its figures came from random weights (the tiny variant's test Synchformer) and mean
    nothing."""
    out: dict[str, str] = {}
    for block, keys in _STATUS_METRICS.items():
        status = summary.get(block) or {}
        if status.get("weights") == "random":
            reason = (f"computed with {status.get('source') or 'random weights'}: its weights "
                      "are random, so the figures mean nothing")
        elif status and status.get("status") != "ok":
            reason = status.get("reason") or str(status.get("status"))
        else:
            continue
        for key in keys:
            out[key] = reason
    return out


def metric_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Descriptions of the metrics the reports show: the summary's registry plus DeSync and
    CLAP, less those :func:`unavailable_metrics` names."""
    gone = unavailable_metrics(summary)
    return [m for m in _all_metrics(summary) if m["key"] not in gone]


def _columns(summary: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
    """(adapter row, strength) in grid order: baseline first."""
    cols = []
    adapters = sorted((r for r in summary.get("adapters", []) if r.get("status") != "skipped"),
                      key=lambda r: not r.get("baseline"))
    for row in adapters:
        for s in row.get("strengths", []):
            cols.append((row, s))
    return cols


def _verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's verdict (an older summary without one: computed now)."""
    return summary.get("verdict") or best_choice(summary,
                                                 summary.get("rank_by") or RANKING_METRIC)


# --- CSV ---------------------------------------------------------------------------------------
def write_csv(out: Path, summary: dict[str, Any]) -> Path:
    keys = [m["key"] for m in metric_table(summary)]
    verdict = _verdict(summary)
    # the verdict's place of each render's column (1 = best by the spec's rank_by)
    place = {(r["adapter"], r["strength"]): i + 1
             for i, r in enumerate(verdict.get("ranking") or [])}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["role", "clip", "adapter", "strength", "seed", "audio", "video", *keys,
                f"rank_by_{verdict['metric']}"])
    for ref in summary.get("reference_clips", []):
        w.writerow([f"reference ({ref['role']})", ref["clip"], "", "", "", ref.get("audio") or "",
                    ref.get("video") or "", *[_fmt_csv(ref.get("metrics", {}).get(k))
                                              for k in keys], ""])
    for row, strength in _columns(summary):
        for rec in row.get("clips", []):
            if rec["strength"] != strength:
                continue
            rank = place.get((row["id"], strength)) if rec["role"] == "eval" else None
            w.writerow([rec["role"], rec["clip"], rec["adapter"], f"{strength:g}", rec["seed"],
                        rec["wav"], rec.get("mp4") or "",
                        *[_fmt_csv(rec.get("metrics", {}).get(k)) for k in keys],
                        "" if rank is None else rank])
    return write_text_atomic(out / CSV_FILE, buf.getvalue())


def _fmt_csv(x: Any) -> str:
    return f"{x:.6g}" if _finite(x) else ""


# --- charts ------------------------------------------------------------------------------------
#: Charts are drawn at this many dots per inch; the page shows them at their own size (at most
#: the page's width), so the font sizes below are what a reader sees on a laptop.
CHART_DPI = 90
_PALETTE = ["#888888", "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
            "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=CHART_DPI)
    FigureCanvasAgg(fig)
    return fig


def chart_title(m: dict[str, Any]) -> str:
    """``label (unit): lower is better``: what a chart panel shows and which way is better."""
    unit = f" ({m['unit']})" if m.get("unit") else ""
    return f"{m['label']}{unit}: {m['better']} is better"


def _plain_ticks(ax) -> None:
    """Tick labels as plain numbers (no offset or scientific notation)."""
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.4g}"))


def _y_range(ax, values: list[float], *, from_zero: bool) -> None:
    """A y range that shows ``values`` without magnifying small differences: at least 20 % of
    the largest magnitude is spanned (0.3 dB of 25 dB stays a small wiggle); bars start at 0."""
    lo, hi = min(values), max(values)
    if from_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        span = (hi - lo) or 1.0
        ax.set_ylim(lo - 0.02 * span if lo < 0 else 0.0, hi + 0.18 * span if hi > 0 else 0.0)
        return
    span = max(hi - lo, 0.2 * max(abs(lo), abs(hi)), 1e-9)
    mid = 0.5 * (lo + hi)
    bottom, top = mid - 0.6 * span, mid + 0.6 * span
    if lo >= 0.0 > bottom:  # a non-negative figure: the axis need not go below zero
        bottom, top = 0.0, top - bottom
    ax.set_ylim(bottom, top)


def _avg(row: dict[str, Any], strength: float, key: str, role: str = "eval") -> float | None:
    group = "avg_metrics" if role == "eval" else "drift_avg_metrics"
    for g in row.get("by_strength", []):
        if g["strength"] == strength:
            v = g.get(group, {}).get(key)
            if key == "fad_clap":
                v = g.get("fad_clap")
            return v if _finite(v) else None
    return None


def _chart_metrics(summary: dict[str, Any]) -> list[dict[str, Any]]:
    gone = unavailable_metrics(summary)
    return metric_table(summary) + ([FAD_METRIC] if FAD_METRIC["key"] not in gone else [])


def write_comparison_chart(out: Path, summary: dict[str, Any]) -> Path | None:
    cols = _columns(summary)
    ref = summary.get("reference_avg", {})
    metrics = []
    for m in _chart_metrics(summary):
        has = any(_avg(r, s, m["key"]) is not None for r, s in cols) or (
            m["key"] in SOUND_METRICS and _finite(ref.get(m["key"])))
        if m["key"] == "drift_lsd_db":
            has = has or any(_avg(r, s, m["key"], "drift") is not None for r, s in cols)
        if has:
            metrics.append(m)
    if not metrics or not cols:
        return None
    n = len(metrics)
    ncols = 2 if n > 1 else 1
    nrows = math.ceil(n / ncols)
    fig = _figure(6.0 * ncols, 1.0 + 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, m in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        labels, values, colours = [], [], []
        if m["key"] in SOUND_METRICS and _finite(ref.get(m["key"])):
            labels.append("reference")
            values.append(ref[m["key"]])
            colours.append("#2f2f2f")
        for j, (row, s) in enumerate(cols):
            v = _avg(row, s, m["key"])
            if v is None and m["key"] == "drift_lsd_db":
                v = _avg(row, s, m["key"], "drift")
            labels.append(_col_label(row, s))
            values.append(v)
            colours.append(_PALETTE[j % len(_PALETTE)] if v is not None else "#eeeeee")
        shown = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(range(len(shown)), shown, color=colours)
        # every bar carries its value: 25.0 and 24.7 dB look alike as bars from zero
        ax.bar_label(bars, labels=[f"{v:.4g}" if v is not None else NA for v in values],
                     fontsize=8, rotation=90 if len(values) > 6 else 0, padding=2)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=9)
        ax.set_title(chart_title(m), fontsize=11)
        _plain_ticks(ax)
        _y_range(ax, shown, from_zero=True)
        ax.tick_params(axis="y", labelsize=9)
        ax.grid(axis="y", alpha=0.3)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.suptitle(f"{summary.get('name', 'eval')}: means over clips and seeds", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return savefig_atomic(out / CHART_FILE, fig)


def _curves(out: Path, summary: dict[str, Any], name: str, xs_of, xlabel: str
            ) -> Path | None:
    """Line charts of the directional metrics (lower or higher is better) against x
    (strength or step), one line per adapter group; two panels to a row."""
    series = xs_of(summary)
    if not series:
        return None
    metrics = [m for m in _chart_metrics(summary) if m.get("better") in ("lower", "higher")
               and any(_finite(ys.get(m["key"])) for pts in series.values() for _, ys in pts)]
    if not metrics:
        return None
    ncols = 2 if len(metrics) > 1 else 1
    nrows = math.ceil(len(metrics) / ncols)
    fig = _figure(6.0 * ncols, 3.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, m in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        values = []
        for label, pts in series.items():
            pts = sorted((x, ys.get(m["key"])) for x, ys in pts if _finite(ys.get(m["key"])))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
                values += [p[1] for p in pts]
        ax.set_title(chart_title(m), fontsize=11)
        ax.set_xlabel(xlabel, fontsize=10)
        _plain_ticks(ax)
        _y_range(ax, values, from_zero=False)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    for j in range(len(metrics), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.tight_layout()
    return savefig_atomic(out / name, fig)


def _strength_series(summary: dict[str, Any]):
    """Per adapter with several strengths: (strength, means); the baseline is strength 0."""
    series = {}
    base = next((r for r in summary.get("adapters", []) if r.get("baseline")), None)
    for row in summary.get("adapters", []):
        if row.get("baseline") or len(row.get("strengths", [])) < 2:
            continue
        pts = []
        if base is not None and base.get("avg_metrics") and 0.0 not in row["strengths"]:
            pts.append((0.0, {**base["avg_metrics"], "drift_lsd_db": 0.0}))
        for g in row.get("by_strength", []):
            ys = dict(g.get("avg_metrics", {}))
            if "drift_lsd_db" in g.get("drift_avg_metrics", {}):
                ys["drift_lsd_db"] = g["drift_avg_metrics"]["drift_lsd_db"]
            pts.append((g["strength"], ys))
        series[row["id"]] = pts
    return series


def _checkpoint_series(summary: dict[str, Any]):
    series: dict[str, list] = defaultdict(list)
    for row in summary.get("adapters", []):
        if not row.get("group") or row.get("step") is None:
            continue
        for g in row.get("by_strength", []):
            ys = dict(g.get("avg_metrics", {}))
            series[f"{row['group']} × {g['strength']:g}"].append((row["step"], ys))
    return {k: v for k, v in series.items() if len(v) >= 2}


# --- HTML --------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;line-height:1.4}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}
th{text-align:left}.scroll{overflow-x:auto;max-width:100%}
img{max-width:100%;height:auto}
.verdict{background:#f3f6fb;border-left:4px solid #4c72b0;padding:.6em 1em;margin:1em 0}
.verdict p{margin:.3em 0}.none{color:#777}.links{font-size:12px}
table.m td{border:none;padding:0 4px;font-size:12px}
.grid>tbody>tr>td{max-width:280px}.grid>tbody>tr>td.clip{max-width:160px}
.grid video,.grid audio{width:240px;max-width:100%;display:block}
.grid video{background:#000}
@media (max-width:700px){
 body{margin:.5em}
 .grid,.grid>tbody,.grid>tbody>tr,.grid>tbody>tr>td{display:block}
 .grid>tbody>tr.head{display:none}
 .grid>tbody>tr{border-top:3px solid #4c72b0;margin-top:.8em}
 .grid>tbody>tr>td{border:none;border-bottom:1px solid #ddd}
 .grid>tbody>tr>td,.grid>tbody>tr>td.clip{max-width:none}
 .grid>tbody>tr>td[data-col]::before{content:attr(data-col);display:block;font-weight:bold}
 .grid video,.grid audio{width:100%;max-width:360px}
}
"""


def _url(rel: str | None) -> str:
    return quote(rel or "", safe="/")


def _metrics_html(metrics: dict[str, Any], table: list[dict[str, Any]]) -> str:
    rows = []
    for m in table:
        v = metrics.get(m["key"])
        if _finite(v):
            unit = f" {m['unit']}" if m.get("unit") else ""
            rows.append(f"<tr><td>{html.escape(m['label'])}</td><td>{v:.4g}{unit}</td></tr>")
        elif m["key"] in metrics:  # measured but undefined (NaN in JSON is null)
            rows.append(f"<tr><td>{html.escape(m['label'])}</td><td>{NA}</td></tr>")
    return f"<table class='m'>{''.join(rows)}</table>" if rows else ""


def _players(video: str | None, audio: str | None, poster: str | None = None) -> str:
    """A video and an audio player that load only their metadata (duration, picture size)
    until played; the video shows ``poster`` (the clip's first frame) meanwhile."""
    parts = []
    if video:
        shown = f" poster='{_url(poster)}'" if poster else ""
        parts.append(f"<video controls playsinline preload='metadata'{shown} "
                     f"src='{_url(video)}'></video>")
    if audio:
        parts.append(f"<audio controls preload='metadata' src='{_url(audio)}'></audio>")
    if video or audio:
        links = " · ".join(f"<a href='{_url(p)}'>{html.escape(Path(p).suffix[1:])}</a>"
                           for p in (video, audio) if p)
        parts.append(f"<div class='links'>{links}</div>")
    return "".join(parts)


def _verdict_html(summary: dict[str, Any]) -> str:
    esc = html.escape
    verdict = _verdict(summary)
    parts = [f"<p><b>{esc(verdict['text'])}</b></p>"]
    ranking = verdict.get("ranking") or []
    if ranking:
        unit = f" {verdict['unit']}" if verdict.get("unit") else ""
        lines = "".join(
            f"<tr><td>{i + 1}</td><td>{esc(r['label'])}</td><td>{r['mean']:.4g}{unit}</td>"
            f"<td>{r['spread']:.3g}{unit}</td><td>{r['seeds']}</td></tr>"
            for i, r in enumerate(ranking))
        parts.append(
            f"<div class='scroll'><table><tr><th>#</th><th>column</th>"
            f"<th>{esc(verdict['label'])} ({esc(verdict['better'])} is better)</th>"
            f"<th>spread over seeds</th><th>seeds</th></tr>{lines}</table></div>")
    parts.append("<p>Numbers guide, listening decides: play the top columns in the listening "
                 "grid below before you choose.</p>")
    return f"<div class='verdict'><h2>Verdict</h2>{''.join(parts)}</div>"


def _guide_html(summary: dict[str, Any]) -> str:
    """One row per metric of the registry (and DeSync, CLAP, FAD): what it tells, which way
    is better, what it is measured against; unavailable ones with the reason."""
    esc = html.escape
    gone = unavailable_metrics(summary)
    rows = []
    for m in _all_metrics(summary) + [FAD_METRIC]:
        unit = f" ({m['unit']})" if m.get("unit") else ""
        against = _NEEDS.get(m.get("needs", ""), "the render on its own")
        if m["key"] in gone:
            better = f"<span class='none'>unavailable: {esc(gone[m['key']])}</span>"
        else:
            better = esc(f"{m['better']} is better")
        rows.append(f"<tr><td>{esc(m['label'])}{esc(unit)}</td><td>{better}</td>"
                    f"<td>{esc(m.get('about', ''))}</td><td>{esc(against)}</td></tr>")
    return ("<details open><summary><b>Metric guide</b>: what each figure means and which way is "
            "better</summary><div class='scroll'><table><tr><th>metric</th><th>better</th>"
            f"<th>what it tells</th><th>measured</th></tr>{''.join(rows)}</table></div>"
            "</details>")


def write_html(out: Path, summary: dict[str, Any], charts: dict[str, Path | None]) -> Path:
    table = metric_table(summary)
    cols = _columns(summary)
    refs = {(r["role"], r["clip"]): r for r in summary.get("reference_clips", [])}
    recs = {}
    for row in summary.get("adapters", []):
        for rec in row.get("clips", []):
            recs[(rec["role"], rec["clip"], row["id"], rec["strength"], rec["seed"])] = rec
    esc = html.escape
    body = [f"<h1>{esc(str(summary.get('name', 'eval')))}</h1>", _verdict_html(summary),
            _guide_html(summary)]
    info = [("status", summary.get("status")), ("variant", summary.get("variant")),
            ("clips", f"{summary.get('n_clips')} ({summary.get('clip_selection', '')})"),
            ("steps / cfg", f"{summary.get('steps')} / {summary.get('cfg')}"),
            ("seeds", ", ".join(str(s) for s in summary.get("seeds", []))),
            ("negative prompt", summary.get("negative_prompt") or "—"),
            ("HF cut", f"{summary.get('hf_cut_hz', 0):.0f} Hz"),
            ("DeSync", _status_text(summary.get("desync"))),
            ("CLAP / FAD-style", _status_text(summary.get("clap"))),
            ("started / finished", f"{summary.get('started_at')} / "
                                   f"{summary.get('completed_at') or '—'}")]
    body.append("<div class='scroll'><table class='info'>" + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in info)
        + "</table></div>")
    notes = [f"clip {s['clip']}: {s['reason']}" for s in summary.get("skipped", [])]
    notes += [f"adapter {r['id']}: {r['error']}" for r in summary.get("adapters", [])
              if r.get("error")]
    if notes:
        body.append("<h2>Skipped</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes)
                    + "</ul>")
    for key in ("chart", "strength_chart", "checkpoint_chart"):
        if charts.get(key):
            src = _url(Path(charts[key]).name)
            body.append(f"<p><a href='{src}'><img src='{src}' alt='{key}'></a></p>")
    # averages table
    avg_keys = [m for m in table if any(_avg(r, s, m["key"]) is not None for r, s in cols)]
    if avg_keys:
        head = "".join(f"<th>{esc(m['label'])}<br><small>{esc(m['better'])}</small></th>"
                       for m in avg_keys)
        ref = summary.get("reference_avg", {})
        lines = ["<tr><td>reference</td>" + "".join(
            f"<td>{ref[m['key']]:.4g}</td>" if m["key"] in SOUND_METRICS
            and _finite(ref.get(m["key"])) else "<td></td>" for m in avg_keys) + "</tr>"]
        for row, s in cols:
            cells = "".join(f"<td>{v:.4g}</td>" if (v := _avg(row, s, m["key"])) is not None
                            else f"<td class='none'>{NA}</td>" for m in avg_keys)
            lines.append(f"<tr><td>{esc(_col_label(row, s))}</td>{cells}</tr>")
        body.append(f"<h2>Means over clips and seeds</h2><div class='scroll'><table class='avg'>"
                    f"<tr><th></th>{head}</tr>{''.join(lines)}</table></div>")
    # listening grids
    for role, title in (("eval", "Listening grid"), ("drift", "Drift clips (unlike the "
                                                              "training set)")):
        clip_names = sorted({k[1] for k in refs if k[0] == role})
        if not clip_names:
            continue
        for seed in summary.get("seeds", []):
            head = "<th>clip</th><th>reference</th>" + "".join(
                f"<th>{esc(_col_label(r, s))}</th>" for r, s in cols)
            lines = []
            for name in clip_names:
                ref = refs[(role, name)]
                poster = ref.get("poster")
                if role == "eval" and ref.get("audio"):
                    ref_cell = _players(ref.get("video"), ref.get("audio"), poster) + \
                        _metrics_html(ref.get("metrics", {}), table)
                else:
                    why = ref.get("reason") or ("drift clip: compared with the baseline"
                                                if role == "drift" else "no sound")
                    ref_cell = _players(ref.get("video"), None, poster) + (
                        f"<div class='none'>{esc(why)}</div>")
                cells = [f"<td class='clip'><b>{esc(name)}</b><br><small>"
                         f"{esc(ref.get('prompt', ''))}</small></td>",
                         f"<td data-col='reference'>{ref_cell}</td>"]
                for row, s in cols:
                    rec = recs.get((role, name, row["id"], s, seed))
                    col = esc(_col_label(row, s), quote=True)
                    if rec is None:
                        cells.append(f"<td class='none' data-col='{col}'>not rendered</td>")
                    else:
                        cells.append(f"<td data-col='{col}'>"
                                     + _players(rec.get("mp4"), rec.get("wav"), poster)
                                     + _metrics_html(rec.get("metrics", {}), table) + "</td>")
                lines.append(f"<tr>{''.join(cells)}</tr>")
            body.append(f"<h2>{esc(title)}: seed {seed}</h2><div class='scroll'>"
                        f"<table class='grid'><tr class='head'>{head}</tr>{''.join(lines)}"
                        f"</table></div>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>"
            f"{esc(str(summary.get('name', 'eval')))}</title><style>{_STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
    return write_text_atomic(out / HTML_FILE, page)


def _status_text(status: dict[str, Any] | None) -> str:
    if not status:
        return "—"
    if status.get("weights") == "random":
        return (f"unavailable: computed with {status.get('source') or 'random weights'}, whose "
                "random weights make the figures meaningless")
    text = status.get("status", "")
    detail = status.get("source") or status.get("reason")
    return f"{text}: {detail}" if detail else text


def format_summary(summary: dict[str, Any]) -> str:
    """The one-screen text summary ``eval_adapters.py`` prints (means per column)."""
    keys = [("lsd_db", "LSD dB"), ("mcd_db", "MCD dB"), ("drift_lsd_db", "drift dB"),
            ("desync_s", "DeSync s"), ("clap_score", "CLAP"),
            ("env_corr_lag0", "env corr"), ("env_best_lag_ms", "env lag ms"),
            ("motion_corr_lag0", "motion corr"), ("spectral_centroid_hz", "centroid Hz")]
    cols = _columns(summary)
    gone = unavailable_metrics(summary)
    keys = [(k, t) for k, t in keys if k not in gone and (
        any(_avg(r, s, k) is not None for r, s in cols)
        or (k == "drift_lsd_db" and any(_avg(r, s, k, "drift") is not None for r, s in cols)))]
    width = max([len(_col_label(r, s)) for r, s in cols] + [9])
    lines = ["=" * 78,
             f"SelVA adapter evaluation {summary.get('name')}: {summary.get('status')}",
             "=" * 78,
             f"variant {summary.get('variant')}   clips {summary.get('n_clips')} "
             f"({summary.get('clip_selection', '')})",
             f"seeds {', '.join(str(s) for s in summary.get('seeds', []))}   steps "
             f"{summary.get('steps')}   cfg {summary.get('cfg')}   renders "
             f"{summary.get('progress', {}).get('done')}/"
             f"{summary.get('progress', {}).get('total')}",
             f"DeSync: {_status_text(summary.get('desync'))}",
             f"CLAP:   {_status_text(summary.get('clap'))}", "-" * 78,
             " " * (width + 2) + "".join(f"{t:>13}" for _, t in keys)]
    ref = summary.get("reference_avg", {})
    lines.append(f"{'reference':<{width}}  " + "".join(
        f"{ref[k]:>13.4g}" if k in SOUND_METRICS and _finite(ref.get(k)) else f"{'':>13}"
        for k, _ in keys))
    for row, s in cols:
        cells = []
        for k, _ in keys:
            v = _avg(row, s, k)
            if v is None and k == "drift_lsd_db":
                v = _avg(row, s, k, "drift")
            cells.append(f"{v:>13.4g}" if v is not None else f"{NA:>13}")
        status = "" if row.get("status") == "ok" else f"  [{row.get('status')}]"
        lines.append(f"{_col_label(row, s):<{width}}  {''.join(cells)}{status}")
    lines += ["-" * 78, *textwrap.wrap(_verdict(summary)["text"], 78),
              "Numbers guide, listening decides: play the top columns on the page."]
    skipped = [f"clip {x['clip']}: {x['reason']}" for x in summary.get("skipped", [])]
    skipped += [f"adapter {r['id']}: {r['error']}" for r in summary.get("adapters", [])
                if r.get("error")]
    if skipped:
        lines += ["-" * 78, "skipped:"] + [f"  {x}" for x in skipped]
    reports = summary.get("reports", {})
    lines += ["-" * 78, f"output   {summary.get('output_dir')}",
              f"listen   {reports.get('html', HTML_FILE)} (open in a browser; works offline)",
              f"tables   {SUMMARY_FILE_NAME}, {reports.get('csv', CSV_FILE)}", "=" * 78]
    return "\n".join(lines)


SUMMARY_FILE_NAME = "eval_summary.json"


def write_reports(out: str | Path, summary: dict[str, Any]) -> dict[str, Path | None]:
    """CSV, charts and the HTML page; returns their paths (None for a chart not drawn)."""
    out = Path(out)
    charts = {"chart": write_comparison_chart(out, summary),
              "strength_chart": _curves(out, summary, STRENGTH_CHART, _strength_series,
                                        "adapter strength (0 = baseline)"),
              "checkpoint_chart": _curves(out, summary, CHECKPOINT_CHART, _checkpoint_series,
                                          "training step")}
    paths: dict[str, Path | None] = dict(charts)
    paths["csv"] = write_csv(out, summary)
    paths["html"] = write_html(out, summary, charts)
    return paths


__all__ = ["format_summary", "write_reports", "write_csv", "write_html",
           "write_comparison_chart", "metric_table", "unavailable_metrics", "chart_title",
           "CHART_FILE", "CSV_FILE", "HTML_FILE"]
