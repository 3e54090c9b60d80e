"""How each golden component is built from a case config, loaded and called.

Each runner returns ``{"output.<name>": tensor, ...}`` (optionally ``inter.*``). Weights are
loaded exactly as a real checkpoint is (strict key check, load-time processing).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from selva_core import variants
from selva_core.variants import (
    BigVGANConfig,
    GeneratorConfig,
    MelConfig,
    TextSynchConfig,
    VAEConfig,
    sequence_lengths,
)
from selva_core.weights import load_checked, skip_random_init
from tests.golden import GoldenCase, seeded_state_dict


def _load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    load_checked(module, sd, component=type(module).__name__, variant="golden")


def _sequence_from_config(config: dict):
    """Sequence lengths from the duration rule; the recorded lengths must agree."""
    sc = config["sequence_config"]
    mel = MelConfig(
        sample_rate=int(sc["sampling_rate"]), n_fft=1, win_size=1,
        hop_size=int(sc["spectrogram_frame_rate"]), n_mels=1, fmin=0.0, fmax=None, log="ln",
    )
    seq = sequence_lengths(float(sc["duration"]), mel)
    recorded = (config["latent_seq_len"], config["clip_seq_len"], config["sync_seq_len"])
    if (seq.latent, seq.clip, seq.sync) != tuple(recorded):
        raise AssertionError(f"our sequence lengths {seq} disagree with the case's {recorded}")
    return seq


def _generator(case: GoldenCase):
    from selva_core.model.generator import SelvaGenerator

    cfg = GeneratorConfig.from_dict(case.config)
    sd = seeded_state_dict(case)
    with torch.device("meta"), skip_random_init(meta_only=True):
        model = SelvaGenerator(cfg, _sequence_from_config(case.config))
    model.load_state_dict(sd, strict=True, assign=True)
    model.update_seq_lengths(model.seq)  # rebuild RoPE tables off the meta device
    return model.eval()


def run_generator(case: GoldenCase) -> dict[str, torch.Tensor]:
    x = case.inputs()
    mode = case.config.get("inference_mode", "euler")
    if "x0" in x and mode != "euler":
        raise ValueError(f"sampling case with inference_mode {mode!r}: only 'euler' exists")
    model = _generator(case)
    if "x0" in x:  # sampling case
        from selva_core.flow_matching import euler_sample

        x1 = euler_sample(
            model, x["x0"], x["clip_f"], x["sync_f"], x["text_f"],
            negative_text_f=x.get("negative_text_f"),
            num_steps=int(case.config["num_steps"]),
            cfg_strength=float(case.config["cfg_strength"]),
            min_sigma=float(case.config.get("min_sigma", 0.0)),
        )
        return {"output.x1_normalized": x1, "output.x1_unnormalized": model.unnormalize(x1)}
    cond = model.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
    flow = model.predict_flow(x["latent"], x["t"], cond)
    out = {"output.flow": flow}
    for name in ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c"):
        out[f"output.cond.{name}"] = getattr(cond, name)
    return out


def run_sync_upsample(case: GoldenCase) -> dict[str, torch.Tensor]:
    from selva_core.model.generator import upsample_sync

    out = {}
    for n_in, n_out in case.config["pairs"]:
        src = torch.arange(n_in, dtype=torch.float32).view(1, n_in, 1)
        out[f"output.index_{n_in}_to_{n_out}"] = upsample_sync(src, n_out).view(n_out)
    return out


def run_video_encoder(case: GoldenCase) -> dict[str, torch.Tensor]:
    from selva_core.model.video_encoder import TextSynch

    c = case.config
    cfg = replace(
        TextSynchConfig(),
        text_dim=int(c.get("text_dim", 768)),
        num_sup_tokens=int(c.get("num_sup_text_tokens", variants.NUM_SUP_TOKENS)),
        xattn_depth=int(c.get("xattn_depth", 1)),
        segment_frames=int(c.get("segment_size", variants.SYNC_SEGMENT_FRAMES)),
        segment_step=int(c.get("step_size", variants.SYNC_STEP_FRAMES)),
        frame_size=int(c.get("frame_size", 224)),
    )
    with skip_random_init():
        model = TextSynch(cfg).eval()
    _load_strict(model, seeded_state_dict(case))
    x = case.inputs()
    text, mask = model.prepend_sup(x["text_f"], x["text_mask"])
    sync_f = model.encode_video(x["frames"], text, mask)
    return {
        "output.sync_f": sync_f,
        "output.text_f_with_sup": text,
        "output.text_mask_with_sup": mask,
    }


def run_mel(case: GoldenCase) -> dict[str, torch.Tensor]:
    from selva_core.audio.mel import MelConverter

    c = case.config
    cfg = MelConfig(
        sample_rate=int(c["sampling_rate"]), n_fft=int(c["n_fft"]), win_size=int(c["win_size"]),
        hop_size=int(c["hop_size"]), n_mels=int(c["num_mels"]), fmin=float(c["fmin"]),
        fmax=None if c["fmax"] is None else float(c["fmax"]),
        log="log10" if "10" in str(c["norm_fn"]) else "ln",
    )
    mel = MelConverter(cfg)
    return {"output.log_mel": mel(case.inputs()["waveform"]), "aux.mel_basis": mel.mel_basis}


def run_vae(case: GoldenCase) -> dict[str, torch.Tensor]:
    from selva_core.model.vae import MelVAE

    with skip_random_init():
        model = MelVAE(VAEConfig.from_dict(case.config)).eval()
    _load_strict(model, seeded_state_dict(case))
    model.normalize_weights_()
    x = case.inputs()
    posterior = model.encode(x["mel"])
    return {
        "output.posterior_mean": posterior.mean,
        "output.posterior_logvar": posterior.logvar,
        "output.posterior_std": posterior.std,
        "output.decoded_mel": model.decode(x["z"]),
    }


def run_bigvgan(case: GoldenCase) -> dict[str, torch.Tensor]:
    from selva_core.model.bigvgan import BigVGAN

    with skip_random_init():
        model = BigVGAN(BigVGANConfig.from_dict(case.config)).eval()
    _load_strict(model, seeded_state_dict(case))
    return {"output.waveform": model(case.inputs()["mel"])}


RUNNERS = {
    "generator": run_generator,
    "sync_upsample": run_sync_upsample,
    "video_enc": run_video_encoder,
    "mel": run_mel,
    "vae": run_vae,
    "bigvgan": run_bigvgan,
}
