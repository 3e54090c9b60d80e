"""SelvaPipeline (tiny variant, no downloads) and the ConditionFeatures file format."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from selva_core.features import ConditionFeatures
from selva_core.pipeline import SelvaPipeline
from selva_core.variants import VARIANTS, WeightFile, get_variant
from selva_core.weights import WeightsError, build_component, sidecar_path

DURATION = 1.0  # seconds: 2 sync windows, 32 latent tokens at 16 kHz
STEPS = 2


def _frames(num: int = 25, seed: int = 0, size: tuple[int, int] = (40, 56)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (num, 3, *size), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def pipe() -> SelvaPipeline:
    return SelvaPipeline.tiny(seed=0, duration=DURATION, trained=False)


@pytest.fixture(scope="module")
def features(pipe) -> ConditionFeatures:
    return pipe.extract_features(_frames(), "a dog barks", duration=DURATION)


# --- ConditionFeatures ----------------------------------------------------------------------------
def _features(batch: int = 2, clip: bool = False) -> ConditionFeatures:
    g = torch.Generator().manual_seed(3)
    return ConditionFeatures(
        text_clip_f=torch.randn(batch, 77, 64, generator=g),
        sync_f=torch.randn(batch, 16, 64, generator=g),
        clip_f=torch.randn(batch, 8, 64, generator=g) if clip else None,
        duration=1.0,
        prompts=["un chien aboie: «wouf»", "rain on a tin roof"][:batch],
        variant="tiny_16k",
        extra={"source": "clip.mp4"},
    )


@pytest.mark.parametrize("with_clip", [False, True])
def test_features_round_trip_through_safetensors(tmp_path, with_clip):
    feats = _features(clip=with_clip)
    path = feats.save(tmp_path / "sub" / "f.safetensors")
    back = ConditionFeatures.load(path)
    assert torch.equal(back.text_clip_f, feats.text_clip_f)
    assert torch.equal(back.sync_f, feats.sync_f)
    assert (back.clip_f is None) == (not with_clip)
    if with_clip:
        assert torch.equal(back.clip_f, feats.clip_f)
    assert back.prompts == feats.prompts and back.prompt == feats.prompts[0]
    assert (back.duration, back.variant, back.extra) == (1.0, "tiny_16k", {"source": "clip.mp4"})
    assert [p.name for p in path.parent.iterdir()] == ["f.safetensors"]  # no temporary left


def test_features_load_rejects_a_foreign_safetensors_file(tmp_path):
    save_file({"sync_f": torch.zeros(1, 8, 4)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"x\.safetensors is not a SelVA condition-features"):
        ConditionFeatures.load(tmp_path / "x.safetensors")


def test_features_reject_inconsistent_batches_and_prompts():
    with pytest.raises(ValueError, match="batch size"):
        ConditionFeatures(torch.zeros(2, 77, 4), torch.zeros(1, 8, 4), 1.0, ["a", "b"], "v")
    with pytest.raises(ValueError, match="2 clips but 1 prompts"):
        ConditionFeatures(torch.zeros(2, 77, 4), torch.zeros(2, 8, 4), 1.0, ["a"], "v")


def test_features_to_casts_floating_tensors():
    moved = _features(clip=True).to("cpu", torch.float64)
    assert moved.sync_f.dtype == moved.clip_f.dtype == moved.text_clip_f.dtype == torch.float64


# --- tiny pipeline: end to end --------------------------------------------------------------------
def test_frames_and_prompt_to_waveform_with_the_variant_lengths(pipe, features):
    seq = get_variant("tiny_16k").sequence_lengths(DURATION)
    assert features.sync_f.shape == (1, seq.sync, 64)
    assert features.text_clip_f.shape == (1, 77, 64)
    assert features.clip_f is None and features.duration == DURATION
    latent = pipe.sample(features, seed=0, num_steps=STEPS)
    assert latent.shape == (1, seq.latent, 8)
    wave = pipe.decode(latent)
    assert wave.shape == (1, seq.audio_samples) and wave.dtype == torch.float32
    assert pipe.sample_rate == 16000
    assert torch.isfinite(wave).all() and wave.abs().max() <= 1.0
    assert wave.std() > 1e-3  # a random model still makes a non-trivial signal


def test_same_seed_same_audio_other_seed_differs(pipe, features):
    latents = [pipe.sample(features, seed=s, num_steps=STEPS) for s in (7, 7, 8)]
    a, b, c = pipe.decode(torch.cat(latents)).unbind(0)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert a.std() > 1e-3 and c.std() > 1e-3  # audible, not a constant


def test_negative_prompt_changes_the_result(pipe, features):
    plain = pipe.sample(features, seed=1, num_steps=STEPS)
    negative = pipe.sample(features, seed=1, num_steps=STEPS, negative_prompt="loud music")
    blank = pipe.sample(features, seed=1, num_steps=STEPS, negative_prompt="  ")
    assert (plain - negative).abs().max() > 1e-3
    assert torch.equal(plain, blank)  # an empty negative prompt means "none"


def test_prompt_steers_the_features(pipe):
    a = pipe.extract_features(_frames(), "a dog barks")
    b = pipe.extract_features(_frames(), "an engine starts")
    assert (a.sync_f - b.sync_f).abs().max() > 1e-4
    assert (a.text_clip_f - b.text_clip_f).abs().max() > 1e-4


def test_a_batch_of_clips_matches_clips_one_by_one(pipe):
    frames = torch.stack([_frames(seed=1), _frames(seed=2)])
    prompts = ["a dog barks", "heavy rain falls on a metal roof at night"]  # T5 pads row 0
    batch = pipe.extract_features(frames, prompts)
    assert batch.prompts == prompts and batch.sync_f.shape[0] == 2
    for i in range(2):
        one = pipe.extract_features(frames[i], prompts[i])
        assert torch.allclose(batch.sync_f[i], one.sync_f[0], atol=1e-5)
        assert torch.allclose(batch.text_clip_f[i], one.text_clip_f[0], atol=1e-6)


def test_progress_callback_sees_every_step(pipe, features):
    seen = []
    pipe.sample(features, seed=0, num_steps=3, progress_callback=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_generate_returns_cpu_waveform_and_rate(pipe):
    wave, rate = pipe.generate(_frames(), "a dog barks", seed=0, num_steps=STEPS)
    assert rate == 16000 and wave.device.type == "cpu"
    assert wave.shape == (1, get_variant("tiny_16k").render_samples(DURATION))


def test_tiny_is_deterministic_given_the_seed_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = (SelvaPipeline.tiny(seed=s, duration=DURATION, trained=False) for s in (4, 4, 5))
    assert (a.decode(torch.ones(1, 4, 8)) - c.decode(torch.ones(1, 4, 8))).abs().max() > 1e-3
    assert torch.equal(torch.get_rng_state(), state)
    for name in ("generator", "video_encoder", "vae", "vocoder", "clip_text", "t5"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    ga, gc = a.generator.state_dict(), c.generator.state_dict()
    assert any(not torch.equal(ga[k], gc[k]) for k in ga)


# --- frames ---------------------------------------------------------------------------------------
def test_prepare_sync_frames_squashes_to_frame_size_in_minus_one_to_one(pipe):
    size = get_variant("tiny_16k").video_encoder.frame_size
    black_white = torch.zeros(2, 3, 3, 50, 90, dtype=torch.uint8)
    black_white[:, 1] = 255
    out = pipe.prepare_sync_frames(black_white)
    assert out.shape == (2, 3, 3, size, size) and out.dtype == torch.float32
    assert torch.all(out[:, 0] == -1.0) and torch.all(out[:, 1] == 1.0)
    single = pipe.prepare_sync_frames(_frames(5))
    assert single.shape == (5, 3, size, size)
    assert single.min() >= -1.0 and single.max() <= 1.0
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        pipe.prepare_sync_frames(torch.zeros(5, 4, 8, 8, dtype=torch.uint8))


def test_long_footage_is_cut_and_a_few_missing_frames_are_padded(pipe):
    seq = get_variant("tiny_16k").sequence_lengths(DURATION)
    long = pipe.extract_features(_frames(60), "x", duration=DURATION)
    exact = pipe.extract_features(_frames(60)[:24], "x", duration=DURATION)
    assert long.sync_f.shape[1] == seq.sync
    assert torch.allclose(long.sync_f, exact.sync_f, atol=1e-6)  # only 24 frames are used
    padded = pipe.extract_features(_frames(22), "x", duration=DURATION)
    assert padded.sync_f.shape[1] == seq.sync
    with pytest.raises(ValueError, match="18 frames .* too few"):
        pipe.extract_features(_frames(18), "x", duration=DURATION)


def test_sampling_a_shorter_duration_uses_the_first_tokens(pipe):
    feats = pipe.extract_features(_frames(50), "rain", duration=2.0)
    short = pipe.sample(feats, seed=0, num_steps=1, duration=DURATION)
    assert short.shape[1] == get_variant("tiny_16k").sequence_lengths(DURATION).latent
    with pytest.raises(ValueError, match="extract the features for at least 3 s"):
        pipe.sample(feats, seed=0, num_steps=1, duration=3.0)


def test_generator_stays_trainable_after_sampling_another_duration(pipe):
    feats = pipe.extract_features(_frames(50), "rain", duration=2.0)
    latent = pipe.sample(feats, seed=0, num_steps=1)  # rebuilds RoPE tables for 2 s
    assert not latent.is_inference() and not feats.sync_f.is_inference()
    gen = pipe.generator
    seq = gen.seq
    x = torch.randn(1, seq.latent, 8)
    clip0, sync0, _ = gen.empty_conditions(1)
    flow = gen(x, clip0, sync0, feats.text_clip_f, torch.tensor([0.5]))
    flow.square().mean().backward()  # would fail on inference-mode RoPE tables
    assert gen.final_layer.conv.weight.grad is not None
    gen.zero_grad(set_to_none=True)


# --- audio -> latent ------------------------------------------------------------------------------
def test_encode_audio_gives_latent_moments_of_the_generator_length(pipe):
    seq = get_variant("tiny_16k").sequence_lengths(DURATION)
    t = torch.arange(int(22050 * 0.9)) / 22050
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    raw = pipe.encode_audio(tone, 22050, duration=DURATION)  # resampled, padded to 1 s
    assert raw.mean.shape == raw.std.shape == (1, seq.latent, 8)
    assert bool((raw.std > 0).all())
    stereo = pipe.encode_audio(torch.stack([tone, tone])[None], 22050, duration=DURATION)
    assert torch.allclose(stereo.mean, raw.mean, atol=1e-5)
    norm = pipe.encode_audio(tone, 22050, duration=DURATION, normalize=True)
    gen = pipe.generator
    assert torch.allclose(norm.mean, (raw.mean - gen.latent_mean) / gen.latent_std, atol=1e-5)
    assert torch.allclose(norm.std, raw.std / gen.latent_std, atol=1e-6)
    mean, std = raw  # unpacks like a (mean, std) pair
    assert mean is raw.mean and std is raw.std


def test_encode_audio_mixes_5_1_to_mono_as_the_training_data_is(pipe, tmp_path):
    """A 5.1 waveform gives the moments of the track load_mono reads from the same 5.1 file
    (ITU downmix without the LFE, then soxr), not those of a plain mean of the six channels."""
    sf = pytest.importorskip("soundfile")
    from selva_core.data.audio import load_mono

    rate = 22050
    film = 0.1 * torch.randn(6, rate, generator=torch.Generator().manual_seed(4))
    film[3] *= 5  # a loud LFE, which the mix leaves out
    sf.write(tmp_path / "film.wav", film.T.numpy(), rate, subtype="FLOAT")
    heard = torch.from_numpy(load_mono(tmp_path / "film.wav", pipe.sample_rate))
    training = pipe.encode_audio(heard, pipe.sample_rate, duration=DURATION)
    surround = pipe.encode_audio(film[None], rate, duration=DURATION)
    torch.testing.assert_close(surround.mean, training.mean)
    torch.testing.assert_close(surround.std, training.std)
    plain = pipe.encode_audio(film.mean(dim=0), rate, duration=DURATION)
    assert not torch.allclose(plain.mean, training.mean, atol=1e-3)


def test_encode_audio_rejects_nan(pipe):
    with pytest.raises(ValueError, match="NaN"):
        pipe.encode_audio(torch.full((16000,), float("nan")), 16000)


# --- freeing encoders -----------------------------------------------------------------------------
def test_free_encoders_keeps_sampling_and_explains_what_is_gone():
    pipe = SelvaPipeline.tiny(seed=0, duration=DURATION, trained=False)
    feats = pipe.extract_features(_frames(), "a dog barks")
    pipe.free_encoders()
    assert pipe.video_encoder is None and pipe.clip_text is None and pipe.t5 is None
    assert pipe.vae.encoder is None  # only the decoder is needed to listen to samples
    assert pipe.decode(pipe.sample(feats, seed=0, num_steps=1)).shape[0] == 1
    with pytest.raises(RuntimeError, match="free_encoders"):
        pipe.extract_features(_frames(), "a dog barks")
    with pytest.raises(RuntimeError, match="free_encoders"):
        pipe.sample(feats, seed=0, num_steps=1, negative_prompt="music")
    with pytest.raises(RuntimeError, match="VAE encoder.*free_encoders"):
        pipe.encode_audio(torch.zeros(16000), 16000)


# --- from_pretrained ------------------------------------------------------------------------------
def test_from_pretrained_without_files_offline_names_the_missing_file(tmp_path):
    with pytest.raises(WeightsError) as info:
        SelvaPipeline.from_pretrained("small_16k", models_dir=tmp_path, download=False)
    msg = str(info.value)
    assert "generator_small_16k_sup_5.pth" in msg and str(tmp_path) in msg
    assert "jnwnlee/SelVA" in msg


def test_from_pretrained_refuses_variants_without_weight_files():
    with pytest.raises(ValueError, match=r"SelvaPipeline\.tiny\(\)"):
        SelvaPipeline.from_pretrained("tiny_16k")


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_from_pretrained_loads_local_files_like_the_reference_formats(tmp_path, monkeypatch):
    """Tiny weights written in the official layouts load strictly and reproduce the model.

    The generator file carries the obsolete buffers, the TextSynch file a foreign entry, the
    vocoder file legacy weight-norm names under 'generator', the VAE raw (un-normalised)
    weights; the loaded pipeline must generate exactly what the source networks generate.
    """
    base = get_variant("tiny_16k")
    torch.manual_seed(11)
    nets = {c: build_component(c, base) for c in ("generator", "video_encoder", "vae", "vocoder")}
    gen_sd = dict(nets["generator"].state_dict())
    gen_sd.update({"t_embed.freqs": torch.zeros(128), "latent_rot": torch.zeros(1)})
    torch.save(gen_sd, tmp_path / "gen.pth")
    enc_sd = dict(nets["video_encoder"].state_dict())
    enc_sd["afeat_extractor.unused"] = torch.zeros(3)
    torch.save(enc_sd, tmp_path / "enc.pth")
    save_file(nets["vae"].state_dict(), tmp_path / "vae.safetensors")
    legacy = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"): v
        for k, v in nets["vocoder"].state_dict().items()
    }
    torch.save({"generator": legacy, "optim": {"step": torch.tensor(3)}}, tmp_path / "voc.pt")

    def file(name: str, subkey: str | None = None) -> WeightFile:
        return WeightFile("test/repo", f"w/{name}", _md5(tmp_path / name), subkey)

    variant = replace(
        base, name="tinyfiles_16k", generator_file=file("gen.pth"),
        video_encoder_file=file("enc.pth"), vae_file=file("vae.safetensors"),
        vocoder_file=file("voc.pt", subkey="generator"),
    )
    monkeypatch.setitem(VARIANTS, variant.name, variant)
    loaded = SelvaPipeline.from_pretrained(
        variant.name, models_dir=tmp_path, device="cpu", download=False, need_vae_encoder=True
    )
    assert loaded.vae.encoder is not None

    nets["vae"].normalize_weights_()
    nets["vocoder"].remove_weight_norm()
    reference = SelvaPipeline(
        base, generator=nets["generator"], vae=nets["vae"], vocoder=nets["vocoder"],
        video_encoder=nets["video_encoder"], clip_text=loaded.clip_text, t5=loaded.t5,
        device="cpu",
    )
    frames = _frames()
    got, _ = loaded.generate(frames, "a dog barks", seed=3, num_steps=STEPS)
    want, _ = reference.generate(frames, "a dog barks", seed=3, num_steps=STEPS)
    assert torch.allclose(got, want, atol=1e-6)
    assert sidecar_path(tmp_path / "gen.pth").is_file()  # verified once, remembered
    inference_only = SelvaPipeline.from_pretrained(variant.name, models_dir=tmp_path,
                                                   device="cpu", download=False)
    assert inference_only.vae.encoder is None  # dropped unless need_vae_encoder


def test_encode_audio_without_the_vae_encoder_says_how_to_get_it():
    pipe = SelvaPipeline.tiny(seed=0, duration=DURATION, trained=False)
    pipe.vae.drop_encoder()
    with pytest.raises(RuntimeError, match="need_vae_encoder=True"):
        pipe.encode_audio(torch.zeros(16000), 16000)


def test_text_encoders_are_taken_from_the_models_folder_when_present(tmp_path):
    from selva_core.pipeline import _local_text_encoder

    assert _local_text_encoder(tmp_path, "google/flan-t5-base") is None
    (tmp_path / "flan-t5-base").mkdir()
    (tmp_path / "DFN5B-CLIP-ViT-H-14-384").mkdir()
    assert _local_text_encoder(tmp_path, "google/flan-t5-base") == str(tmp_path / "flan-t5-base")
    clip = _local_text_encoder(tmp_path, "hf-hub:apple/DFN5B-CLIP-ViT-H-14-384")
    assert clip == str(tmp_path / "DFN5B-CLIP-ViT-H-14-384")
