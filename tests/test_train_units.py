"""Unit tests of the trainer's building blocks: config/CLI, LR schedule, data order,
checkpoint files (optimiser + RNG state round trips, atomic writes), logs and plots."""

from __future__ import annotations

import errno
import json
import math
import random

import numpy as np
import pytest
import torch

from selva_core.atomic import save_safetensors_atomic
from selva_core.audio.wav import write_wav
from selva_core.training import checkpoint as ckpt
from selva_core.training.config import TrainConfig, build_arg_parser, config_from_args
from selva_core.training.data_order import DataOrder, example_seed
from selva_core.training.report import (
    JsonlLog,
    plot_curves,
    read_jsonl,
    save_spectrogram_png,
)
from selva_core.training.schedule import LRSchedule


# --- config / CLI --------------------------------------------------------------------------
def test_every_cli_flag_has_help_text():
    parser = build_arg_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 20, action.dest


def test_cli_accepts_dashed_and_alias_flag_spellings():
    cfg = config_from_args([
        "--data_dir", "clips", "--rsLoRA", "--no-surgery", "--resume-from", "7",
        "--on-bad-clip", "stop", "--val-clips", "2", "--lr-schedule", "constant",
        "--target", "attn.qkv", "linear1", "--timestep_mode", "uniform", "--init", "pissa",
        "--window", "all", "--lora_plus_ratio", "4",
    ])
    assert cfg.rslora and not cfg.surgery and cfg.resume_from == 7
    assert cfg.on_bad_clip == "stop" and cfg.val_clips == 2 and cfg.lr_schedule == "constant"
    assert cfg.target == ["attn.qkv", "linear1"] and cfg.timestep_mode == "uniform"
    assert cfg.init == "pissa" and cfg.window == "all" and cfg.lora_plus_ratio == 4.0


def test_default_alpha_is_the_lora_library_fixed_alpha_for_each_scaling_rule():
    from selva_core.model.lora import LoRAConfig

    for rslora in (False, True):
        cfg = TrainConfig(data_dir="x", rank=32, rslora=rslora)
        assert cfg.effective_alpha == LoRAConfig(rank=32, use_rslora=rslora).effective_alpha
    assert TrainConfig(data_dir="x", alpha=5.0).effective_alpha == 5.0


@pytest.mark.parametrize("flags, fragment", [
    (["--lr", "0"], "--lr"),
    (["--warmup_steps", "10", "--steps", "10"], "--warmup_steps"),
    (["--duration", "0.3"], "--duration"),
    (["--rank", "0"], "--rank"),
    (["--val_fraction", "1.5"], "--val_fraction"),
])
def test_bad_flag_values_exit_with_a_message_naming_the_flag(flags, fragment, capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--data_dir", "x", *flags])
    assert fragment in capsys.readouterr().err


def test_warmup_defaults_to_a_fraction_of_the_steps_so_short_runs_just_work():
    from selva_core.training.config import WARMUP_FRACTION

    assert TrainConfig(data_dir="x").warmup == round(WARMUP_FRACTION * 2000)
    for steps in (1, 5, 10, 40):
        cfg = config_from_args(["--data_dir", "x", "--steps", str(steps)])
        assert cfg.warmup_steps is None and 0 <= cfg.warmup < steps
        LRSchedule(steps, cfg.warmup)  # a valid schedule
    assert config_from_args(["--data_dir", "x", "--warmup_steps", "3"]).warmup == 3


@pytest.mark.parametrize("flags, fragment", [
    (["--lora_dropout", "1.0"], "--lora_dropout must be a number in [0, 1)"),
    (["--base_dtype", "fp8"], "--base_dtype"),
])
def test_new_flag_values_are_checked(flags, fragment, capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--data_dir", "x", *flags])
    assert fragment in capsys.readouterr().err


def test_missing_data_dir_is_an_error_unless_demo():
    with pytest.raises(ValueError, match="--data_dir is required"):
        TrainConfig().validate()
    TrainConfig(demo=True).validate()


def test_config_json_round_trip():
    cfg = TrainConfig(data_dir="d", rank=8, target=["a", "b"], val_clips=3)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"nope": 1})


# --- schedule --------------------------------------------------------------------------------
def test_warmup_is_linear_then_cosine_reaches_zero_at_the_last_step():
    s = LRSchedule(total_steps=110, warmup_steps=10, kind="cosine")
    assert [s.factor(i) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert s.factor(9) == pytest.approx(1.0)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.5)
    assert s.factor(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert s.factor(110) == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_holds_after_warmup():
    s = LRSchedule(total_steps=50, warmup_steps=4, kind="constant")
    assert s.factor(1) == pytest.approx(0.5)
    assert all(s.factor(i) == 1.0 for i in range(4, 50))


def test_schedule_apply_keeps_the_lora_plus_ratio_between_groups():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [a], "base_lr": 1e-3},
                             {"params": [b], "base_lr": 16e-3}], lr=1e-3)
    s = LRSchedule(total_steps=10, warmup_steps=4)
    s.apply(opt, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    assert opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"] == pytest.approx(16.0)


# --- data order ------------------------------------------------------------------------------
def test_each_epoch_is_a_fresh_permutation_that_depends_on_the_seed():
    order = DataOrder(10, seed=3)
    e0, e1 = order.permutation(0), order.permutation(1)
    assert sorted(e0) == list(range(10)) and sorted(e1) == list(range(10))
    assert e0 != e1
    assert DataOrder(10, seed=3).permutation(0) == e0
    assert DataOrder(10, seed=4).permutation(0) != e0
    assert [order.example_at(k) for k in range(10, 20)] == e1


def test_two_process_shards_rebuild_the_single_process_global_batch():
    order = DataOrder(7, seed=0)
    single = order.micro_batch(stream_pos=12, micro=0, batch_size=4)
    shards = [order.micro_batch(12, 0, 2, world_size=2, rank=r) for r in range(2)]
    assert shards[0] + shards[1] == single
    # grad accumulation: micro-batch 1 continues where micro-batch 0 of all ranks ended
    assert order.micro_batch(12, 1, 2, world_size=2, rank=0)[0][0] == 16


def test_example_seeds_differ_between_positions_and_runs():
    seeds = {example_seed(42, k) for k in range(1000)}
    assert len(seeds) == 1000
    assert example_seed(42, 5) != example_seed(43, 5)


# --- checkpoint state ----------------------------------------------------------------------
def _trained_optimizer():
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(3, 4))
    q = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([{"params": [p], "base_lr": 1e-2}, {"params": [q], "base_lr": 2e-2}],
                            lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    for _ in range(3):
        (p.square().sum() + q.sum()).backward()
        opt.step()
        opt.zero_grad()
    return p, q, opt


def test_optimizer_state_survives_flattening_exactly():
    p, q, opt = _trained_optimizer()
    tensors, meta = ckpt.flatten_optimizer_state(opt.state_dict())
    json.dumps(meta)  # metadata is plain JSON
    restored = ckpt.unflatten_optimizer_state(tensors, json.loads(json.dumps(meta)))
    p2, q2 = torch.nn.Parameter(p.detach().clone()), torch.nn.Parameter(q.detach().clone())
    opt2 = torch.optim.AdamW([{"params": [p2]}, {"params": [q2]}], lr=1.0)
    opt2.load_state_dict(restored)
    for o in (opt, opt2):
        for group in o.param_groups:
            for param in group["params"]:
                param.grad = torch.ones_like(param)
        o.step()
    assert torch.equal(p, p2) and torch.equal(q, q2)


def test_rng_states_round_trip():
    tensors, meta = ckpt.capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(7), random.random()
    ckpt.restore_rng_state(tensors, json.loads(json.dumps(meta)))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def _state(step: int, value: float = 0.0) -> ckpt.TrainingState:
    _, _, opt = _trained_optimizer()
    rng_t, rng_m = ckpt.capture_rng_state()
    return ckpt.TrainingState(
        step=step, stream_pos=step * 4, epoch=0, permutation=[2, 0, 1],
        params={"blocks.0.lora_A": torch.full((2, 3), value)}, optimizer=opt.state_dict(),
        identity={"variant": "tiny_16k", "rank": 2}, train_loss=0.5, val_loss=0.4,
        rng_tensors=rng_t, rng_meta=rng_m,
    )


def _write_adapter(path):
    save_safetensors_atomic(path, {"w": torch.ones(1)})


def test_training_state_file_round_trips_through_safetensors(tmp_path):
    state = _state(7, value=3.0)
    state.save(tmp_path / "s.safetensors")
    back = ckpt.TrainingState.load(tmp_path / "s.safetensors")
    assert back.step == 7 and back.stream_pos == 28 and back.permutation == [2, 0, 1]
    assert torch.equal(back.params["blocks.0.lora_A"], state.params["blocks.0.lora_A"])
    assert back.identity == state.identity and back.val_loss == 0.4
    assert torch.equal(back.optimizer["state"][0]["exp_avg"],
                       state.optimizer["state"][0]["exp_avg"])


def test_manifest_lists_checkpoints_and_finds_latest_or_a_given_step(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path / "checkpoints")
    for step in (5, 10):
        mgr.save(_state(step), _write_adapter)
    manifest = json.loads((tmp_path / "checkpoints" / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [5, 10]
    assert {"val_loss", "time", "adapter", "state"} <= set(manifest["checkpoints"][0])
    assert mgr.find().step == 10 and mgr.find(5).step == 5
    with pytest.raises(ckpt.CheckpointError, match="available steps: 5, 10"):
        mgr.find(7)


def test_keep_last_prunes_old_checkpoint_folders(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        mgr.save(_state(step), _write_adapter)
    assert [e.step for e in mgr.entries()] == [2, 3]
    assert not (tmp_path / "step_000001").exists()


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(_state(5, value=1.0), _write_adapter)
    before = (tmp_path / "manifest.json").read_text()

    def full_disk(tensors, path, metadata):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_save_file", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"step 5.*intact.*disk is full"):
        mgr.save(_state(10, value=2.0), _write_adapter)
    monkeypatch.undo()
    assert (tmp_path / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "step_000005"]
    back = mgr.load_state(mgr.find())
    assert back.step == 5 and torch.equal(back.params["blocks.0.lora_A"], torch.ones(2, 3))


def test_identity_mismatch_names_every_differing_field(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"rank: checkpoint 16 vs this run 8.*"
                                                   r"variant: checkpoint 'small_16k'"):
        ckpt.check_identity({"variant": "small_16k", "rank": 16},
                            {"variant": "tiny_16k", "rank": 8}, tmp_path / "x")


def test_corrupt_state_file_gives_a_clear_error(tmp_path):
    bad = tmp_path / "training_state.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.TrainingState.load(bad)
    save_safetensors_atomic(bad, {"x": torch.zeros(1)}, {"format": "other"})
    with pytest.raises(ckpt.CheckpointError, match="not a SelVA LoRA training state"):
        ckpt.TrainingState.load(bad)


def test_no_manifest_means_nothing_to_resume(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="run without --resume"):
        ckpt.CheckpointManager(tmp_path).find()


# --- logs and plots ------------------------------------------------------------------------
def test_jsonl_log_skips_a_torn_last_line_and_truncates_on_resume(tmp_path):
    log = JsonlLog(tmp_path / "train_log.jsonl")
    for step in range(1, 6):
        log.write({"kind": "train", "step": step, "loss": 1.0 / step, "lr": 1e-4})
    with open(log.path, "a") as fh:
        fh.write('{"kind": "tra')
    assert [r["step"] for r in read_jsonl(log.path)] == [1, 2, 3, 4, 5]
    log.truncate_after(3)
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    JsonlLog(tmp_path / "other.jsonl", enabled=False).write({"step": 1})
    assert not (tmp_path / "other.jsonl").exists()


def test_curve_spectrogram_and_wav_files_are_written(tmp_path):
    records = [{"kind": "train", "step": s, "loss": 1 / s, "lr": 1e-4} for s in range(1, 20)]
    records += [{"kind": "val", "step": 10, "val_loss": 0.2}]
    plot_curves(records, tmp_path / "loss_curve.png")
    wav = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    save_spectrogram_png(wav, 16000, tmp_path / "s.png")
    write_wav(tmp_path / "s.wav", wav * 3, 16000)
    for name in ("loss_curve.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import soundfile as sf

    audio, sr = sf.read(tmp_path / "s.wav")
    assert sr == 16000 and audio.shape == (16000,) and np.abs(audio).max() <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss_curve.png", "s.png", "s.wav"]


# --- objective and validation ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_generator():
    from selva_core.model.generator import SelvaGenerator

    torch.manual_seed(0)
    return SelvaGenerator.from_variant("tiny_16k", duration=1.0)


def _fake_batch(gen, batch=3, invalid_from=10):
    from selva_core.training.objective import FeatureBatch

    seq, cfg = gen.seq, gen.cfg
    g = torch.Generator().manual_seed(1)
    valid = torch.ones(batch, seq.sync, dtype=torch.bool)
    valid[0, invalid_from:] = False
    return FeatureBatch(
        latent_mean=torch.randn(batch, seq.latent, cfg.latent_dim, generator=g),
        latent_std=torch.rand(batch, seq.latent, cfg.latent_dim, generator=g),
        sync_f=torch.randn(batch, seq.sync, cfg.sync_dim, generator=g), sync_valid=valid,
        text_f=torch.randn(batch, cfg.text_seq_len, cfg.text_dim, generator=g),
        names=[f"c{i}" for i in range(batch)])


def test_invalid_sync_positions_get_the_learned_empty_sync_feature(tiny_generator):
    from selva_core.training.objective import conditions

    gen = tiny_generator
    batch = _fake_batch(gen, invalid_from=10)
    clip, sync, text = conditions(gen, batch)
    empty = gen.empty_sync_feat[0]
    assert torch.equal(sync[0, 10:], empty.expand_as(sync[0, 10:]))
    assert torch.equal(sync[0, :10], batch.sync_f[0, :10])
    assert torch.equal(sync[1:], batch.sync_f[1:])
    assert torch.equal(clip, gen.empty_clip_feat.expand_as(clip))  # SelVA: never CLIP-visual
    dropped = conditions(gen, batch, drop_video=torch.tensor([False, True, False]),
                         drop_text=torch.tensor([True, False, False]))
    assert torch.equal(dropped[1][1], empty.expand_as(dropped[1][1]))
    assert torch.equal(dropped[2][0], gen.empty_string_feat)
    assert torch.equal(dropped[2][1:], batch.text_f[1:])


def test_target_latent_is_normalised_by_the_generator_statistics(tiny_generator):
    from selva_core.training.objective import target_latent

    gen = tiny_generator
    batch = _fake_batch(gen)
    eps = torch.randn_like(batch.latent_mean)
    with torch.no_grad():
        gen.latent_mean.fill_(0.5)
        gen.latent_std.fill_(2.0)
    try:
        x1 = target_latent(gen, batch, eps)
        assert torch.allclose(x1, (batch.latent_mean + batch.latent_std * eps - 0.5) / 2.0)
    finally:
        with torch.no_grad():
            gen.latent_mean.zero_()
            gen.latent_std.fill_(1.0)


def test_per_example_draws_do_not_depend_on_the_batch_they_are_in():
    from selva_core.training.objective import draw_examples

    together = draw_examples([11, 22, 33], (5, 4), "logit_normal", 0.5)
    alone = draw_examples([22], (5, 4), "logit_normal", 0.5)
    assert torch.equal(together.eps[1], alone.eps[0]) and torch.equal(together.x0[1], alone.x0[0])
    assert together.t[1] == alone.t[0] and bool(together.drop_video[1]) == bool(alone.drop_video[0])
    assert not torch.equal(together.eps[0], together.eps[1])
    uniform = draw_examples(list(range(2000)), (1, 1), "uniform", 0.1)
    assert 0.07 < uniform.drop_video.float().mean() < 0.13
    assert 0.07 < uniform.drop_text.float().mean() < 0.13
    assert abs(float(uniform.t.mean()) - 0.5) < 0.03
    logit = draw_examples(list(range(2000)), (1, 1), "logit_normal", 0.1)
    assert abs(float(torch.logit(logit.t).std()) - 1.0) < 0.06  # t = sigmoid(N(0, 1))


class _Ex:
    def __init__(self, name):
        self.name = name


def test_validation_split_keeps_a_clips_windows_together_and_ignores_order():
    from selva_core.data.split import split_examples

    examples = [_Ex(f"clip{i}#w{w}") for i in range(10) for w in range(3)]
    train, val = split_examples(examples, val_fraction=0.2)
    val_clips = {e.name.split("#")[0] for e in val}
    assert len(val_clips) == 2 and len(val) == 6 and len(train) == 24
    assert not val_clips & {e.name.split("#")[0] for e in train}
    _, val_reversed = split_examples(examples[::-1], val_fraction=0.2)
    assert {e.name for e in val_reversed} == {e.name for e in val}
    assert val_clips != {"clip0", "clip1"}  # not just the alphabetically first clips


@pytest.mark.parametrize("clips, fraction, expected", [(3, 0.1, 0), (4, 0.1, 1), (10, 0.1, 1),
                                                       (40, 0.1, 4), (10, 0.0, 0)])
def test_default_validation_size(clips, fraction, expected):
    from selva_core.data.split import default_val_count

    assert default_val_count(clips, fraction) == expected


def test_asking_for_every_clip_as_validation_is_an_error():
    from selva_core.data.split import split_examples

    with pytest.raises(ValueError, match="--val_clips 3 leaves no training clip"):
        split_examples([_Ex(f"c{i}") for i in range(3)], val_clips=3)


def test_validation_t_grid_is_the_quantiles_of_the_training_distribution():
    from selva_core.training.validation import t_grid

    t = t_grid("logit_normal", 8)
    assert t.shape == (8,) and torch.all(t[1:] > t[:-1])
    assert torch.allclose(t + t.flip(0), torch.ones(8), atol=1e-6)  # symmetric around 0.5
    assert float(t[0]) == pytest.approx(torch.sigmoid(torch.tensor(-1.5341)).item(), abs=1e-3)
    assert torch.allclose(t_grid("uniform", 4), torch.tensor([0.125, 0.375, 0.625, 0.875]))


# --- condition dropout reaches the model; precision; validation determinism ----------------
class _SpyModel(torch.nn.Module):
    """Stands for the generator's forward: records the conditions it is given."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, xt, clip, sync, text, t):
        self.seen = (clip.detach().clone(), sync.detach().clone(), text.detach().clone())
        return torch.zeros_like(xt)


def test_training_loss_feeds_dropped_rows_the_models_empty_conditions(tiny_generator):
    from selva_core.training.objective import ExampleDraws, training_loss

    gen = tiny_generator
    batch = _fake_batch(gen, batch=3, invalid_from=10)
    shape = batch.latent_mean.shape
    draws = ExampleDraws(eps=torch.zeros(shape), x0=torch.zeros(shape), t=torch.full((3,), 0.5),
                         drop_video=torch.tensor([False, True, False]),
                         drop_text=torch.tensor([False, False, True]))
    spy = _SpyModel()
    loss = training_loss(spy, gen, batch, draws)
    assert loss.shape == (3,)
    clip, sync, text = spy.seen
    empty_sync, empty_text = gen.empty_sync_feat[0].detach(), gen.empty_string_feat.detach()
    assert not torch.equal(empty_sync, torch.zeros_like(empty_sync))  # learned, not zeros
    # row 0: its own video up to the clip's end, then the learned empty sync feature
    assert torch.equal(sync[0, :10], batch.sync_f[0, :10])
    assert torch.equal(sync[0, 10:], empty_sync.expand_as(sync[0, 10:]))
    assert torch.equal(text[0], batch.text_f[0])
    # row 1: video dropped (every sync position empty), its text kept
    assert torch.equal(sync[1], empty_sync.expand_as(sync[1]))
    assert torch.equal(text[1], batch.text_f[1])
    # row 2: text dropped to the empty-string features, its video kept
    assert torch.equal(text[2], empty_text)
    assert torch.equal(sync[2], batch.sync_f[2])
    assert torch.equal(clip, gen.empty_clip_feat.detach().expand_as(clip))


def test_video_and_text_dropout_coins_are_independent():
    from selva_core.training.objective import draw_examples

    d = draw_examples(list(range(4000)), (1, 1), "uniform", 0.1)
    both = (d.drop_video & d.drop_text).float().mean()
    assert 0.005 < float(both) < 0.02  # ~0.1 * 0.1, not 0.1 (same coin) nor 0 (exclusive)
    none = draw_examples(list(range(200)), (1, 1), "uniform", 0.0)
    assert not none.drop_video.any() and not none.drop_text.any()


def test_autocast_is_bf16_only_on_a_capable_gpu_unless_forced(monkeypatch):
    from selva_core.model.precision import resolve_autocast_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_autocast_dtype("auto", cpu) is None
    assert resolve_autocast_dtype("fp32", cuda) is None
    assert resolve_autocast_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_autocast_dtype("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_autocast_dtype("auto", cuda) is None


class _StoredExample:
    def __init__(self, name, tensors):
        self.name, self.path, self._tensors = name, f"/mem/{name}", tensors

    def load(self):
        return dict(self._tensors)


def _store(gen, n=2, seed=3):
    from selva_core.training.objective import ExampleStore

    seq, cfg = gen.seq, gen.cfg
    g = torch.Generator().manual_seed(seed)
    examples = [_StoredExample(f"v{i}", {
        "latent_mean": torch.randn(seq.latent, cfg.latent_dim, generator=g),
        "latent_std": torch.rand(seq.latent, cfg.latent_dim, generator=g),
        "sync_f": torch.randn(seq.sync, cfg.sync_dim, generator=g),
        "sync_valid": torch.ones(seq.sync, dtype=torch.bool),
        "text_clip_f": torch.randn(cfg.text_seq_len, cfg.text_dim, generator=g),
    }) for i in range(n)]
    return ExampleStore(examples, gen)


def test_validation_loss_ignores_global_rng_and_model_mode(tiny_generator):
    from selva_core.training.validation import Validator

    gen = tiny_generator
    store = _store(gen)
    cpu = torch.device("cpu")
    first = Validator(store, "logit_normal").evaluate(gen, gen, cpu)
    torch.manual_seed(1234)
    torch.rand(100)
    gen.train()
    again = Validator(store, "logit_normal").evaluate(gen, gen, cpu)
    assert gen.training  # evaluate restores the mode it found
    gen.eval()
    assert again.loss == first.loss and again.per_t == first.per_t
    assert first.examples == 2 and len(first.per_t) == 8
    assert len(set(first.per_t)) == 8  # the grid really has 8 different times
    # and it does move when the model does
    saved = gen.empty_clip_feat.detach().clone()
    with torch.no_grad():
        gen.empty_clip_feat.add_(0.5)
    try:
        moved = Validator(store, "logit_normal").evaluate(gen, gen, cpu)
    finally:
        with torch.no_grad():
            gen.empty_clip_feat.copy_(saved)
    assert moved.loss != first.loss


def test_clip_of_strips_only_the_window_suffix():
    from selva_core.data.split import clip_of, split_examples

    assert clip_of("dog#w1") == "dog" and clip_of("dog") == "dog"
    assert clip_of("take#2#w0") == "take#2" and clip_of("take#2") == "take#2"
    examples = [_Ex(f"take#{i}#w{w}") for i in range(4) for w in range(2)]
    train, val = split_examples(examples, val_clips=1)
    assert len(val) == 2 and len(train) == 6  # four clips, not one clip called 'take'


def test_usage_shows_the_dashed_spellings_and_the_underscore_forms_still_work():
    usage = build_arg_parser().format_usage()
    assert "[--resume-from STEP]" in usage and "--on-bad-clip" in usage
    cfg = config_from_args(["--data_dir", "d", "--resume_from", "3", "--on_bad_clip", "stop"])
    assert cfg.resume_from == 3 and cfg.on_bad_clip == "stop"


def test_summary_says_how_much_audio_the_windows_left_out():
    from selva_core.training.report import format_summary

    base = {"completed": True, "status": "completed", "target": ["attn"], "trainable_params": 1}
    text = format_summary({**base, "window": "first", "audio_seconds_left_out": 12.25})
    assert "12.2 s of clip audio beyond the windows not used (--window first; --window all " \
           "uses it)" in text
    assert "beyond the windows" not in format_summary({**base, "audio_seconds_left_out": 0.0})


def test_summary_shows_the_adapter_file_size_and_storage():
    from selva_core.training.report import format_summary

    base = {"completed": True, "status": "completed", "target": ["attn"], "trainable_params": 1,
            "adapter_path": "out/adapter_final.safetensors"}
    text = format_summary({**base, "adapter_mb": 8.0534, "adapter_storage": "q16"})
    assert "out/adapter_final.safetensors  (8.05 MB, q16)" in text
    assert "MB" not in format_summary(base)
