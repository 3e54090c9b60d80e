"""The trainer LEARNS: a LoRA trained on a new sound class moves a base model toward it.

Setup (all generated, tiny shapes, CPU): synthetic clips of two classes, A = 'hum' (a tone
following the shape's height) and B = 'bounce' (clicks at wall hits), features from the tiny
pipeline. The tiny random VAE's posterior std (~1.2) is about 5x the spread of its means, so
the audio targets would be almost pure noise; the cached ``latent_std`` is scaled by 0.1 to
stand in for a trained VAE's confident posterior. A small generator of the real class
(hidden 64) gets latent statistics fitted to the data and is fully fine-tuned on class A: the
*base*. Then the LoRA trainer trains an adapter on class B.

Metrics (on held-out clips of each class; fixed seeds, so the numbers are exact):

* the deterministic flow-matching validation loss (8 fixed t, fixed noise) per class;
* the *latent signature* of generated samples (per-channel mean and std over time of the
  VAE-space latent, Euler 10 steps, CFG 4.5) and its distance to each class's centroid of
  real data signatures.

The base must prefer A on both; with the adapter, B's loss must drop by at least 15 %, B must
become the class with the lower loss, and B-prompted samples must end up nearer to B's
centroid than before and than to A's.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from selva_core.feature_cache import (
    CachedExample,
)
from selva_core.model.generator import SelvaGenerator
from selva_core.training.config import TrainConfig
from selva_core.training.objective import ExampleStore
from selva_core.training.trainer import LoRATrainer
from selva_core.training.validation import Validator
from selva_core.variants import GeneratorConfig, get_variant
from tests.learning_tools import (
    class_centroid,
    class_distances,
    fit_latent_statistics,
    full_finetune,
    generate_latents,
    latent_signature,
)
from tests.training_data import tiny_training_set

DURATION = 1.0
POSTERIOR_STD_SCALE = 0.1
CPU = torch.device("cpu")


def _examples(tmp_path):
    cached = tiny_training_set(tmp_path, clips_per_class=6, seed=0,
                               duration=DURATION).examples
    confident = tmp_path / "confident"
    confident.mkdir()
    out = []
    for e in cached:
        tensors = load_file(str(e.path))
        tensors["latent_std"] = tensors["latent_std"] * POSTERIOR_STD_SCALE
        save_file(tensors, str(confident / e.path.name))
        out.append(CachedExample(confident / e.path.name, e.name, e.prompt))
    hum = [e for e in out if e.name.startswith("hum")]
    bounce = [e for e in out if e.name.startswith("bounce")]
    return hum, bounce


def _measure(gen, val, stores, centroids):
    losses = {k: v.evaluate(gen, gen, CPU).loss for k, v in val.items()}
    samples = generate_latents(gen, stores["B"], [4, 5], seed=0)
    return losses, class_distances(latent_signature(samples), centroids)


def test_lora_on_a_new_class_moves_the_model_toward_it(tmp_path):
    hum, bounce = _examples(tmp_path)
    variant = get_variant("tiny_16k")
    small = GeneratorConfig(latent_dim=8, hidden_dim=64, depth=2, fused_depth=1, num_heads=2,
                            clip_dim=64, sync_dim=64, text_dim=64)
    torch.manual_seed(0)
    gen = SelvaGenerator(small, variant.sequence_lengths(DURATION))
    fit_latent_statistics(gen, ExampleStore(hum + bounce, gen))
    stores = {"A": ExampleStore(hum, gen), "B": ExampleStore(bounce, gen)}
    centroids = {k: class_centroid(s, range(len(s))) for k, s in stores.items()}
    val = {"A": Validator(ExampleStore(hum[4:], gen), "logit_normal"),
           "B": Validator(ExampleStore(bounce[4:], gen), "logit_normal")}

    pretrain = full_finetune(gen, ExampleStore(hum[:4], gen), steps=100, lr=4e-3, seed=0)
    assert sum(pretrain[-10:]) < 0.7 * sum(pretrain[:10])
    base_loss, base_dist = _measure(gen, val, stores, centroids)
    assert base_loss["A"] < base_loss["B"]  # the base knows class A
    assert base_dist["A"] < base_dist["B"]  # and its B-prompted samples sound like A

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), variant="tiny_16k",
                      duration=DURATION, steps=60, warmup_steps=5, lr=8e-3, rank=8,
                      batch_size=4, save_every=1000, val_every=1000, samples=False,
                      surgery=False, quiet=True)
    result = LoRATrainer(cfg, gen, bounce[:4], bounce[4:]).run()
    assert result.completed
    lora_loss, lora_dist = _measure(gen, val, stores, centroids)

    assert lora_loss["B"] < 0.85 * base_loss["B"]
    assert lora_loss["B"] < lora_loss["A"]
    assert lora_dist["B"] < base_dist["B"]
    assert lora_dist["B"] < lora_dist["A"]
    assert result.summary["val_loss_final"] == pytest.approx(lora_loss["B"])
