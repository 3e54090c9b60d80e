"""The generic golden runner (`python -m tests.golden FOLDER`): good cases pass, bad ones fail."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import GOLDEN_DIR, ROOT
from tests.golden import discover_cases
from tests.golden.__main__ import main

CHEAP_CASES = ["mel_16k", "sync_upsample_index", "vae_16k"]


def _copy_cases(names, dst):
    for name in names:
        spec = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
        shutil.copy(GOLDEN_DIR / f"{name}.json", dst)
        shutil.copy(GOLDEN_DIR / spec["file"], dst)
    shutil.copy(GOLDEN_DIR / "seeded_weights.py", dst)


def test_runner_discovers_every_bundled_case():
    names = {p.stem for p in discover_cases(GOLDEN_DIR)}
    assert {"gen_small_16k_forward", "video_enc_2seg", "bigvgan_v2_44k", "mel_44k"} <= names
    assert "README" not in names


@pytest.mark.slow  # vae_16k is a full-size VAE
def test_runner_passes_cases_copied_to_another_folder(tmp_path, capsys):
    _copy_cases(CHEAP_CASES, tmp_path)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 passed, 0 failed" in out
    assert "output.log_mel" in out


def test_runner_fails_when_an_output_is_perturbed(tmp_path, capsys):
    _copy_cases(["mel_16k"], tmp_path)
    tensors = load_file(str(tmp_path / "mel_16k.safetensors"))
    tensors["output.log_mel"] = tensors["output.log_mel"] + 1e-3
    save_file(tensors, str(tmp_path / "mel_16k.safetensors"))
    assert main([str(tmp_path)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_runner_fails_when_the_manifest_is_missing(tmp_path, capsys, monkeypatch):
    _copy_cases(["vae_16k"], tmp_path)
    spec = json.loads((tmp_path / "vae_16k.json").read_text())
    spec["manifest"] = "reference/no_such_manifest.json"
    (tmp_path / "vae_16k.json").write_text(json.dumps(spec))
    assert main([str(tmp_path)]) == 1
    assert "no_such_manifest" in capsys.readouterr().out


def test_runner_command_line_exits_nonzero_on_an_empty_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tests.golden", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "no golden cases" in proc.stderr


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n.startswith("vae") else n for n in CHEAP_CASES])
def test_bundled_cheap_case_matches_reference(name):
    from tests.golden import load_case, run_case

    result = run_case(load_case(GOLDEN_DIR / f"{name}.json"))
    assert result.ok, (result.error, [(c.name, c.max_error, c.atol) for c in result.checks])
    assert torch.isfinite(torch.tensor([c.max_error for c in result.checks])).all()


def _sample_case_with(**config):
    from tests.golden import load_case

    case = load_case(GOLDEN_DIR / "gen_small_16k_sample.json")
    case.spec = {**case.spec, "config": {**case.config, **config}}
    return case


def test_sampling_cases_pass_their_recorded_sampler_settings(monkeypatch):
    """num_steps, cfg_strength and min_sigma come from the case, not from our defaults."""
    import selva_core.flow_matching as fm
    from tests.golden import components

    seen = {}

    class _Stub:
        def unnormalize(self, x):
            return x

    def fake_euler(model, x0, *args, **kwargs):
        seen.update(kwargs)
        return x0

    monkeypatch.setattr(components, "_generator", lambda case: _Stub())
    monkeypatch.setattr(fm, "euler_sample", fake_euler)
    case = _sample_case_with(num_steps=7, cfg_strength=2.5, min_sigma=0.25)
    components.run_generator(case)
    assert (seen["num_steps"], seen["cfg_strength"], seen["min_sigma"]) == (7, 2.5, 0.25)
    assert seen["negative_text_f"] is not None


def test_sampling_case_with_an_unknown_sampler_is_reported_not_run_as_euler():
    from tests.golden import run_case

    result = run_case(_sample_case_with(inference_mode="dopri5"))
    assert not result.ok and "dopri5" in result.error
