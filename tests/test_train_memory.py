"""Memory options of the trainer: --gradient_checkpointing and --base_dtype.

Half-precision frozen weights run every forward (training, validation, surgery, checkpoint
samples) under autocast in their dtype and leave the adapter file's format as the fp32 run's;
the summary gives the run's peak memory; neither option is part of the adapter's identity, so a
run may be resumed with them changed; gradient checkpointing works under DDP unchanged. (The
bit-for-bit checkpointing and flip-on-resume tests live with the main loop tests in
test_train_loop.py.)
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import load_file

from selva_core.model.lora import iter_lora_layers, load_adapter
from selva_core.training.config import TrainConfig, config_from_args
from selva_core.training.record import adapter_identity
from selva_core.training.report import format_summary
from selva_core.training.run import run_training
from selva_core.training.trainer import TrainHooks, resolve_run_dtypes
from tests.training_data import fresh, tiny_training_set

DURATION = 1.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(pipeline, data_dir, cache_dir): four synthetic clips with a warm feature cache."""
    s = tiny_training_set(tmp_path_factory.mktemp("train_memory"), clips_per_class=2, seed=3,
                          duration=DURATION)
    return s.pipe, s.data_dir, s.cache_dir


def make_cfg(tiny, out, **kw) -> TrainConfig:
    _, data_dir, cache_dir = tiny
    base = dict(data_dir=str(data_dir), output_dir=str(out), cache_dir=str(cache_dir),
                variant="tiny_16k", duration=DURATION, steps=2, warmup_steps=0, batch_size=2,
                grad_accum=1, save_every=2, val_every=1, rank=4, lr=2e-3, sample_steps=2,
                val_clips=1, samples=False, surgery=False, quiet=True, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def train_losses(out) -> list[float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def fp32_run(tiny, tmp_path_factory):
    """An fp32 run; records the devices whose peak-memory mark run_training reset."""
    import selva_core.training.run as run_module

    out = tmp_path_factory.mktemp("fp32")
    resets = []
    with pytest.MonkeyPatch.context() as mp_:
        real = run_module.reset_peak_memory
        mp_.setattr(run_module, "reset_peak_memory", lambda d: (resets.append(d), real(d)))
        result = run_training(make_cfg(tiny, out, base_dtype="fp32", surgery=True),
                              pipeline=fresh(tiny[0]))
    result.resets = resets
    return out, result


@pytest.fixture(scope="module")
def bf16_run(tiny, tmp_path_factory):
    """bf16 frozen weights on CPU with checkpointing, surgery and checkpoint samples on."""
    out = tmp_path_factory.mktemp("bf16")
    pipe = fresh(tiny[0])
    seen = []

    def check(trainer, step):
        layer = next(layer for _, layer in iter_lora_layers(trainer.gen))
        seen.append((layer.base_layer.weight.dtype, trainer.autocast_dtype))

    cfg = make_cfg(tiny, out, base_dtype="bf16", precision="bf16", gradient_checkpointing=True,
                   surgery=True, samples=True)
    moved = []  # the dtype of a frozen weight when the trainer moves the generator to its device

    def to_device(gen):
        real = gen.to

        def to(*args, **kwargs):
            layers = [layer for _, layer in iter_lora_layers(gen)]
            moved.append(layers[0].base_layer.weight.dtype if layers else None)
            return real(*args, **kwargs)
        return to

    real_fork = type(pipe).fork

    def fork(self):
        child = real_fork(self)
        child.generator.to = to_device(child.generator)
        return child

    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(type(pipe), "fork", fork)
        result = run_training(cfg, pipeline=pipe, hooks=TrainHooks(after_step=check))
    result.moved = moved
    return out, result, pipe, seen


# --- half-precision frozen weights -----------------------------------------------------------
def test_bf16_base_on_cpu_trains_validates_operates_and_samples_under_bf16(bf16_run):
    out, result, pipe, seen = bf16_run
    assert result.completed and result.steps_done == 2
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 2
    assert result.moved[:1] == [torch.bfloat16]  # cast first, then moved to the device
    # surgery's calibration and validation forwards and the samples ran on the bf16 weights
    surgery = json.loads((out / "surgery.json").read_text())
    assert surgery["decision"] in ("kept", "reverted")
    assert math.isfinite(surgery["val_loss_before"]) and math.isfinite(surgery["val_loss_after"])
    for tag in ("step_000000_base", "step_000002", "final"):
        assert (out / "samples" / f"{tag}.wav").stat().st_size > 44
    assert all(math.isfinite(x) for x in train_losses(out))
    # the caller's (shared) weights stay fp32: the cast swapped parameters on the fork only
    assert all(p.dtype == torch.float32 for p in pipe.generator.parameters())


def test_bf16_base_writes_an_adapter_file_of_the_fp32_runs_format(bf16_run, fp32_run, tiny,
                                                                 caplog):
    out16, *_ = bf16_run
    out32, _ = fp32_run
    a = load_file(str(out32 / "adapter_final.safetensors"))
    b = load_file(str(out16 / "adapter_final.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert b[k].dtype == a[k].dtype == torch.float32 and b[k].shape == a[k].shape, k
    with safe_open(str(out32 / "adapter_final.safetensors"), "pt") as fa, \
            safe_open(str(out16 / "adapter_final.safetensors"), "pt") as fb:
        ma, mb = fa.metadata(), fb.metadata()
    assert ma.keys() == mb.keys()
    # the same base: the fingerprint is that of the weights as loaded, not of their bf16 copy
    assert ma["base_fingerprint"] == mb["base_fingerprint"]
    user_a, user_b = json.loads(ma["user"]), json.loads(mb["user"])
    assert user_a.keys() == user_b.keys()
    assert (user_a["base_dtype"], user_b["base_dtype"]) == ("torch.float32", "torch.bfloat16")
    # it loads on the plain fp32 generator without a "different base weights" warning
    gen = copy.deepcopy(tiny[0].generator).eval()
    with caplog.at_level("WARNING"):
        load_adapter(gen, out16 / "adapter_final.safetensors", expected_variant="tiny_16k")
    assert "different base weights" not in caplog.text
    assert all(p.dtype == torch.float32 for p in gen.parameters())
    # the same training, up to bf16 rounding: the first step (adapter still zero) agrees
    first32, first16 = train_losses(out32)[0], train_losses(out16)[0]
    assert first16 == pytest.approx(first32, rel=2e-2) and first16 != first32


def test_summary_and_cli_summary_give_the_runs_peak_memory(bf16_run, fp32_run):
    for out, result in ((bf16_run[0], bf16_run[1]), fp32_run):
        summary = json.loads((out / "summary.json").read_text())
        assert summary == json.loads(json.dumps(result.summary))
        assert summary["peak_memory_mb"] > 50  # the interpreter and torch alone exceed that
        assert summary["peak_memory_method"] == "process peak resident memory"  # on CPU
        text = format_summary(summary)
        assert f"peak {summary['peak_memory_mb']:.0f} MB" in text
    bf16 = json.loads((bf16_run[0] / "summary.json").read_text())
    assert bf16["base_dtype"] == "torch.bfloat16" and bf16["gradient_checkpointing"] is True
    assert "base weights bfloat16, gradient checkpointing on" in format_summary(bf16)


def test_a_run_reports_its_own_cuda_peak_not_the_processes(fp32_run, monkeypatch):
    from selva_core.model.precision import peak_memory_bytes, reset_peak_memory

    assert fp32_run[1].resets == [torch.device("cpu")]  # once, at the start of the run
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(d))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**30)
    gpu = torch.device("cuda", 0)
    reset_peak_memory(gpu)
    reset_peak_memory(torch.device("cpu"))  # a process's resident peak cannot be reset
    assert calls == [gpu]
    assert peak_memory_bytes(gpu) == (3 * 2**30, "cuda max_memory_allocated")


# --- precision and base dtype together --------------------------------------------------------
@pytest.mark.parametrize("base,precision", [("bf16", "fp32"), ("fp16", "bf16"),
                                            ("fp16", "fp32")])
def test_a_contradicting_precision_is_one_clear_cli_error(base, precision, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--demo", "--output_dir", str(out), "--base_dtype", base,
                          "--precision", precision])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert (f"--base_dtype {base} needs every forward under {base} autocast, but --precision "
            f"is {precision}; use --precision auto") in errors[0]
    assert not out.exists()


def test_auto_base_dtype_is_bf16_on_a_native_bf16_gpu_unless_precision_is_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")

    def resolved(device, **kw):
        return resolve_run_dtypes(TrainConfig(demo=True, **kw).validate(), device)

    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    assert resolved(gpu) == (bf16, bf16)
    assert resolved(gpu, precision="fp32") == (None, fp32)  # no error: auto follows fp32
    assert resolved(gpu, precision="bf16") == (bf16, bf16)
    assert resolved(gpu, base_dtype="fp32") == (bf16, fp32)
    assert resolved(gpu, base_dtype="fp16") == (fp16, fp16)  # auto precision follows the base
    assert resolved(cpu) == (None, fp32)
    assert resolved(cpu, base_dtype="bf16") == (bf16, bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolved(gpu) == (None, fp32)  # a GPU without bf16: fp32 as before
    # a card that only emulates bf16 (before compute capability 8.0) stays fp32 too
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert resolved(gpu) == (None, fp32)
    assert resolved(gpu, base_dtype="bf16") == (bf16, bf16)  # asked for: still possible


# --- resume ------------------------------------------------------------------------------------
def test_neither_option_is_part_of_the_adapter_identity_so_resume_may_change_them(
        tiny, fp32_run, tmp_path):
    plain = make_cfg(tiny, tmp_path)
    changed = make_cfg(tiny, tmp_path, base_dtype="bf16", gradient_checkpointing=True)
    assert adapter_identity(plain) == adapter_identity(changed)

    def ctrl_c(trainer, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    first = run_training(make_cfg(tiny, tmp_path, base_dtype="fp32", surgery=True),
                         pipeline=fresh(tiny[0]), hooks=TrainHooks(after_step=ctrl_c))
    assert first.status == "interrupted" and first.steps_done == 1
    resumed = run_training(make_cfg(tiny, tmp_path, base_dtype="bf16", resume=True,
                                    gradient_checkpointing=True, surgery=True),
                           pipeline=fresh(tiny[0]))
    assert resumed.completed and resumed.summary["base_dtype"] == "torch.bfloat16"
    straight = train_losses(fp32_run[0])
    losses = train_losses(tmp_path)
    assert losses[0] == straight[0]  # the fp32 step before the interruption
    assert losses[1] == pytest.approx(straight[1], rel=5e-2)  # the bf16 step after it


# --- several processes ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: TrainConfig, pipe) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    assert run_training(cfg, pipeline=fresh(pipe)).completed


def test_checkpointing_with_bf16_weights_under_ddp_follows_the_single_process_run(
        tiny, tmp_path):
    kw = dict(gradient_checkpointing=True, base_dtype="bf16", steps=2, grad_accum=2)
    single_out, ddp_out = tmp_path / "single", tmp_path / "ddp"
    run_training(make_cfg(tiny, single_out, batch_size=2, **kw), pipeline=fresh(tiny[0]))
    mp.start_processes(_worker, args=(2, _free_port(),
                                      make_cfg(tiny, ddp_out, batch_size=1, **kw), tiny[0]),
                       nprocs=2, join=True, start_method="fork")
    single, ddp = train_losses(single_out), train_losses(ddp_out)
    assert len(single) == len(ddp) == 2
    assert ddp == pytest.approx(single, rel=2e-2)
    summary = json.loads((ddp_out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["gradient_checkpointing"] is True
    assert summary["base_dtype"] == "torch.bfloat16"


# --- fp16: loss scaling -------------------------------------------------------------------------
def _overflow_at_first_step(trainer, step, micro):
    """Stands for fp16 gradients that overflowed in the first step."""
    if step == 0:
        trainer.params[0].grad.fill_(float("inf"))


def _train_records(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def test_fp16_base_scales_the_loss_skips_an_overflow_and_resumes_exactly(tiny, tmp_path):
    from selva_core.training import checkpoint as ckpt
    from selva_core.training.trainer import LOSS_SCALE_INIT

    kw = dict(base_dtype="fp16", save_every=1, val_every=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = run_training(make_cfg(tiny, straight, **kw), pipeline=fresh(tiny[0]),
                          hooks=TrainHooks(after_micro_step=_overflow_at_first_step))
    assert result.completed and result.summary["precision"] == "torch.float16"
    first, second = _train_records(straight)
    # the overflowing step updated nothing (B starts at zero) and halved the scale
    assert (first["loss_scale"], first["skipped"], first["grad_norm"]) == (
        LOSS_SCALE_INIT, True, None)
    step1 = load_file(str(straight / "checkpoints/step_000001/adapter.safetensors"))
    assert all(not v.any() for k, v in step1.items() if k.endswith("_B"))
    assert (second["loss_scale"], second["skipped"]) == (LOSS_SCALE_INIT / 2, False)
    assert math.isfinite(second["grad_norm"]) and second["grad_norm"] > 0
    step2 = load_file(str(straight / "checkpoints/step_000002/adapter.safetensors"))
    assert any(v.any() for k, v in step2.items() if k.endswith("_B"))

    def ctrl_c(trainer, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    hooks = TrainHooks(after_micro_step=_overflow_at_first_step, after_step=ctrl_c)
    assert run_training(make_cfg(tiny, resumed, **kw), pipeline=fresh(tiny[0]),
                        hooks=hooks).status == "interrupted"
    state = ckpt.TrainingState.load(resumed / "checkpoints/step_000001" / ckpt.STATE_FILE)
    assert state.extra["loss_scale"] == LOSS_SCALE_INIT / 2
    run_training(make_cfg(tiny, resumed, resume=True, **kw), pipeline=fresh(tiny[0]))
    assert _train_records(resumed)[-1]["loss_scale"] == LOSS_SCALE_INIT / 2
    again = load_file(str(resumed / "checkpoints/step_000002/adapter.safetensors"))
    assert again.keys() == step2.keys()
    assert all(torch.equal(again[k], step2[k]) for k in step2)


@pytest.mark.parametrize("failure", ["device", "cpu allocator"])
def test_out_of_memory_offers_only_the_settings_not_already_in_use(tiny, tmp_path, monkeypatch,
                                                                   failure):
    import selva_core.training.trainer as trainer_module
    from selva_core.model.precision import OUT_OF_MEMORY_ERROR

    def no_memory(*args, **kwargs):
        if failure == "device":
            raise OUT_OF_MEMORY_ERROR("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 2147483648 bytes.")

    monkeypatch.setattr(trainer_module, "training_loss", no_memory)
    cfg = make_cfg(tiny, tmp_path, gradient_checkpointing=True, batch_size=1, save_every=1)
    with pytest.raises(trainer_module.TrainingOutOfMemoryError) as caught:
        run_training(cfg, pipeline=fresh(tiny[0]))
    message = str(caught.value)
    assert isinstance(caught.value, OUT_OF_MEMORY_ERROR)  # hosts that free memory on OOM see it
    assert "optimiser step 1" in message and "no checkpoint was written yet" in message
    assert "--duration (now 1 s)" in message
    assert "--gradient_checkpointing" not in message and "--batch_size" not in message


def test_other_errors_of_a_training_step_pass_through_unchanged(tiny, tmp_path, monkeypatch):
    import selva_core.training.trainer as trainer_module

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(trainer_module, "training_loss", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as caught:
        run_training(make_cfg(tiny, tmp_path), pipeline=fresh(tiny[0]))
    assert not isinstance(caught.value, trainer_module.TrainingOutOfMemoryError)
