"""Acceptance tests of the training loop on the tiny model and generated clips.

One synthetic dataset (4 'bounce' + 4 'hum' clips of 1 s) and one tiny pipeline are built per
module; every run trains a fresh copy of the tiny generator from a warm feature cache.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from selva_core.feature_cache import read_feature_cache
from selva_core.model.lora import load_adapter, trainable_parameters
from selva_core.training import checkpoint as ckpt
from selva_core.training.config import TrainConfig
from selva_core.training.report import format_summary
from selva_core.training.run import run_training
from selva_core.training.schedule import LRSchedule
from selva_core.training.trainer import TrainHooks, TrainingDivergedError
from tests.generator_inputs import random_generator_inputs
from tests.training_data import fresh, tiny_training_set

DURATION = 1.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(pipeline, data_dir, cache_dir): a generated dataset with a warm feature cache."""
    s = tiny_training_set(tmp_path_factory.mktemp("train_loop"), clips_per_class=4, seed=0,
                          duration=DURATION)
    return s.pipe, s.data_dir, s.cache_dir


def make_cfg(tiny, out, **kw) -> TrainConfig:
    _, data_dir, cache_dir = tiny
    base = dict(data_dir=str(data_dir), output_dir=str(out), cache_dir=str(cache_dir),
                variant="tiny_16k", duration=DURATION, steps=6, warmup_steps=2,
                batch_size=2, grad_accum=2, save_every=2, val_every=2, rank=4, lr=2e-3,
                sample_steps=2, val_clips=2, quiet=True)
    base.update(kw)
    return TrainConfig(**base)


def train(tiny, out, hooks=None, **kw):
    kw.setdefault("samples", False)
    return run_training(make_cfg(tiny, out, **kw), pipeline=fresh(tiny[0]), hooks=hooks)


class Killed(Exception):
    """Stands for the process dying: nothing is saved on the way out."""


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
    """An uninterrupted 6-step run (the reference for the resume tests)."""
    out = tmp_path_factory.mktemp("straight")
    result = train(tiny, out, samples=True)
    return out, result


def state_at(out, step):
    return ckpt.TrainingState.load(out / "checkpoints" / f"step_{step:06d}" / ckpt.STATE_FILE)


def assert_same_run(out_a, out_b, final=False):
    """Bit-identical adapter (checkpoint of the last step; with ``final`` also the finished
    adapter after surgery) and optimiser state."""
    names = ["checkpoints/step_000006/adapter.safetensors"]
    names += ["adapter_final.safetensors"] if final else []
    for name in names:
        a, b = load_file(str(out_a / name)), load_file(str(out_b / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    sa, sb = state_at(out_a, 6), state_at(out_b, 6)
    for k in sa.params:
        assert torch.equal(sa.params[k], sb.params[k]), k
    for idx, slots in sa.optimizer["state"].items():
        for slot, value in slots.items():
            assert torch.equal(value, sb.optimizer["state"][idx][slot]), (idx, slot)


def train_records(out):
    return [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
            if r["kind"] == "train"]


# --- the main job -------------------------------------------------------------------------
def test_run_writes_every_artefact(straight):
    out, result = straight
    assert result.completed and result.steps_done == 6
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for required in ("adapter_final.safetensors", "train_log.jsonl", "loss_curve.png",
                     "summary.json", "config.json", "intruders.json", "intruders.png",
                     "surgery.json", "checkpoints/manifest.json",
                     "checkpoints/step_000002/adapter.safetensors",
                     "checkpoints/step_000006/training_state.safetensors",
                     "samples/step_000000_base.wav", "samples/step_000002.wav",
                     "samples/step_000002.png", "samples/final.wav"):
        assert required in names, required
    manifest = json.loads((out / "checkpoints" / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [2, 4, 6]
    assert all(c["val_loss"] is not None and c["time"] for c in manifest["checkpoints"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["surgery"]["decision"] in ("kept", "reverted")
    assert summary["val_loss_final"] < summary["val_loss_base"]
    assert summary["window"] == "first" and summary["audio_seconds_left_out"] >= 0.0
    assert summary["adapter_storage"] == "float32"  # auto: a plain adapter is stored exactly
    size = (out / "adapter_final.safetensors").stat().st_size
    assert summary["adapter_mb"] == pytest.approx(size / 1e6)


def test_each_sample_records_its_envelope_sync_with_the_clip_audio(straight):
    out, result = straight
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    samples = [r for r in records if r["kind"] == "sample"]
    assert [r["tag"] for r in samples] == ["step_000000_base", "step_000002", "step_000004",
                                           "step_000006", "final"]
    for rec in samples:
        assert (out / rec["wav"]).is_file()
        lag0, best, lag = rec["env_corr_lag0"], rec["env_corr_best"], rec["env_best_lag_ms"]
        assert -1.0 <= lag0 <= best <= 1.0  # the best lag is at least as good as lag 0
        assert -500.0 <= lag <= 500.0 and lag / 20 == pytest.approx(round(lag / 20))  # frames
    sync = json.loads((out / "summary.json").read_text())["sample_sync"]
    assert sync["base"]["tag"] == "step_000000_base" and sync["last"]["tag"] == "final"
    assert sync["last"]["env_corr_lag0"] == samples[-1]["env_corr_lag0"]
    assert "sample sync" in format_summary(result.summary)


def test_the_final_step_is_validated_once(straight):
    out, result = straight
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    val_steps = [r["step"] for r in records if r["kind"] == "val"]
    assert val_steps == [0, 2, 4, 6]  # step 6 is a multiple of val_every: once
    summary = json.loads((out / "summary.json").read_text())
    surgery = summary["surgery"]
    expected = (surgery["val_loss_after"] if surgery["decision"] == "kept"
                else [r for r in records if r["kind"] == "val"][-1]["val_loss"])
    assert summary["val_loss_final"] == pytest.approx(expected, rel=1e-9)


def test_q16_final_adapter_halves_the_file_and_keeps_the_learned_change(straight, tiny,
                                                                         tmp_path):
    out32, _ = straight
    out16 = tmp_path / "q16"
    # Same seed and data: the training is identical, only the final file's storage differs.
    assert train(tiny, out16, samples=True, adapter_dtype="q16").completed
    f32 = load_file(str(out32 / "adapter_final.safetensors"))
    f16 = load_file(str(out16 / "adapter_final.safetensors"))
    assert all(v.dtype == torch.float32 for v in f32.values())  # auto: a plain adapter is exact
    assert {k for k in f16 if not k.endswith("_qscale")} == f32.keys()
    assert all(v.dtype == torch.int16 for k, v in f16.items() if k.endswith(("_A", "_B")))
    size32 = (out32 / "adapter_final.safetensors").stat().st_size
    size16 = (out16 / "adapter_final.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    # q16 files hold a re-factorised change (factors may differ by sign/rotation): compare
    # what the adapters do to the generator's output.
    base = copy.deepcopy(tiny[0].generator).eval()
    gen32, gen16 = copy.deepcopy(base), copy.deepcopy(base)
    load_adapter(gen32, out32 / "adapter_final.safetensors")
    load_adapter(gen16, out16 / "adapter_final.safetensors")
    inputs = random_generator_inputs(base, 2, seed=5)
    with torch.no_grad():
        y0, y32, y16 = (g(*inputs) for g in (base, gen32, gen16))
    effect32, effect16 = y32 - y0, y16 - y0
    assert effect32.abs().max() > 1e-4  # the adapter does something
    rel = ((effect16 - effect32).norm() / effect32.norm()).item()
    assert rel < 1e-3, rel


def test_final_adapter_loads_on_a_fresh_generator_with_its_metadata(straight, tiny):
    out, _ = straight
    gen = copy.deepcopy(tiny[0].generator)
    handle = load_adapter(gen, out / "adapter_final.safetensors", expected_variant="tiny_16k")
    assert len(handle.layers) > 0
    from safetensors import safe_open

    with safe_open(str(out / "adapter_final.safetensors"), "pt") as fh:
        meta = fh.metadata()
    user = json.loads(meta["user"])
    assert user["steps"] == 6 and user["config"]["rank"] == 4
    assert user["surgery"]["decision"] in ("kept", "reverted")
    assert meta["model_variant"] == "tiny_16k" and meta["lora_kind"] == "lora"
    prompts = {e.prompt for e in read_feature_cache(tiny[2])}
    assert user["prompts"] and set(user["prompts"]) <= prompts


def test_lora_kind_dora_trains_a_dora_adapter_and_resume_checks_the_kind(straight, tiny,
                                                                         tmp_path):
    result = train(tiny, tmp_path / "dora", lora_kind="dora", steps=2, warmup_steps=1, save_every=2,
                   val_every=2, surgery=False)
    assert result.completed
    from safetensors import safe_open

    with safe_open(str(result.adapter_path), "pt") as fh:
        assert fh.metadata()["lora_kind"] == "dora"
        assert any("magnitude" in k for k in fh.keys())
    shutil.copytree(straight[0], tmp_path / "resume", dirs_exist_ok=True)
    with pytest.raises(ckpt.CheckpointError, match=r"lora_kind: checkpoint 'lora' vs this run"):
        train(tiny, tmp_path / "resume", lora_kind="dora", resume=True)


def test_lora_kind_loraxs_trains_only_the_cores_and_its_file_reproduces_them(tiny, tmp_path):
    result = train(tiny, tmp_path / "xs", lora_kind="loraxs", steps=2, warmup_steps=1,
                   save_every=2, val_every=2)
    assert result.completed
    from safetensors import safe_open

    with safe_open(str(result.adapter_path), "pt") as fh:
        assert fh.metadata()["lora_kind"] == "loraxs"
        cores = [fh.get_tensor(k) for k in fh.keys() if k.endswith(".lora_core")]
    assert cores and any(c.abs().sum() > 0 for c in cores)  # trained away from R = 0


@pytest.mark.parametrize("kind,key,start", [("ia3", "ia3_l", 1.0), ("hra", "hra_u", None)])
def test_lora_kinds_ia3_and_hra_train_end_to_end_and_resume(tiny, tmp_path, kind, key, start):
    result = train(tiny, tmp_path / kind, lora_kind=kind, steps=2, warmup_steps=1,
                   save_every=1, val_every=1)
    assert result.completed
    from safetensors import safe_open

    with safe_open(str(result.adapter_path), "pt") as fh:
        assert fh.metadata()["lora_kind"] == kind
        keys = list(fh.keys())
        tensors = [fh.get_tensor(k) for k in keys]
    assert tensors and all(k.endswith(f".{key}") for k in keys)
    if start is not None:  # IA3 starts at l = 1: training moved it
        assert any((t - start).abs().sum() > 0 for t in tensors)
    rows = json.loads((tmp_path / kind / "checkpoints" / "manifest.json").read_text())
    assert all(r["val_loss"] is not None for r in rows["checkpoints"])
    resumed = train(tiny, tmp_path / kind, lora_kind=kind, steps=3, warmup_steps=1,
                    save_every=1, val_every=1, resume=True)
    assert resumed.completed


def test_validation_loss_is_deterministic_and_logged_per_t(straight):
    out, _ = straight
    vals = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    vals = [r for r in vals if r["kind"] == "val"]
    assert [r["step"] for r in vals][:4] == [0, 2, 4, 6]
    assert all(len(r["per_t"]) == 8 and r["val_examples"] == 2 for r in vals)
    # the end-of-run validation without surgery repeats the step-6 value exactly
    summary = json.loads((out / "summary.json").read_text())
    if summary["surgery"]["decision"] == "reverted":
        assert vals[-1]["val_loss"] == vals[3]["val_loss"]


# --- exact resume ----------------------------------------------------------------------------
def test_resume_after_a_kill_mid_step_is_bit_identical(straight, tiny, tmp_path):
    def kill(trainer, step, micro):
        if step == 3 and micro == 1:  # dies half-way through the 4th optimiser step
            raise Killed

    with pytest.raises(Killed):
        train(tiny, tmp_path, hooks=TrainHooks(after_micro_step=kill))
    assert ckpt.CheckpointManager(tmp_path / "checkpoints").find().step == 2
    result = train(tiny, tmp_path, resume=True)
    assert result.completed and result.steps_done == 6
    assert_same_run(straight[0], tmp_path, final=True)
    assert [r["loss"] for r in train_records(tmp_path)] == \
        [r["loss"] for r in train_records(straight[0])]


def test_ctrl_c_saves_a_resumable_checkpoint(straight, tiny, tmp_path):
    def ctrl_c(trainer, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(tiny, tmp_path, hooks=TrainHooks(after_step=ctrl_c))
    assert result.status == "interrupted" and result.steps_done == 3
    entry = ckpt.CheckpointManager(tmp_path / "checkpoints").find()
    assert entry.step == 3 and entry.reason == "interrupt"
    assert "--resume" in result.summary["status"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    train(tiny, tmp_path, resume=True, surgery=False)
    assert_same_run(straight[0], tmp_path)


def test_keyboard_interrupt_inside_a_step_saves_the_last_completed_step(straight, tiny,
                                                                       tmp_path):
    def interrupt(trainer, step, micro):
        if step == 4 and micro == 0:
            raise KeyboardInterrupt

    result = train(tiny, tmp_path, hooks=TrainHooks(after_micro_step=interrupt))
    assert result.status == "interrupted" and result.steps_done == 4
    assert ckpt.CheckpointManager(tmp_path / "checkpoints").find().step == 4
    train(tiny, tmp_path, resume_from=4, surgery=False)
    assert_same_run(straight[0], tmp_path)


def test_resume_from_an_earlier_step_replays_to_the_same_adapter(straight, tiny, tmp_path):
    shutil.copytree(straight[0], tmp_path, dirs_exist_ok=True)
    train(tiny, tmp_path, resume_from=2, surgery=False)
    assert_same_run(straight[0], tmp_path)
    manifest = json.loads((tmp_path / "checkpoints" / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [2, 4, 6]


# --- bad input / failures -----------------------------------------------------------------
def test_resume_with_another_rank_is_one_clear_error(straight, tiny, tmp_path):
    shutil.copytree(straight[0], tmp_path, dirs_exist_ok=True)
    with pytest.raises(ckpt.CheckpointError, match=r"rank: checkpoint 4 vs this run 8"):
        train(tiny, tmp_path, rank=8, resume=True)


def test_resume_from_another_variant_is_one_clear_error(straight, tiny, tmp_path):
    shutil.copytree(straight[0], tmp_path, dirs_exist_ok=True)
    path = tmp_path / "checkpoints" / "step_000006" / ckpt.STATE_FILE
    state = ckpt.TrainingState.load(path)
    state.identity["variant"] = "small_16k"
    state.save(path)
    manifest_path = tmp_path / "checkpoints" / "manifest.json"  # a consistent, other checkpoint
    manifest = json.loads(manifest_path.read_text())
    manifest["checkpoints"][-1]["sha256"][ckpt.STATE_FILE] = ckpt.file_sha256(path)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError,
                       match=r"different adapter \(variant: checkpoint 'small_16k' vs this run "
                             r"'tiny_16k'\)"):
        train(tiny, tmp_path, resume=True)


def test_resume_without_checkpoints_says_to_run_without_resume(tiny, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="run without --resume"):
        train(tiny, tmp_path, resume=True)


def test_a_fresh_run_does_not_overwrite_an_existing_run_unless_asked(straight, tiny, tmp_path):
    shutil.copytree(straight[0], tmp_path, dirs_exist_ok=True)
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(tiny, tmp_path)
    result = train(tiny, tmp_path, steps=3, overwrite=True, surgery=False)
    assert result.completed
    manifest = json.loads((tmp_path / "checkpoints" / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [2, 3]
    assert not (tmp_path / "samples").exists() or not any((tmp_path / "samples").iterdir())


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny,
                                                                              tmp_path):
    def diverge(trainer, step):
        if step == 3:  # the adapter blows up after step 3
            with torch.no_grad():
                trainable_parameters(trainer.gen)[0].fill_(float("nan"))

    with pytest.raises(TrainingDivergedError,
                       match=r"optimiser step 4: the loss is nan.*last good checkpoint is "
                             r"step 2.*--lr"):
        train(tiny, tmp_path, hooks=TrainHooks(after_step=diverge))
    entries = ckpt.CheckpointManager(tmp_path / "checkpoints").entries()
    assert [e.step for e in entries] == [2]
    good = load_file(str(tmp_path / "checkpoints" / "step_000002" / "adapter.safetensors"))
    assert all(torch.isfinite(t).all() for t in good.values())
    errors = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().split("\n")
              if '"error"' in line]
    assert errors and errors[0]["step"] == 4


def test_full_disk_while_checkpointing_stops_cleanly_and_keeps_the_previous_one(
        straight, tiny, tmp_path, monkeypatch):
    real = ckpt._save_file
    calls = []

    def fill_up(tensors, path, metadata):
        calls.append(path)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "_save_file", fill_up)
    with pytest.raises(ckpt.CheckpointWriteError,
                       match=r"step 4.*previous checkpoint \(step 2.*intact.*disk is full"):
        train(tiny, tmp_path)
    monkeypatch.setattr(ckpt, "_save_file", real)
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == ["manifest.json", "step_000002"]
    kept = ckpt.CheckpointManager(tmp_path / "checkpoints")
    state = kept.load_state(kept.find())
    reference = state_at(straight[0], 2)
    assert state.step == 2
    for k in state.params:
        assert torch.equal(state.params[k], reference.params[k])


# --- the schedule under gradient accumulation ----------------------------------------------
def test_lr_schedule_counts_optimiser_steps_under_gradient_accumulation(tiny, tmp_path):
    seen: list[tuple[int, int, float, float]] = []

    def record(trainer, step, micro):
        groups = trainer.optimizer.param_groups
        seen.append((step, micro, groups[0]["lr"], groups[1]["lr"]))

    train(tiny, tmp_path, hooks=TrainHooks(after_micro_step=record), steps=6, warmup_steps=2,
          grad_accum=3, lr=1e-3, lora_plus_ratio=4.0, save_every=100, val_every=100,
          surgery=False)
    schedule = LRSchedule(total_steps=6, warmup_steps=2, kind="cosine")
    assert len(seen) == 18  # 6 optimiser steps x 3 micro-batches
    for step, _, lr_a, lr_b in seen:
        assert lr_a == pytest.approx(1e-3 * schedule.factor(step))
        assert lr_b == pytest.approx(4.0 * lr_a)  # LoRA+: B at ratio x lr
    records = train_records(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in records] == pytest.approx(
        [1e-3 * schedule.factor(s) for s in range(6)])
    state = state_at(tmp_path, 6)
    assert all(float(s["step"]) == 6.0 for s in state.optimizer["state"].values())
    assert state.stream_pos == 6 * 2 * 3


def test_every_adapter_option_resumes_exactly_pissa_rslora_lora_plus(tiny, tmp_path):
    options = dict(init="pissa", rslora=True, alpha=4.0, lora_plus_ratio=4.0,
                   timestep_mode="uniform", lr_schedule="constant", target=["qkv", "ffn.w2"],
                   steps=4, save_every=2, val_every=2, surgery=False)
    straight_run = train(tiny, tmp_path / "straight", **options)
    assert straight_run.summary["init"] == "pissa"
    assert straight_run.summary["adapter_storage"] == "q16"  # auto: PiSSA's rank-2r delta

    def ctrl_c(trainer, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    stopped = train(tiny, tmp_path / "resumed", hooks=TrainHooks(after_step=ctrl_c), **options)
    assert stopped.status == "interrupted" and stopped.steps_done == 1
    train(tiny, tmp_path / "resumed", resume=True, **options)
    for name in ("adapter_final.safetensors", "checkpoints/step_000004/adapter.safetensors"):
        a = load_file(str(tmp_path / "straight" / name))
        b = load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # PiSSA adapters are stored as a plain rank-2r delta on the untouched base weight
    state = state_at(tmp_path / "resumed", 4)
    assert any(k.endswith("lora_A0") for k in state.params)
    final = load_file(str(tmp_path / "resumed" / "adapter_final.safetensors"))
    key = next(k for k in final if k.endswith("lora_A"))
    assert final[key].shape[0] == 2 * 4



# --- the documented optimisation defaults are what the loop really uses ---------------------
def test_the_loop_uses_dropout_0_1_clipping_1_adamw_wd_0_and_fp32_adapters(tiny, tmp_path,
                                                                           monkeypatch):
    import selva_core.training.trainer as trainer_mod

    defaults = TrainConfig()
    assert (defaults.cond_dropout, defaults.grad_clip, defaults.weight_decay) == (0.1, 1.0, 0.0)
    assert defaults.precision == "auto" and defaults.timestep_mode == "logit_normal"
    drops, clips, checked = [], [], []
    real_draw, real_clip = trainer_mod.draw_examples, torch.nn.utils.clip_grad_norm_

    def spy_draw(seeds, shape, mode, p):
        drops.append((mode, p))
        return real_draw(seeds, shape, mode, p)

    def spy_clip(params, max_norm, *a, **k):
        clips.append(max_norm)
        return real_clip(params, max_norm, *a, **k)

    def check(trainer, step):
        assert trainer.autocast_dtype is None  # fp32 on CPU under --precision auto
        pipe = trainer.pipeline  # the feature encoders were freed before training
        assert pipe.video_encoder is None and pipe.t5 is None and pipe.clip_text is None
        assert all(p.dtype == torch.float32 for p in trainer.params)
        opt = trainer.optimizer
        assert isinstance(opt, torch.optim.AdamW)
        assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
        assert {id(p) for g in opt.param_groups for p in g["params"]} == \
            {id(p) for p in trainer.params}
        checked.append(step)

    monkeypatch.setattr(trainer_mod, "draw_examples", spy_draw)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    train(tiny, tmp_path, hooks=TrainHooks(after_step=check), steps=2, warmup_steps=1,
          save_every=100, val_every=100, surgery=False, val_clips=0)
    assert checked == [1, 2]
    assert len(drops) == 2 * 2 and set(drops) == {("logit_normal", 0.1)}  # steps x grad_accum
    assert clips == [1.0, 1.0]


def _update_grad_norms(tiny, out, grad_clip):
    """(norm of the gradient AdamW steps with, logged pre-clip norm) of a 2-step run."""
    seen = []

    def pre_step(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"]
                 if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.cat([x.flatten() for x in grads]))))

    def install(trainer, step, micro):
        if step == 0 and micro == 0:
            trainer.optimizer.register_step_pre_hook(pre_step)

    train(tiny, out, hooks=TrainHooks(after_micro_step=install), steps=2, warmup_steps=1,
          save_every=100, val_every=100, surgery=False, grad_clip=grad_clip, val_clips=0)
    return seen, [r["grad_norm"] for r in train_records(out)]


def test_gradient_clipping_caps_the_norm_adamw_sees(tiny, tmp_path):
    seen, logged = _update_grad_norms(tiny, tmp_path / "clipped", grad_clip=1e-3)
    assert len(seen) == 2 and all(n > 1e-3 for n in logged)  # clipping really had work to do
    assert all(n == pytest.approx(1e-3, rel=1e-4) for n in seen)
    seen, logged = _update_grad_norms(tiny, tmp_path / "unclipped", grad_clip=0.0)
    assert seen == pytest.approx(logged, rel=1e-5)  # 0 disables clipping


def test_bf16_autocast_keeps_fp32_adapter_weights_and_gradients(tiny, tmp_path):
    """The GPU path (--precision auto on a bf16 GPU) forced on the CPU: bf16 compute, fp32
    adapter parameters, gradients and optimiser state."""
    seen = []

    def check(trainer, step, micro):
        assert trainer.autocast_dtype is torch.bfloat16
        assert all(p.dtype == torch.float32 for p in trainer.params)
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainer.params)
        seen.append(micro)

    result = train(tiny, tmp_path, hooks=TrainHooks(after_micro_step=check), precision="bf16",
                   steps=1, warmup_steps=0, grad_accum=1, save_every=100, val_every=100,
                   surgery=False, val_clips=0)
    assert seen == [0] and result.completed
    record = train_records(tmp_path)[0]
    assert math.isfinite(record["loss"]) and record["grad_norm"] > 0
    state = state_at(tmp_path, 1)
    assert all(v.dtype == torch.float32 for v in state.params.values())
    assert all(t.dtype == torch.float32 for slots in state.optimizer["state"].values()
               for k, t in slots.items() if k != "step")


# --- interruption by the caller, the caller's pipeline, the adapter's input dropout ---------
def test_should_stop_hook_ends_the_run_with_a_resumable_checkpoint(straight, tiny, tmp_path):
    done = []

    def should_stop():  # polled before each clip's extraction and after every step
        return done[-1:] == [3]

    result = train(tiny, tmp_path, hooks=TrainHooks(
        after_step=lambda trainer, step: done.append(step), should_stop=should_stop))
    assert result.status == "interrupted" and result.steps_done == 3
    entry = ckpt.CheckpointManager(tmp_path / "checkpoints").find()
    assert entry.step == 3 and entry.reason == "interrupt"
    assert not (tmp_path / "adapter_final.safetensors").exists()
    train(tiny, tmp_path, resume=True, surgery=False)
    assert_same_run(straight[0], tmp_path)


def test_should_stop_during_feature_extraction_ends_the_job_and_keeps_the_cache(tiny,
                                                                                  tmp_path):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) == 3  # polled before each clip: two clips extracted, then stop

    cache = tmp_path / "cache"
    result = train(tiny, tmp_path / "out", hooks=TrainHooks(should_stop=should_stop),
                   cache_dir=str(cache))
    assert result.status == "interrupted" and result.steps_done == 0
    assert result.summary["stage"] == "features"
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert not (tmp_path / "out" / "checkpoints").exists()
    again = train(tiny, tmp_path / "out", cache_dir=str(cache), steps=1, warmup_steps=0,
                  save_every=1, val_every=1, surgery=False)
    assert again.completed and again.summary["features_reused"] == 2


def test_training_on_a_callers_pipeline_leaves_it_as_it_was(tiny, tmp_path):
    from selva_core.model.lora import iter_lora_layers

    pipe = fresh(tiny[0])
    gen = pipe.generator
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    flags = {n: p.requires_grad for n, p in gen.named_parameters()}
    seq, mode = gen.seq, gen.training
    cfg = make_cfg(tiny, tmp_path, steps=2, warmup_steps=0, save_every=2, val_every=2,
                   surgery=False, duration=2.0,  # other sequence lengths than the caller's
                   cache_dir=str(tmp_path / "cache"))
    result = run_training(cfg, pipeline=pipe)
    assert result.completed
    assert pipe.generator is gen and not list(iter_lora_layers(gen))  # no adapter left on it
    after = gen.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in gen.named_parameters()} == flags
    assert gen.seq == seq and gen.training == mode
    # the caller's encoders were not freed: it can still extract features
    assert None not in (pipe.video_encoder, pipe.clip_text, pipe.t5)
    assert pipe.vae.encoder is not None


def test_lora_dropout_changes_the_training_and_still_resumes_exactly(tiny, tmp_path):
    options = dict(steps=4, save_every=2, val_every=2, surgery=False, lora_dropout=0.3)

    def ctrl_c(trainer, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    dropped = train(tiny, tmp_path / "dropout", **options)
    assert dropped.summary["lora_dropout"] == 0.3
    stopped = train(tiny, tmp_path / "resumed", hooks=TrainHooks(after_step=ctrl_c), **options)
    assert stopped.status == "interrupted"
    train(tiny, tmp_path / "resumed", resume=True, **options)
    plain = train(tiny, tmp_path / "plain", **{**options, "lora_dropout": 0.0})
    assert plain.summary["lora_dropout"] == 0.0
    name = "adapter_final.safetensors"
    a, b, c = (load_file(str(tmp_path / d / name)) for d in ("dropout", "resumed", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # dropout draws are part of the exact resume
    assert any(not torch.equal(a[k], c[k]) for k in a)  # and they do change the training
    from safetensors import safe_open

    with safe_open(str(tmp_path / "dropout" / name), "pt") as fh:
        assert json.loads(fh.metadata()["user"])["lora_dropout"] == 0.3


def test_a_rank_above_the_narrowest_layer_is_refused_before_any_extraction(tiny, tmp_path):
    cache = tmp_path / "fresh_cache"
    with pytest.raises(ValueError, match=r"--rank 100000 is larger than the narrowest adapted "
                                         r"layer \(.*\d+ wide on tiny_16k\); use --rank \d+"):
        train(tiny, tmp_path / "out", rank=100000, cache_dir=str(cache))
    assert not cache.exists()


def test_padding_windows_and_a_batch_larger_than_the_data_are_warned_about(tiny, tmp_path,
                                                                          caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        result = train(tiny, tmp_path / "out", duration=3.0, batch_size=16, grad_accum=1,
                       steps=1, warmup_steps=0, save_every=1, val_every=1, surgery=False,
                       cache_dir=str(tmp_path / "cache"))  # 1 s clips in 3 s windows
    assert result.completed
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "most of the training windows are padding" in text
    assert "--batch_size 16 is larger than the training set (6 windows)" in text
    assert result.summary["audio_share_of_windows"] == pytest.approx(1 / 3, abs=0.02)


# --- memory options: gradient checkpointing, half-precision frozen weights -----------------
def test_gradient_checkpointing_trains_the_same_adapter_bit_for_bit(straight, tiny, tmp_path):
    seen = []

    def check(trainer, step):
        seen.append(trainer.gen.gradient_checkpointing)

    result = train(tiny, tmp_path, hooks=TrainHooks(after_step=check), samples=True,
                   gradient_checkpointing=True)
    assert seen and all(seen) and result.summary["gradient_checkpointing"] is True
    assert_same_run(straight[0], tmp_path, final=True)
    assert result.summary["peak_memory_mb"] > 0 and result.summary["peak_memory_method"]


def test_resuming_with_gradient_checkpointing_flipped_is_bit_identical(straight, tiny,
                                                                       tmp_path):
    def ctrl_c(trainer, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    assert train(tiny, tmp_path, hooks=TrainHooks(after_step=ctrl_c)).status == "interrupted"
    train(tiny, tmp_path, resume=True, surgery=False, gradient_checkpointing=True)
    assert_same_run(straight[0], tmp_path)


def test_bf16_frozen_weights_on_cpu_train_fp32_adapters(tiny, tmp_path):
    from selva_core.model.lora import iter_lora_layers

    seen = []

    def check(trainer, step):
        layer = next(layer for _, layer in iter_lora_layers(trainer.gen))
        seen.append((layer.base_layer.weight.dtype, trainer.autocast_dtype))

    pipe = fresh(tiny[0])
    cfg = make_cfg(tiny, tmp_path, steps=2, warmup_steps=0, save_every=2, val_every=2,
                   base_dtype="bf16", precision="bf16", samples=True)
    result = run_training(cfg, pipeline=pipe, hooks=TrainHooks(after_step=check))
    assert result.completed and seen[0] == (torch.bfloat16, torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in pipe.generator.parameters())  # shared: fp32
    final = load_file(str(tmp_path / "adapter_final.safetensors"))
    assert all(v.dtype == torch.float32 for v in final.values())
    assert all(math.isfinite(r["loss"]) for r in train_records(tmp_path))
    with pytest.raises(ValueError, match="--base_dtype bf16 needs every forward under bf16 "
                                         "autocast, but --precision is fp32"):
        train(tiny, tmp_path / "bad", base_dtype="bf16", precision="fp32")


def test_one_cached_pipeline_renders_with_adapters_and_trains_without_being_changed(straight,
                                                                                   tiny,
                                                                                   tmp_path):
    """The ComfyUI / evaluator pattern: one pipeline object serves a plain render, a render
    with two adapters (0.7 and 0.3), a short training run and a plain render again."""
    from selva_core.data import scan_dataset
    from selva_core.data.video import decode_frames

    pipe = tiny[0]  # the module's cached pipeline itself, not a copy
    clip = scan_dataset(tiny[1])[0]
    features = pipe.extract_features(decode_frames(clip.video_path), clip.prompt, DURATION)
    settings = dict(seed=3, num_steps=2, cfg_strength=4.5)
    first = pipe.render(features, **settings)
    out = straight[0]
    adapted = pipe.with_adapters([(out / "adapter_final.safetensors", 0.7),
                                  (out / "checkpoints/step_000002/adapter.safetensors", 0.3)])
    both = adapted.render(features, **settings)
    assert (both - first).abs().max() > 1e-6  # the adapters change the sound
    result = run_training(make_cfg(tiny, tmp_path, steps=2, warmup_steps=0, save_every=2,
                                   val_every=2, surgery=False, samples=False), pipeline=pipe)
    assert result.completed and not pipe.adapters
    assert torch.equal(adapted.render(features, **settings), both)
    assert torch.equal(pipe.render(features, **settings), first)  # bit-identical
