"""DeSync: the full Synchformer's layout, av-benchmark's audio front end, the tiny scorer."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from selva_core.evaluation import desync as D
from selva_core.evaluation.embeddings import create_clap, frechet_distance
from selva_core.variants import get_variant


def test_the_full_synchformer_has_the_checkpoints_layout(reference_dir):
    with torch.device("meta"):
        model = D.Synchformer()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    video = json.loads((reference_dir / "synchformer_video.json").read_text())
    video = {k: tuple(v) for k, v in video.items() if k.startswith("vfeat_extractor.")}
    assert {k: v for k, v in shapes.items() if k.startswith("vfeat_extractor.")} == video
    # av-benchmark: AST on 128 mels x 66 frames -> 12 x 6 patches + CLS + distillation token;
    # 14 segments x (8 video + 6 audio) tokens + OFF + MOD = 198 positions; 21 offset classes
    assert shapes["afeat_extractor.ast.embeddings.position_embeddings"] == (1, 74, 768)
    assert shapes["afeat_extractor.ast.embeddings.patch_embeddings.projection.weight"] == (
        768, 1, 16, 16)
    assert "afeat_extractor.ast.encoder.layer.11.attention.attention.query.weight" in shapes
    assert shapes["afeat_extractor.freq_attn_agg.cls_token"] == (1, 1, 768)
    assert shapes["transformer.pos_emb_cfg.pos_emb"] == (1, 198, 768)
    assert shapes["transformer.off_head.weight"] == (21, 768)
    assert shapes["transformer.blocks.2.attn.query.weight"] == (768, 768)
    assert "transformer.blocks.3.ln1.weight" not in shapes
    assert {"vproj.weight", "aproj.weight", "transformer.OFF_tok", "transformer.MOD_tok"} <= set(
        shapes)
    assert model.cfg.min_seconds == pytest.approx(4.8)
    # av-benchmark's Synchformer has exactly these tensors (513: video 238, audio 212, sync
    # transformer 59, the two projections 2 + 2)
    groups = {}
    for key in shapes:
        groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
    assert groups == {"vfeat_extractor": 238, "afeat_extractor": 212, "transformer": 59,
                      "vproj": 2, "aproj": 2}


def test_the_audio_front_end_equals_a_librosa_mel_spectrogram():
    librosa = pytest.importorskip("librosa")
    model = D.Synchformer(D.tiny_config(get_variant("tiny_16k").video_encoder))
    wave = np.random.default_rng(0).standard_normal(10240).astype(np.float32) * 0.1
    ours = model.log_mel_segments(torch.from_numpy(wave))[0].numpy()  # (66, 128)
    # torchaudio's MelSpectrogram: reflect-centred frames, periodic Hann(400) centred in 1024
    padded = np.pad(wave, 512, mode="reflect")
    frames = np.stack([padded[i * 160: i * 160 + 1024] for i in range(65)])
    window = np.zeros(1024)
    window[312:712] = np.hanning(401)[:-1]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (65, 513)
    fb = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, htk=True, norm=None)
    mel = fb @ power.T
    expected = (np.log(mel + 1e-6) - D.MEL_MEAN) / (2 * D.MEL_STD)  # (128, 65)
    np.testing.assert_allclose(ours[:65], expected.T, atol=2e-4)
    np.testing.assert_allclose(ours[65], (0.0 - D.MEL_MEAN) / (2 * D.MEL_STD))  # zero padding


def test_desync_on_the_tiny_configuration_runs_and_is_deterministic():
    variant = get_variant("tiny_16k")
    scores = []
    for _ in range(2):
        scorer, status = D.create_scorer(variant)
        assert status["status"] == "ok"
        frames = torch.randint(0, 256, (30, 3, 48, 40), generator=torch.Generator()
                               .manual_seed(0), dtype=torch.uint8)
        video = scorer.model.video_features(scorer.prepare_frames(frames))
        assert video.shape[:2] == (2, 8)  # (30 - 16) // 8 + 1 segments of 8 tokens
        wave = np.random.default_rng(1).standard_normal(19200).astype(np.float32) * 0.1
        scores.append(scorer.score(video, wave, 16000))
    assert scores[0] == scores[1]
    grid = np.abs(np.linspace(-2, 2, 21))
    assert np.isclose(grid, scores[0]).any() or 0 <= scores[0] <= 2
    # a clip shorter than one comparison (2 segments here) has no DeSync
    assert scorer.score(video[:1], wave[:10240], 16000) is None


def test_a_missing_or_foreign_checkpoint_makes_desync_unavailable_with_the_reason(tmp_path):
    variant = get_variant("small_16k")
    scorer, status = D.create_scorer(variant, models_dir=str(tmp_path))
    assert scorer is None and status["status"] == "unavailable"
    assert D.CHECKPOINT_NAME in status["reason"] and str(tmp_path) in status["reason"]
    foreign = tmp_path / D.CHECKPOINT_NAME
    torch.save({"vfeat_extractor.cls_token": torch.zeros(1, 1, 768)}, foreign)
    scorer, status = D.create_scorer(variant, models_dir=str(tmp_path))
    assert scorer is None and "missing keys" in status["reason"]
    assert str(foreign) in status["reason"]


def test_clap_is_skipped_with_a_message_without_a_model_folder(tmp_path):
    scorer, status = create_clap(None)
    assert scorer is None and status["status"] == "off" and "clap_model" in status["reason"]
    scorer, status = create_clap(str(tmp_path / "nope"))
    assert scorer is None and status["status"] == "unavailable"


def test_frechet_distance_of_two_gaussians_by_hand():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 1))
    a = (a - a.mean()) / a.std()  # exactly mean 0, std 1
    b = 3.0 + 2.0 * a  # mean 3, std 2
    # (mu_a - mu_b)^2 + (s_a - s_b)^2 for 1-D Gaussians = 9 + 1
    assert frechet_distance(a, b) == pytest.approx(10.0, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_is_exact_and_quiet_with_fewer_clips_than_dimensions():
    # 3 embeddings of 64 dims: singular covariances, the usual case of an evaluation. A shift
    # of every row leaves the covariance as it is, so the distance is the shift's squared norm.
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 64))
    shift = 0.1 * rng.standard_normal(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's sqrtm warned "Matrix is singular" here
        assert frechet_distance(a, a + shift) == pytest.approx((shift**2).sum(), rel=1e-9)
        assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def _av_benchmark_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """av-benchmark's documented video steps with torchvision: Resize(size, bicubic) on uint8
    frames, CenterCrop(size), ToDtype(float32, scale), Normalize(0.5, 0.5)."""
    v2 = pytest.importorskip("torchvision.transforms.v2")
    steps = v2.Compose([
        v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    return steps(frames)


@pytest.mark.parametrize(("height", "width"), [(480, 854), (37, 50), (50, 37), (32, 32)])
def test_frames_are_prepared_as_torchvision_does_for_av_benchmark(height, width):
    model = D.Synchformer(D.tiny_config(get_variant("tiny_16k").video_encoder))
    scorer = D.DesyncScorer(model, "tiny")
    frames = torch.randint(0, 256, (3, 3, height, width), generator=torch.Generator()
                           .manual_seed(0), dtype=torch.uint8)
    ours = scorer.prepare_frames(frames)
    expected = _av_benchmark_frames(frames, scorer.cfg.video.frame_size)
    assert ours.shape == expected.shape
    # torchvision resizes uint8 in two fixed-point passes, rounding between them; one float
    # pass here: under half a grey level on average (a grey level is 2/255 on this scale)
    diff = (ours - expected).abs().flatten()
    assert diff.mean() < 0.5 * 2 / 255  # under half a grey level on average
    assert torch.quantile(diff, 0.99) <= 2 * 2 / 255 + 1e-6  # two grey levels


def test_resize_keeps_torchvisions_truncated_long_side():
    model = D.Synchformer(D.tiny_config(get_variant("tiny_16k").video_encoder))
    scorer = D.DesyncScorer(model, "tiny")
    # 854x480 at 224: torchvision gives 398 wide (int(224 * 854 / 480) = 398, not 399)
    seen = {}
    original = D.F.interpolate

    def spy(x, size=None, **kw):
        seen["size"] = size
        return original(x, size=size, **kw)

    object.__setattr__(scorer, "cfg", D.replace(scorer.cfg, video=D.replace(
        scorer.cfg.video, frame_size=224)))
    D.F.interpolate = spy
    try:
        scorer.prepare_frames(torch.zeros(1, 3, 480, 854, dtype=torch.uint8))
    finally:
        D.F.interpolate = original
    assert seen["size"] == (224, 398)


def test_desync_logits_equal_av_benchmarks_computation_path():
    """Seeded tiny Synchformer: the scorer's logits equal av-benchmark's documented path
    (torchvision frames; 16-frame video / 10240-sample audio segments of the window cut from
    the start; the first and the last N segments of each stream compared)."""
    scorer, status = D.create_scorer(get_variant("tiny_16k"))
    model, n = scorer.model, scorer.cfg.segments
    frames = torch.randint(0, 256, (60, 3, 36, 64), generator=torch.Generator()
                           .manual_seed(3), dtype=torch.uint8)
    duration = 60 / 25
    wave = np.random.default_rng(4).standard_normal(int(16000 * duration) + 3000) * 0.1
    wave = wave.astype(np.float32)
    ours = scorer.comparisons(model.video_features(scorer.prepare_frames(frames)), wave, 16000)

    # av-benchmark: video (T - 16) // 8 + 1 segments of the transformed frames
    x = _av_benchmark_frames(frames, scorer.cfg.video.frame_size)
    count = (x.shape[0] - 16) // 8 + 1
    vis = model.video_features(x[: 16 + 8 * (count - 1)])
    # audio read to the clip's length (longer audio cut, shorter refused), segments of 10240
    audio = torch.from_numpy(wave[: int(16000 * duration)])
    a_count = (audio.shape[0] - 10240) // 5120 + 1
    aud = model.audio_features(audio[: 10240 + 5120 * (a_count - 1)])
    assert vis.shape[0] == aud.shape[0] == 6
    expected = [model.offset_logits(vis[None, :n], aud[None, :n])[0],
                model.offset_logits(vis[None, -n:], aud[None, -n:])[0]]
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)
    # audio shorter than the video's segments is refused, not scored on fewer segments
    assert scorer.comparisons(vis, wave[: (16 + 8 * 5) * 640 - 1], 16000) is None
