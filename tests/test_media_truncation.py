"""A file holding less than its header promises is measured as what it holds, with a warning
giving both lengths."""

from __future__ import annotations

import logging
import re

import av
import numpy as np
import pytest
import soundfile as sf

from selva_core.data import scan_dataset
from selva_core.data.audio import load_mono, probe_audio_file
from selva_core.data.synthetic import write_tone_clip
from selva_core.data.video import probe_video

SR = 16000


def cut(path, keep: float):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def faststart_copy(src, dst):
    """Remux with the index (moov) in front, so a cut file still opens and promises it all."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


def truncation_warnings(caplog, name):
    pattern = re.compile(rf"{re.escape(name)}: the file looks truncated: its header promises "
                         r"([\d.]+) s of (\w+) but it holds only ([\d.]+) s")
    found = [pattern.search(r.getMessage()) for r in caplog.records]
    return [(float(m[1]), m[2], float(m[3])) for m in found if m]


def test_cut_wav_is_warned_with_the_promised_and_the_held_length(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    write_tone_clip(folder / "clip.mp4", duration=1.0, with_audio=False)
    x = (0.3 * np.sin(2 * np.pi * 330 * np.arange(4 * SR) / SR)).astype(np.float32)
    sf.write(folder / "clip.wav", x, SR, subtype="PCM_16")
    cut(folder / "clip.wav", 0.5)
    info = probe_audio_file(folder / "clip.wav")
    assert info.header_duration == pytest.approx(4.0, abs=1e-3)
    assert info.duration == pytest.approx(2.0, abs=0.01)
    with caplog.at_level(logging.WARNING):
        (clip,) = scan_dataset(folder, on_bad_clip="stop")
    ((promised, what, held),) = truncation_warnings(caplog, "clip.wav")
    assert (promised, what) == (4.0, "audio") and held == pytest.approx(2.0, abs=0.01)
    assert load_mono(clip.audio_path, SR).shape[0] == pytest.approx(held * SR, abs=0.01 * SR)


def test_cut_flac_is_warned_and_still_decodes_what_it_holds(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    write_tone_clip(folder / "clip.mp4", duration=1.0, with_audio=False)
    x = (0.3 * np.sin(2 * np.pi * 330 * np.arange(4 * SR) / SR)).astype(np.float32)
    sf.write(folder / "clip.flac", x, SR)
    cut(folder / "clip.flac", 0.5)
    with caplog.at_level(logging.WARNING):
        (clip,) = scan_dataset(folder, on_bad_clip="stop")
    ((promised, what, held),) = truncation_warnings(caplog, "clip.flac")
    assert promised == 4.0 and what == "audio" and 1.0 < held < 3.0
    wave = load_mono(clip.audio_path, SR)  # the cut last frame does not decode
    assert held - 0.3 < wave.shape[0] / SR <= held


def test_cut_video_is_measured_by_its_packets_and_warned(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    src = write_tone_clip(tmp_path / "src.mp4", duration=4.0)
    cut(faststart_copy(src, folder / "clip.mp4"), 0.5)
    info = probe_video(folder / "clip.mp4")
    assert info.header_duration == pytest.approx(4.0, abs=0.05)
    assert 0.64 < info.duration < 3.0 and 0.64 < info.audio_duration < 3.0
    with caplog.at_level(logging.WARNING):
        (clip,) = scan_dataset(folder, on_bad_clip="stop")
    warned = {what: (promised, held) for promised, what, held in
              truncation_warnings(caplog, "clip.mp4")}
    assert set(warned) == {"video", "audio"}
    assert warned["video"] == (4.0, round(info.duration, 2))
    assert warned["audio"][1] == round(info.audio_duration, 2)


def test_complete_files_give_no_truncation_warning(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    for ext in (".mp4", ".mkv", ".webm", ".avi", ".mov"):
        kwargs = {"sample_rate": 48000} if ext == ".webm" else {}
        write_tone_clip(folder / f"c{ext[1:]}{ext}", duration=2.0, **kwargs)
    sf.write(folder / "cmp4.flac", np.full(2 * SR, 0.1, np.float32), SR)
    with caplog.at_level(logging.WARNING):
        clips = scan_dataset(folder, on_bad_clip="stop")
    assert len(clips) == 5
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
