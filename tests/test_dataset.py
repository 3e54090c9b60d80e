"""Dataset preparation and inspection: every defect is flagged, every cut respected."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from selva_core.data.audio import read_audio_file
from selva_core.data.video import decode_frames, probe_video
from selva_core.dataset import checks
from selva_core.dataset.cli import main
from selva_core.dataset.cutting import CUT_MARGIN_S, plan_clips, shot_cuts
from selva_core.dataset.inspect import inspect_folder
from selva_core.dataset.loudness import integrated_lufs, limit, normalize
from selva_core.dataset.prepare import PrepareError, PrepareSettings, prepare
from selva_core.dataset.report import REPORT_JSON, warn_flagged, write_report
from tests.dataset_sources import (
    FPS,
    SR,
    clip,
    flashes,
    long_source,
    lowpassed,
    moving,
    noise,
    vfr_times,
    write_timed,
)

SETTINGS = PrepareSettings(variant="tiny_16k", duration=2.0)


def flags(result, name):
    return next(r for r in result.clips if r.name == name).flags


# --- cutting ----------------------------------------------------------------------------------
def test_a_hard_cut_is_found_at_its_frame_and_steady_motion_is_not_a_cut():
    frames = moving(4.0).transpose(0, 3, 1, 2)[:, :1].astype(np.float32)
    assert shot_cuts(frames) == []
    frames[62:] += 100
    assert shot_cuts(frames) == [pytest.approx(62 / FPS)]


def test_windows_stay_inside_shots_and_skip_quiet_stretches():
    levels = np.zeros(100)  # 10 s of 100 ms steps, all loud
    levels[30:50] = -math.inf  # silent from 3 s to ~5.4 s
    plan = plan_clips(10.0, [6.0], levels, duration=2.0, hop=1.0, min_loudness=-45)
    for c in plan.clips:
        assert c.end <= 6.0 - CUT_MARGIN_S + 1e-6 or c.start >= 6.0 + CUT_MARGIN_S - 1e-6
        assert c.end <= 3.0 + 1e-6 or c.start >= 5.0 - 1e-6
    assert [c.start for c in plan.clips] == [0.0, 1.0, 6.08, 7.08]
    assert plan.quiet > 0


def test_max_clips_keeps_windows_spread_over_the_source():
    plan = plan_clips(20.0, [], np.zeros(200), duration=2.0, hop=2.0, min_loudness=-45,
                      max_clips=3)
    assert [c.start for c in plan.clips] == [0.0, 8.0, 18.0]


# --- loudness -------------------------------------------------------------------------------
def test_normalize_reaches_the_target_loudness():
    x = noise(3.0, 0.01)
    y, lufs = normalize(x, SR, -23.0)
    assert lufs == pytest.approx(-23.0, abs=0.1)
    assert integrated_lufs(y, SR) == pytest.approx(-23.0, abs=0.1)


def test_the_limiter_keeps_peaks_under_its_ceiling_and_the_compressor_can_reach_loud_targets():
    x = noise(2.0, 0.05)
    x[SR // 2: SR // 2 + 100] = 0.9  # a spike that plain gain would push far over full scale
    y = limit(x * 4, SR)
    assert np.abs(y).max() <= 10 ** (-1 / 20) + 1e-6
    loud, lufs = normalize(x, SR, -12.0, compressor=True)
    plain, plain_lufs = normalize(x, SR, -12.0)
    assert np.abs(loud).max() <= 10 ** (-1 / 20) + 1e-6
    assert lufs > plain_lufs + 3  # plain gain is held back by the spike


# --- inspection of defects --------------------------------------------------------------------
@pytest.fixture(scope="module")
def defects(tmp_path_factory):
    folder = tmp_path_factory.mktemp("defects")
    t = np.arange(3 * SR) / SR
    clip(folder / "clean.avi", noise(3.0, 0.1, seed=10))
    clip(folder / "clipped.avi", np.clip(3 * np.sin(2 * np.pi * 220 * t), -1, 1))
    clip(folder / "silent.avi", np.zeros(3 * SR))
    clip(folder / "lowpassed.avi", lowpassed(noise(3.0, 0.3, seed=11), 2500))
    clip(folder / "lowrate.avi", noise(3.0, 0.1, seed=12, sr=8000), 3.0, sr=8000)
    clip(folder / "dc.avi", noise(3.0, 0.05, seed=13) + 0.2)
    dup = noise(3.0, 0.1, seed=14)
    clip(folder / "dup_a.avi", dup)
    clip(folder / "dup_b.avi", dup * 0.5)
    base = noise(3.0, 0.1, seed=15)
    clip(folder / "inverted.avi", np.stack([base, -base]))
    clip(folder / "short.avi", noise(1.0, 0.1, seed=16))
    gate = (np.sin(2 * np.pi * 0.5 * t) > 0).astype(np.float32)
    clip(folder / "noisy.avi", 0.1 * np.sin(2 * np.pi * 440 * t) * gate + noise(3.0, 0.05, 19))
    frames, audio = flashes(6.0, [0.6, 1.5, 2.2, 3.3, 4.1, 5.0], 0.3)
    clip(folder / "late.avi", audio, 6.0, frames=frames)
    frames, audio = flashes(6.0, [0.6, 1.5, 2.2, 3.3, 4.1, 5.0], 0.0)
    clip(folder / "synced.avi", audio, 6.0, frames=frames)
    times = vfr_times(3.0)
    write_timed(folder / "vfr.mp4", moving(3.0, fps=len(times) / 3.0)[: len(times)], times,
                audio=noise(3.0, 0.1, seed=17))
    steady = [i / 25 for i in range(75)]
    write_timed(folder / "rotated.mp4", moving(3.0), steady, audio=noise(3.0, 0.1, seed=18),
                rotation=-90)
    return inspect_folder(folder, variant="tiny_16k", duration=2.0)


@pytest.mark.parametrize(("name", "flag"), [
    ("clipped", "clipping"), ("silent", "silence"), ("lowpassed", "band_limited"),
    ("lowrate", "band_limited"), ("dc", "dc_offset"), ("inverted", "stereo"),
    ("short", "too_short"), ("noisy", "low_snr"), ("late", "av_offset"),
    ("vfr", "variable_frame_rate"),
    ("rotated", "rotation"), ("dup_a", "near_duplicate"), ("dup_b", "near_duplicate"),
])
def test_each_defect_is_flagged(defects, name, flag):
    assert flag in flags(defects, name)


def test_a_clean_clip_has_no_flag(defects):
    assert flags(defects, "clean") == []
    assert "av_offset" not in flags(defects, "synced")


def test_the_offset_estimate_says_how_late_the_sound_is(defects):
    late = next(r for r in defects.clips if r.name == "late").checks["av_offset"]
    assert 200 <= late.value <= 400
    assert late.threshold == checks.OFFSET_MS


def test_duplicates_are_grouped_and_the_split_is_checked(defects):
    assert ["dup_a", "dup_b"] in defects.duplicates
    assert all(set(g) <= {"dup_a", "dup_b"} for g in defects.duplicates)


def test_the_report_lists_every_check_with_figure_and_threshold(defects, tmp_path):
    defects.folder = tmp_path
    paths = write_report(defects)
    data = json.loads(paths["json"].read_text())
    entry = next(c for c in data["clips"] if c["name"] == "clipped")
    assert entry["checks"]["clipping"]["flagged"] is True
    assert entry["checks"]["clipping"]["threshold"] == checks.CLIP_SHARE
    assert entry["checks"]["clipping"]["value"] > 0.1
    assert {"clipping", "silence", "band_limited", "av_offset"} <= set(entry["checks"])
    assert "<img" in paths["html"].read_text()
    assert paths["image"].stat().st_size > 0


def test_the_round_trip_measures_each_clip_against_the_models_reconstruction(tmp_path):
    from selva_core.pipeline import SelvaPipeline

    clip(tmp_path / "a.avi", noise(2.0, 0.1))
    result = inspect_folder(tmp_path, variant="tiny_16k", duration=2.0,
                            pipeline=SelvaPipeline.tiny(trained=False), max_lsd=1e6)
    rt = result.clips[0].checks["round_trip"]
    assert math.isfinite(rt.value) and rt.value > 0 and not rt.flagged
    assert result.clips[0].round_trip.audio.shape[0] == 2 * SR


# --- preparation ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    long_source(src / "machine.avi")
    clip(src / "clipped.avi", np.clip(3 * np.sin(2 * np.pi * 220 * np.arange(3 * SR) / SR),
                                      -1, 1))
    out = tmp_path_factory.mktemp("prepared") / "clips"
    result = prepare([src], out, SETTINGS)
    return src, out, result


def starts_of(result, stem):
    return sorted(int(n.rsplit("_", 1)[1]) / 1000 for n in result.written if n.startswith(stem))


def test_a_long_source_is_cut_between_silence_and_shot_cuts(prepared):
    _, out, result = prepared
    starts = starts_of(result, "machine")
    assert starts, result.written
    for s in starts:  # silent 2-4.5 s, cut at 8 s
        assert s + 2.0 <= 2.0 + 1e-6 or s >= 4.5 - 0.1
        assert s + 2.0 <= 8.0 + 1e-6 or s >= 8.0
    assert 0.0 in starts and any(s >= 8.0 for s in starts)


def test_prepared_clips_are_what_the_trainer_reads(prepared):
    from selva_core.data import scan_dataset

    _, out, result = prepared
    clips = scan_dataset(out, on_bad_clip="stop")
    assert sorted(c.name for c in clips) == sorted(result.written)
    assert all(c.audio_path is not None and c.prompt == "src" or c.prompt for c in clips)
    wave, sr = read_audio_file(out / f"{result.written[0]}.wav")
    assert sr == 16000 and wave.shape[1] == 2 * sr
    assert integrated_lufs(wave[0], sr) == pytest.approx(-23.0, abs=0.5)
    info = probe_video(out / f"{result.written[0]}.mp4")
    assert info.duration == pytest.approx(2.0, abs=0.05)


def test_the_copies_keep_the_sources_frames(prepared):
    src, out, result = prepared
    name = next(n for n in result.written if n.startswith("machine_0008"))
    copy = decode_frames(out / f"{name}.mp4", fps=FPS).float()
    original = decode_frames(src / "machine.avi", fps=FPS, start=8.08, num_frames=copy.shape[0])
    assert copy.shape == original.shape
    assert (copy - original.float()).abs().mean() < 6


def test_a_window_starting_on_a_keyframe_is_copied_without_re_encoding(prepared):
    from selva_core.media import picture_codec

    src, out, result = prepared
    assert picture_codec(out / "machine_0000000.mp4") == picture_codec(src / "machine.avi")
    copy = decode_frames(out / "machine_0000000.mp4", fps=FPS)
    original = decode_frames(src / "machine.avi", fps=FPS, num_frames=copy.shape[0])
    assert copy.shape[0] == 50 and torch.equal(copy, original)  # bit-exact: not re-encoded


def test_source_defects_are_kept_in_the_report_of_the_prepared_clips(prepared):
    _, out, result = prepared
    data = json.loads((out / REPORT_JSON).read_text()) if (out / REPORT_JSON).exists() else None
    inspection = inspect_folder(out, variant="tiny_16k", duration=2.0)
    clipped = [r for r in inspection.clips if r.name.startswith("clipped")]
    assert clipped and all("source:clipping" in r.flags for r in clipped)
    assert "clipping" not in clipped[0].checks or not clipped[0].checks["clipping"].flagged
    assert data is None or isinstance(data, dict)


def test_a_rerun_skips_what_exists(prepared):
    src, out, first = prepared
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = prepare([src], out, SETTINGS)
    assert again.written == [] and sorted(again.existing) == sorted(first.written)
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k.endswith((".mp4", ".wav"))} == \
        {k: v for k, v in before.items() if k.endswith((".mp4", ".wav"))}


def test_an_interrupted_clip_leaves_no_files_and_is_redone(tmp_path, monkeypatch):
    import selva_core.dataset.prepare as prep

    src = tmp_path / "src"
    src.mkdir()
    clip(src / "a.avi", noise(4.0, 0.1))
    out = tmp_path / "out"
    real = prep.write_clip_video
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "write_clip_video", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        prepare([src], out, SETTINGS)
    names = sorted(p.name for p in out.iterdir())
    assert names == [".a_0000000.prepare.json", "a_0000000.mp4", "a_0000000.wav",
                     "prompts.txt"]
    monkeypatch.setattr(prep, "write_clip_video", real)
    result = prepare([src], out, SETTINGS)
    assert result.existing == ["a_0000000"] and result.written == ["a_0002000"]


def test_a_rotated_source_gives_upright_copies(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    frames = np.zeros((75, 32, 48, 3), np.uint8)
    frames[:, :8, :8] = 255
    write_timed(src / "phone.mp4", frames, [i / 25 for i in range(75)],
                audio=noise(3.0, 0.1), rotation=-90)
    result = prepare([src], tmp_path / "out", SETTINGS)
    copy = decode_frames(tmp_path / "out" / f"{result.written[0]}.mp4", fps=FPS)
    source = decode_frames(src / "phone.mp4", fps=FPS, num_frames=copy.shape[0])
    assert copy.shape[2:] == (48, 32) and copy.shape == source.shape


def test_a_variable_rate_source_keeps_its_frame_times(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    times = vfr_times(3.0)
    write_timed(src / "vfr.mp4", moving(3.0, fps=len(times) / 3.0)[: len(times)], times,
                audio=noise(3.0, 0.1))
    out = tmp_path / "out"
    result = prepare([src], out, SETTINGS)
    timing = checks.picture_timing(out / f"{result.written[0]}.mp4")
    assert timing.interval_cv > checks.VFR_CV


def test_bad_sources_are_one_line_each_and_the_rest_is_done(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    clip(src / "good.avi", noise(2.5, 0.1))
    (src / "broken.mp4").write_bytes(b"not a video")
    from selva_core.data.synthetic import write_video

    write_video(src / "mute.mp4", moving(2.5))
    code = main(["prepare", str(src), "--out", str(tmp_path / "out"), "--variant", "tiny_16k",
                 "--duration", "2", "--round_trip", "off"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.mp4" in err and "mute.mp4" in err and "no audio track" in err
    assert len([line for line in err.splitlines() if line.startswith("skipped")]) == 2
    assert (tmp_path / "out" / "good_0000000.wav").is_file()


def test_an_output_folder_inside_a_source_is_refused(tmp_path, capsys):
    clip(tmp_path / "a.avi", noise(2.5, 0.1))
    with pytest.raises(PrepareError, match="inside the source folder"):
        prepare([tmp_path], tmp_path / "out", SETTINGS)
    assert main(["prepare", str(tmp_path), "--out", str(tmp_path / "o"), "--round_trip",
                 "off"]) == 2
    assert "inside the source folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_full_disk_stops_with_one_line_and_keeps_what_was_written(tmp_path, monkeypatch):
    import errno

    import selva_core.dataset.prepare as prep

    src = tmp_path / "src"
    src.mkdir()
    clip(src / "a.avi", noise(4.0, 0.1))
    real = prep.write_clip_video
    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "write_clip_video", full)
    with pytest.raises(PrepareError, match="No space left on device"):
        prepare([src], tmp_path / "out", SETTINGS)
    assert (tmp_path / "out" / "a_0000000.wav").is_file()
    assert not (tmp_path / "out" / "a_0002000.wav").exists()


def test_the_trainer_warns_about_flagged_clips(tmp_path, caplog):
    (tmp_path / REPORT_JSON).write_text(json.dumps({"clips": [
        {"name": "a", "flags": ["clipping"]}, {"name": "b", "flags": []}]}))
    with caplog.at_level("WARNING"):
        assert warn_flagged(tmp_path, ["a", "b", "c"]) == ["a"]
    assert "a: flagged by dataset_report.json: clipping" in caplog.text
    assert warn_flagged(tmp_path / "nowhere", ["a"]) == []


def test_near_duplicates_of_training_clips_leave_validation(tmp_path):
    from types import SimpleNamespace as Ex

    from selva_core.dataset.report import keep_duplicates_together

    (tmp_path / REPORT_JSON).write_text(json.dumps({"clips": [], "near_duplicates": [
        ["a", "b"], ["c", "d"]]}))
    train = [Ex(name="a#w0"), Ex(name="c"), Ex(name="d")]
    val = [Ex(name="b#w0"), Ex(name="b#w1"), Ex(name="e")]
    new_train, new_val = keep_duplicates_together(tmp_path, train, val)
    assert [e.name for e in new_train] == ["a#w0", "c", "d", "b#w0", "b#w1"]
    assert [e.name for e in new_val] == ["e"]
    assert keep_duplicates_together(tmp_path / "none", train, val) == (train, val)
