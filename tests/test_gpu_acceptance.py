"""benchmarks/gpu_acceptance.py: its dry run (the GPU run's code on the CPU, tiny sizes) works
without the modules a bare GPU machine lacks, and its figures make sense."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.py"
# Not installed on the lent GPU machine (torch, numpy, safetensors, transformers, ... are).
MISSING_THERE = ("av", "soundfile", "librosa", "open_clip", "ftfy")

RUNNER = """
import json, runpy, sys
for name in {missing!r}:
    sys.modules[name] = None  # any import of it fails, as on the GPU machine
main = runpy.run_path({script!r}, run_name="gpu_acceptance")["main"]
result = main({argv!r})
heavy = [m for m in ("transformers", "open_clip", "av", "librosa") if sys.modules.get(m)]
print(json.dumps({{"heavy_modules": heavy, "errors": result["errors"]}}))
"""


def _run(argv: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    code = RUNNER.format(missing=MISSING_THERE, script=str(SCRIPT), argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                          timeout=600)
    return proc, proc.stdout.strip().splitlines()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_acceptance") / "result.json"
    proc, lines = _run(["--dry-run", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(lines[-2]), json.loads(lines[-1]), json.loads(out.read_text())


def test_dry_run_runs_every_section_without_the_gpu_machines_missing_modules(dry_run):
    result, check, written = dry_run
    assert check == {"heavy_modules": [], "errors": {}}
    assert result == written  # --out holds the printed JSON object
    assert set(result["section_s"]) == {"memory", "speed", "precision", "render", "residency",
                                        "eval"}


def test_dry_run_figures_are_finite_and_consistent(dry_run):
    r, _, _ = dry_run
    keys = ["peak_gb_tiny_16k_batch4", "peak_gb_tiny_16k_batch4_no_ckpt", "step_over_floor",
            "clips_per_s", "step_ckpt_over_step", "precision_latent_max_abs_diff",
            "precision_wave_max_abs_diff", "rtf_2s", "rtf_5s_windowed",
            "adapter_extra_tensor_over_adapter", "eval_batched_over_one_by_one"]
    assert all(isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0 for k in keys)
    # checkpointing keeps less for the backward pass
    assert r["peak_gb_tiny_16k_batch4"] < r["peak_gb_tiny_16k_batch4_no_ckpt"]
    # bf16 differs from fp32, but not wildly (seeded weights give a non-trivial render)
    assert 0 < r["precision_wave_max_abs_diff"] < r["precision_wave_max_abs"]
    assert r["render_long_windows"] >= 2 and r["render_long_finite"]
    # an adapted branch holds its adapter and nothing else of its own
    assert r["adapter_extra_tensor_over_adapter"] == pytest.approx(1.0)
    # batching never changes a render
    assert r["eval_batched_max_abs_diff"] < 1e-4


def test_unknown_section_is_one_clear_error():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--sections", "memry"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "unknown section(s) ['memry']" in proc.stderr


def test_a_failing_section_is_reported_and_the_others_still_run():
    code = (
        "import runpy, sys\n"
        f"g = runpy.run_path({str(SCRIPT)!r}, run_name='gpu_acceptance')\n"
        "def boom(ctx):\n"
        "    raise RuntimeError('boom')\n"
        "g['RUNNERS']['precision'] = boom\n"
        "sys.exit(1 if g['main'](['--dry-run', '--sections', 'precision,eval'])['errors'] "
        "else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 1
    assert result["errors"] == {"precision": "RuntimeError: boom"}
    assert "eval_batched_over_one_by_one" in result


def test_train_batch_sets_the_speed_batch_and_a_bad_one_is_refused():
    proc, lines = _run(["--dry-run", "--sections", "speed", "--train-batch", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(lines[-2])["speed_batch"] == 3
    proc, _ = _run(["--dry-run", "--sections", "speed", "--train-batch", "0"])
    assert proc.returncode == 2
    assert "--train-batch must be >= 1, got 0" in proc.stderr
