"""Weight files: models folder, verification (checksums, sidecars, sizes), preflight, safe reading
and strict checked loading. Downloads are tested in test_download.py."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from selva_core import weights
from selva_core.variants import WeightFile, get_variant
from selva_core.weights import (
    MissingWeightsError,
    WeightsError,
    ensure_checkpoint,
    load_checked,
    models_dir,
    read_state_dict,
    resolve_models_dir,
)

PAYLOAD = b"selva test weights \x00\x01\x02" * 100
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Toy(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.proj = nn.Linear(width, 3)
        self.norm = nn.LayerNorm(3)
        self.register_buffer("scale", torch.ones(3))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} was modified by a failing load"


def _toy_sd(width: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in Toy(width).state_dict().items()}


# --- models folder -------------------------------------------------------------------------------
def test_models_dir_explicit_argument_beats_env_which_beats_default(monkeypatch, tmp_path):
    monkeypatch.delenv("SELVA_MODELS_DIR", raising=False)
    assert resolve_models_dir() == Path("models") / "selva"
    monkeypatch.setenv("SELVA_MODELS_DIR", str(tmp_path / "env"))
    assert resolve_models_dir() == tmp_path / "env"
    assert resolve_models_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_models_dir(str(tmp_path / "arg")) == tmp_path / "arg"


# --- verification ---------------------------------------------------------------------------------
def _file(md5: str | None = PAYLOAD_MD5, **kwargs) -> WeightFile:
    return WeightFile("someone/repo", "weights/thing.pth", md5, **kwargs)


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _no_hashing(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("an unchanged verified file must not be hashed again")

    monkeypatch.setattr(models_dir, "file_digests", fail)


def test_present_file_with_right_md5_is_verified_once_then_trusted(tmp_path, monkeypatch):
    (tmp_path / "thing.pth").write_bytes(PAYLOAD)
    assert ensure_checkpoint(_file(), tmp_path) == tmp_path / "thing.pth"
    record = weights.read_sidecar(tmp_path / "thing.pth")
    assert record["md5"] == PAYLOAD_MD5 and record["checked_against"] == "published md5"
    assert record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    _no_hashing(monkeypatch)
    assert ensure_checkpoint(_file(), tmp_path) == tmp_path / "thing.pth"


def test_present_file_with_wrong_md5_raises_naming_the_file(tmp_path):
    (tmp_path / "thing.pth").write_bytes(PAYLOAD + b"x")
    with pytest.raises(WeightsError, match=r"checksum mismatch.*thing\.pth"):
        ensure_checkpoint(_file(), tmp_path)
    assert not weights.sidecar_path(tmp_path / "thing.pth").exists()
    # verification can be skipped on purpose
    assert ensure_checkpoint(_file(), tmp_path, verify=False) == tmp_path / "thing.pth"


def test_file_changed_after_verification_is_checked_again(tmp_path):
    path = tmp_path / "thing.pth"
    path.write_bytes(PAYLOAD)
    ensure_checkpoint(_file(), tmp_path)
    path.write_bytes(PAYLOAD[:-1] + b"!")  # same size, new content and mtime
    _touch_later(path)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        ensure_checkpoint(_file(), tmp_path)


def test_without_published_checksum_the_first_sha256_is_recorded_and_checked_later(
    tmp_path, monkeypatch
):
    path = tmp_path / "thing.pth"
    path.write_bytes(PAYLOAD)
    assert weights.verify_file(path, _file(None)) == models_dir.RECORDED_BY_HAND
    assert weights.read_sidecar(path)["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()

    path.write_bytes(PAYLOAD[:-1] + b"!")  # silently damaged, same size
    _touch_later(path)
    with pytest.raises(WeightsError, match=r"recorded at its first download.*thing\.pth"):
        weights.verify_file(path, _file(None))

    path.write_bytes(PAYLOAD)  # restored: a new mtime, the recorded sha256 matches again
    _touch_later(path)
    assert weights.verify_file(path, _file(None)) == models_dir.RECORDED_BY_HAND
    _no_hashing(monkeypatch)
    weights.verify_file(path, _file(None))


def test_size_check_fails_before_hashing(tmp_path, monkeypatch):
    path = tmp_path / "thing.pth"
    path.write_bytes(PAYLOAD[:100])
    _no_hashing(monkeypatch)
    with pytest.raises(WeightsError, match=r"100 bytes but thing\.pth has 2,"):
        weights.verify_file(path, _file(None, size=len(PAYLOAD)))


def test_file_truncated_after_its_sha256_was_recorded_is_named_without_hashing(
    tmp_path, monkeypatch
):
    path = tmp_path / "thing.pth"
    path.write_bytes(PAYLOAD)
    weights.verify_file(path, _file(None))
    path.write_bytes(PAYLOAD[:50])
    _no_hashing(monkeypatch)
    with pytest.raises(WeightsError, match=r"is 50 bytes but was 2,[0-9]+ bytes"):
        weights.verify_file(path, _file(None))


def test_force_rehashes_an_unchanged_file(tmp_path, monkeypatch):
    path = tmp_path / "thing.pth"
    path.write_bytes(PAYLOAD)
    weights.verify_file(path, _file())
    calls = []
    real = models_dir.file_digests
    monkeypatch.setattr(models_dir, "file_digests", lambda p: calls.append(p) or real(p))
    weights.verify_file(path, _file(), force=True)
    assert calls == [path]


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "download=False"])
def test_no_download_allowed_never_calls_the_hub(tmp_path, monkeypatch, how):
    def forbidden(*a, **k):
        raise AssertionError("the hub must not be contacted")

    monkeypatch.setattr(weights.hub, "probe", forbidden)
    monkeypatch.setattr(weights.hub, "fetch", forbidden)
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        kwargs = {}
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        kwargs = {"download": False}
    with pytest.raises(MissingWeightsError, match=r"thing\.pth") as info:
        ensure_checkpoint(_file(), tmp_path, **kwargs)
    msg = str(info.value)
    assert str((tmp_path / "thing.pth").absolute()) in msg
    assert "https://huggingface.co/someone/repo/resolve/main/weights/thing.pth" in msg


def test_preflight_returns_every_file_and_the_text_encoder_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = get_variant("small_16k")
    unchecked = {  # the same files without published md5s, so placeholder bytes verify
        f"{c}_file": dataclasses.replace(getattr(base, f"{c}_file"), md5=None)
        for c in ("generator", "video_encoder", "vae", "vocoder")
    }
    variant = dataclasses.replace(base, **unchecked)
    for file in variant.required_files().values():
        (tmp_path / file.relative_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file.relative_path).write_bytes(file.relative_path.encode())
    paths = weights.preflight(variant, tmp_path)
    assert paths["generator"] == tmp_path / "generator_small_16k_sup_5.pth"
    assert paths["clip_text"] == tmp_path / "DFN5B-CLIP-ViT-H-14-384"
    assert paths["t5"] == tmp_path / "flan-t5-base"
    assert paths["t5.weights"] == tmp_path / "flan-t5-base" / "model.safetensors"
    assert all(weights.read_sidecar(p) for k, p in paths.items() if k not in ("clip_text", "t5"))
    without_text = weights.preflight(variant, tmp_path, text_encoders=False)
    assert set(without_text) == {"generator", "video_encoder", "vae", "vocoder"}


# --- reading --------------------------------------------------------------------------------------
def test_reads_safetensors_and_pickles_with_subkey(tmp_path):
    sd = _toy_sd()
    save_file(sd, tmp_path / "a.safetensors")
    torch.save({"generator": sd, "steps": 3}, tmp_path / "b.pt")
    torch.save(sd, tmp_path / "c.pth", _use_new_zipfile_serialization=False)  # legacy: no mmap
    for got in (
        read_state_dict(tmp_path / "a.safetensors"),
        read_state_dict(tmp_path / "b.pt", subkey="generator"),
        read_state_dict(tmp_path / "c.pth"),
    ):
        assert got.keys() == sd.keys()
        assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_missing_subkey_and_wrapper_files_are_explained(tmp_path):
    torch.save({"generator": _toy_sd()}, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"no entry 'model'.*'generator'"):
        read_state_dict(tmp_path / "w.pt", subkey="model")
    with pytest.raises(WeightsError, match="nested state dicts"):
        read_state_dict(tmp_path / "w.pt")


def test_non_dict_content_is_rejected(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match=r"list\.pt holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_empty_file_is_rejected(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.pth is empty"):
        read_state_dict(tmp_path / "empty.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_rejected_as_corrupt(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(_toy_sd(), full)
    else:
        save_file(_toy_sd(), full)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) - 40])
    with pytest.raises(WeightsError, match=r"cut\.\w+ is truncated or corrupt"):
        read_state_dict(cut)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_pickle_that_would_execute_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"proj.weight": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refusing to unpickle arbitrary code") as info:
        read_state_dict(tmp_path / "evil.pth")
    assert "system" in str(info.value)
    assert not marker.exists()


# --- strict checked loading -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda sd: sd.pop("proj.bias"), r"missing 1 key: 'proj\.bias'"),
        (
            lambda sd: sd.__setitem__("extra.weight", torch.zeros(2)),
            r"unexpected 1 key: 'extra\.weight'",
        ),
        (
            lambda sd: sd.__setitem__("proj.weight", torch.zeros(3, 5)),
            r"1 key with the wrong shape: 'proj\.weight' file \(3, 5\) vs model \(3, 4\)",
        ),
    ],
    ids=["missing", "unexpected", "wrong_shape"],
)
def test_bad_state_dict_raises_one_error_and_leaves_model_untouched(corrupt, expected):
    model = Toy()
    before = _snapshot(model)
    sd = _toy_sd()
    corrupt(sd)
    with pytest.raises(WeightsError, match=expected) as info:
        load_checked(model, sd, component="toy", variant="toy_v", candidates={})
    assert "the model is unchanged" in str(info.value)
    _assert_unchanged(model, before)


def test_all_problems_are_listed_together_with_counts():
    model = Toy()
    before = _snapshot(model)
    sd = _toy_sd()
    del sd["norm.weight"], sd["norm.bias"]
    sd["proj.weight"] = torch.zeros(1)
    for i in range(7):
        sd[f"junk.{i}"] = torch.zeros(1)
    with pytest.raises(WeightsError) as info:
        load_checked(model, sd, component="toy", variant="toy_v", source="x.pth", candidates={})
    msg = str(info.value)
    assert "x.pth" in msg and "missing 2 keys" in msg and "unexpected 7 keys" in msg
    assert "(7 in all)" in msg and "1 key with the wrong shape" in msg
    _assert_unchanged(model, before)


def test_good_state_dict_loads_and_is_cast_to_model_dtype():
    model = Toy()
    sd = {k: v.double() for k, v in _toy_sd().items()}
    load_checked(model, sd, component="toy", variant="toy_v")
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, sd[k].float())


def test_obsolete_generator_keys_are_dropped_before_the_strict_load():
    model = Toy()
    sd = _toy_sd()
    sd.update({"t_embed.freqs": torch.zeros(128), "latent_rot": torch.zeros(1, 2, 3)})
    load_checked(model, sd, component="generator", variant="toy_v")
    assert torch.equal(model.proj.weight, sd["proj.weight"])
    with pytest.raises(WeightsError, match="latent_rot"):  # only dropped for the generator
        load_checked(Toy(), sd, component="vae", variant="toy_v", candidates={})


def test_transform_runs_before_the_comparison():
    model = Toy()
    sd = {f"old.{k}": v for k, v in _toy_sd().items()}
    load_checked(
        model, sd, component="toy", variant="toy_v",
        transform=lambda d: {k.removeprefix("old."): v for k, v in d.items()},
    )
    assert torch.equal(model.norm.bias, sd["old.norm.bias"])


def test_file_of_another_variant_is_named():
    model = Toy(width=4)
    before = _snapshot(model)
    candidates = {"wide_v": {k: tuple(v.shape) for k, v in Toy(8).state_dict().items()},
                  "other_v": {"something.else": (1,)}}
    with pytest.raises(WeightsError, match="looks like variant wide_v, not toy_v"):
        load_checked(model, _toy_sd(width=8), component="toy", variant="toy_v",
                     candidates=candidates)
    _assert_unchanged(model, before)


@pytest.mark.parametrize(
    "component, file_variant, model_variant",
    [
        ("generator", "small_44k", "small_16k"),
        ("generator", "large_44k", "medium_44k"),
        ("generator", "small_16k", "large_44k_v2"),
        ("vae", "small_16k", "small_44k"),
        ("vocoder", "small_44k", "small_16k"),
    ],
)
def test_real_file_of_another_variant_is_recognised(component, file_variant, model_variant):
    """Shapes only: both the 'file' and the model live on the meta device (no memory)."""
    module = {"generator": "generator", "vae": "vae", "vocoder": "bigvgan"}[component]
    pytest.importorskip(f"selva_core.model.{module}")
    with torch.device("meta"), weights.skip_random_init(meta_only=True):
        model = weights.build_component(component, get_variant(model_variant))
    sd = {k: torch.empty(s, device="meta")
          for k, s in weights.expected_shapes(component, file_variant).items()}
    with pytest.raises(WeightsError) as info:
        load_checked(model, sd, component=component, variant=model_variant)
    assert f"looks like variant {file_variant}" in str(info.value)
    assert f"not {model_variant}" in str(info.value)


def test_legacy_weight_norm_vocoder_keys_load_through_the_conversion():
    bigvgan = pytest.importorskip("selva_core.model.bigvgan")
    model = bigvgan.BigVGAN(get_variant("tiny_16k").vocoder)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    legacy = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v + 0.5
        for k, v in sd.items()
    }
    assert any(k.endswith("weight_g") for k in legacy)
    before = _snapshot(model)
    with pytest.raises(WeightsError, match="weight_g"):
        load_checked(model, legacy, component="vocoder", variant="tiny_16k", candidates={})
    _assert_unchanged(model, before)
    load_checked(model, legacy, component="vocoder", variant="tiny_16k",
                 transform=bigvgan.convert_legacy_weight_norm_keys)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k] + 0.5), k
