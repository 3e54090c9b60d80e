"""The trained tiny base model shipped with the package, and the demo's listening comparison."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import selva_core.weights.bundled as bundled
from selva_core.audio.metrics import log_spectral_distance
from selva_core.data.synthetic import (
    BASE_CLASSES,
    CLASS_PROMPTS,
    HELD_OUT_CLASS,
    make_synthetic_dataset,
    synthetic_clip,
)
from selva_core.data.video import decode_frames
from selva_core.pipeline import SelvaPipeline
from selva_core.training.config import TrainConfig
from selva_core.training.demo import (
    LISTEN_DIR,
    LISTEN_GAP_S,
    REPORT_NAME,
    write_listening_comparison,
)
from selva_core.weights import WeightsError
from selva_core.weights.bundled import bundled_files, bundled_path, file_sha256

DURATION = 2.0
COMPONENTS = {"generator", "vae", "vocoder", "video_encoder", "t5"}


@pytest.fixture(scope="module")
def trained():
    return SelvaPipeline.tiny(duration=DURATION)


@pytest.fixture(scope="module")
def random_init():
    return SelvaPipeline.tiny(seed=0, duration=DURATION, trained=False)


def test_bundled_tiny_weights_match_their_registered_sha256():
    files = bundled_files("tiny_16k")
    assert set(files) == COMPONENTS
    for file in files.values():
        assert file_sha256(bundled_path(file)) == file.sha256, file.path


def test_tiny_loads_the_shipped_weights_by_default_and_random_ones_on_request(trained,
                                                                             random_init):
    shipped = load_file(str(bundled_path(bundled_files("tiny_16k")["generator"])))
    mine = trained.generator.state_dict()
    assert all(torch.equal(mine[k], v.float()) for k, v in shipped.items())
    other = random_init.generator.state_dict()
    assert not any(torch.equal(other[k], mine[k]) for k in shipped if k.endswith("qkv.weight"))
    assert trained.vae.weights_normalized and trained.vocoder.weight_norm_folded


def test_a_damaged_bundled_file_is_one_error_naming_it(tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    shutil.copytree(bundled.ASSETS_DIR, assets)
    target = assets / bundled_files("tiny_16k")["vae"].path
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setattr(bundled, "ASSETS_DIR", assets)
    with pytest.raises(WeightsError, match="vae.safetensors.*damaged"):
        SelvaPipeline.tiny(duration=DURATION)


@pytest.mark.parametrize("name", BASE_CLASSES)
def test_trained_base_renders_a_trained_class_closer_than_random_init(name, trained,
                                                                      random_init):
    frames, audio = synthetic_clip(name, 0, duration=DURATION, seed=77)  # unseen clip
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    lsd = {}
    for label, pipe in (("trained", trained), ("random", random_init)):
        features = pipe.extract_features(video, CLASS_PROMPTS[name], DURATION)
        wave = pipe.render(features, seed=0, num_steps=10)[0].numpy()
        lsd[label] = log_spectral_distance(wave, audio)
    assert lsd["trained"] < lsd["random"] - 3.0, lsd


def test_trained_base_places_the_sound_where_its_own_video_shows_the_events(trained):
    """The video reaches the generator: two unseen beep clips rendered with the same prompt
    and seed sound different, and each render follows its own clip's true audio more closely
    than the other clip's does (if the sync features stopped reaching the generator, both
    renders would be the same sound at the same moments)."""
    from selva_core.audio.sync import envelope_sync

    clips = [synthetic_clip("beep", i, duration=DURATION, seed=77) for i in range(2)]
    video = torch.stack([torch.from_numpy(f).permute(0, 3, 1, 2) for f, _ in clips])
    features = trained.extract_features(video, CLASS_PROMPTS["beep"], DURATION)
    waves = trained.render(features, seed=1, num_steps=10).numpy()
    n = min(waves.shape[-1], len(clips[0][1]))
    diff = np.linalg.norm(waves[0] - waves[1]) / np.linalg.norm(waves[0])
    assert diff > 0.5, diff
    for i, (_, true) in enumerate(clips):
        own = envelope_sync(waves[i, :n], true[:n], trained.sample_rate).corr_lag0
        other = envelope_sync(waves[1 - i, :n], true[:n], trained.sample_rate).corr_lag0
        assert own > 0.4 and own > other + 0.3, (i, own, other)


def test_listening_comparison_writes_same_length_renders_and_the_report(tmp_path, trained):
    from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter

    data = tmp_path / "data"
    make_synthetic_dataset(data, classes=("burst",), clips_per_class=1, duration=DURATION,
                           seed=3, write_wav=True)
    fork = trained.fork()
    attach_lora(fork.generator, LoRAConfig(rank=2), variant_name="tiny_16k")
    with torch.no_grad():  # a non-zero change so the adapted render differs
        for n, p in fork.generator.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    adapter = save_adapter(fork.generator, tmp_path / "a.safetensors")
    cfg = TrainConfig(variant="tiny_16k", output_dir=str(tmp_path / "out"), data_dir=str(data),
                      duration=DURATION, sample_steps=4, seed=5)
    report = write_listening_comparison(cfg, adapter, ["burst_000"], pipeline=trained)

    out = tmp_path / "out" / LISTEN_DIR
    waves = {k: sf.read(out / f"burst_000_{k}.wav")[0]
             for k in ("true", "base", "adapted", "side_by_side")}
    n = len(waves["base"])
    assert len(waves["true"]) == len(waves["adapted"]) == n
    assert len(waves["side_by_side"]) == 3 * n + 2 * round(LISTEN_GAP_S * 16000)
    # the frames as decoded from the written clip: the base follows the picture, so the
    # video codec's small changes to the frames reach the sound
    features = trained.extract_features(decode_frames(data / "burst_000.mp4"),
                                        CLASS_PROMPTS["burst"], DURATION)
    expected = trained.render(features, seed=5, num_steps=4)[0].numpy()
    assert np.abs(waves["base"] - expected).max() < 2e-4  # same seed as a plain render
    assert np.abs(waves["adapted"] - waves["base"]).max() > 1e-3
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved == report
    (row,) = report["clips"]
    assert row["clip"] == "burst_000" and row["lsd_base_db"] > 0 and row["lsd_adapted_db"] > 0
    assert row["adapted_closer"] == (row["lsd_adapted_db"] < row["lsd_base_db"])


@pytest.fixture
def train_lora_cli():
    spec = importlib.util.spec_from_file_location(
        "train_lora_cli_demo", Path(__file__).resolve().parents[1] / "train_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield module
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()


def test_demo_teaches_the_held_out_class_and_writes_the_listening_files(train_lora_cli,
                                                                        tmp_path, capsys):
    out = tmp_path / "demo"
    code = train_lora_cli.main(["--demo", "--output_dir", str(out), "--steps", "3",
                                "--warmup_steps", "1", "--val_every", "3", "--save_every", "3",
                                "--sample_steps", "2"])
    assert code == 0
    prompts = (out / "demo_data" / "prompts.txt").read_text()
    assert CLASS_PROMPTS[HELD_OUT_CLASS] in prompts
    assert not any(CLASS_PROMPTS[name] in prompts for name in BASE_CLASSES)
    report = json.loads((out / LISTEN_DIR / REPORT_NAME).read_text())
    names = [row["clip"] for row in report["clips"]]
    assert len(names) == 2 and all(n.startswith("burst_") for n in names)
    for name in names:
        for part in ("true", "base", "adapted", "side_by_side"):
            assert (out / LISTEN_DIR / f"{name}_{part}.wav").is_file()
    assert f"{LISTEN_DIR}/{names[0]}_side_by_side.wav" in capsys.readouterr().out
