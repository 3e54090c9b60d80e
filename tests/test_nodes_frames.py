"""selva_core.frames: timestamp resampling to 25 fps, masks, durations, content keys."""

from __future__ import annotations

import math

import pytest
import torch

from selva_core.frames import (
    ContentCache,
    FrameInputError,
    content_key,
    prepare_frames,
    resample_indices,
)


def test_resampling_shows_the_last_source_frame_rounded_to_each_output_slot():
    # 12 fps -> 25 fps (the fps filter): frame i goes to slot round(i * 25 / 12); slot k shows
    # the last frame with i * 25 / 12 < k + 1/2
    idx = resample_indices(24, 12.0)
    assert len(idx) == 50
    expected = [min(23, ((2 * k + 1) * 12 - 1) // 50) for k in range(50)]
    assert idx.tolist() == expected
    assert torch.equal(resample_indices(50, 25.0), torch.arange(50))  # 25 fps: unchanged
    idx30 = resample_indices(60, 30.0)  # 30 fps -> 25: drops one frame in six
    assert len(idx30) == 50 and idx30[-1] == 59 and len(set(idx30.tolist())) == 50


@pytest.mark.parametrize("fps", [10, 12, 30])
def test_node_resampling_equals_the_trainers_video_decoder(tmp_path, fps):
    """A video gives the same 25 fps frames in a node as in the training feature cache."""
    from selva_core.data.synthetic import write_tone_clip
    from selva_core.data.video import decode_frames

    path = write_tone_clip(tmp_path / f"clip_{fps}.mp4", duration=2.0, fps=fps)
    decoded = decode_frames(path, num_frames=40)
    source = decode_frames(path, fps=fps)  # every source frame, in order
    assert torch.equal(decoded, source[resample_indices(source.shape[0], float(fps), 40)])


def test_ntsc_rates_keep_the_clip_length():
    idx = resample_indices(300, 30000 / 1001)  # 10.01 s of 29.97 fps
    assert len(idx) == 250 and idx.max() <= 299


def test_prepare_frames_layout_duration_and_summary():
    images = torch.rand(24, 8, 10, 3)
    out = prepare_frames(images, 12.0)
    assert out.frames.shape == (50, 3, 8, 10) and out.frames.dtype == torch.uint8
    assert out.duration == pytest.approx(2.0)
    assert out.summary.startswith("24 frames at 12 fps (2.00 s) -> 50 frames at 25 fps")
    cut = prepare_frames(images, 12.0, duration=1.0)
    assert cut.frames.shape[0] == 25 and torch.equal(cut.frames, out.frames[:25])
    expected = (images[resample_indices(24, 12.0)] * 255).round().to(torch.uint8)
    assert torch.equal(out.frames, expected.permute(0, 3, 1, 2))


def test_grey_and_rgba_frames_become_rgb():
    grey = prepare_frames(torch.rand(25, 4, 4, 1), 25.0)
    assert grey.frames.shape[1] == 3 and torch.equal(grey.frames[:, 0], grey.frames[:, 2])
    rgba = torch.rand(25, 4, 4, 4)
    assert torch.equal(prepare_frames(rgba, 25.0).frames,
                       prepare_frames(rgba[..., :3], 25.0).frames)


def test_a_few_missing_frames_are_tolerated_more_are_refused():
    images = torch.rand(25, 4, 4, 3)  # 1.00 s
    assert prepare_frames(images, 25.0, duration=1.1).duration == pytest.approx(1.1)
    with pytest.raises(FrameInputError) as exc:
        prepare_frames(images, 25.0, duration=2.0)
    assert exc.value.input_name == "duration" and "at most 1.00" in str(exc.value)


@pytest.mark.parametrize("fps", [0.0, -3.0, math.nan, math.inf])
def test_bad_frame_rates_name_fps(fps):
    with pytest.raises(FrameInputError) as exc:
        prepare_frames(torch.rand(25, 4, 4, 3), fps)
    assert exc.value.input_name == "fps"


def test_too_short_or_empty_clips_are_refused():
    with pytest.raises(FrameInputError) as exc:
        prepare_frames(torch.rand(10, 4, 4, 3), 25.0)  # 0.4 s < one sync window
    assert exc.value.input_name == "images" and "0.64" in str(exc.value)
    with pytest.raises(FrameInputError) as exc:
        prepare_frames(torch.rand(0, 4, 4, 3), 25.0)
    assert exc.value.input_name == "images"


def test_per_frame_masks_follow_the_resampled_frames():
    images = torch.full((12, 4, 4, 3), 1.0)
    mask = torch.zeros(12, 4, 4)
    mask[::2] = 1.0  # even source frames fully kept, odd ones fully greyed
    out = prepare_frames(images, 12.0, mask=mask, mask_strength=1.0)
    src = resample_indices(12, 12.0)
    for k, i in enumerate(src.tolist()):
        assert (out.frames[k] == (255 if i % 2 == 0 else 128)).all()
    half = prepare_frames(images, 12.0, mask=torch.zeros(4, 4), mask_strength=0.5)
    assert (half.frames == round(255 * 0.75)).all()


@pytest.mark.parametrize("mask", [torch.ones(4, 5), torch.ones(3, 4, 4)])
def test_masks_of_another_size_or_frame_count_name_mask(mask):
    with pytest.raises(FrameInputError) as exc:
        prepare_frames(torch.rand(25, 4, 4, 3), 25.0, mask=mask)
    assert exc.value.input_name == "mask"


def test_content_key_changes_with_any_pixel_or_setting():
    a = torch.zeros(3, 4, dtype=torch.uint8)
    b = a.clone()
    b[2, 3] = 1
    assert content_key(a, "p", 1.0) == content_key(a.clone(), "p", 1.0)
    assert len({content_key(a, "p", 1.0), content_key(b, "p", 1.0), content_key(a, "q", 1.0),
                content_key(a, "p", 2.0), content_key(a.float(), "p", 1.0)}) == 5


def test_content_cache_evicts_the_least_recently_used():
    cache = ContentCache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2


def _decoded(path):
    import av
    import numpy as np

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        rate = float(stream.average_rate)
    return torch.from_numpy(np.stack(frames)).float() / 255.0, rate


def test_a_video_file_is_decoded_straight_to_the_same_25_fps_frames(tmp_path):
    from selva_core.data.synthetic import synthetic_clip, write_video
    from selva_core.frames import prepare_video_file

    frames, audio = synthetic_clip("bounce", 0, duration=2.0, fps=12, size=32)
    path = write_video(tmp_path / "clip.mp4", frames, fps=12, audio=audio)
    images, rate = _decoded(path)
    mask = torch.zeros(len(images), 32, 32)
    mask[:, 8:24, 8:24] = 1.0
    for kw in ({}, {"duration": 1.0}, {"mask": mask, "mask_strength": 0.7}):
        direct = prepare_video_file(path, **kw)
        via_images = prepare_frames(images, rate, **kw)
        assert torch.equal(direct.frames, via_images.frames), kw
        assert direct.duration == via_images.duration
        assert direct.summary == via_images.summary
