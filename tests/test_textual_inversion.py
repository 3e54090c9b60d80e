"""Textual inversion: prompt splicing, the embedding file, pipelines, the node and training."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from selva_core.model.lora import AdapterLoadError
from selva_core.model.textual_inversion import (
    FINAL_EMBEDDING_FILE,
    TokenEmbedding,
    check_token,
    encode_clip,
    encode_t5,
    initial_vectors,
    read_embedding,
    save_embedding,
    split_prompt,
    tokenizer_identities,
    training_prompt,
    warn_unknown_tokens,
)
from selva_core.pipeline import SelvaPipeline
from selva_core.training import checkpoint as ckpt
from selva_core.training.config import TrainConfig
from selva_core.training.run import run_training
from selva_core.training.trainer import TrainHooks
from tests.training_data import fresh, tiny_training_set

TOKEN = "<low-tone>"
DURATION = 1.0


@pytest.fixture(scope="module")
def pipe():
    return SelvaPipeline.tiny(seed=0, trained=False)


def _embedding(pipe, init="tone", n=2, seed=0, token=TOKEN) -> TokenEmbedding:
    clip_v, t5_v = initial_vectors(pipe.clip_text, pipe.t5, init, n)
    g = torch.Generator().manual_seed(seed)
    return TokenEmbedding(token, clip_v + 0.5 * torch.randn(clip_v.shape, generator=g), t5_v)


def _save(pipe, emb, path, variant="tiny_16k"):
    return save_embedding(path, emb, variant=variant,
                          identities=tokenizer_identities(pipe.clip_text, pipe.t5),
                          metadata={"steps": 3})


# --- splicing ----------------------------------------------------------------------------------
def test_prompts_without_the_token_encode_exactly_as_without_embeddings(pipe):
    emb = _embedding(pipe)
    prompts = ["a dog barks", "rain on a tin roof, loud"]
    assert torch.equal(encode_clip(pipe.clip_text, prompts, [emb]),
                       pipe.clip_text.encode(prompts))
    s, m = encode_t5(pipe.t5, prompts, [emb])
    s0, m0 = pipe.t5.encode(prompts)
    assert torch.equal(s, s0) and torch.equal(m, m0)


def test_the_init_words_vectors_reproduce_the_init_words_prompt(pipe):
    clip_v, t5_v = initial_vectors(pipe.clip_text, pipe.t5, "tone", 1)
    emb = TokenEmbedding(TOKEN, clip_v, t5_v)
    spliced = encode_clip(pipe.clip_text, [f"a {TOKEN} rises", "plain"], [emb])
    assert torch.allclose(spliced, pipe.clip_text.encode(["a tone rises", "plain"]), atol=1e-6)
    s, m = encode_t5(pipe.t5, [f"a {TOKEN} rises"], [emb])
    s0, m0 = pipe.t5.encode(["a tone rises"])
    assert torch.allclose(s, s0, atol=1e-6) and torch.equal(m, m0)


def test_the_token_matches_only_as_a_whole_word():
    assert split_prompt(f"{TOKEN}, a {TOKEN}s {TOKEN}", [TOKEN]) == \
        [(TOKEN,), f", a {TOKEN}s", (TOKEN,)]
    assert training_prompt("a humming tone", TOKEN, "tone") == f"a humming {TOKEN}"
    assert training_prompt("a bounce", TOKEN, "tone") == f"a bounce, {TOKEN}"
    assert training_prompt("", TOKEN, None) == TOKEN


@pytest.mark.parametrize("token, words", [("burst", "collides with a real word"),
                                          ("<two words>", "split oddly"),
                                          ("<caf\u00e9>", "split oddly"),
                                          ("", "empty")])
def test_a_bad_token_is_one_clear_line(pipe, token, words):
    with pytest.raises(ValueError, match=words) as exc:
        check_token(token, pipe.clip_text.tokenizer)
    assert "\n" not in str(exc.value)


def test_an_unknown_token_in_a_prompt_is_text_and_warned_once(pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="selva_core.model.textual_inversion"):
        warn_unknown_tokens(["a <never-loaded> hiss", "<never-loaded> again"], [TOKEN])
        warn_unknown_tokens(["<never-loaded>"], [TOKEN])
    assert sum("<never-loaded>" in r.getMessage() for r in caplog.records) == 1


# --- the file ---------------------------------------------------------------------------------
def test_file_round_trip_is_a_few_kb_with_its_identity(pipe, tmp_path):
    emb = _embedding(pipe)
    path = _save(pipe, emb, tmp_path / "e.safetensors")
    assert path.stat().st_size < 8_000
    back = read_embedding(path, variant="tiny_16k", clip_width=pipe.clip_text.width,
                          t5_dim=pipe.t5.d_model)
    assert back.token == TOKEN and torch.equal(back.clip, emb.clip) and torch.equal(back.t5,
                                                                                  emb.t5)
    assert back.metadata["variant"] == "tiny_16k" and back.metadata["training"]["steps"] == 3
    assert back.metadata["clip_tokenizer"] == pipe.clip_text.tokenizer_name


def _damaged(pipe, tmp_path, kind):
    path = _save(pipe, _embedding(pipe), tmp_path / "e.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    if kind == "nan":
        tensors["clip"][0, 0] = float("nan")
    elif kind == "shape":
        tensors["t5"] = torch.zeros(2, 7)
    elif kind == "lora":
        meta["format"] = "selva-lora"
    save_file(tensors, str(path), meta)
    return path


@pytest.mark.parametrize("kind, words", [("nan", "NaN"), ("shape", "another model"),
                                         ("lora", "not a SelVA textual-inversion file"),
                                         ("variant", "trained for variant")])
def test_a_bad_file_is_one_adapter_load_error_and_the_model_is_unchanged(pipe, tmp_path, kind,
                                                                         words):
    if kind == "variant":
        path = _save(pipe, _embedding(pipe), tmp_path / "e.safetensors", variant="small_16k")
    else:
        path = _damaged(pipe, tmp_path, kind)
    with pytest.raises(AdapterLoadError, match=words) as exc:
        pipe.with_embeddings([path])
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    assert pipe.embeddings == ()


# --- pipelines: base invariance and stacking ---------------------------------------------------
def _features(p, prompt):
    frames = torch.rand(25, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return p.extract_features(frames, prompt, duration=1.0)


def test_with_embeddings_changes_only_token_prompts_and_never_the_base(pipe, tmp_path):
    emb = _embedding(pipe)
    path = _save(pipe, emb, tmp_path / "e.safetensors")
    before = _features(pipe, f"a {TOKEN} rises")
    taught = pipe.with_embeddings([path])
    assert pipe.embeddings == () and [e.token for e in taught.embeddings] == [TOKEN]
    with_token = _features(taught, f"a {TOKEN} rises")
    assert not torch.equal(with_token.text_clip_f, before.text_clip_f)
    assert torch.equal(_features(taught, "a dog barks").text_clip_f,
                       _features(pipe, "a dog barks").text_clip_f)
    assert torch.equal(_features(pipe, f"a {TOKEN} rises").text_clip_f, before.text_clip_f)
    with pytest.raises(AdapterLoadError, match="already loaded"):
        taught.with_embeddings([path])


def test_an_embedding_stacks_with_a_lora_adapter(pipe, tmp_path):
    from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter, trainable_parameters

    fork = pipe.fork()
    attach_lora(fork.generator, LoRAConfig(rank=2, targets=("attn",), seed=1),
                variant_name="tiny_16k")
    with torch.no_grad():
        for p in trainable_parameters(fork.generator):
            p.fill_(0.05)
    adapter = save_adapter(fork.generator, tmp_path / "a.safetensors") or tmp_path / \
        "a.safetensors"
    emb_path = _save(pipe, _embedding(pipe), tmp_path / "e.safetensors")
    both = pipe.with_adapters([(adapter, 1.0)]).with_embeddings([emb_path])
    other_order = pipe.with_embeddings([emb_path]).with_adapters([(adapter, 1.0)])
    f = _features(both, f"a {TOKEN} rises")
    kw = dict(seed=1, num_steps=2)
    out = both.sample(f, **kw)
    assert len(both.adapters) == 1 and len(both.embeddings) == 1
    assert torch.equal(out, other_order.sample(_features(other_order, f"a {TOKEN} rises"), **kw))
    assert not torch.equal(out, pipe.sample(f, **kw))  # the adapter acts
    assert not torch.equal(f.text_clip_f, _features(pipe, f"a {TOKEN} rises").text_clip_f)
    assert pipe.adapters == () and pipe.embeddings == ()


# --- the node -----------------------------------------------------------------------------------
def test_embedding_loader_node_teaches_a_copy_and_leaves_the_base_branch(tmp_path):
    from tests.node_harness import load_pack, run_node

    pack = load_pack()
    common = sys.modules[f"{pack.__name__}.nodes.common"]
    base = common.SelvaModel(pipeline=SelvaPipeline.tiny(seed=0, trained=False), label="tiny")
    path = _save(base.pipeline, _embedding(base.pipeline), tmp_path / "e.safetensors")
    images = torch.rand(24, 48, 64, 3, generator=torch.Generator().manual_seed(0))

    def text(model):
        feats = run_node("SelVAFeatureExtractor", model=model, prompt=f"a {TOKEN} rises",
                         images=images, fps=12.0)[0]
        return feats.text_clip_f

    bare = text(base)
    taught, token = run_node("SelVAEmbeddingLoader", model=base, embedding_name="(none)",
                             embedding_path=str(path))
    assert token == TOKEN and taught is not base
    assert not torch.equal(text(taught), bare)
    assert torch.equal(text(base), bare) and base.pipeline.embeddings == ()
    bad = _save(base.pipeline, _embedding(base.pipeline), tmp_path / "v.safetensors",
                variant="small_16k")
    with pytest.raises(ValueError, match="SelVA Embedding Loader: embedding_path: .*variant"):
        run_node("SelVAEmbeddingLoader", model=base, embedding_name="(none)",
                 embedding_path=str(bad))


# --- training ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    s = tiny_training_set(tmp_path_factory.mktemp("ti"), clips_per_class=2, seed=0,
                          duration=DURATION)
    return s.pipe, s.data_dir, s.cache_dir


def _train(tiny, out, hooks=None, **kw):
    pipe, data_dir, cache_dir = tiny
    cfg = dict(data_dir=str(data_dir), output_dir=str(out), cache_dir=str(cache_dir),
               variant="tiny_16k", duration=DURATION, steps=4, warmup_steps=1, batch_size=2,
               save_every=2, val_every=2, lr=5e-2, sample_steps=2, val_clips=1, quiet=True,
               samples=False, method="textual_inversion", token=TOKEN, init_word="tone",
               num_vectors=2)
    cfg.update(kw)
    return run_training(TrainConfig(**cfg), pipeline=fresh(pipe), hooks=hooks)


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ti_straight")
    return out, _train(tiny, out)


def test_training_moves_only_the_token_vectors_and_writes_a_loadable_file(tiny, straight):
    pipe = tiny[0]
    out, result = straight
    assert result.completed and result.adapter_path == out / FINAL_EMBEDDING_FILE
    weights = {k: v.clone() for k, v in pipe.generator.state_dict().items()}
    init_clip, _ = initial_vectors(pipe.clip_text, pipe.t5, "tone", 2)
    taught = pipe.with_embeddings([result.adapter_path])
    emb = taught.embeddings[0]
    assert emb.clip.shape == (2, pipe.clip_text.width) and not torch.equal(emb.clip, init_clip)
    assert torch.equal(emb.t5, initial_vectors(pipe.clip_text, pipe.t5, "tone", 2)[1])
    assert all(torch.equal(v, weights[k]) for k, v in pipe.generator.state_dict().items())
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "val"] == [0, 2, 4]
    meta = emb.metadata["training"]
    assert meta["method"] == "textual_inversion" and meta["steps"] == 4


def test_textual_inversion_resumes_bit_exactly(tiny, straight, tmp_path):
    class Killed(Exception):
        pass

    def kill(trainer, step, micro):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        _train(tiny, tmp_path, hooks=TrainHooks(after_micro_step=kill))
    assert ckpt.CheckpointManager(tmp_path / "checkpoints").find().step == 2
    assert _train(tiny, tmp_path, resume=True).completed
    a = load_file(str(straight[0] / FINAL_EMBEDDING_FILE))
    b = load_file(str(tmp_path / FINAL_EMBEDDING_FILE))
    assert torch.equal(a["clip"], b["clip"]) and torch.equal(a["t5"], b["t5"])
    with pytest.raises(ckpt.CheckpointError, match="num_vectors"):
        _train(tiny, tmp_path, resume=True, num_vectors=3, steps=6)


# --- the evaluator ----------------------------------------------------------------------------
def test_the_eval_grid_compares_an_embedding_and_a_lora_with_the_baseline(tmp_path):
    from selva_core.evaluation.runner import run_evaluation
    from selva_core.evaluation.spec import load_spec
    from tests.eval_data import make_adapter, make_clips, spec_text, tiny_pipeline

    pipe = tiny_pipeline()
    clips = make_clips(tmp_path / "clips", silent=False)
    adapter = make_adapter(tmp_path / "a.safetensors", pipe)
    emb = _embedding(pipe)
    save_embedding(tmp_path / "run" / FINAL_EMBEDDING_FILE, emb, variant="tiny_16k",
                   identities=tokenizer_identities(pipe.clip_text, pipe.t5),
                   metadata={"init_word": "tone"})
    spec = load_spec(spec_text(clips, tmp_path / "out", [{"id": "a", "path": str(adapter)}],
                               embeddings=[{"id": "ti", "path": str(tmp_path / "run")}]))
    result = run_evaluation(spec, pipeline=pipe, progress=False)
    assert result.completed and pipe.embeddings == ()
    rows = {a["id"]: a for a in result.summary["adapters"]}
    assert set(rows) == {"baseline", "a", "ti"} and rows["ti"]["status"] == "ok"
    recs = {(r["clip"], r["adapter"]): r for a in result.summary["adapters"]
            for r in a.get("clips", [])}
    assert {c for c, a in recs if a == "ti"} == {"bounce_000", "hum_000"}
    out = result.output_dir
    ti = sf_read(out / recs[("hum_000", "ti")]["wav"])
    base = sf_read(out / recs[("hum_000", "baseline")]["wav"])
    assert ti.shape == base.shape and not np.array_equal(ti, base)  # the token's prompt acts
    bad = {"data_dir": str(clips), "output_dir": str(tmp_path / "o2"),
           "embeddings": [{"id": "a", "path": str(tmp_path / "none")}]}
    from selva_core.evaluation.spec import EvalSpec, EvalSpecError

    with pytest.raises(EvalSpecError, match=r"embeddings\[0\].path .* does not exist"):
        EvalSpec.from_dict(bad)


def sf_read(path):
    import soundfile as sf

    return sf.read(str(path), dtype="float32")[0]


# --- generate --embedding ---------------------------------------------------------------------
def test_generate_uses_the_token_with_embedding_and_refuses_a_bad_file(tmp_path, capsys):
    import soundfile as sf

    from selva_core.data.synthetic import make_synthetic_dataset
    from selva_core.generate import main

    clips = tmp_path / "clips"
    make_synthetic_dataset(clips, clips_per_class=1, duration=1.0, size=32)
    pipe = SelvaPipeline.build("tiny_16k", device="cpu")  # generate's own model
    emb_path = _save(pipe, _embedding(pipe, seed=5), tmp_path / "run" / FINAL_EMBEDDING_FILE)
    video = str(clips / "hum_000.mp4")
    fast = ["--variant", "tiny_16k", "--steps", "2", "--device", "cpu", "--no_mp4",
            "--prompt", f"a {TOKEN} rises"]
    waves = {}
    for label, flags in (("plain", []), ("taught", ["--embedding", str(tmp_path / "run")])):
        out = tmp_path / label
        assert main([video, "--output_dir", str(out), *fast, *flags]) == 0
        waves[label] = sf.read(str(out / "hum_000.wav"), dtype="float32")[0]
    assert not np.array_equal(waves["plain"], waves["taught"])
    summary = json.loads((tmp_path / "taught" / "generate_summary.json").read_text())
    assert summary["embeddings"] == [str(tmp_path / "run")]
    bad = _save(pipe, _embedding(pipe), tmp_path / "v.safetensors", variant="small_16k")
    capsys.readouterr()
    assert main([video, "--output_dir", str(tmp_path / "o"), *fast, "--embedding", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "trained for variant 'small_16k'" in err and str(bad) in err
    assert emb_path.is_file()
