"""What an evaluation leaves for people: ``metrics.csv``, PNG charts and ``index.html``.

* ``metrics.csv``: one row per reference recording and per render (role, clip, adapter,
  strength, seed, files, every metric).
* ``metric_comparison.png``: one bar chart per metric, bars = reference (where the metric
  describes a sound on its own), baseline, then every adapter x strength, averaged over the
  evaluated clips and seeds; ``strength_curves.png`` (metrics against strength, one line per
  adapter) when an adapter has several strengths, and ``checkpoint_curves.png`` (metrics
  against the training step) when the spec listed a run folder.
* ``index.html``: the listening grid, one table per seed: rows are clips, columns reference /
  baseline / each adapter x strength; each cell holds a video player (the render muxed onto
  the clip's picture), an audio player (the WAV) and the render's metrics. Links are relative
  and nothing is fetched from the network, so the folder works offline and can be zipped.

Plots use matplotlib's object API on the Agg canvas (no display); files are written
atomically.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from selva_core.atomic import savefig_atomic, write_text_atomic
from selva_core.evaluation.metrics import MOTION_KEYS

CHART_FILE = "metric_comparison.png"
STRENGTH_CHART = "strength_curves.png"
CHECKPOINT_CHART = "checkpoint_curves.png"
CSV_FILE = "metrics.csv"
HTML_FILE = "index.html"
EXTRA_METRICS = (
    ("desync_s", "DeSync (|offset|)", "s", "lower", ""),
    ("clap_score", "CLAP text-audio score", "", "higher", ""),
)
SOUND_METRICS = ("hf_energy_ratio", "spectral_centroid_hz", "spectral_rolloff_hz",
                 "spectral_flatness", "temporal_variance", "desync_s", "clap_score",
                 *MOTION_KEYS)  # the reference's onsets vs motion: what the true sound scores
NA = "n/a"  # a metric that is undefined here (a correlation on silence), never shown as 0


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Metric descriptions: the summary's plus DeSync and CLAP."""
    rows = list(summary.get("metrics_info", []))
    for key, label, unit, better, needs in EXTRA_METRICS:
        rows.append({"key": key, "label": label, "unit": unit, "better": better,
                     "needs": needs})
    return rows


def _columns(summary: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
    """(adapter row, strength) in grid order: baseline first."""
    cols = []
    adapters = sorted((r for r in summary.get("adapters", []) if r.get("status") != "skipped"),
                      key=lambda r: not r.get("baseline"))
    for row in adapters:
        for s in row.get("strengths", []):
            cols.append((row, s))
    return cols


def _col_label(row: dict[str, Any], strength: float) -> str:
    return row["id"] if row.get("baseline") else f"{row['id']} × {strength:g}"


# --- CSV ---------------------------------------------------------------------------------------
def write_csv(out: Path, summary: dict[str, Any]) -> Path:
    keys = [m["key"] for m in metric_table(summary)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["role", "clip", "adapter", "strength", "seed", "audio", "video", *keys])
    for ref in summary.get("reference_clips", []):
        w.writerow([f"reference ({ref['role']})", ref["clip"], "", "", "", ref.get("audio") or "",
                    ref.get("video") or "", *[_fmt_csv(ref.get("metrics", {}).get(k))
                                              for k in keys]])
    for row, strength in _columns(summary):
        for rec in row.get("clips", []):
            if rec["strength"] != strength:
                continue
            w.writerow([rec["role"], rec["clip"], rec["adapter"], f"{strength:g}", rec["seed"],
                        rec["wav"], rec.get("mp4") or "",
                        *[_fmt_csv(rec.get("metrics", {}).get(k)) for k in keys]])
    return write_text_atomic(out / CSV_FILE, buf.getvalue())


def _fmt_csv(x: Any) -> str:
    return f"{x:.6g}" if _finite(x) else ""


# --- charts ------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def _avg(row: dict[str, Any], strength: float, key: str, role: str = "eval") -> float | None:
    group = "avg_metrics" if role == "eval" else "drift_avg_metrics"
    for g in row.get("by_strength", []):
        if g["strength"] == strength:
            v = g.get(group, {}).get(key)
            if key == "fad_clap":
                v = g.get("fad_clap")
            return v if _finite(v) else None
    return None


def write_comparison_chart(out: Path, summary: dict[str, Any]) -> Path | None:
    cols = _columns(summary)
    ref = summary.get("reference_avg", {})
    metrics = []
    for m in metric_table(summary) + [{"key": "fad_clap", "label": "FAD-style (CLAP)",
                                       "unit": "", "better": "lower"}]:
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
    fig = _figure(6.5 * ncols, 2.6 + 2.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    palette = ["#888888", "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
               "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]
    for i, m in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        labels, values, colours = [], [], []
        if m["key"] in SOUND_METRICS and _finite(ref.get(m["key"])):
            labels.append("reference")
            values.append(ref[m["key"]])
            colours.append("#2f2f2f")
        for j, (row, s) in enumerate(cols):
            role = "eval"
            v = _avg(row, s, m["key"], role)
            if v is None and m["key"] == "drift_lsd_db":
                v = _avg(row, s, m["key"], "drift")
            labels.append(_col_label(row, s))
            values.append(v if v is not None else 0.0)
            colours.append(palette[j % len(palette)] if v is not None else "#eeeeee")
            if v is None:
                ax.text(len(values) - 1, 0.0, NA, ha="center", va="bottom", fontsize=7,
                        color="#777777")
        ax.bar(range(len(values)), values, color=colours)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        unit = f" ({m['unit']})" if m.get("unit") else ""
        ax.set_title(f"{m['label']}{unit}: {m['better']} is better", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.suptitle(f"{summary.get('name', 'eval')}: means over clips and seeds", fontsize=11)
    fig.tight_layout()
    return savefig_atomic(out / CHART_FILE, fig)


def _curves(out: Path, summary: dict[str, Any], name: str, xs_of, xlabel: str
            ) -> Path | None:
    """Line charts of the distance metrics against x (strength or step) per adapter group."""
    series = xs_of(summary)
    if not series:
        return None
    keys = [k for k in ("lsd_db", "mcd_db", "drift_lsd_db", "desync_s", "clap_score",
                        "env_corr_lag0", "motion_corr_lag0")
            if any(_finite(y) for pts in series.values() for _, ys in pts for y in [ys.get(k)])]
    if not keys:
        return None
    fig = _figure(5.0 * len(keys), 3.6)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        for label, pts in series.items():
            pts = sorted((x, ys.get(key)) for x, ys in pts if _finite(ys.get(key)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
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


def _players(video: str | None, audio: str | None) -> str:
    parts = []
    if video:
        parts.append(f"<video controls preload='none' src='{_url(video)}'></video>")
    if audio:
        parts.append(f"<audio controls preload='none' src='{_url(audio)}'></audio>")
    if video or audio:
        links = " · ".join(f"<a href='{_url(p)}'>{html.escape(Path(p).suffix[1:])}</a>"
                           for p in (video, audio) if p)
        parts.append(f"<div class='links'>{links}</div>")
    return "".join(parts)


def write_html(out: Path, summary: dict[str, Any], charts: dict[str, Path | None]) -> Path:
    table = metric_table(summary)
    cols = _columns(summary)
    refs = {(r["role"], r["clip"]): r for r in summary.get("reference_clips", [])}
    recs = {}
    for row in summary.get("adapters", []):
        for rec in row.get("clips", []):
            recs[(rec["role"], rec["clip"], row["id"], rec["strength"], rec["seed"])] = rec
    esc = html.escape
    body = [f"<h1>{esc(str(summary.get('name', 'eval')))}</h1>"]
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
    body.append("<table class='info'>" + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in info) + "</table>")
    notes = [f"clip {s['clip']}: {s['reason']}" for s in summary.get("skipped", [])]
    notes += [f"adapter {r['id']}: {r['error']}" for r in summary.get("adapters", [])
              if r.get("error")]
    if notes:
        body.append("<h2>Skipped</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes)
                    + "</ul>")
    for key in ("chart", "strength_chart", "checkpoint_chart"):
        if charts.get(key):
            body.append(f"<p><img src='{_url(Path(charts[key]).name)}' alt='{key}'></p>")
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
        body.append(f"<h2>Means over clips and seeds</h2><table class='avg'><tr><th></th>"
                    f"{head}</tr>{''.join(lines)}</table>")
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
                if role == "eval" and ref.get("audio"):
                    ref_cell = _players(ref.get("video"), ref.get("audio")) + _metrics_html(
                        ref.get("metrics", {}), table)
                else:
                    why = ref.get("reason") or ("drift clip: compared with the baseline"
                                                if role == "drift" else "no sound")
                    ref_cell = _players(ref.get("video"), None) + (
                        f"<div class='none'>{esc(why)}</div>")
                cells = [f"<td class='clip'><b>{esc(name)}</b><br><small>"
                         f"{esc(ref.get('prompt', ''))}</small></td>", f"<td>{ref_cell}</td>"]
                for row, s in cols:
                    rec = recs.get((role, name, row["id"], s, seed))
                    if rec is None:
                        cells.append("<td class='none'>not rendered</td>")
                    else:
                        cells.append("<td>" + _players(rec.get("mp4"), rec.get("wav"))
                                     + _metrics_html(rec.get("metrics", {}), table) + "</td>")
                lines.append(f"<tr>{''.join(cells)}</tr>")
            body.append(f"<h2>{esc(title)}: seed {seed}</h2><div class='scroll'>"
                        f"<table class='grid'><tr>{head}</tr>{''.join(lines)}</table></div>")
    style = (
        "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
        "table.grid video{width:240px;display:block}table.grid audio{width:240px}"
        "table.m td{border:none;padding:0 4px;font-size:11px}.none{color:#999}"
        ".links{font-size:11px}.scroll{overflow-x:auto}img{max-width:100%}"
        "table.info th{text-align:left}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
            f"{esc(str(summary.get('name', 'eval')))}</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
    return write_text_atomic(out / HTML_FILE, page)


def _status_text(status: dict[str, Any] | None) -> str:
    if not status:
        return "—"
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
    keys = [(k, t) for k, t in keys if any(_avg(r, s, k) is not None for r, s in cols)
            or (k == "drift_lsd_db" and any(_avg(r, s, k, "drift") is not None
                                            for r, s in cols))]
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
           "write_comparison_chart", "CHART_FILE", "CSV_FILE", "HTML_FILE"]
