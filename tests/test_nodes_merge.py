"""SelVA LoRA Merge node on the ComfyUI stand-ins: writes into models/loras, clear refusals."""

from __future__ import annotations

import json
import sys

import pytest

from selva_core.model.lora import read_adapter_file
from tests.node_harness import PACK_NAME, load_pack, node, run_node
from tests.test_lora_common import rel_err
from tests.test_lora_merge import _adapter_file, _stacked_output


@pytest.fixture()
def loras(tmp_path):
    load_pack()
    import folder_paths

    folder = folder_paths.get_folder_paths("loras")[0]
    from pathlib import Path

    folder = Path(folder)
    made = [_adapter_file(folder, "merge_src_a", 1), _adapter_file(folder, "merge_src_b", 2),
            _adapter_file(folder, "merge_src_other", 3, variant="other_variant")]
    yield folder
    for p in [*made, *folder.glob("merge_out*")]:
        p.unlink(missing_ok=True)


def _inputs(**kw):
    base = dict(lora_a="merge_src_a.safetensors", weight_a=0.7,
                lora_b="merge_src_b.safetensors", weight_b=0.3, method="linear", rank=0,
                density=0.2, seed=0, filename="merge_out", overwrite=False)
    base.update(kw)
    return base


def test_merge_node_schema_has_a_tooltip_on_every_input_and_lists_the_adapters(loras):
    schema = node("SelVALoraMerge").define_schema()
    schema.validate()
    assert all(i.tooltip for i in schema.inputs)
    combo = next(i for i in schema.inputs if i.id == "lora_a")
    assert "merge_src_a.safetensors" in combo.options
    assert {i.id for i in schema.inputs if i.optional} == {"lora_c", "weight_c"}


def test_merge_node_writes_a_loadable_exact_linear_merge_into_models_loras(loras):
    name, report = run_node("SelVALoraMerge", **_inputs())
    assert name == "merge_out.safetensors" and "method linear" in report
    merged = loras / name
    meta = read_adapter_file(merged)[1]
    assert json.loads(meta["user"])["merge"]["method"] == "linear"
    want = _stacked_output([(loras / "merge_src_a.safetensors", 0.7),
                            (loras / "merge_src_b.safetensors", 0.3)])
    assert rel_err(_stacked_output([(merged, 1.0)]), want) < 1e-6


def test_merge_node_reports_the_worst_layer_error_of_svd(loras):
    _, report = run_node("SelVALoraMerge", **_inputs(method="svd", rank=2))
    assert "worst relative error" in report


def test_merge_node_refuses_an_existing_file_unless_overwrite_and_other_variants(loras):
    run_node("SelVALoraMerge", **_inputs())
    common = sys.modules[f"{PACK_NAME}.nodes.common"]
    with pytest.raises(common.SelvaNodeError, match="SelVA LoRA Merge: filename: .*exists"):
        run_node("SelVALoraMerge", **_inputs())
    run_node("SelVALoraMerge", **_inputs(overwrite=True))
    with pytest.raises(common.SelvaNodeError, match="SelVA LoRA Merge: .*other_variant"):
        run_node("SelVALoraMerge", **_inputs(lora_b="merge_src_other.safetensors",
                                             filename="merge_out_bad"))
    assert not (loras / "merge_out_bad.safetensors").exists()


def test_merge_node_method_list_equals_the_librarys():
    from selva_core.model.lora.merge import DEFAULT_DENSITY, METHODS

    load_pack()
    lora = sys.modules[f"{PACK_NAME}.nodes.lora"]
    assert tuple(lora.MERGE_METHODS) == METHODS and lora.MERGE_DENSITY == DEFAULT_DENSITY
