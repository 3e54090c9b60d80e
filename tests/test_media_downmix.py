"""Surround is mixed to mono the way its ITU-style stereo downmix would be (LFE left out)."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf

from selva_core.data import BadClipError
from selva_core.data.audio import load_mono, mono_weights, to_mono

SR = 16000
RNG = np.random.default_rng(0)


def tone(freq: float = 300.0, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(SR) / SR)).astype(np.float32)


def write_layout_wav(path, layout: str, data: np.ndarray):
    """A WAV naming its channel layout (WAVE_FORMAT_EXTENSIBLE mask), written by FFmpeg."""
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=SR, layout=layout)
        for at in range(0, data.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, at: at + 1024], np.float32), format="fltp",
                layout=layout)
            frame.sample_rate = SR
            frame.pts = at
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def itu_stereo(five_one: np.ndarray) -> np.ndarray:
    """ITU-R BS.775 stereo downmix of L R C LFE Ls Rs (LFE left out)."""
    left, right, centre, _lfe, ls, rs = five_one
    g = 0.5 ** 0.5
    return np.stack([left + g * centre + g * ls, right + g * centre + g * rs])


def test_dialogue_in_the_centre_keeps_the_level_of_the_stereo_downmix(tmp_path):
    dialogue = tone()
    film = np.zeros((6, SR), np.float32)
    film[2] = dialogue  # centre channel only
    sf.write(tmp_path / "film.wav", film.T, SR, subtype="FLOAT")
    sf.write(tmp_path / "stereo.wav", itu_stereo(film).T, SR, subtype="FLOAT")
    mono_51 = load_mono(tmp_path / "film.wav", SR)
    mono_20 = load_mono(tmp_path / "stereo.wav", SR)
    np.testing.assert_allclose(mono_51, mono_20, atol=1e-6)
    level_db = 20 * np.log10(np.abs(mono_51).max() / np.abs(dialogue).max())
    assert level_db == pytest.approx(-3.01, abs=0.05)  # a plain mean would give -15.6 dB


def test_any_5_1_content_mixes_like_its_itu_stereo_downmix():
    film = RNG.normal(scale=0.1, size=(6, 4000)).astype(np.float32)
    np.testing.assert_allclose(to_mono(film), itu_stereo(film).mean(axis=0), atol=1e-6)


def test_lfe_is_left_out(tmp_path):
    film = np.zeros((6, SR), np.float32)
    film[3] = tone(60.0)
    sf.write(tmp_path / "rumble.wav", film.T, SR, subtype="FLOAT")
    with pytest.raises(BadClipError, match="rumble.wav: the audio is silent after mixing its 6 "
                                           "channels to mono"):
        load_mono(tmp_path / "rumble.wav", SR)


def test_the_files_own_channel_layout_is_honoured(tmp_path):
    # 3 channels: named '2.1' (L R LFE) the third is left out; unnamed they are L R C.
    data = np.zeros((3, SR), np.float32)
    data[0] = data[2] = tone()
    named = load_mono(write_layout_wav(tmp_path / "named.wav", "2.1", data), SR)
    sf.write(tmp_path / "plain.wav", data.T, SR, subtype="FLOAT")
    plain = load_mono(tmp_path / "plain.wav", SR)
    np.testing.assert_allclose(named, 0.5 * tone(), atol=1e-6)
    np.testing.assert_allclose(plain, (0.5 + 0.5 ** 0.5) * tone(), atol=1e-6)


@pytest.mark.parametrize("layout", ["5.1", "5.1(side)", "7.1", "quad"])
def test_surround_weights_follow_the_itu_rule(layout):
    names = [c.name for c in av.AudioLayout(layout).channels]
    expected = {"FL": 0.5, "FR": 0.5, "FC": 0.5 ** 0.5, "LFE": 0.0,
                "BL": 0.5 ** 1.5, "BR": 0.5 ** 1.5, "SL": 0.5 ** 1.5, "SR": 0.5 ** 1.5}
    np.testing.assert_allclose(mono_weights(names), [expected[n] for n in names])


def test_mono_and_stereo_are_unchanged_by_the_rule():
    x = RNG.normal(size=(2, 100)).astype(np.float32)
    np.testing.assert_allclose(to_mono(x), x.mean(axis=0), atol=1e-7)
    np.testing.assert_array_equal(to_mono(x[:1]), x[0])
