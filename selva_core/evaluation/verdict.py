"""Which adapter, checkpoint and strength comes closest to the reference clips, and how sure.

:func:`best_choice` ranks every column of the evaluation grid (baseline and each adapter x
strength; a run folder's checkpoints are adapters too) by one distance to the reference
recordings (``lsd_db`` by default: lower is closer; the spec's ``rank_by`` names another figure
of the metric registry with a direction, e.g. ``env_corr_lag0``), averaged over the evaluated
clips and seeds. The *spread* of a column is the range of its per-seed means (max - min over
seeds): how much the figure moves when only the noise changes. The best column is a clear winner
only when it beats the runner-up by more than the larger of the two spreads; otherwise the
verdict says "no clear winner". With one seed there is no spread to compare against and the
verdict says so. Numbers guide, listening decides: the verdict names what to listen to first.

The result is plain JSON (it goes into ``eval_summary.json`` as ``verdict``) and carries the
one-line ``text`` the listening page and the printed summary show.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from selva_core.audio.metrics import metric_info

#: The default ranking: log-spectral distance to the reference recording (lower = closer).
RANKING_METRIC = "lsd_db"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _info(summary: dict[str, Any], key: str) -> dict[str, Any]:
    for m in summary.get("metrics_info", []):
        if m.get("key") == key:
            return m
    known = metric_info(key)  # the evaluator's extras (DeSync, CLAP) are not in metrics_info
    return asdict(known) if known else {"key": key, "label": key, "unit": "", "better": "lower"}


def column_label(adapter: dict[str, Any], strength: float) -> str:
    """How the grid names a column: the baseline by its id, an adapter as ``id × strength``."""
    return adapter["id"] if adapter.get("baseline") else f"{adapter['id']} × {strength:g}"


def _per_seed_means(adapter: dict[str, Any], strength: float, key: str) -> dict[int, float]:
    values: dict[int, list[float]] = defaultdict(list)
    for rec in adapter.get("clips", []):
        v = rec.get("metrics", {}).get(key)
        if rec.get("role") == "eval" and rec.get("strength") == strength and _finite(v):
            values[rec["seed"]].append(float(v))
    return {seed: sum(vs) / len(vs) for seed, vs in values.items()}


def _fmt(x: float, unit: str) -> str:
    return f"{x:.3g} {unit}".rstrip()


def best_choice(summary: dict[str, Any], metric: str = RANKING_METRIC) -> dict[str, Any]:
    """The verdict of an evaluation summary (see the module docstring).

    Returns ``{"status": "ok", "metric", "label", "unit", "better", "ranking": [{"label",
    "adapter", "strength", "baseline", "mean", "spread", "seeds"}, ...] (best first), "best",
    "runner_up", "gap", "clear" (True / False / None with one seed), "text"}``, or
    ``{"status": "unavailable", "metric", "reason", "text"}`` when no column has the metric
    (e.g. no clip has a reference recording).
    """
    info = _info(summary, metric)
    sign = -1.0 if info.get("better") == "higher" else 1.0
    ranking = []
    for adapter in summary.get("adapters", []):
        if adapter.get("status") == "skipped":
            continue
        for strength in adapter.get("strengths", []):
            per_seed = _per_seed_means(adapter, strength, metric)
            if not per_seed:
                continue
            # every seed holds the same clips, so the mean of seed means is the overall mean
            means = list(per_seed.values())
            ranking.append({"label": column_label(adapter, strength), "adapter": adapter["id"],
                            "strength": strength, "baseline": bool(adapter.get("baseline")),
                            "mean": sum(means) / len(means),
                            "spread": max(means) - min(means), "seeds": len(means)})
    base = {"metric": metric, "label": info.get("label", metric), "unit": info.get("unit", ""),
            "better": info.get("better", "lower")}
    if not ranking:
        reason = (f"no render has {base['label']} (it needs clips with a reference "
                  "recording)")
        return {**base, "status": "unavailable", "reason": reason,
                "text": f"No verdict: {reason}."}
    ranking.sort(key=lambda r: (sign * r["mean"], r["label"]))
    best = ranking[0]
    unit = base["unit"]
    lead = "Closest to the reference" if info.get("needs") == "reference" else "Best"
    head = (f"{lead} by {base['label']} ({base['better']} is better): "
            f"{best['label']} ({_fmt(best['mean'], unit)}")
    if len(ranking) == 1:
        return {**base, "status": "ok", "ranking": ranking, "best": best, "runner_up": None,
                "gap": None, "clear": None,
                "text": head + "), the only column measured."}
    second = ranking[1]
    gap = abs(second["mean"] - best["mean"])
    seeds = min(best["seeds"], second["seeds"])
    spread = max(best["spread"], second["spread"])
    if seeds < 2:
        clear = None
        tail = (f"); runner-up {second['label']} ({_fmt(second['mean'], unit)}). One seed: no "
                "spread over seeds to judge the gap by; evaluate more seeds to know.")
    elif gap > spread:
        clear = True
        tail = (f", spread over {seeds} seeds {_fmt(best['spread'], unit)}); it beats the "
                f"runner-up {second['label']} ({_fmt(second['mean'], unit)}) by "
                f"{_fmt(gap, unit)}, more than the spread over seeds ({_fmt(spread, unit)}).")
    else:
        clear = False
        tail = (f", spread over {seeds} seeds {_fmt(best['spread'], unit)}). No clear winner: "
                f"the runner-up {second['label']} ({_fmt(second['mean'], unit)}) is "
                f"{_fmt(gap, unit)} behind, within the spread over seeds "
                f"({_fmt(spread, unit)}).")
    return {**base, "status": "ok", "ranking": ranking, "best": best, "runner_up": second,
            "gap": gap, "clear": clear, "text": head + tail}


__all__ = ["RANKING_METRIC", "best_choice", "column_label"]
