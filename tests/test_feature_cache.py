"""Feature cache: contents per window, padding flags, npz import, reuse and invalidation.

Most tests drive the cache with ``RecordingExtractor``, a small stand-in with the pipeline's
methods whose outputs reveal their inputs (sync token = mean grey level of the segment's
frames, latent mean = RMS of each latent frame's audio), so the tests can check exactly which
frames and samples went into each window, and count extraction calls. One test runs the real
``SelvaPipeline.tiny()`` end to end.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from selva_core.data import BadClipError, EmptyDatasetError, SkipReport, scan_dataset
from selva_core.data.synthetic import write_tone_clip
from selva_core.feature_cache import (
    TENSOR_KEYS,
    CacheStats,
    FeatureCacheSettings,
    build_feature_cache,
    read_feature_cache,
)
from selva_core.variants import SYNC_TOKENS_PER_SEGMENT, get_variant, num_sync_segments

SR = 16000
D = 1.92  # training window: 48 frames = 5 sync segments = 40 tokens; 60 latents
SEQ = get_variant("tiny_16k").sequence_lengths(D)


class RecordingExtractor:
    """Pipeline stand-in: deterministic, input-revealing outputs; counts every call."""

    def __init__(self, variant: str = "tiny_16k"):
        self.variant = get_variant(variant)
        self.calls: Counter[str] = Counter()
        self.starts: list[float] = []

    def _text(self, prompt: str) -> torch.Tensor:
        seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
        g = torch.Generator().manual_seed(seed)
        return torch.randn(1, 77, self.variant.generator.text_dim, generator=g)

    def encode_prompt(self, prompts):
        self.calls["encode_prompt"] += 1
        return self._text(prompts[0]), None, None

    def extract_features(self, frames, prompt, duration=None):
        self.calls["extract_features"] += 1
        n = frames.shape[0] if duration is None else int(duration * 25)
        segments = num_sync_segments(min(n, frames.shape[0]))
        grey = frames.float().mean(dim=(1, 2, 3))
        values = [grey[8 * s: 8 * s + 16].mean() for s in range(segments)]
        sync = torch.tensor(values).repeat_interleave(SYNC_TOKENS_PER_SEGMENT)
        width = self.variant.generator.sync_dim
        return SimpleNamespace(sync_f=sync[None, :, None].expand(1, -1, width),
                               text_clip_f=self._text(prompt))

    def encode_audio(self, waveform, sample_rate):
        self.calls["encode_audio"] += 1
        assert sample_rate == self.variant.sample_rate
        hop2 = self.variant.mel.hop_size * 2
        chunks = waveform[0].reshape(-1, hop2)
        rms = chunks.pow(2).mean(dim=1).sqrt()
        c = self.variant.generator.latent_dim
        return rms[None, :, None].expand(1, -1, c), torch.full((1, chunks.shape[0], c), 0.5)


def settings(**kw) -> FeatureCacheSettings:
    return FeatureCacheSettings(**{"variant": "tiny_16k", "duration": D, **kw})


def build(folder, cache, extractor=None, report=None, on_bad_clip="stop", **kw):
    extractor = extractor or RecordingExtractor()
    clips = scan_dataset(folder, on_bad_clip=on_bad_clip, report=report)
    examples = build_feature_cache(clips, extractor, cache, settings(**kw),
                                   on_bad_clip=on_bad_clip, progress=False, report=report)
    return examples, extractor


def wav(path, seconds, freq=440.0, amp=0.3):
    t = np.arange(round(seconds * SR)) / SR
    sf.write(path, (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR,
             subtype="FLOAT")


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


def test_cached_file_holds_the_contract_tensors_and_metadata(data, tmp_path):
    write_tone_clip(data / "dog.mp4", duration=2.2)
    (data / "prompts.txt").write_text("dog: a dog barks\n")
    (ex,) = build(data, tmp_path / "cache", window_policy="first")[0]
    t = ex.load()
    assert set(t) == set(TENSOR_KEYS)
    v = get_variant("tiny_16k")
    assert t["latent_mean"].shape == t["latent_std"].shape == (SEQ.latent, v.generator.latent_dim)
    assert t["sync_f"].shape == (SEQ.sync, v.generator.sync_dim)
    assert t["sync_valid"].dtype == torch.bool and t["sync_valid"].shape == (SEQ.sync,)
    assert t["text_clip_f"].shape == (77, v.generator.text_dim)
    assert t["audio_valid_samples"].dtype == torch.int64 and t["audio_valid_samples"].ndim == 0
    assert all(t[k].dtype == torch.float32 for k in ("latent_mean", "sync_f", "text_clip_f"))
    assert ex.name == "dog#w0" and ex.prompt == "a dog barks" and ex.path.suffix == ".safetensors"
    meta = ex.metadata()
    assert meta["name"] == "dog#w0" and meta["prompt"] == "a dog barks"
    assert meta["variant"] == "tiny_16k" and meta["window_index"] == "0"
    assert float(meta["duration"]) == D and meta["cache_key"] == ex.cache_key
    assert meta["source"].endswith("dog.mp4") and meta["format_version"] == "1"
    assert bool(t["sync_valid"].all())  # 2.2 s clip fills the 1.92 s window


def test_all_windows_cut_the_clip_and_carry_each_windows_frames_and_audio(data, tmp_path):
    write_tone_clip(data / "long.mp4", duration=5.0)
    wav(data / "long.wav", 5.0)
    examples, ext = build(data, tmp_path / "cache", window_policy="all")
    assert [e.name for e in examples] == ["long#w0", "long#w1", "long#w2"]
    assert [e.window_start for e in examples] == pytest.approx([0.0, 1.92, 3.84])
    w1 = examples[1].load()
    # first sync segment of window 1 = frames 48..63 (grey 8*i mod 256 -> 128..248)
    expected = np.mean([(8 * i) % 256 for i in range(48, 64)])
    assert float(w1["sync_f"][0, 0]) == pytest.approx(expected, abs=3)
    assert bool(w1["sync_valid"].all()) and int(w1["audio_valid_samples"]) == SEQ.audio_samples
    # last window: 1.16 s of content (>= half a window) -> kept, padded, flagged
    w2 = examples[2].load()
    frames = int(1.16 * 25)
    valid = SYNC_TOKENS_PER_SEGMENT * num_sync_segments(frames)
    assert w2["sync_valid"].tolist() == [True] * valid + [False] * (SEQ.sync - valid)
    assert int(w2["audio_valid_samples"]) == round(1.16 * SR)
    real_latents = round(1.16 * SR) // 512
    assert float(w2["latent_mean"][: real_latents, 0].min()) > 0.15  # tone RMS ~0.21
    assert float(w2["latent_mean"][real_latents + 1:].abs().max()) == 0.0  # silence padding
    assert ext.calls["extract_features"] == 3 and ext.calls["encode_audio"] == 3


def test_first_window_policy_keeps_only_the_start_and_says_so(data, tmp_path, caplog):
    write_tone_clip(data / "long.mp4", duration=5.0)
    with caplog.at_level(logging.INFO, logger="selva_core.feature_cache"):
        examples, _ = build(data, tmp_path / "cache", window_policy="first")
    assert [e.name for e in examples] == ["long#w0"]
    assert any("cover 1.92 s of 5.0" in r.getMessage() for r in caplog.records)


def test_short_clip_is_padded_with_silence_and_missing_sync_flagged(data, tmp_path):
    write_tone_clip(data / "short.mp4", duration=1.0, with_audio=False)
    wav(data / "short.wav", 1.0)
    (ex,) = build(data, tmp_path / "cache")[0]
    t = ex.load()
    valid = SYNC_TOKENS_PER_SEGMENT * num_sync_segments(25)  # 25 frames -> 2 segments
    assert valid == 16
    assert t["sync_valid"].tolist() == [True] * valid + [False] * (SEQ.sync - valid)
    assert int(t["audio_valid_samples"]) == SR
    assert float(t["latent_mean"][SR // 512 + 1:].abs().max()) == 0.0
    assert float(t["sync_f"][valid:].abs().max()) == 0.0  # placeholders, flagged invalid


def test_drop_policy_skips_short_clips_with_a_reason(data, tmp_path):
    write_tone_clip(data / "short.mp4", duration=1.0)
    write_tone_clip(data / "long.mp4", duration=2.5)
    report = SkipReport()
    examples, _ = build(data, tmp_path / "cache", report=report, on_bad_clip="skip",
                        pad_policy="drop")
    assert [e.name for e in examples] == ["long#w0"]
    assert len(report) == 1 and "short.mp4" in report.lines()[0]
    assert "pad_policy is 'drop'" in report.lines()[0]


def test_npz_clip_takes_sync_from_the_file_and_text_from_the_prompt(data, tmp_path):
    tokens = np.random.default_rng(0).normal(size=(1, 72, 64)).astype(np.float32)  # 3.2 s
    np.savez(data / "cat.npz", sync_features=tokens, duration=np.array(3.2),
             prompt=np.array("a cat meows"), clip_features=np.zeros((1, 25, 64), np.float32))
    wav(data / "cat.wav", 3.2)
    examples, ext = build(data, tmp_path / "cache", window_policy="all")
    assert [e.name for e in examples] == ["cat#w0", "cat#w1"]
    assert examples[0].prompt == "a cat meows"
    w0, w1 = examples[0].load(), examples[1].load()
    np.testing.assert_array_equal(w0["sync_f"].numpy(), tokens[0, :40])
    np.testing.assert_array_equal(w1["sync_f"][:24].numpy(), tokens[0, 48:72])  # from 1.92 s
    assert int(w1["sync_valid"].sum()) == 24 and not bool(w1["sync_valid"][24:].any())
    assert ext.calls["extract_features"] == 0 and ext.calls["encode_prompt"] == 2
    np.testing.assert_array_equal(w0["text_clip_f"].numpy(), ext._text("a cat meows")[0].numpy())


def test_npz_of_another_width_is_a_bad_clip(data, tmp_path):
    np.savez(data / "cat.npz", sync_features=np.zeros((1, 40, 768), np.float32))
    wav(data / "cat.wav", 2.0)
    write_tone_clip(data / "ok.mp4", duration=2.0)
    report = SkipReport()
    examples, _ = build(data, tmp_path / "cache", report=report, on_bad_clip="skip")
    assert [e.name for e in examples] == ["ok#w0"]
    assert "cat.npz: its sync features are 768 wide but variant 'tiny_16k' expects 64" in (
        report.lines()[0])


def test_rerun_reuses_every_file_without_extracting(data, tmp_path):
    write_tone_clip(data / "a.mp4", duration=4.0)
    write_tone_clip(data / "b.mp4", duration=2.0)
    first, ext1 = build(data, tmp_path / "cache", window_policy="all")
    assert ext1.calls["extract_features"] == 3 and not any(e.reused for e in first)
    stats = CacheStats()
    clips = scan_dataset(data, on_bad_clip="stop")
    ext2 = RecordingExtractor()
    second = build_feature_cache(clips, ext2, tmp_path / "cache", settings(window_policy="all"),
                                 progress=False, stats=stats)
    assert sum(ext2.calls.values()) == 0
    assert [e.path for e in second] == [e.path for e in first] and all(e.reused for e in second)
    assert (stats.reused, stats.extracted) == (3, 0)


def test_warm_rerun_decides_reuse_before_decoding_anything(data, tmp_path, monkeypatch):
    import selva_core.window_features as fc  # where the media are decoded

    write_tone_clip(data / "a.mp4", duration=4.0)
    write_tone_clip(data / "b.mp4", duration=2.0, with_audio=False)
    wav(data / "b.wav", 2.0)
    first, _ = build(data, tmp_path / "cache", window_policy="all")
    cold = CacheStats()
    clips = scan_dataset(data, on_bad_clip="stop")  # probing is the scan's job, not decoding
    build_feature_cache(clips, RecordingExtractor(), tmp_path / "cold",
                        settings(window_policy="all"), progress=False, stats=cold)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a warm rerun decoded media")

    for name in ("load_mono", "decode_frames", "probe_video", "read_feature_npz"):
        monkeypatch.setattr(fc, name, no_decoding)
    warm = CacheStats()
    ext = RecordingExtractor()
    again = build_feature_cache(clips, ext, tmp_path / "cache", settings(window_policy="all"),
                                progress=False, stats=warm)
    assert sum(ext.calls.values()) == 0
    assert [(e.path, e.name, e.window_start) for e in again] == \
        [(e.path, e.name, e.window_start) for e in first]
    assert (warm.reused, warm.extracted, warm.windows) == (len(first), 0, len(first))
    assert (warm.seconds_used, warm.seconds_left_out) == (cold.seconds_used,
                                                          cold.seconds_left_out)
    # a changed input still decodes (and the patched decoders say so)
    wav(data / "b.wav", 2.0, amp=0.2)
    with pytest.raises(AssertionError, match="decoded media"):
        build_feature_cache(scan_dataset(data, on_bad_clip="stop"), ext, tmp_path / "cache",
                            settings(window_policy="all"), progress=False)


def test_a_runs_cache_is_read_back_without_a_pipeline(data, tmp_path):
    write_tone_clip(data / "a.mp4", duration=4.0)
    write_tone_clip(data / "b.mp4", duration=2.0)
    (data / "prompts.txt").write_text("a: a tone\nb: another tone\n")
    built, _ = build(data, tmp_path / "cache", window_policy="all")
    back = read_feature_cache(tmp_path / "cache")
    assert [(e.name, e.path, e.prompt, e.cache_key) for e in back] == \
        [(e.name, e.path, e.prompt, e.cache_key) for e in built]
    assert [e.name for e in read_feature_cache(tmp_path / "cache", names={"b"})] == ["b#w0"]
    built[0].path.write_bytes(b"damaged")  # a clip with a damaged window is left out whole
    assert {e.name.split("#")[0] for e in read_feature_cache(tmp_path / "cache")} == {"b"}


@pytest.mark.parametrize("change", ["video_byte", "audio_file", "prompt", "duration",
                                    "variant", "window_policy", "model_tag"])
def test_a_changed_input_or_setting_extracts_again(data, tmp_path, change):
    write_tone_clip(data / "a.mp4", duration=2.5)
    write_tone_clip(data / "b.mp4", duration=2.5, with_audio=False)
    wav(data / "b.wav", 2.5)
    (data / "prompts.txt").write_text("a: first prompt\nb: other prompt\n")
    cache = tmp_path / "cache"
    before, _ = build(data, cache)
    kw: dict = {}
    extractor = RecordingExtractor()
    expect_a, expect_b = True, True  # which clips must be re-extracted
    if change == "video_byte":
        raw = bytearray((data / "a.mp4").read_bytes())
        at = raw.index(b"Lavc")  # encoder tag in the MPEG-4 header: decodes the same
        raw[at + 1] = ord("X")
        (data / "a.mp4").write_bytes(bytes(raw))
        expect_b = False
    elif change == "audio_file":
        wav(data / "b.wav", 2.5, amp=0.2)
        expect_a = False
    elif change == "prompt":
        (data / "prompts.txt").write_text("a: a changed prompt\nb: other prompt\n")
        expect_b = False
    elif change == "duration":
        kw["duration"] = 2.24
    elif change == "variant":
        kw["variant"] = "small_16k"
        extractor = RecordingExtractor("small_16k")
    elif change == "window_policy":
        kw["window_policy"] = "first"  # same windows, but the setting is part of the key
    elif change == "model_tag":
        kw["model_tag"] = "tiny seed 1"
    after, ext = build(data, cache, extractor=extractor, **kw)
    redone = {e.name.split("#")[0] for e in after if not e.reused}
    assert redone == {n for n, flag in (("a", expect_a), ("b", expect_b)) if flag}
    assert ext.calls["encode_audio"] == len(redone)
    old = {e.name: e.path for e in before}
    for e in after:
        assert (e.path == old[e.name]) == e.reused


def test_damaged_cache_file_is_extracted_again(data, tmp_path, caplog):
    write_tone_clip(data / "a.mp4", duration=2.0)
    (ex,) = build(data, tmp_path / "cache")[0]
    ex.path.write_bytes(ex.path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        (again,), ext = build(data, tmp_path / "cache")
    assert not again.reused and ext.calls["encode_audio"] == 1
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert again.load()["latent_mean"].shape == (SEQ.latent, 8)


def _silent(data):
    write_tone_clip(data / "bad.mp4", duration=2.0, with_audio=False)
    sf.write(data / "bad.wav", np.zeros(2 * SR, np.float32), SR)
    return "bad.wav: the audio is silent"


def _nan(data):
    write_tone_clip(data / "bad.mp4", duration=2.0, with_audio=False)
    x = np.full(2 * SR, 0.1, np.float32)
    x[500] = np.nan
    sf.write(data / "bad.wav", x, SR, subtype="FLOAT")
    return "bad.wav: the audio contains NaN"


def _silent_track(data):
    write_tone_clip(data / "bad.mp4", duration=2.0, amplitude=0.0)
    return "bad.mp4: the audio is silent"


@pytest.mark.parametrize("make", [_silent, _nan, _silent_track])
def test_bad_audio_content_is_skipped_or_stops_at_extraction(data, tmp_path, make):
    write_tone_clip(data / "good.mp4", duration=2.0)
    needle = make(data)
    report = SkipReport()
    examples, _ = build(data, tmp_path / "c1", report=report, on_bad_clip="skip")
    assert [e.name for e in examples] == ["good#w0"]
    assert len(report) == 1 and needle in report.lines()[0]
    with pytest.raises(BadClipError, match=needle):
        build(data, tmp_path / "c2", on_bad_clip="stop")


def test_no_example_left_is_an_error(data, tmp_path):
    _silent(data)
    with pytest.raises(EmptyDatasetError, match="no training examples"):
        build(data, tmp_path / "cache", on_bad_clip="skip", report=SkipReport())


def test_pipeline_of_another_variant_is_refused(data, tmp_path):
    write_tone_clip(data / "a.mp4", duration=2.0)
    clips = scan_dataset(data, on_bad_clip="stop")
    with pytest.raises(ValueError, match="pipeline is variant 'small_16k'"):
        build_feature_cache(clips, RecordingExtractor("small_16k"), tmp_path / "c",
                            settings(), progress=False)


@pytest.mark.parametrize("kw, needle", [
    ({"window_policy": "middle"}, "window_policy"),
    ({"pad_policy": "zero"}, "pad_policy"),
    ({"duration": 0.3}, "too short"),
    ({"frame_size": 224}, "frame_size 224 does not match"),
    ({"variant": "nope"}, "unknown variant"),
])
def test_bad_settings_are_rejected(kw, needle):
    with pytest.raises(ValueError, match=needle):
        settings(**kw)


def test_tiny_pipeline_end_to_end_matches_direct_extraction(data, tmp_path):
    pipeline_mod = pytest.importorskip("selva_core.pipeline")
    pipe = pipeline_mod.SelvaPipeline.tiny(seed=0, trained=False)
    write_tone_clip(data / "a.mp4", duration=4.2, size=48)
    clips = scan_dataset(data, on_bad_clip="stop")
    cfg = settings(window_policy="all", model_tag="tiny seed 0")
    examples = build_feature_cache(clips, pipe, tmp_path / "cache", cfg, progress=False)
    assert [e.name for e in examples] == ["a#w0", "a#w1"]
    from selva_core.data.audio import load_mono
    from selva_core.data.video import decode_frames

    w1 = examples[1].load()
    frames = decode_frames(data / "a.mp4", start=1.92, num_frames=48)
    direct = pipe.extract_features(frames, clips[0].prompt, duration=1.94)
    torch.testing.assert_close(w1["sync_f"], direct.sync_f[0].float())
    torch.testing.assert_close(w1["text_clip_f"], direct.text_clip_f[0].float())
    wave = load_mono(data / "a.mp4", SR, from_video=True)[round(1.92 * SR):]
    wave = np.pad(wave, (0, max(0, SEQ.audio_samples - len(wave))))[: SEQ.audio_samples]
    moments = pipe.encode_audio(torch.from_numpy(wave)[None], SR)
    torch.testing.assert_close(w1["latent_mean"], moments.mean[0].float())  # raw moments
    torch.testing.assert_close(w1["latent_std"], moments.std[0].float())
    again = build_feature_cache(clips, pipe, tmp_path / "cache", cfg, progress=False)
    assert all(e.reused for e in again)


def test_a_conditions_window_reads_no_sound_is_reused_and_keyed_apart_from_training(
        data, tmp_path, monkeypatch):
    import json

    from safetensors import safe_open

    import selva_core.window_features as wf
    from selva_core.feature_cache import CONDITION_KEYS, MOTION_KEY, clip_conditions

    write_tone_clip(data / "dog.mp4", duration=2.2)
    (clip,) = scan_dataset(data, on_bad_clip="stop")

    def no_sound(*args, **kwargs):
        raise AssertionError("a conditions window decoded the sound")

    monkeypatch.setattr(wf, "load_mono", no_sound)
    ext, v = RecordingExtractor(), get_variant("tiny_16k")
    feats = clip_conditions(ext, clip, settings(latents=False), tmp_path / "feats")
    assert feats.sync_f.shape == (1, SEQ.sync, v.generator.sync_dim)
    assert feats.text_clip_f.shape == (1, 77, v.generator.text_dim)
    assert feats.duration == D and feats.prompts == [clip.prompt]
    assert len(json.loads(feats.extra[MOTION_KEY])) == wf.condition_frame_count(D)
    (path,) = (tmp_path / "feats").glob("*.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(CONDITION_KEYS)
    again_ext = RecordingExtractor()
    again = clip_conditions(again_ext, clip, settings(latents=False), tmp_path / "feats")
    assert sum(again_ext.calls.values()) == 0 and torch.equal(again.sync_f, feats.sync_f)
    monkeypatch.undo()
    (example,) = build_feature_cache([clip], RecordingExtractor(), tmp_path / "feats",
                                     settings(window_policy="first"), progress=False)
    assert example.path != path and not example.reused  # its own key, its own file
    torch.testing.assert_close(example.load()["sync_f"], feats.sync_f[0])  # the same frames
