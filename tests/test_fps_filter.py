"""Frames as the reference saw them: every decoding path picks FFmpeg's ``fps`` filter's frames.

Each clip's frames carry their index in the picture (lossless H.264), so the test can tell which
source frame an output frame shows; the expectation is PyAV's filter graph running FFmpeg's own
``fps`` filter over the same decoded frames.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from selva_core.data.fps_filter import FpsFilter, filter_indices
from selva_core.data.video import decode_frames
from selva_core.frames import prepare_frames, prepare_video_file, resample_indices

SIZE = 32


def picture(index: int) -> np.ndarray:
    """A frame whose 16 blocks spell ``index`` in binary (black/white, robust to any codec)."""
    bits = np.array([(index >> b) & 1 for b in range(16)], dtype=np.uint8).reshape(4, 4) * 255
    return np.repeat(np.repeat(bits, SIZE // 4, 0), SIZE // 4, 1)[..., None].repeat(3, -1)


def index_of(image: np.ndarray) -> int:
    """Inverse of :func:`picture` for an (H, W, 3) or (3, H, W) image."""
    if image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    step = SIZE // 4
    blocks = image[step // 2::step, step // 2::step, 0] > 127
    return int(sum(int(bit) << b for b, bit in enumerate(blocks.reshape(-1))))


def write_clip(path, times: list[Fraction], time_base: Fraction) -> None:
    """Lossless H.264 in MP4 with a frame at each of ``times`` (seconds)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25, options={"qp": "0"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "rgb24"
        stream.codec_context.time_base = time_base
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts, frame.time_base = int(t / time_base), time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def ffmpeg_fps_filter(path, rate: int) -> list[int]:
    """Indices of the frames FFmpeg's ``fps=rate`` filter outputs for the whole file."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        source = graph.add_buffer(template=stream)
        fps = graph.add("fps", str(rate))
        sink = graph.add("buffersink")
        source.link_to(fps)
        fps.link_to(sink)
        graph.configure()

        def drain():
            while True:
                try:
                    out.append(index_of(graph.pull().to_ndarray(format="rgb24")))
                except (BlockingIOError, av.error.BlockingIOError, EOFError):
                    return

        for frame in container.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    return out


def constant(rate: Fraction, seconds: float) -> list[Fraction]:
    return [i / rate for i in range(int(seconds * rate))]


def variable(seconds: float) -> list[Fraction]:
    rng = np.random.default_rng(0)
    times, t = [], Fraction(0)
    while t < seconds:
        times.append(t)
        t += Fraction(int(rng.integers(9, 90)), 1000)  # 9-89 ms between frames
    return times


RATES = {"24": Fraction(24), "25": Fraction(25), "29.97": Fraction(30000, 1001),
         "30": Fraction(30), "50": Fraction(50), "60": Fraction(60)}


@pytest.fixture(scope="module", params=[*RATES, "variable"])
def clip(request, tmp_path_factory):
    """(path, source rate or None for variable, frame times) of a 2.5 s clip."""
    path = tmp_path_factory.mktemp("fps") / f"clip_{request.param}.mp4"
    if request.param == "variable":
        times, time_base, rate = variable(2.5), Fraction(1, 90000), None
    else:
        rate = RATES[request.param]
        times, time_base = constant(rate, 2.5), 1 / rate / 10
    write_clip(path, times, time_base)
    return path, rate, times


def ids(frames: torch.Tensor) -> list[int]:
    return [index_of(f.numpy()) for f in frames]


def test_decoder_gives_exactly_the_fps_filters_frames(clip):
    path, _, _ = clip
    expected = ffmpeg_fps_filter(path, 25)
    assert len(expected) >= 60
    assert ids(decode_frames(path, fps=25)) == expected


def test_a_window_from_a_start_is_a_slice_of_the_filters_frames(clip):
    path, _, _ = clip
    expected = ffmpeg_fps_filter(path, 25)
    assert ids(decode_frames(path, fps=25, start=0.64, num_frames=20)) == expected[16:36]


def test_clip_rate_frames_are_the_filters_too(clip):
    path, _, _ = clip
    assert ids(decode_frames(path, fps=8)) == ffmpeg_fps_filter(path, 8)


def test_image_batch_at_its_fps_picks_the_same_frames_as_the_file(clip):
    path, rate, times = clip
    if rate is None:
        pytest.skip("an IMAGE batch has one frame rate")
    batch = torch.from_numpy(np.stack([picture(i) for i in range(len(times))])).float() / 255
    prepared = prepare_frames(batch, float(rate))
    expected = ffmpeg_fps_filter(path, 25)
    assert ids(prepared.frames) == expected[:prepared.frames.shape[0]]
    from_file = ids(prepare_video_file(path).frames)
    assert from_file == expected[:len(from_file)]
    assert from_file[:len(prepared.frames)] == ids(prepared.frames)


def test_the_filter_differs_from_sample_and_hold_where_the_reference_says():
    # 24 fps at 8 fps: the filter shows frame 3k+1 where first-at-or-after shows 3k
    assert filter_indices(24, 24, 8, 8) == [1, 4, 7, 10, 13, 16, 19, 22]
    # 24 fps at 25 fps: about half the slots differ from the first frame at or after k / 25
    held = filter_indices(48, 24, 25, 50)
    first_after = [min(47, -(-k * 24 // 25)) for k in range(50)]
    assert 15 <= sum(a != b for a, b in zip(held, first_after)) <= 35


def test_halves_round_away_from_zero_on_exact_timestamps():
    # 60 fps at 25 fps: frame 6 sits at exactly 2.5 slots and goes to slot 3, so slot 2 shows 5
    assert resample_indices(12, 60, 4).tolist() == [1, 3, 5, 8]
    # float NTSC rate is read as 30000/1001: frame 600 sits exactly on slot 500.5
    idx = resample_indices(700, 29.97002997002997, 520).tolist()
    assert idx[500] == 599 and idx[501] == 601


def test_slots_before_the_first_frame_show_it_and_the_end_holds_the_last():
    filt: FpsFilter[str] = FpsFilter(25, first=0, count=4)
    assert filt.push(Fraction(2, 25), "a") == ["a", "a"]
    assert filt.finish(Fraction(3, 25)) == ["a"]
    assert resample_indices(3, 10, 10).tolist()[-1] == 2
