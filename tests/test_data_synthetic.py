"""Synthetic demo dataset: deterministic given the seed, and its sounds follow its pictures."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from selva_core.data import scan_dataset
from selva_core.data.audio import load_mono
from selva_core.data.synthetic import (
    BASE_CLASSES,
    CLASS_PROMPTS,
    CODEC_CLASSES,
    HELD_OUT_CLASS,
    make_synthetic_dataset,
    synthetic_clip,
)
from selva_core.data.video import decode_frames, probe_video

SR = 16000


def digest(paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def centroids(path):
    """(T, 2) x, y centre of the bright shape in each decoded 25 fps frame."""
    frames = decode_frames(path).float().mean(dim=1).numpy()  # (T, H, W) grey
    out = []
    for f in frames:
        mask = f > (f.max() + f.min()) / 2
        ys, xs = np.nonzero(mask)
        out.append((xs.mean() + 0.5, ys.mean() + 0.5))
    return np.array(out)


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", clips_per_class=2, duration=1.0, seed=7)
    b = make_synthetic_dataset(tmp_path / "b", clips_per_class=2, duration=1.0, seed=7)
    c = make_synthetic_dataset(tmp_path / "c", clips_per_class=2, duration=1.0, seed=8)
    assert [p.name for p in a] == ["bounce_000.mp4", "bounce_001.mp4", "hum_000.mp4",
                                   "hum_001.mp4"]
    assert digest(a) == digest(b)
    assert (tmp_path / "a/prompts.txt").read_text() == (tmp_path / "b/prompts.txt").read_text()
    assert all(x != y for x, y in zip(digest(a), digest(c)))


def test_dataset_scans_with_class_prompts_and_requested_format(tmp_path):
    make_synthetic_dataset(tmp_path, clips_per_class=1, duration=1.2, seed=0, size=48)
    clips = scan_dataset(tmp_path, on_bad_clip="stop")
    assert {c.name: c.prompt for c in clips} == {
        "bounce_000": CLASS_PROMPTS["bounce"], "hum_000": CLASS_PROMPTS["hum"]}
    info = probe_video(clips[0].video_path)
    assert (info.width, info.height, info.fps) == (48, 48, 25.0)
    assert info.duration == pytest.approx(1.2, abs=0.05) and info.audio_sample_rate == SR


def test_bounce_clicks_happen_exactly_when_the_ball_hits_a_wall(tmp_path):
    (path,) = make_synthetic_dataset(tmp_path, classes=("bounce",), clips_per_class=1,
                                     duration=3.0, seed=1)
    pos = centroids(path)
    velocity = np.diff(pos, axis=0)
    flips = np.nonzero((np.sign(velocity[1:]) != np.sign(velocity[:-1])).any(axis=1))[0] + 1
    hit_times = flips / 25.0  # a direction flip happens between frames flip-1 and flip+1
    assert len(hit_times) >= 2

    audio = load_mono(path, SR, from_video=True)
    frame = SR // 100  # 10 ms energy envelope
    energy = np.array([np.sum(audio[i:i + frame] ** 2) for i in range(0, len(audio), frame)])
    loud = energy > 0.05 * energy.max()
    onsets = np.nonzero(loud & ~np.r_[False, loud[:-1]])[0] * 0.01
    for t in hit_times:  # every hit has a click within two frames
        assert np.min(np.abs(onsets - t)) < 0.08, (t, onsets)
    for t in onsets:  # every click belongs to a hit (or one just at the clip edge)
        assert np.min(np.abs(hit_times - t)) < 0.08 or t > 2.9, (t, hit_times)


def test_hum_pitch_rises_as_the_square_climbs(tmp_path):
    (path,) = make_synthetic_dataset(tmp_path, classes=("hum",), clips_per_class=1,
                                     duration=3.0, seed=2, write_wav=True)
    height = -centroids(path)[:, 1]  # up = larger
    audio = load_mono(path.with_suffix(".wav"), SR)
    win = 1024
    pitch = []
    for k in range(len(height)):
        centre = int(k / 25 * SR)
        seg = audio[max(0, centre - win // 2): max(0, centre - win // 2) + win]
        seg = np.pad(seg, (0, win - len(seg))) * np.hanning(win)
        spec = np.abs(np.fft.rfft(seg, 8 * win))
        pitch.append(np.argmax(spec) * SR / (8 * win))
    corr = np.corrcoef(height, pitch)[0, 1]
    assert corr > 0.95
    assert 190 < min(pitch) and max(pitch) < 810


def test_unknown_class_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic classes"):
        make_synthetic_dataset(tmp_path, classes=("bounce", "roar"), clips_per_class=1)


def lit_frames_and_energy(tmp_path, name, seed):
    """A 3 s clip of ``name``: (lit per frame, the exact audio, its energy per frame)."""
    (path,) = make_synthetic_dataset(tmp_path, classes=(name,), clips_per_class=1,
                                     duration=3.0, seed=seed, write_wav=True)
    brightness = decode_frames(path).float().mean(dim=(1, 2, 3)).numpy()
    lit = brightness > (brightness.max() + brightness.min()) / 2
    audio = load_mono(path.with_suffix(".wav"), SR)
    return lit, audio, _frame_energy(audio, len(lit))


@pytest.mark.parametrize("name", ["blip", "burst"])
def test_flash_hiss_plays_exactly_while_the_disc_is_lit(tmp_path, name):
    lit, audio, frame_energy = lit_frames_and_energy(tmp_path, name, 3)
    assert 2 <= (lit & ~np.r_[False, lit[:-1]]).sum() <= 6  # a few separate flashes
    near = lit | np.r_[lit[1:], False]  # a flash starts inside the frame before it is drawn
    assert np.all(frame_energy[~near] < 0.02 * frame_energy.max())  # dark: silence
    assert np.mean(frame_energy[lit] > 0.02 * frame_energy.max()) > 0.8  # lit: hiss
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    in_band = spectrum[(freqs >= 1000) & (freqs <= 6000)].sum() / spectrum.sum()
    assert in_band > 0.99  # band-passed noise, not a tone or a click


@pytest.mark.parametrize("name, shortest, longest", [("blip", 0.12, 0.3), ("burst", 0.25, 0.5)])
def test_flashes_last_as_long_as_their_class_says(tmp_path, name, shortest, longest):
    flashes = []
    for seed in range(4):
        lit, _, _ = lit_frames_and_energy(tmp_path / str(seed), name, seed)
        edges = np.flatnonzero(np.diff(np.r_[0, lit.astype(int), 0]))
        flashes += list((edges[1::2] - edges[::2]) / 25)  # lit frames per flash, in s
    assert len(flashes) >= 8
    assert shortest - 0.04 <= min(flashes) and max(flashes) <= longest + 0.04  # 25 fps frames


def test_the_held_out_class_is_in_no_stage_of_the_tiny_base():
    assert HELD_OUT_CLASS == "burst"
    assert HELD_OUT_CLASS not in CODEC_CLASSES and HELD_OUT_CLASS not in BASE_CLASSES
    assert set(BASE_CLASSES) <= set(CODEC_CLASSES)
    assert set(CODEC_CLASSES) | {HELD_OUT_CLASS} == set(CLASS_PROMPTS)


def test_a_class_clips_do_not_depend_on_the_other_classes_asked_for(tmp_path):
    alone = make_synthetic_dataset(tmp_path / "a", classes=("hum",), clips_per_class=1,
                                   duration=1.0, seed=5)
    both = make_synthetic_dataset(tmp_path / "b", classes=("bounce", "hum"), clips_per_class=1,
                                  duration=1.0, seed=5)
    assert digest(alone) == digest([p for p in both if p.name.startswith("hum")])


def test_in_memory_clip_is_the_audio_the_dataset_writes(tmp_path):
    (path,) = make_synthetic_dataset(tmp_path, classes=("burst",), clips_per_class=1,
                                     duration=1.0, seed=4, write_wav=True)
    frames, audio = synthetic_clip("burst", 0, duration=1.0, seed=4)
    assert frames.shape == (25, 64, 64, 3) and frames.dtype == np.uint8
    written = load_mono(path.with_suffix(".wav"), SR)
    np.testing.assert_allclose(written, audio, atol=1.0 / 32767 + 1e-6)  # PCM_16 rounding


def _frame_energy(audio, n_frames):
    return np.array([np.sum(audio[round(k / 25 * SR):round((k + 1) / 25 * SR)] ** 2)
                     for k in range(n_frames)])


def test_beep_buzzes_exactly_while_the_square_is_lit(tmp_path):
    lit, audio, energy = lit_frames_and_energy(tmp_path, "beep", 3)
    assert 2 <= (lit & ~np.r_[False, lit[:-1]]).sum() <= 5  # a few separate beeps
    near = lit | np.r_[lit[1:], False] | np.r_[False, lit[:-1]]  # ramps straddle frame edges
    assert np.all(energy[~near] < 1e-6 * energy.max())  # dark: silence
    inner = lit & np.r_[False, lit[:-1]] & np.r_[lit[1:], False]
    assert inner.sum() >= 8 and energy[inner].min() > 0.5 * energy[inner].max()  # steady
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    assert spectrum[(freqs >= 2000) & (freqs <= 4000)].sum() > 0.99 * spectrum.sum()


def test_swell_rush_grows_louder_as_the_circle_grows(tmp_path):
    (path,) = make_synthetic_dataset(tmp_path, classes=("swell",), clips_per_class=1,
                                     duration=3.0, seed=2, write_wav=True)
    grey = decode_frames(path).float().mean(dim=1).numpy()
    area = np.array([(f > (f.max() + f.min()) / 2).mean() for f in grey])
    audio = load_mono(path.with_suffix(".wav"), SR)
    loudness = np.sqrt(_frame_energy(audio, len(area)))
    assert np.corrcoef(area, loudness)[0, 1] > 0.9
    assert loudness.max() > 10 * loudness.min()
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    assert spectrum[(freqs >= 3000) & (freqs <= 6000)].sum() > 0.99 * spectrum.sum()
