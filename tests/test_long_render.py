"""render(): any duration by overlapping windows joined with an equal-power crossfade."""

from __future__ import annotations

import math

import pytest
import torch

from selva_core.pipeline import (
    SelvaPipeline,
    crossfade_curves,
    plan_windows,
    window_seed,
)
from selva_core.variants import SYNC_TOKENS_PER_SEGMENT, get_variant

STEPS = 2
WINDOW = 1.28  # seconds: short windows keep the tiny model fast
OVERLAP = 0.32
LONG = 3.2  # 2.5 windows of 1.28 s: three windows at 0, 0.96 and 1.92 s
RATE = 16000


def _frames(seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (round(seconds * 25), 3, 40, 56), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def pipe() -> SelvaPipeline:
    return SelvaPipeline.build("tiny_16k", device="cpu", seed=0)


@pytest.fixture(scope="module")
def long_features(pipe):
    return pipe.extract_features(_frames(LONG), "footsteps on gravel")


@pytest.fixture(scope="module")
def long_render(pipe, long_features):
    return pipe.render(long_features, seed=5, num_steps=STEPS, window_s=WINDOW,
                       overlap_s=OVERLAP)


# --- the plan ------------------------------------------------------------------------------------
def test_windows_start_on_sync_segments_overlap_and_end_at_the_duration():
    windows = plan_windows(LONG, WINDOW, OVERLAP, seed=5)
    assert [w.segment for w in windows] == [0, 3, 6]
    assert [round(w.start_s, 6) for w in windows] == [0.0, 0.96, 1.92]
    assert [round(w.duration_s, 6) for w in windows] == [1.28, 1.28, 1.28]
    assert windows[0].seed == 5 and len({w.seed for w in windows}) == 3
    assert [w.seed for w in windows] == [window_seed(5, k) for k in range(3)]
    for a, b in zip(windows, windows[1:]):
        assert a.start_s + a.duration_s - b.start_s >= OVERLAP - 1e-9
    assert math.isclose(windows[-1].start_s + windows[-1].duration_s, LONG)
    for d in (WINDOW, 0.9, 8.0):
        (one,) = plan_windows(d, 8.0 if d == 8.0 else WINDOW, OVERLAP)
        assert (one.start_s, one.duration_s) == (0.0, d)
    long = plan_windows(60.0, 8.0, 1.0)
    assert len(long) == 9  # the fewest windows with >= 1 s overlaps, spread evenly
    assert all(w.duration_s == 8.0 for w in long[:-1]) and 8.0 <= long[-1].duration_s < 8.32
    assert math.isclose(long[-1].start_s + long[-1].duration_s, 60.0)
    gaps = {b.segment - a.segment for a, b in zip(long, long[1:])}
    assert max(gaps) - min(gaps) <= 1 and max(gaps) * 0.32 <= 7.0
    uneven = plan_windows(10.0, 2.0, 0.5)  # last window 0.08 s longer than the others
    assert 2.0 <= uneven[-1].duration_s < 2.32
    with pytest.raises(ValueError, match="overlap_s"):
        plan_windows(20.0, 8.0, 8.0)


def test_crossfade_is_equal_power():
    fade_out, fade_in = crossfade_curves(777)
    assert torch.allclose(fade_out**2 + fade_in**2, torch.ones(777), atol=1e-6)
    assert fade_out[0] > 0.99 and fade_in[-1] > 0.99
    assert bool((fade_out[1:] < fade_out[:-1]).all())


# --- one window ----------------------------------------------------------------------------------
def test_one_window_is_exactly_sample_then_decode(pipe):
    feats = pipe.extract_features(_frames(1.0), "a dog barks")
    plain = pipe.decode(pipe.sample(feats, seed=9, num_steps=STEPS)).cpu()[:, :RATE]  # 1.0 s
    assert torch.equal(pipe.render(feats, seed=9, num_steps=STEPS), plain)
    assert torch.equal(pipe.render(feats, seed=9, num_steps=STEPS, window_s=1.0), plain)
    wave, rate = pipe.generate(_frames(1.0), "a dog barks", seed=9, num_steps=STEPS)
    assert rate == RATE and torch.equal(wave, plain)


# --- long renders --------------------------------------------------------------------------------
def test_a_long_render_has_the_length_of_the_duration(long_render):
    assert long_render.shape == (1, round(LONG * RATE))
    assert long_render.dtype == torch.float32 and long_render.device.type == "cpu"
    assert torch.isfinite(long_render).all()


def test_each_window_is_conditioned_on_its_own_span(pipe, long_features, long_render):
    windows = plan_windows(LONG, WINDOW, OVERLAP, seed=5)
    starts = [round(w.start_s * RATE) for w in windows]
    ends = [s + get_variant("tiny_16k").sequence_lengths(w.duration_s).audio_samples
            for s, w in zip(starts, windows)]
    for k, w in enumerate(windows):
        own = pipe.window_features(long_features, w)
        first = w.segment * SYNC_TOKENS_PER_SEGMENT
        assert torch.equal(own.sync_f, long_features.sync_f[:, first : first + own.sync_f.shape[1]])
        alone = pipe.decode(pipe.sample(own, seed=w.seed, num_steps=STEPS)).cpu()
        lo = 0 if k == 0 else ends[k - 1] if k + 1 == len(windows) else min(ends[k - 1],
                                                                          starts[k + 1])
        hi = starts[k + 1] if k + 1 < len(windows) else long_render.shape[1]
        assert hi > lo
        assert torch.equal(long_render[:, lo:hi], alone[:, lo - starts[k] : hi - starts[k]])


def _seam_problems(x: torch.Tensor, edges: list[int], guard: int = 400) -> list[str]:
    """Edges where the signal jumps more than 1.5 x anywhere inside the windows (an
    equal-power fade of two similar signals may reach sqrt(2) x their level), or where its
    local RMS leaves [0.5, 2] x the windows' own RMS."""
    jumps = (x[1:] - x[:-1]).abs()
    inside = torch.ones_like(x, dtype=torch.bool)
    for e in edges:
        inside[max(0, e - guard) : e + guard] = False
    own_jump = jumps[inside[1:]].max()
    rms = x[inside].square().mean().sqrt()
    problems = []
    for e in edges:
        if jumps[e - 64 : e + 64].max() > 1.5 * own_jump:
            problems.append(f"jump at {e}")
        local = x[e - guard : e + guard].square().mean().sqrt()
        if not 0.5 * rms < local < 2.0 * rms:
            problems.append(f"level at {e}")
    return problems


def _edges() -> list[int]:
    windows = plan_windows(LONG, WINDOW, OVERLAP, seed=5)
    return sorted({round(w.start_s * RATE) for w in windows[1:]}
                  | {round((w.start_s + w.duration_s) * RATE) for w in windows[:-1]})


def test_seams_show_no_discontinuity_above_the_windows_own_level(long_render):
    assert _seam_problems(long_render[0], _edges()) == []


def _smooth_decode(pipe: SelvaPipeline):
    """A stand-in decoder: a 50 Hz tone whose phase depends on the latent, so neighbouring
    windows disagree at every seam, while inside a window the signal is smooth."""
    hop = 2 * get_variant("tiny_16k").mel.hop_size

    def decode(latent: torch.Tensor) -> torch.Tensor:
        t = torch.arange(latent.shape[1] * hop, dtype=torch.float64) / RATE
        phase = float(latent.double().sum()) % (2 * math.pi)
        return (0.5 * torch.sin(2 * math.pi * 50 * t + phase)).float()[None]

    return decode


def test_seams_of_smooth_windows_stay_smooth_where_a_hard_splice_jumps(pipe, long_features):
    smooth = pipe.fork()
    smooth.decode = _smooth_decode(pipe)
    joined = smooth.render(long_features, seed=5, num_steps=STEPS, window_s=WINDOW,
                           overlap_s=OVERLAP)[0]
    assert _seam_problems(joined, _edges()) == []
    windows = plan_windows(LONG, WINDOW, OVERLAP, seed=5)
    spliced = joined.clone()
    for w in windows[1:]:  # the same windows, cut in hard at each window's start
        start = round(w.start_s * RATE)
        wave = smooth.decode(smooth.sample(smooth.window_features(long_features, w),
                                           seed=w.seed, num_steps=STEPS))[0]
        wave = wave[: spliced.shape[0] - start]
        spliced[start : start + wave.shape[0]] = wave
    assert _seam_problems(spliced, [round(w.start_s * RATE) for w in windows[1:]])


def test_progress_counts_all_windows_and_an_interruption_leaves_the_pipeline(pipe, long_features):
    seen = []
    pipe.render(long_features, seed=1, num_steps=STEPS, window_s=WINDOW, overlap_s=OVERLAP,
                progress_callback=lambda i, n: seen.append((i, n)))
    total = 3 * STEPS
    assert seen == [(i, total) for i in range(1, total + 1)]

    class Interrupted(Exception):
        pass

    def stop(i, n):
        if i == STEPS + 1:  # inside the second window
            raise Interrupted

    gen = pipe.generator
    seq, modes = gen.seq, [m.training for m in gen.modules()]
    with pytest.raises(Interrupted):
        pipe.render(long_features, seed=1, num_steps=STEPS, window_s=WINDOW, overlap_s=OVERLAP,
                    progress_callback=stop)
    assert gen.seq == seq and [m.training for m in gen.modules()] == modes


def test_the_same_seed_renders_the_same_long_clip_and_seeds_per_clip_are_batch_free(
    pipe, long_features, long_render
):
    again = pipe.render(long_features, seed=5, num_steps=STEPS, window_s=WINDOW,
                        overlap_s=OVERLAP)
    assert torch.equal(again, long_render)
    two = pipe.extract_features(torch.stack([_frames(LONG), _frames(LONG, seed=1)]),
                                ["footsteps on gravel", "rain"])
    batch = pipe.render(two, seed=[5, 6], num_steps=STEPS, window_s=WINDOW, overlap_s=OVERLAP)
    assert torch.allclose(batch[0], long_render[0], atol=1e-5)
    with pytest.raises(ValueError, match="2 seeds for 1 clips"):
        pipe.sample(long_features, seed=[1, 2], num_steps=1)


def test_render_refuses_a_duration_longer_than_the_features(pipe, long_features):
    with pytest.raises(ValueError, match="extract the features for at least"):
        pipe.render(long_features, seed=0, num_steps=1, duration=LONG + 1.0)
