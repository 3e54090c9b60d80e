"""The evaluation spec: the closest tool's fields, our additions, one error listing bad fields."""

from __future__ import annotations

import json

import pytest

from selva_core.evaluation.spec import (
    BASELINE_ID,
    EvalSpecError,
    load_spec,
)
from selva_core.run_folder import RunFolder


def _write(tmp_path, data) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_the_closest_tools_spec_keeps_its_meaning(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "a.safetensors").write_bytes(b"x")
    spec = load_spec(_write(tmp_path, {
        "name": "drums", "data_dir": "clips", "output_dir": "out", "steps": 10, "seed": 7,
        "adapters": [{"id": "base", "path": ""}, {"id": "a", "path": "a.safetensors"}]}))
    assert (spec.name, spec.steps, spec.seed, spec.seed_list) == ("drums", 10, 7, [7])
    assert spec.data_dir == str(tmp_path / "clips")  # relative to the spec file
    assert spec.output_dir == str(tmp_path / "out")
    assert [a.id for a in spec.adapters] == ["base", "a"]
    assert spec.adapters[0].is_baseline and spec.baseline.id == "base"
    assert spec.strengths_of(spec.adapters[1]) == [1.0]
    assert spec.cfg == 4.5 and spec.desync and spec.mp4


def test_a_baseline_is_added_when_none_is_listed(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    spec = load_spec(json.dumps({"data_dir": str(tmp_path), "output_dir": str(tmp_path / "o"),
                                 "adapters": [{"id": "a", "path": str(tmp_path / "a.safetensors"),
                                               "strengths": [0.5, 1.0]}],
                                 "strengths": [2.0]}))
    assert [a.id for a in spec.adapters] == [BASELINE_ID, "a"]
    assert spec.strengths_of(spec.adapters[1]) == [0.5, 1.0]  # its own strengths win
    assert spec.strengths_of(spec.adapters[0]) == [0.0]


def test_every_bad_field_is_named_in_one_error(tmp_path):
    with pytest.raises(EvalSpecError) as err:
        load_spec(json.dumps({
            "data_dir": str(tmp_path / "missing"), "steps": 0, "seed": -1, "cfg": "high",
            "strengths": [], "variant": "huge", "seeds": [1, 1], "colour": "red",
            "adapters": [{"id": "bad id!", "path": ""},
                         {"id": "x", "path": "/no/such.safetensors"}],
            "device": "tpu", "duration": 0.1,
        }))
    message = str(err.value)
    for needle in ("'data_dir'", "'steps'", "'seed'", "'cfg'", "'strengths'", "'variant'",
                   "'seeds'", "'colour' is unknown", "adapters[0].id", "/no/such.safetensors",
                   "'device'", "'duration'"):
        assert needle in message, needle
    assert len(err.value.problems) == 12


def test_json_errors_and_missing_files_are_clear(tmp_path):
    with pytest.raises(EvalSpecError, match="not valid JSON"):
        load_spec("{ not json")
    with pytest.raises(EvalSpecError, match="does not exist"):
        load_spec(str(tmp_path / "nope.json"))
    with pytest.raises(EvalSpecError, match="'data_dir' is required"):
        load_spec("{}")


def test_duplicate_ids_and_two_baselines_are_refused(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    a = str(tmp_path / "a.safetensors")
    with pytest.raises(EvalSpecError) as err:
        load_spec(json.dumps({"data_dir": str(tmp_path), "adapters": [
            {"id": "A", "path": a}, {"id": "a", "path": a},
            {"id": "b1", "path": ""}, {"id": "b2", "path": ""}]}))
    assert "used twice" in str(err.value) and "more than one" in str(err.value)


def test_a_run_folder_stands_for_every_checkpoint_and_the_final_adapter(tmp_path):
    run = tmp_path / "run"
    for step in (500, 100):
        (run / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
        (run / "checkpoints" / f"step_{step:06d}" / "adapter.safetensors").write_bytes(b"x")
    (run / "checkpoints" / "step_000900").mkdir()  # no adapter file: not a checkpoint
    (run / "adapter_final.safetensors").write_bytes(b"x")
    assert [label for label, _, _ in RunFolder(run).adapters()] == [
        "step_000100", "step_000500", "final"]
    spec = load_spec(json.dumps({"data_dir": str(tmp_path), "adapters": [
        {"id": "r", "path": str(run)}]}))
    assert [a.id for a in spec.adapters] == [
        BASELINE_ID, "r@step_000100", "r@step_000500", "r@final"]
    assert spec.adapters[2].step == 500 and spec.adapters[2].group == "r"


def test_a_folder_without_adapters_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalSpecError, match="folder without an adapter"):
        load_spec(json.dumps({"data_dir": str(tmp_path), "adapters": [
            {"id": "r", "path": str(tmp_path / "empty")}]}))


# --- issue 20 ------------------------------------------------------------------------------
def test_a_utf16_spec_with_a_byte_order_mark_is_read_and_other_bytes_name_the_file(tmp_path):
    data = {"data_dir": str(tmp_path), "output_dir": str(tmp_path / "o")}
    path = tmp_path / "spec.json"
    path.write_bytes(json.dumps(data).encode("utf-16"))  # with its byte-order mark
    assert load_spec(str(path)).data_dir == str(tmp_path)
    path.write_bytes(json.dumps(data).encode("utf-8")[:-1] + b"\xe9}")
    with pytest.raises(EvalSpecError, match=rf"{path} is not UTF-8 text.*save it as UTF-8"):
        load_spec(str(path))


def test_strengths_outside_the_loaders_range_are_refused_with_the_range(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    with pytest.raises(EvalSpecError, match=r"-3, 50 lie\(s\) outside \[-2, 2\]"):
        load_spec(json.dumps({"data_dir": str(tmp_path), "output_dir": str(tmp_path / "o"),
                              "adapters": [{"id": "a", "path": str(tmp_path / "a.safetensors"),
                                            "strengths": [-3.0, 1.0, 50.0]}]}))


def test_an_empty_adapter_list_says_only_the_baseline_is_rendered(tmp_path, caplog):
    spec = load_spec(json.dumps({"data_dir": str(tmp_path), "adapters": []}))
    assert [a.id for a in spec.adapters] == [BASELINE_ID]
    assert "'adapters' is an empty list: only the baseline" in caplog.text


def test_the_device_error_lists_cuda_n(tmp_path):
    with pytest.raises(EvalSpecError, match=r"choose one of auto, cpu, cuda, cuda:N"):
        load_spec(json.dumps({"data_dir": str(tmp_path), "device": "tpu"}))


def test_rank_by_defaults_to_lsd_and_takes_a_registry_metric(tmp_path):
    assert load_spec(json.dumps({"data_dir": str(tmp_path)})).rank_by == "lsd_db"
    spec = load_spec(json.dumps({"data_dir": str(tmp_path), "rank_by": "env_corr_lag0"}))
    assert spec.rank_by == "env_corr_lag0"


def test_an_unknown_rank_by_names_the_field_and_the_valid_keys(tmp_path):
    with pytest.raises(EvalSpecError) as e:
        load_spec(json.dumps({"data_dir": str(tmp_path), "rank_by": "loudness"}))
    line = next(x for x in str(e.value).splitlines() if "rank_by" in x)
    assert "'loudness'" in line and "lsd_db" in line and "env_corr_lag0" in line
