"""Every audio extension the decoders read is paired as same-stem audio and decodes."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf

from selva_core.data import BadClipError, scan_dataset
from selva_core.data.audio import AUDIO_EXTENSIONS, load_mono
from selva_core.data.synthetic import write_tone_clip

SR = 16000
FREQ = 440.0
SECONDS = 1.0

# libsndfile writers: extension -> sf.write keyword arguments
SOUNDFILE = {
    ".wav": {}, ".flac": {}, ".ogg": {}, ".aiff": {}, ".aif": {"format": "AIFF"},
    ".aifc": {"format": "AIFF"}, ".caf": {"format": "CAF"}, ".w64": {"format": "W64"},
    ".au": {"format": "AU"}, ".oga": {"format": "OGG"},
}
# PyAV writers: extension -> (container format, codec)
PYAV = {
    ".mp3": ("mp3", "libmp3lame"), ".opus": ("opus", "libopus"), ".m4a": ("ipod", "aac"),
    ".aac": ("adts", "aac"), ".mka": ("matroska", "flac"), ".wma": ("asf", "wmav2"),
    ".ac3": ("ac3", "ac3"), ".mp2": ("mp2", "mp2"), ".wv": ("wv", "wavpack"),
    ".tta": ("tta", "tta"),
}


def tone(rate: int) -> np.ndarray:
    t = np.arange(round(SECONDS * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * FREQ * t)).astype(np.float32)


def write_audio(path):
    ext = path.suffix
    if ext in SOUNDFILE:
        sf.write(path, tone(22050), 22050, **SOUNDFILE[ext])
        return
    fmt, codec = PYAV[ext]
    rate = 48000
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        stream.bit_rate = 128_000  # wmav2 needs one; lossy codecs stay close to the tone
        x = tone(rate)
        for at in range(0, x.shape[0], 1024):
            frame = av.AudioFrame.from_ndarray(x[None, at: at + 1024], format="flt",
                                               layout="mono")
            frame.sample_rate = rate
            frame.pts = at
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_every_listed_extension_has_a_writer_here():
    assert set(AUDIO_EXTENSIONS) == set(SOUNDFILE) | set(PYAV)


@pytest.mark.parametrize("ext", AUDIO_EXTENSIONS)
def test_same_stem_audio_of_every_decodable_extension_is_paired_and_read(tmp_path, ext):
    folder = tmp_path / "data"
    folder.mkdir()
    write_tone_clip(folder / "clip.mp4", duration=1.0, with_audio=False)
    write_audio(folder / f"clip{ext}")
    (clip,) = scan_dataset(folder, on_bad_clip="stop")
    assert clip.audio_path == folder / f"clip{ext}"
    wave = load_mono(clip.audio_path, SR)
    assert abs(wave.shape[0] - SECONDS * SR) < 0.1 * SR
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * SR / wave.shape[0] - FREQ) < 3.0
    assert 0.2 < np.abs(wave).max() < 0.45


def test_no_audio_message_lists_every_name_it_looked_for(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_tone_clip(folder / "clip.mp4", duration=1.0, with_audio=False)
    with pytest.raises(BadClipError, match="no audio track") as info:
        scan_dataset(folder, on_bad_clip="stop")
    message = str(info.value)
    assert all(f"clip{ext}" in message for ext in AUDIO_EXTENSIONS)
    assert "\n" not in message
