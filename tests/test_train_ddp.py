"""Data-parallel training (DDP, gloo on CPU): two processes with half the batch each follow
the single-process loss trajectory (same global batch), and only process 0 writes files."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from selva_core.training.config import TrainConfig
from selva_core.training.run import run_training
from tests.training_data import fresh, tiny_training_set

DURATION = 1.0
STEPS = 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    s = tiny_training_set(tmp_path_factory.mktemp("train_ddp"), clips_per_class=3, seed=1,
                          duration=DURATION)
    return s.pipe, s.data_dir, s.cache_dir


def _cfg(tiny, out, batch_size: int) -> TrainConfig:
    _, data_dir, cache_dir = tiny
    return TrainConfig(data_dir=str(data_dir), output_dir=str(out), cache_dir=str(cache_dir),
                       variant="tiny_16k", duration=DURATION, steps=STEPS, warmup_steps=1,
                       batch_size=batch_size, grad_accum=2, save_every=STEPS, val_every=STEPS,
                       rank=4, lr=3e-3, val_clips=1, samples=False, surgery=False, quiet=True,
                       device="cpu")


def _worker(rank: int, world: int, port: int, cfg: TrainConfig, pipe) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    result = run_training(cfg, pipeline=fresh(pipe))
    assert result.completed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out):
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_two_gloo_processes_match_the_single_process_loss_trajectory(tiny, tmp_path):
    single_out, ddp_out = tmp_path / "single", tmp_path / "ddp"
    run_training(_cfg(tiny, single_out, batch_size=4), pipeline=fresh(tiny[0]))
    # fork: the children inherit the built pipeline and the imported modules
    mp.start_processes(_worker, args=(2, _free_port(), _cfg(tiny, ddp_out, batch_size=2),
                                      tiny[0]),
                       nprocs=2, join=True, start_method="fork")
    single, ddp = _losses(single_out), _losses(ddp_out)
    assert len(single) == len(ddp) == STEPS  # one writer: no duplicated records
    assert ddp == pytest.approx(single, rel=1e-4, abs=1e-6)
    assert single[-1] != single[0]  # the trajectory actually moves
    a = load_file(str(single_out / "adapter_final.safetensors"))
    b = load_file(str(ddp_out / "adapter_final.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)
    summary = json.loads((ddp_out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 8
