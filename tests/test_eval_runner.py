"""The render grid on the tiny model: complete, stem-named, resumable, with a working page."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser

import numpy as np
import pytest
import soundfile as sf

from selva_core.audio import metrics as M
from selva_core.evaluation.runner import SUMMARY_FILE, run_evaluation
from selva_core.evaluation.spec import load_spec
from tests.eval_data import (
    SILENT,
    make_adapter,
    make_clips,
    make_tiny_clap,
    spec_text,
    tiny_pipeline,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    clips = make_clips(root / "clips")
    pipe = tiny_pipeline()
    adapter = make_adapter(root / "a.safetensors", pipe)
    spec = load_spec(spec_text(clips, root / "out", [{"id": "a", "path": str(adapter)}],
                               strengths=[0.5, 1.0], seeds=[3, 4], batch_size=2))
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    return root, clips, adapter, pipe, spec, result


def _records(summary):
    return [r for a in summary["adapters"] for r in a.get("clips", [])]


def test_the_grid_is_complete(setup):
    _, _, _, _, spec, result = setup
    assert result.completed
    records = _records(result.summary)
    clips = {"bounce_000", "hum_000", SILENT}
    expected = {(c, "baseline", 0.0, s) for c in clips for s in (3, 4)} | {
        (c, "a", st, s) for c in clips for st in (0.5, 1.0) for s in (3, 4)}
    assert {(r["clip"], r["adapter"], r["strength"], r["seed"]) for r in records} == expected
    for r in records:
        assert (result.output_dir / r["wav"]).is_file()
        assert r["mp4"] and (result.output_dir / r["mp4"]).is_file()
    assert result.summary["progress"] == {"done": 18, "total": 18}
    csv_rows = (result.output_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 3 + 18  # header, references, renders
    assert (result.output_dir / "metric_comparison.png").stat().st_size > 1000


def test_names_never_drift_when_a_clip_lacks_audio(setup):
    root, clips, _, pipe, _, result = setup
    out = result.output_dir
    refs = {r["clip"]: r for r in result.summary["reference_clips"]}
    assert refs[SILENT]["audio"] is None and "no sound" in refs[SILENT]["reason"]
    assert refs["bounce_000"]["audio"] == "reference/bounce_000.wav"
    # the reference file of bounce_000 holds bounce_000's own sound, not its neighbour's
    from selva_core.data.audio import load_mono

    own = load_mono(clips / "bounce_000.mp4", pipe.sample_rate, from_video=True)
    saved = sf.read(str(out / "reference/bounce_000.wav"), dtype="float32")[0]
    n = min(own.shape[0], saved.shape[0])
    np.testing.assert_allclose(saved[:n], np.clip(own[:n], -1, 1), atol=1e-4)
    # each render is compared with its own clip's reference
    for rec in _records(result.summary):
        assert f"/{rec['clip']}__seed{rec['seed']}." in rec["wav"]
        if rec["clip"] == SILENT:
            assert "lsd_db" not in rec["metrics"]
        else:
            wave = sf.read(str(out / rec["wav"]), dtype="float32")[0]
            ref = sf.read(str(out / refs[rec["clip"]]["audio"]), dtype="float32")[0]
            assert rec["metrics"]["lsd_db"] == pytest.approx(
                M.log_spectral_distance(wave, ref[: int(rec["duration"] * pipe.sample_rate)]),
                rel=1e-3)


def test_sound_metric_means_cover_the_same_clips_as_the_reference_mean(setup):
    _, _, _, _, _, result = setup
    base = next(a for a in result.summary["adapters"] if a["id"] == "baseline")
    with_sound = [r for r in base["clips"] if r["clip"] != SILENT]
    expected = np.mean([r["metrics"]["spectral_centroid_hz"] for r in with_sound])
    assert base["avg_metrics"]["spectral_centroid_hz"] == pytest.approx(expected)
    everyone = np.mean([r["metrics"]["desync_s"] for r in base["clips"]])
    assert base["avg_metrics"]["desync_s"] == pytest.approx(everyone)  # defined for all clips


def test_drift_is_measured_against_the_same_clip_and_seed_baseline(setup):
    _, _, _, _, _, result = setup
    out = result.output_dir
    for rec in _records(result.summary):
        if rec["adapter"] != "a":
            assert "drift_lsd_db" not in rec["metrics"]
            continue
        wave = sf.read(str(out / rec["wav"]), dtype="float32")[0]
        base = sf.read(str(out / f"renders/baseline/base/{rec['clip']}__seed{rec['seed']}.wav"),
                       dtype="float32")[0]
        # both sides as their WAVs hold them: the recorded figure is the files' own
        assert rec["metrics"]["drift_lsd_db"] == M.log_spectral_distance(wave, base)
        assert rec["metrics"]["drift_lsd_db"] > 0.0  # the adapter does change the sound


def test_an_adapter_at_strength_zero_drifts_by_exactly_zero(tmp_path, setup):
    _, clips, adapter, pipe, _, _ = setup
    spec = load_spec(spec_text(clips, tmp_path / "out", [{"id": "a", "path": str(adapter)}],
                               clips=["bounce_000"], strengths=[0.0, 1.0], mp4=False))
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    drift = {r["strength"]: r["metrics"]["drift_lsd_db"] for r in _records(result.summary)
             if r["adapter"] == "a"}
    assert drift[0.0] == 0.0
    assert drift[1.0] > 0.0


def test_sync_figures_follow_the_reference_sound_and_the_picture(setup):
    _, clips, _, pipe, _, result = setup
    from selva_core.audio.sync import envelope_sync, motion_sync
    from selva_core.data.video import decode_frames

    out = result.output_dir
    refs = {r["clip"]: r for r in result.summary["reference_clips"]}
    for rec in _records(result.summary):
        metrics = rec["metrics"]
        assert set(M.MOTION_KEYS) <= set(metrics)  # every clip has a picture
        if rec["clip"] == SILENT:
            assert not set(M.ENVELOPE_KEYS) & set(metrics)  # no reference sound
            continue
        wave = sf.read(str(out / rec["wav"]), dtype="float32")[0]
        ref = sf.read(str(out / refs[rec["clip"]]["audio"]), dtype="float32")[0]
        n = int(round(rec["duration"] * pipe.sample_rate))  # the reference as measured
        expected = envelope_sync(wave, ref[:n], pipe.sample_rate)
        assert metrics["env_corr_lag0"] == pytest.approx(expected.corr_lag0, abs=1e-6)
        assert metrics["env_best_lag_ms"] == pytest.approx(expected.best_lag_ms)
        assert -500.0 <= metrics["env_best_lag_ms"] <= 500.0
    # the true sound of the bouncing ball, measured on its own picture as the renders are
    bounce = refs["bounce_000"]["metrics"]
    ref = sf.read(str(out / refs["bounce_000"]["audio"]), dtype="float32")[0]
    frames = decode_frames(clips / "bounce_000.mp4", fps=25.0)
    assert bounce["motion_corr_best"] == pytest.approx(
        motion_sync(ref[: int(refs["bounce_000"]["duration"] * pipe.sample_rate)],
                    pipe.sample_rate, frames, 25.0).corr_best, abs=0.1)
    info = {m["key"]: m for m in result.summary["metrics_info"]}
    assert info["env_corr_lag0"]["better"] == "higher"
    assert info["motion_best_lag_ms"]["better"] == "closer to 0"
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(M.ENVELOPE_KEYS + M.MOTION_KEYS) <= set(header)


def test_undefined_sync_figures_read_as_na_never_as_zero(setup):
    from selva_core.evaluation import report

    _, _, _, _, _, result = setup
    summary = json.loads(json.dumps(result.summary))  # a copy
    base = next(a for a in summary["adapters"] if a["baseline"])
    for rec in base["clips"]:
        rec["metrics"]["env_corr_lag0"] = None  # what a silent render's NaN becomes in JSON
    for group in base["by_strength"]:
        group["avg_metrics"].pop("env_corr_lag0", None)
    cell = report._metrics_html(base["clips"][0]["metrics"], report.metric_table(summary))
    assert "envelope corr. with reference, lag 0</td><td>n/a" in cell
    text = report.format_summary(summary)
    base_line = next(line for line in text.splitlines() if line.startswith("baseline"))
    head = next(line for line in text.splitlines() if "env corr" in line)
    col = head.index("env corr") + len("env corr")
    assert base_line[col - 13: col].strip() == "n/a"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("src", "href") and value:
                self.links.append(value)


def test_the_html_lists_every_render_and_its_links_resolve(setup):
    from urllib.parse import unquote

    _, _, _, _, _, result = setup
    out = result.output_dir
    parser = _Links()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    links = {unquote(link) for link in parser.links}
    assert not [link for link in links if "://" in link or link.startswith("/")]
    for link in links:
        assert (out / link).is_file(), link
    for rec in _records(result.summary):
        assert rec["wav"] in links and rec["mp4"] in links
    assert "reference/bounce_000.wav" in links and "metric_comparison.png" in links


def test_a_rerun_redoes_nothing(setup):
    _, _, _, pipe, spec, result = setup
    out = result.output_dir
    stamps = {p: p.stat().st_mtime_ns for p in (out / "renders").rglob("*.wav")}
    again = run_evaluation(spec, pipeline=pipe, progress=False)
    assert again.completed and again.rendered == 0 and again.reused == 18
    assert {p: p.stat().st_mtime_ns for p in (out / "renders").rglob("*.wav")} == stamps


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, setup):
    root, clips, adapter, pipe, _, full = setup
    spec = load_spec(spec_text(clips, tmp_path / "out", [{"id": "a", "path": str(adapter)}],
                               strengths=[1.0], seeds=[3, 4], batch_size=2,
                               clips=["bounce_000", "hum_000"]))
    done = []
    first = run_evaluation(spec, pipeline=pipe, progress=False,
                           on_render=lambda d, t: done.append(d),
                           should_stop=lambda: len(done) >= 5)
    assert first.status == "interrupted"
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    stopped_at = summary["progress"]["done"]
    assert summary["status"] == "interrupted" and 5 <= stopped_at < 8
    second = run_evaluation(spec, pipeline=pipe, progress=False)
    assert second.completed and second.rendered == 8 - stopped_at
    assert second.reused == stopped_at
    for rec in _records(second.summary):  # same audio as the uninterrupted run
        a = sf.read(str(tmp_path / "out" / rec["wav"]), dtype="float32")[0]
        b = sf.read(str(full.output_dir / rec["wav"]), dtype="float32")[0]
        np.testing.assert_allclose(a, b, atol=2e-4)


def test_bad_adapters_are_reported_and_the_rest_is_done(tmp_path, setup):
    _, clips, adapter, pipe, _, _ = setup
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    other = make_adapter(tmp_path / "other.safetensors", pipe, variant="small_16k")
    spec = load_spec(spec_text(clips, tmp_path / "out", [
        {"id": "broken", "path": str(broken)}, {"id": "other", "path": str(other)},
        {"id": "good", "path": str(adapter)}], clips=["hum_000"]))
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    rows = {r["id"]: r for r in result.summary["adapters"]}
    assert rows["broken"]["status"] == "skipped" and "broken.safetensors" in rows["broken"]["error"]
    assert rows["other"]["status"] == "skipped" and "small_16k" in rows["other"]["error"]
    assert rows["good"]["status"] == "ok" and len(rows["good"]["clips"]) == 1
    assert rows["baseline"]["status"] == "ok"
    page = (result.output_dir / "index.html").read_text(encoding="utf-8")
    assert "adapter broken:" in page and "adapter other:" in page


def test_batched_renders_equal_one_by_one(tmp_path, setup):
    _, clips, _, pipe, _, _ = setup
    waves = {}
    for batch in (1, 3):
        spec = load_spec(spec_text(clips, tmp_path / f"b{batch}", [], batch_size=batch))
        result = run_evaluation(spec, pipeline=pipe, progress=False)
        waves[batch] = {r["clip"]: sf.read(str(result.output_dir / r["wav"]))[0]
                        for r in _records(result.summary)}
    assert waves[1].keys() == waves[3].keys() and len(waves[1]) == 3
    for name in waves[1]:
        np.testing.assert_allclose(waves[1][name], waves[3][name], atol=2e-4)


def test_a_run_folder_evaluates_its_held_out_clips_and_every_checkpoint(tmp_path, setup):
    _, clips, adapter, pipe, _, _ = setup
    run = tmp_path / "run"
    for step in (1, 2):
        (run / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
        os.link(adapter, run / "checkpoints" / f"step_{step:06d}" / "adapter.safetensors")
    os.link(adapter, run / "adapter_final.safetensors")
    (run / "config.json").write_text(json.dumps({"data_dir": str(clips), "variant": "tiny_16k",
                                                 "duration": 1.0, "window": "first"}))
    (run / "summary.json").write_text(json.dumps({"val_clip_names": ["hum_000#w0"]}))
    spec = load_spec(json.dumps({"data_dir": str(run), "output_dir": str(tmp_path / "out"),
                                 "steps": 1, "adapters": [{"id": "run", "path": str(run)}]}))
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    assert [r["clip"] for r in result.summary["reference_clips"]] == ["hum_000"]
    assert [a["id"] for a in result.summary["adapters"]] == [
        "baseline", "run@step_000001", "run@step_000002", "run@final"]
    assert "held-out" in result.summary["clip_selection"]
    assert (result.output_dir / "checkpoint_curves.png").is_file()


def test_a_rerun_with_other_settings_is_refused(tmp_path, setup):
    _, clips, _, pipe, _, _ = setup
    run_evaluation(load_spec(spec_text(clips, tmp_path / "o", [], clips=["hum_000"])),
                   pipeline=pipe, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        run_evaluation(load_spec(spec_text(clips, tmp_path / "o", [], clips=["hum_000"],
                                           cfg=2.0)), pipeline=pipe, progress=False)


def test_a_local_clap_model_adds_clap_scores_and_a_fad_style_distance(tmp_path, setup):
    _, clips, _, pipe, _, _ = setup
    clap = make_tiny_clap(tmp_path / "clap")
    spec = load_spec(spec_text(clips, tmp_path / "out", [], clips=["bounce_000", "hum_000"],
                               clap_model=str(clap), mp4=False, seeds=[3, 4]))
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    assert result.summary["clap"]["status"] == "ok"
    records = _records(result.summary)
    assert len(records) == 4 and all(-1.0 <= r["metrics"]["clap_score"] <= 1.0 for r in records)
    assert all((result.output_dir / r["clap_embedding"]).is_file() for r in records)
    group = result.summary["adapters"][0]["by_strength"][0]
    assert group["fad_clap"] >= 0.0
    refs = result.summary["reference_clips"]
    assert all("clap_score" in r["metrics"] for r in refs)


def test_drift_clips_are_compared_with_the_baseline_only(tmp_path, setup):
    _, clips, adapter, pipe, _, _ = setup
    drift = make_clips(tmp_path / "drift", silent=False)
    spec = load_spec(spec_text(clips, tmp_path / "out", [{"id": "a", "path": str(adapter)}],
                               clips=["hum_000"], drift_dir=str(drift), mp4=False))
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    drift_recs = [r for r in _records(result.summary) if r["role"] == "drift"]
    assert {(r["clip"], r["adapter"]) for r in drift_recs} == {
        (c, a) for c in ("bounce_000", "hum_000") for a in ("baseline", "a")}
    for r in drift_recs:
        assert "/drift/" in r["wav"] and "lsd_db" not in r["metrics"]
        assert ("drift_lsd_db" in r["metrics"]) == (r["adapter"] == "a")
    row = next(a for a in result.summary["adapters"] if a["id"] == "a")
    assert row["drift_avg_metrics"]["drift_lsd_db"] > 0
    assert "Drift clips" in (result.output_dir / "index.html").read_text(encoding="utf-8")


def test_features_come_from_the_training_runs_cache_when_they_match(tmp_path, setup):
    from safetensors import safe_open

    from selva_core.data import scan_dataset
    from selva_core.evaluation.runner import default_model_tag
    from selva_core.feature_cache import FeatureCacheSettings, build_feature_cache

    _, clips, _, pipe, _, _ = setup
    run = tmp_path / "run"
    settings = FeatureCacheSettings(variant="tiny_16k", duration=1.0, window_policy="first",
                                    model_tag=default_model_tag("tiny_16k"))
    cached = build_feature_cache(scan_dataset(clips), pipe, run / "feature_cache", settings,
                                 progress=False)
    (run / "config.json").write_text(json.dumps({"data_dir": str(clips), "variant": "tiny_16k",
                                                 "duration": 1.0, "window": "first"}))
    (run / "summary.json").write_text(json.dumps({"val_clip_names": ["hum_000#w0"]}))
    spec = load_spec(json.dumps({"data_dir": str(run), "output_dir": str(tmp_path / "out"),
                                 "steps": 1, "mp4": False}))
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    assert result.completed
    saved = next((tmp_path / "out" / "features").glob("hum_000.*.safetensors"))
    with safe_open(str(saved), framework="pt") as f:
        assert json.loads(f.metadata()["extra"])["from"] == "run cache"
        ours = f.get_tensor("sync_f")  # (tokens, width): the feature cache's window format
    entry = next(e for e in cached if e.name == "hum_000#w0")
    np.testing.assert_array_equal(ours.numpy(), entry.load()["sync_f"][: ours.shape[0]].numpy())
    assert result.summary["reference_clips"][0]["duration"] == 1.0  # the run's window


def test_a_stop_before_any_render_keeps_every_finished_render_listed(tmp_path, setup):
    _, clips, _, pipe, _, _ = setup
    spec = load_spec(spec_text(clips, tmp_path / "out", [], clips=["hum_000"], mp4=False))
    run_evaluation(spec, pipeline=pipe, progress=False)
    stopped = run_evaluation(spec, pipeline=pipe, progress=False, should_stop=lambda: True)
    assert stopped.status == "interrupted" and stopped.summary["stage"] == "features"
    on_disk = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert len(_records(on_disk)) == 1  # the finished render is still listed
    again = run_evaluation(spec, pipeline=pipe, progress=False)
    assert again.completed and again.rendered == 0 and "stage" not in again.summary
