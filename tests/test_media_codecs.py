"""Streams PyAV cannot decode are one bad-clip line, never a traceback (the container seam)."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest

from selva_core.data import BadClipError, SkipReport, scan_dataset
from selva_core.data.audio import load_mono, probe_audio_file
from selva_core.data.synthetic import write_tone_clip
from selva_core.data.video import decode_frames, probe_video

SR = 16000


def wav_with_format_code(path, code: int, seconds: float = 1.0):
    """A well-formed RIFF/WAVE file whose ``fmt`` chunk names an unknown format ``code``."""
    data = (np.sin(np.arange(round(seconds * SR)) * 0.1) * 8000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", code, 1, SR, SR * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def avi_with_unknown_codec(path, stream: str):
    """An AVI whose video fourcc (``stream='video'``) or audio format tag is unknown."""
    write_tone_clip(path, duration=1.0)
    raw = bytearray(path.read_bytes())
    first_strf = raw.find(b"strf")
    if stream == "video":
        at = raw.find(b"vids") + 4  # strh handler
        raw[at: at + 4] = b"ZZZZ"
        raw[first_strf + 24: first_strf + 28] = b"ZZZZ"  # BITMAPINFOHEADER.biCompression
    else:
        second_strf = raw.find(b"strf", first_strf + 4)
        raw[second_strf + 8: second_strf + 10] = struct.pack("<H", 0x1234)  # wFormatTag
    path.write_bytes(bytes(raw))
    return path


def test_wav_with_an_unknown_format_code_is_a_bad_clip(tmp_path):
    bad = wav_with_format_code(tmp_path / "odd.wav", 0x1234)
    for call in (lambda: probe_audio_file(bad), lambda: load_mono(bad, SR)):
        with pytest.raises(BadClipError, match="odd.wav: .*cannot decode") as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("stream", ["video", "audio"])
def test_video_with_a_codec_ffmpeg_cannot_decode_is_a_bad_clip(tmp_path, stream):
    bad = avi_with_unknown_codec(tmp_path / "odd.avi", stream)
    needle = f"its {stream} stream uses a codec this FFmpeg build cannot decode"
    if stream == "video":
        with pytest.raises(BadClipError, match=needle):
            probe_video(bad)
    else:  # the track only matters when the clip's sound comes from it
        assert needle in probe_video(bad).audio_problem
    call = (lambda: decode_frames(bad)) if stream == "video" else (
        lambda: load_mono(bad, SR, from_video=True))
    with pytest.raises(BadClipError, match=needle):
        call()


@pytest.mark.parametrize("case", ["wav_code", "video_codec", "audio_codec"])
def test_undecodable_codec_is_one_skip_line_under_skip_and_stops_under_stop(tmp_path, case,
                                                                           caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    write_tone_clip(folder / "good.mp4", duration=1.0)
    if case == "wav_code":
        write_tone_clip(folder / "bad.mp4", duration=1.0)
        wav_with_format_code(folder / "bad.wav", 0x1234)
    else:
        avi_with_unknown_codec(folder / "bad.avi", case.split("_")[0])
    report = SkipReport()
    with caplog.at_level(logging.WARNING):
        clips = scan_dataset(folder, on_bad_clip="skip", report=report)
    assert [c.name for c in clips] == ["good"]
    assert len(report) == 1 and "cannot decode" in report.lines()[0]
    assert str(folder / "bad.") in report.lines()[0] and "\n" not in report.lines()[0]
    with pytest.raises(BadClipError, match="cannot decode"):
        scan_dataset(folder, on_bad_clip="stop")


def test_damaged_tail_keeps_what_decodes_and_warns(tmp_path, caplog):
    # FLAC cut mid-frame: libsndfile refuses it, PyAV decodes up to the cut.
    import soundfile as sf

    x = (0.3 * np.sin(2 * np.pi * 300 * np.arange(4 * SR) / SR)).astype(np.float32)
    sf.write(tmp_path / "full.flac", x, SR)
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING):
        wave = load_mono(tmp_path / "cut.flac", SR)
    assert 0.6 * SR < wave.shape[0] < 2.0 * SR
    assert any("cut.flac: decoding the audio stopped after" in r.getMessage()
               for r in caplog.records)


def test_undecodable_audio_track_does_not_matter_with_a_same_stem_audio_file(tmp_path):
    import soundfile as sf

    folder = tmp_path / "data"
    folder.mkdir()
    avi_with_unknown_codec(folder / "clip.avi", "audio")
    sf.write(folder / "clip.wav", np.full(SR, 0.1, np.float32), SR)
    (clip,) = scan_dataset(folder, on_bad_clip="stop")
    assert clip.audio_path == folder / "clip.wav"
    assert decode_frames(clip.video_path).shape[0] == 25
