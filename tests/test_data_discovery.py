"""Dataset discovery: pairing, prompt priority, npz import, and every bad input (skip vs stop)."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import soundfile as sf

from selva_core.data import BadClipError, EmptyDatasetError, SkipReport, scan_dataset
from selva_core.data.npz_import import read_feature_npz
from selva_core.data.synthetic import write_tone_clip

SR = 16000


def tone(seconds: float, channels: int = 1, sr: int = SR, freq: float = 330.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write_npz(path, tokens=192, width=768, prompt="a stored prompt", **extra):
    data = {
        "clip_features": np.zeros((1, 64, 1024), np.float32),
        "sync_features": np.random.default_rng(0).normal(size=(1, tokens, width)).astype(
            np.float32
        ),
        "duration": np.array(8.0),
        "prompt": np.array(prompt),
        "variant": np.array("small_16k"),
    }
    data.update(extra)
    np.savez(path, **data)
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "barking_dogs"
    d.mkdir()
    return d


def test_same_stem_audio_file_wins_over_the_video_track(folder):
    write_tone_clip(folder / "a.mp4", duration=1.0)
    sf.write(folder / "a.wav", tone(1.0), SR)
    write_tone_clip(folder / "b.mkv", duration=1.0)
    clips = scan_dataset(folder, on_bad_clip="stop")
    assert [c.name for c in clips] == ["a", "b"]
    assert clips[0].audio_path == folder / "a.wav" and not clips[0].audio_from_video
    assert clips[1].audio_path is None and clips[1].audio_from_video
    assert clips[1].video_path == folder / "b.mkv"


def test_every_video_extension_is_discovered(folder):
    for ext in (".mp4", ".mov", ".mkv", ".webm", ".avi"):
        kwargs = {"sample_rate": 48000} if ext == ".webm" else {}
        write_tone_clip(folder / f"clip{ext[1:]}{ext}", duration=0.8, **kwargs)
    (folder / "notes.md").write_text("not a clip")
    names = [c.video_path.suffix for c in scan_dataset(folder, on_bad_clip="stop")]
    assert sorted(names) == sorted([".mp4", ".mov", ".mkv", ".webm", ".avi"])


def test_prompt_priority_prompts_txt_then_npz_then_folder_name(folder):
    write_tone_clip(folder / "a.mp4", duration=1.0)
    write_tone_clip(folder / "b.mp4", duration=1.0)
    write_npz(folder / "c.npz", prompt="prompt stored in c")
    sf.write(folder / "c.wav", tone(1.0), SR)
    write_npz(folder / "d.npz", prompt="prompt stored in d")
    sf.write(folder / "d.flac", tone(1.0), SR)
    (folder / "prompts.txt").write_text(
        "# comment line\n\na.mp4: a dog barking loudly\n  d : override for d # kept\n"
    )
    clips = {c.name: c for c in scan_dataset(folder, on_bad_clip="stop")}
    assert (clips["a"].prompt, clips["a"].prompt_source) == ("a dog barking loudly", "prompts.txt")
    assert (clips["b"].prompt, clips["b"].prompt_source) == ("barking dogs", "folder")
    assert (clips["c"].prompt, clips["c"].prompt_source) == ("prompt stored in c", "npz")
    assert clips["d"].prompt == "override for d # kept"
    assert clips["c"].npz_path == folder / "c.npz" and clips["c"].video_path is None


def test_npz_import_reads_the_anchor_format_without_pickle(folder):
    path = write_npz(folder / "x.npz", tokens=64, width=768)
    feats = read_feature_npz(path)
    assert feats.sync_features.shape == (64, 768) and feats.sync_features.dtype == np.float32
    assert feats.prompt == "a stored prompt" and feats.variant == "small_16k"
    assert feats.num_segments == 8
    assert feats.visual_length == pytest.approx((16 + 8 * 7) / 25)


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"sync_features": np.zeros((1, 13, 768), np.float32)}, "multiple of 8"),
        ({"sync_features": np.full((1, 8, 768), np.nan, np.float32)}, "NaN"),
        ({"prompt": np.array([{"evil": 1}], dtype=object)}, "refusing to unpickle"),
    ],
)
def test_bad_npz_files_are_rejected_with_the_file_named(folder, extra, needle):
    path = write_npz(folder / "bad.npz", **extra)
    with pytest.raises(BadClipError, match=needle) as info:
        read_feature_npz(path)
    assert str(path) in str(info.value)


def test_npz_that_would_unpickle_code_does_not_run_it(folder, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arr = np.empty(1, dtype=object)
    arr[0] = Evil()
    np.savez(folder / "evil.npz", sync_features=arr)
    assert b"pwned" in pickle.dumps(arr)
    with pytest.raises(BadClipError, match="refusing to unpickle"):
        read_feature_npz(folder / "evil.npz")
    assert not marker.exists()


def test_empty_folder_is_always_an_error_naming_the_folder(folder):
    for mode in ("skip", "stop"):
        with pytest.raises(EmptyDatasetError, match="no clips found in .*barking_dogs; expected"):
            scan_dataset(folder, on_bad_clip=mode)


def test_folder_where_every_clip_is_bad_is_an_error_even_when_skipping(folder):
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    report = SkipReport()
    with pytest.raises(EmptyDatasetError, match="no usable clips"):
        scan_dataset(folder, on_bad_clip="skip", report=report)
    assert len(report) == 1 and "broken.mp4" in report.lines()[0]


def _bad_cases(folder):
    """Each builder makes one bad clip next to a good one; returns (bad file, message part)."""

    def unreadable():
        (folder / "bad.mp4").write_bytes(b"\x00\x01garbage" * 100)
        return folder / "bad.mp4", "cannot read the video"

    def no_audio():
        write_tone_clip(folder / "bad.mp4", duration=1.0, with_audio=False)
        return folder / "bad.mp4", "no audio track and there is no same-stem audio file"

    def too_short():
        write_tone_clip(folder / "bad.mp4", duration=0.4)
        return folder / "bad.mp4", "only 0.4"

    def short_audio_file():
        write_tone_clip(folder / "bad.mp4", duration=1.0)
        sf.write(folder / "bad.wav", tone(0.3), SR)
        return folder / "bad.wav", "needs at least 0.64 s"

    def rate():
        write_tone_clip(folder / "bad.mp4", duration=1.0)
        sf.write(folder / "bad.wav", tone(1.0, sr=4000), 4000)
        return folder / "bad.wav", "unsupported audio sample rate 4000 Hz"

    def layout():
        write_tone_clip(folder / "bad.mp4", duration=1.0)
        sf.write(folder / "bad.wav", tone(1.0, channels=12), SR)
        return folder / "bad.wav", "unsupported audio channel layout with 12"

    def npz_without_audio():
        write_npz(folder / "bad.npz")
        return folder / "bad.npz", "needs a same-stem audio file"

    def orphan_audio():
        sf.write(folder / "bad.wav", tone(1.0), SR)
        return folder / "bad.wav", "without a same-stem video or .npz"

    def two_videos():
        write_tone_clip(folder / "bad.mp4", duration=1.0)
        write_tone_clip(folder / "bad.mkv", duration=1.0)
        return folder / "bad.mkv", "several videos share the name 'bad'"

    return {f.__name__: f for f in (unreadable, no_audio, too_short, short_audio_file, rate,
                                    layout, npz_without_audio, orphan_audio, two_videos)}


BAD_CASES = ["unreadable", "no_audio", "too_short", "short_audio_file", "rate", "layout",
             "npz_without_audio", "orphan_audio", "two_videos"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_clip_is_skipped_with_one_line_naming_the_file(folder, case, caplog):
    write_tone_clip(folder / "good.mp4", duration=1.0)
    bad_file, needle = _bad_cases(folder)[case]()
    report = SkipReport()
    with caplog.at_level(logging.WARNING, logger="selva_core.data.errors"):
        clips = scan_dataset(folder, on_bad_clip="skip", report=report)
    assert [c.name for c in clips] == ["good"]
    assert len(report) == 1
    line = report.lines()[0]
    assert "\n" not in line and needle in line
    assert str(bad_file.parent / "bad") in line  # names the file
    assert any(needle in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_clip_stops_the_scan_when_asked(folder, case):
    write_tone_clip(folder / "good.mp4", duration=1.0)
    _, needle = _bad_cases(folder)[case]()
    with pytest.raises(BadClipError, match=needle):
        scan_dataset(folder, on_bad_clip="stop")


@pytest.mark.parametrize(
    "line, needle, skips_good",
    [
        ("good.mp4 a prompt without colon", "has no ':'", True),
        ("a prompt without colon", "has no ':'", False),
        (": no name", "no clip name", False),
        ("good.mp4:   ", "empty prompt", True),
        ("good: first\ngood.mp4: second", "a second, different prompt (first given on line 1)",
         True),
        ("ghost.mp4: a clip that is not there", "no video or .npz named 'ghost'", False),
    ],
)
def test_prompts_txt_problems_skip_or_stop(folder, line, needle, skips_good):
    write_tone_clip(folder / "good.mp4", duration=1.0)
    write_tone_clip(folder / "other.mp4", duration=1.0)
    (folder / "prompts.txt").write_text(line + "\n")
    report = SkipReport()
    clips = scan_dataset(folder, on_bad_clip="skip", report=report)
    names = [c.name for c in clips]
    if skips_good:  # the clip the line was meant for is skipped, never trained on
        assert names == ["other"]
        assert len(report) == 1 and report.ignored == []
        assert needle in report.lines()[0] and "prompts.txt" in report.lines()[0]
        assert str(folder / "good.mp4") in report.lines()[0]
    else:  # a line tied to no clip is an ignored line, not a skipped clip
        assert names == ["good", "other"]
        assert len(report) == 0 and len(report.ignored) == 1
        assert needle in report.ignored_lines()[0]
        assert "prompts.txt" in report.ignored_lines()[0]
    with pytest.raises(BadClipError, match="prompts.txt.*" + needle.split("(")[0][:20]):
        scan_dataset(folder, on_bad_clip="stop")


def test_unknown_on_bad_clip_value_is_rejected(folder):
    write_tone_clip(folder / "good.mp4", duration=1.0)
    with pytest.raises(ValueError, match="on_bad_clip must be one of"):
        scan_dataset(folder, on_bad_clip="ignore")


def test_skip_report_formats_one_line_per_clip(folder):
    write_tone_clip(folder / "good.mp4", duration=1.0)
    (folder / "x.mp4").write_bytes(b"junk")
    (folder / "y.mp4").write_bytes(b"junk")
    report = SkipReport()
    scan_dataset(folder, on_bad_clip="skip", report=report)
    text = report.format()
    assert text.splitlines()[0] == "2 clip(s) skipped:"
    assert "x.mp4" in text.splitlines()[1] and "y.mp4" in text.splitlines()[2]


def test_evaluations_reading_keeps_a_silent_clip_and_a_badly_prompted_one_training_skips(
        folder, caplog):
    write_tone_clip(folder / "quiet.mp4", duration=1.0, with_audio=False)
    write_tone_clip(folder / "loud.mp4", duration=1.0)
    (folder / "prompts.txt").write_text("loud no colon here\n")
    report = SkipReport()
    with pytest.raises(EmptyDatasetError):  # training: no sound, unusable prompt line
        scan_dataset(folder, on_bad_clip="skip", report=report)
    assert len(report) == 2
    with caplog.at_level(logging.WARNING):
        clips = scan_dataset(folder, need_audio=False, strict_prompts=False, role="eval")
    assert [(c.name, c.has_audio, c.role) for c in clips] == [("loud", True, "eval"),
                                                              ("quiet", False, "eval")]
    assert clips[0].prompt == "barking dogs" and clips[0].prompt_source == "folder"
    assert abs(clips[0].seconds - 1.0) < 0.05
    assert any("has no ':'" in r.getMessage() for r in caplog.records)
