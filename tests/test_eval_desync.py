"""DeSync: the full Synchformer's layout, av-benchmark's audio front end, the tiny scorer."""

from __future__ import annotations

import json

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
