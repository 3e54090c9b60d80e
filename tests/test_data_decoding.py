"""PyAV frame decoding (sample-and-hold), audio formats, mono mix-down, resampling, validation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from selva_core.data import BadClipError
from selva_core.data import audio as audio_mod
from selva_core.data.audio import load_mono, read_audio_file, read_video_audio, to_mono
from selva_core.data.synthetic import write_tone_clip, write_video
from selva_core.data.video import decode_frames, probe_video


def levels(frames) -> list[int]:
    """Frame ids of write_tone_clip clips: grey level / 8 (robust to codec rounding)."""
    return [round(v / 8) for v in frames.float().mean(dim=(1, 2, 3)).tolist()]


def test_probe_reads_size_rate_length_and_audio_format(tmp_path):
    path = write_tone_clip(tmp_path / "a.mp4", duration=2.0, size=48, channels=2)
    info = probe_video(path)
    assert (info.width, info.height, info.fps) == (48, 48, 25.0)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.has_audio and info.audio_channels == 2 and info.audio_sample_rate == 16000


def test_decode_at_source_rate_returns_every_frame_in_order(tmp_path):
    path = write_tone_clip(tmp_path / "a.mp4", duration=1.0)
    frames = decode_frames(path)
    assert frames.dtype == torch.uint8
    assert frames.shape == (25, 3, 32, 32)
    assert levels(frames) == list(range(25))


def test_slower_source_repeats_frames_as_the_fps_filter_does(tmp_path):
    # 10 fps: frame i goes to slot round(2.5 i) (halves away from zero); a slot shows the last
    # frame mapped to it or before it.
    path = write_tone_clip(tmp_path / "slow.mp4", duration=2.0, fps=10)
    frames = decode_frames(path, num_frames=12)
    assert levels(frames) == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]


def test_faster_source_skips_frames_and_start_offset_is_honoured(tmp_path):
    path = write_tone_clip(tmp_path / "fast.mp4", duration=3.0, fps=50)
    frames = decode_frames(path, start=1.0, num_frames=6)
    # frame ids wrap at 32 (grey level 8*i mod 256): source frames 50, 52, ... 60
    assert levels(frames) == [(50 + 2 * k) % 32 for k in range(6)]


def test_short_tail_repeats_the_last_frame_but_a_long_one_does_not(tmp_path):
    path = write_tone_clip(tmp_path / "a.mp4", duration=1.0)  # 25 frames
    assert decode_frames(path, num_frames=27).shape[0] == 27  # 2 missing: padded
    assert levels(decode_frames(path, num_frames=27))[-3:] == [24, 24, 24]
    assert decode_frames(path, num_frames=40).shape[0] == 25  # 15 missing: returned short


def test_unreadable_video_names_the_file(tmp_path):
    bad = tmp_path / "bad.mov"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(BadClipError, match="bad.mov: cannot read the video"):
        probe_video(bad)


# mono weights of the ITU-style downmix, per channel count in the default (WAV/SMPTE) order
ITU_MONO = {1: [1.0], 2: [0.5, 0.5], 6: [0.5, 0.5, 0.5 ** 0.5, 0.0, 0.5 ** 1.5, 0.5 ** 1.5]}


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_audio_file_is_mixed_to_mono_itu_style(tmp_path, channels):
    sr = 16000
    base = 0.1 * np.sin(2 * np.pi * 200 * np.arange(sr) / sr)
    data = np.stack([base * (c + 1) for c in range(channels)], axis=1).astype(np.float32)
    sf.write(tmp_path / "a.wav", data, sr, subtype="FLOAT")
    mono = load_mono(tmp_path / "a.wav", sr)
    gain = sum(w * (c + 1) for c, w in enumerate(ITU_MONO[channels]))
    np.testing.assert_allclose(mono, base * gain, atol=1e-6)


def test_5_1_video_track_is_mixed_to_mono_itu_style(tmp_path):
    sr = 16000
    base = 0.05 * np.sin(2 * np.pi * 300 * np.arange(sr) / sr)
    audio = np.stack([base * (c + 1) for c in range(6)]).astype(np.float32)
    frames = np.zeros((25, 32, 32, 3), np.uint8)
    path = write_video(tmp_path / "surround.mkv", frames, audio=audio, sample_rate=sr,
                       audio_codec="pcm_s16le")
    raw, rate = read_video_audio(path)
    assert raw.shape == (6, sr) and rate == sr
    mono = load_mono(path, sr, from_video=True)
    gain = sum(w * (c + 1) for c, w in enumerate(ITU_MONO[6]))  # LFE (4th) left out
    np.testing.assert_allclose(mono, base * gain, atol=2e-4)


@pytest.mark.parametrize("source_rate", [44100, 48000, 22050])
def test_resampling_to_16k_keeps_length_and_pitch(tmp_path, source_rate):
    seconds, freq = 1.5, 440.0
    t = np.arange(round(seconds * source_rate)) / source_rate
    sf.write(tmp_path / "a.flac", 0.3 * np.sin(2 * np.pi * freq * t), source_rate)
    out = load_mono(tmp_path / "a.flac", 16000)
    assert out.dtype == np.float32 and abs(out.shape[0] - 24000) <= 1
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * 16000 / out.shape[0]
    assert abs(peak_hz - freq) < 2.0


@pytest.mark.parametrize(
    "suffix, kwargs",
    [(".ogg", {}), (".aiff", {}), (".aif", {"format": "AIFF"}), (".flac", {}),
     (".wav", {"subtype": "PCM_24"})],
)
def test_every_audio_file_format_loads(tmp_path, suffix, kwargs):
    sr = 22050
    x = 0.25 * np.sin(2 * np.pi * 500 * np.arange(sr) / sr)
    sf.write(tmp_path / f"a{suffix}", x, sr, **kwargs)
    data, rate = read_audio_file(tmp_path / f"a{suffix}")
    assert rate == sr and data.shape[0] == 1 and abs(data.shape[1] - sr) < 64
    assert np.abs(data).max() == pytest.approx(0.25, abs=0.03)


def test_mp3_loads_and_pyav_is_the_fallback_when_soundfile_fails(tmp_path, monkeypatch):
    sr = 16000
    frames = np.zeros((25, 32, 32, 3), np.uint8)
    x = (0.25 * np.sin(2 * np.pi * 500 * np.arange(sr) / sr)).astype(np.float32)
    # write an mp3 via a throwaway container, then keep only its audio stream as .mp3
    write_video(tmp_path / "v.avi", frames, audio=x, sample_rate=sr, audio_codec="libmp3lame")
    import av

    with av.open(str(tmp_path / "v.avi")) as src, av.open(str(tmp_path / "a.mp3"), "w") as dst:
        out = dst.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)

    def refuse(*args, **kwargs):
        raise sf.LibsndfileError(0, "forced failure")

    monkeypatch.setattr(audio_mod.sf, "read", refuse)
    data, rate = read_audio_file(tmp_path / "a.mp3")
    assert rate == sr and data.shape[0] == 1
    assert np.abs(data).max() == pytest.approx(0.25, abs=0.05)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda n: np.zeros(n, np.float32), "the audio is silent"),
        (lambda n: np.where(np.arange(n) == 100, np.nan, 0.2).astype(np.float32), "NaN"),
        (lambda n: np.full(n // 4, 0.2, np.float32), "only 0.25 s long"),
    ],
)
def test_bad_audio_content_raises_one_line_naming_the_file(tmp_path, make, needle):
    sr = 16000
    sf.write(tmp_path / "bad.wav", make(sr), sr, subtype="FLOAT")
    with pytest.raises(BadClipError, match=needle) as info:
        load_mono(tmp_path / "bad.wav", sr)
    assert str(tmp_path / "bad.wav") in str(info.value) and "\n" not in str(info.value)


def test_empty_audio_file_is_rejected(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(BadClipError, match="empty.wav: the audio is empty"):
        load_mono(tmp_path / "empty.wav", 16000)


def test_to_mono_of_mono_is_unchanged():
    x = np.linspace(-1, 1, 11, dtype=np.float32)
    np.testing.assert_array_equal(to_mono(x), x)
    np.testing.assert_array_equal(to_mono(x[None]), x)


def test_transform_runs_per_chunk_and_equals_transforming_the_whole_clip(tmp_path):
    path = write_tone_clip(tmp_path / "a.mp4", duration=2.0)  # 50 frames
    sizes = []

    def shrink(block):
        sizes.append(block.shape[0])
        return block[:, :, ::2, ::2].float() / 255

    out = decode_frames(path, transform=shrink, chunk=16, num_frames=52)
    assert sizes == [16, 16, 16, 2]
    whole = decode_frames(path, num_frames=52)[:, :, ::2, ::2].float() / 255
    assert out.shape == (52, 3, 16, 16) and torch.equal(out, whole)
