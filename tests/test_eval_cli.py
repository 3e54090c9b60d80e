"""eval_adapters.py: --help documents every spec field, errors exit 2, a tiny spec runs."""

from __future__ import annotations

import json

import pytest

import eval_adapters
from selva_core.evaluation.spec import FIELD_HELP
from tests.eval_data import make_clips


def test_help_documents_every_spec_field_and_metric(capsys):
    parser = eval_adapters.build_parser()
    text = parser.format_help()
    for name, _, _ in FIELD_HELP:
        assert f"  {name} (default" in text, name
    for metric in ("hf_energy_ratio", "lsd_db", "mcd_db", "drift_lsd_db", "desync_s",
                   "clap_score"):
        assert metric in text


def test_the_example_spec_uses_only_known_fields(capsys):
    assert eval_adapters.main(["--example"]) == 0
    example = json.loads(capsys.readouterr().out)
    assert set(example) <= {name for name, _, _ in FIELD_HELP}


def test_a_bad_spec_is_one_message_and_exit_status_2(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"data_dir": str(tmp_path / "none"), "steps": -1}))
    assert eval_adapters.main([str(spec)]) == 2
    err = capsys.readouterr().err
    assert "'data_dir'" in err and "'steps'" in err and "Traceback" not in err


@pytest.mark.slow  # builds the pipeline from the spec (the tiny model's encoders: ~0.7 GB)
def test_a_tiny_spec_runs_end_to_end(tmp_path, capsys):
    clips = make_clips(tmp_path / "clips", silent=False)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"data_dir": "clips", "output_dir": "out", "variant": "tiny_16k",
                                "steps": 1, "clips": ["hum_000"], "device": "cpu"}))
    assert eval_adapters.main([str(spec), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "SelVA adapter evaluation eval: completed" in out and "index.html" in out
    summary = json.loads((tmp_path / "out" / "eval_summary.json").read_text())
    assert summary["status"] == "completed" and summary["variant"] == "tiny_16k"
    assert clips.is_dir() and (tmp_path / "out" / "index.html").is_file()


def test_an_output_dir_that_is_a_file_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("my notes")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"data_dir": str(tmp_path), "output_dir": str(out)}))
    assert eval_adapters.main([str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"output_dir {out} is a file, not a folder" in err and "Errno" not in err
    assert out.read_text() == "my notes"


def test_a_full_disk_is_one_line_naming_the_folder_and_how_to_finish(tmp_path, capsys,
                                                                     monkeypatch):
    import errno

    import selva_core.evaluation.runner as runner
    from selva_core.atomic import OutOfSpaceError

    def full(spec, progress=True):
        raise OutOfSpaceError(tmp_path / "o" / "renders" / "a.wav", errno.ENOSPC)

    monkeypatch.setattr(runner, "run_evaluation", full)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"data_dir": str(tmp_path), "output_dir": str(tmp_path / "o")}))
    assert eval_adapters.main([str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"in {tmp_path / 'o' / 'renders'}: the disk is full" in lines[0]
    assert "run the same command again" in lines[0]


def test_an_unknown_rank_by_exits_2_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"data_dir": str(tmp_path), "output_dir": "out",
                                "rank_by": "loudness"}))
    assert eval_adapters.main([str(spec), "--quiet"]) == 2
    assert "'rank_by'" in capsys.readouterr().err and not (tmp_path / "out").exists()
