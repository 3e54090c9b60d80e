"""The verdict: the closest column, its spread over seeds, and when there is no clear winner."""

from __future__ import annotations

from selva_core.evaluation.report import format_summary, unavailable_metrics
from selva_core.evaluation.verdict import best_choice

INFO = [{"key": "lsd_db", "label": "log-spectral distance", "unit": "dB", "better": "lower",
         "needs": "reference"}]


def _adapter(id_, strengths_seeds_values, baseline=False):
    clips = [{"role": "eval", "clip": f"c{i}", "strength": st, "seed": seed,
              "metrics": {"lsd_db": v}}
             for (st, seed), values in strengths_seeds_values.items()
             for i, v in enumerate(values)]
    strengths = sorted({st for st, _ in strengths_seeds_values})
    return {"id": id_, "baseline": baseline, "status": "ok", "strengths": strengths,
            "clips": clips}


def _summary(*adapters):
    return {"metrics_info": INFO, "adapters": list(adapters)}


def test_a_gap_larger_than_the_seed_spread_is_a_clear_winner():
    base = _adapter("baseline", {(0.0, 1): [30, 30], (0.0, 2): [31, 31]}, baseline=True)
    a = _adapter("a", {(1.0, 1): [20, 22], (1.0, 2): [21, 21]})
    v = best_choice(_summary(base, a))
    assert v["best"]["label"] == "a × 1" and v["runner_up"]["label"] == "baseline"
    assert v["best"]["mean"] == 21.0 and v["best"]["spread"] == 0.0
    assert v["runner_up"]["spread"] == 1.0 and v["gap"] == 9.5
    assert v["clear"] is True and "beats the runner-up baseline" in v["text"]


def test_top_two_within_the_seed_spread_is_no_clear_winner():
    a = _adapter("a", {(0.5, 1): [20], (0.5, 2): [24], (1.0, 1): [21], (1.0, 2): [22]})
    v = best_choice(_summary(a))
    assert [r["label"] for r in v["ranking"]] == ["a × 1", "a × 0.5"]
    assert v["gap"] == 0.5 and v["clear"] is False
    assert "No clear winner" in v["text"]


def test_one_seed_names_the_closest_but_claims_no_certainty():
    a = _adapter("a", {(0.5, 1): [20], (1.0, 1): [25]})
    v = best_choice(_summary(a))
    assert v["best"]["label"] == "a × 0.5" and v["clear"] is None
    assert "One seed" in v["text"]


def test_higher_is_better_metrics_rank_the_other_way():
    info = [{**INFO[0], "better": "higher"}]
    a = _adapter("a", {(0.5, 1): [20], (1.0, 1): [25]})
    v = best_choice({"metrics_info": info, "adapters": [a]}, metric="lsd_db")
    assert v["best"]["label"] == "a × 1"


def test_no_reference_recordings_means_no_verdict():
    a = {"id": "a", "strengths": [1.0], "clips": [
        {"role": "eval", "clip": "c", "strength": 1.0, "seed": 1, "metrics": {}}]}
    v = best_choice(_summary(a))
    assert v["status"] == "unavailable" and "reference recording" in v["reason"]


def test_desync_from_random_weights_is_unavailable_everywhere():
    summary = _summary(_adapter("a", {(1.0, 1): [20]}))
    summary["desync"] = {"status": "ok", "weights": "random",
                         "source": "tiny random Synchformer (seed 0; tests only)"}
    for row in summary["adapters"]:
        row["by_strength"] = [{"strength": 1.0, "avg_metrics": {"lsd_db": 20.0,
                                                                "desync_s": 0.8}}]
    assert "random" in unavailable_metrics(summary)["desync_s"]
    text = format_summary(summary)
    assert "DeSync s" not in text and "0.8" not in text
    assert "DeSync: unavailable" in text and "Closest to the reference" in text
    summary["desync"]["weights"] = "trained"
    assert "desync_s" not in unavailable_metrics(summary)
    assert "DeSync s" in format_summary(summary)


def test_chart_titles_carry_unit_and_direction():
    from selva_core.evaluation.report import chart_title

    assert chart_title(INFO[0]) == "log-spectral distance (dB): lower is better"


def test_small_differences_are_not_magnified_and_ticks_stay_plain():
    from selva_core.evaluation import report

    fig = report._figure(4, 3)
    ax = fig.subplots()
    ax.plot([0, 0.5, 1], [25.0, 24.7, 25.0])
    report._plain_ticks(ax)
    report._y_range(ax, [25.0, 24.7, 25.0], from_zero=False)
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.2 * 25.0  # 0.3 dB stays a small wiggle, not a deep V
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels and all("e" not in t and "+" not in t for t in labels)
    assert ax.yaxis.get_offset_text().get_text() == ""


def _two_metric_adapter(id_, lsd, env, strength=1.0):
    clips = [{"role": "eval", "clip": "c", "strength": strength, "seed": s,
              "metrics": {"lsd_db": lsd + d, "env_corr_lag0": env + d / 10,
                          "clap_score": env}}
             for s, d in ((1, 0.0), (2, 0.2))]
    return {"id": id_, "status": "ok", "strengths": [strength], "clips": clips}


def test_rank_by_a_higher_is_better_metric_takes_its_direction_from_the_registry():
    from selva_core.audio.metrics import METRICS

    info = [dict(vars(m)) for m in METRICS]
    a, b = _two_metric_adapter("a", 10.0, 0.2), _two_metric_adapter("b", 20.0, 0.8)
    summary = {"metrics_info": info, "adapters": [a, b]}
    assert best_choice(summary)["best"]["adapter"] == "a"  # lsd_db: lower
    v = best_choice(summary, "env_corr_lag0")
    assert v["best"]["adapter"] == "b" and v["better"] == "higher" and v["clear"] is True
    # an evaluator metric outside metrics_info (CLAP): its direction from the registry too
    assert best_choice(summary, "clap_score")["best"]["adapter"] == "b"
    assert best_choice(summary, "clap_score")["text"].startswith("Best by CLAP")


def test_metrics_csv_ranks_every_render_by_the_summarys_rank_by(tmp_path):
    import csv

    from selva_core.evaluation.report import write_csv

    a, b = _two_metric_adapter("a", 10.0, 0.2), _two_metric_adapter("b", 20.0, 0.8)
    for row in (a, b):
        for rec in row["clips"]:
            rec.update(adapter=row["id"], wav="x.wav")
    summary = {"metrics_info": INFO, "adapters": [a, b], "rank_by": "env_corr_lag0"}
    rows = list(csv.DictReader(open(write_csv(tmp_path, summary))))
    assert {(r["adapter"], r["rank_by_env_corr_lag0"]) for r in rows} == {("b", "1"), ("a", "2")}
