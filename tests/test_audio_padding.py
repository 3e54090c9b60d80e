"""AAC tracks decode as long as their container says: the encoder's end padding is dropped."""

from __future__ import annotations

import numpy as np
import pytest

from selva_core.data.audio import read_audio_file, read_video_audio
from selva_core.data.synthetic import write_video


def tone(samples: int, rate: int) -> np.ndarray:
    t = np.arange(samples) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize(("rate", "seconds"), [(16000, 1.0), (44100, 0.77), (48000, 1.3)])
def test_aac_in_mp4_decodes_to_exactly_the_encoded_samples(tmp_path, rate, seconds):
    # an AAC frame is 1024 samples: none of these lengths is a multiple, so the last frame
    # always carries end padding that the edit list leaves out
    samples = int(rate * seconds)
    assert samples % 1024
    path = write_video(tmp_path / "a.mp4", np.zeros((int(25 * seconds), 16, 16, 3), np.uint8),
                       fps=25, audio=tone(samples, rate), sample_rate=rate)
    audio, got_rate = read_video_audio(path)
    assert got_rate == rate and audio.shape[1] == samples
    # the samples kept are the tone's, in place (the priming at the start is skipped too)
    middle = slice(samples // 4, samples // 2)
    assert np.corrcoef(audio[0, middle], tone(samples, rate)[middle])[0, 1] > 0.99


def test_aac_in_m4a_is_trimmed_too(tmp_path):
    import av

    path = tmp_path / "a.m4a"
    samples = 16000 + 300
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(samples, 16000)[None], format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audio, _ = read_audio_file(path)
    assert audio.shape[1] == samples


def test_a_container_without_exact_durations_keeps_every_sample(tmp_path):
    # Matroska rounds packet durations to milliseconds: a full frame is not cut by that rounding
    rate, samples = 44100, 44100
    path = write_video(tmp_path / "a.mkv", np.zeros((25, 16, 16, 3), np.uint8), fps=25,
                       audio=tone(samples, rate), sample_rate=rate)
    audio, _ = read_video_audio(path)
    assert audio.shape[1] == 1024 * -(-samples // 1024)  # whole frames, none shortened
