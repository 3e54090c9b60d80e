"""``--method textual_inversion``: the LoRA trainer's loop, cache and checkpoints, training a word.

Every network stays frozen. The trained tensor is the token's CLIP-text vectors (N, width):
each step the batch's prompts (the clips' prompts with ``--init_word`` replaced by the token,
:func:`training_prompt`) are encoded by the CLIP text tower with the vectors spliced in
(:func:`~selva_core.model.textual_inversion.encode_clip`), and the generator's flow-matching
loss (:mod:`.objective`, the same objective as LoRA) is back-propagated through the frozen
generator and CLIP tower into them.

TextSynch stays on the base prompt: its sync features come from the feature cache (extracted
with the clip's own prompt), so no video network runs per step. The token's FLAN-T5 vectors
are the init word's T5 embeddings and are not trained: at generation TextSynch reads the token
as the init word, which is what it saw in training (the cached features are of the prompt that
holds the init word). The per-step cost over a LoRA step is one CLIP-text forward and backward
per example (``benchmarks/bench_textual_inversion.py``).

The rest is :class:`~.trainer.LoRATrainer`: the seeded data stream and draws, validation (the
validation prompts re-encoded with the current vectors first), samples, checkpoints holding
the vectors and the optimiser state (exact resume), and at the end
``embedding_final.safetensors`` (:func:`~selva_core.model.textual_inversion.save_embedding`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selva_core.model.precision import cast_frozen_weights
from selva_core.model.textual_inversion import (
    TokenEmbedding,
    check_token,
    encode_clip,
    initial_vectors,
    save_embedding,
    tokenizer_identities,
    training_prompt,
)
from selva_core.training.objective import ExampleStore, training_loss
from selva_core.training.trainer import LoRATrainer, TrainResult

log = logging.getLogger(__name__)

TRAINED_KEY = "clip"  # the checkpoint's tensor: the token's CLIP-text vectors


class TextualInversionTrainer(LoRATrainer):
    """Trains the vectors of ``cfg.token`` (see the module docstring); ``clip_text`` and
    ``t5`` are the pipeline's frozen text encoders (kept when the others are freed)."""

    def __init__(self, cfg, generator, train_examples: Sequence, val_examples: Sequence = (),
                 *, clip_text: nn.Module, t5: nn.Module, **kwargs: Any):
        self.clip_text, self.t5 = clip_text, t5
        self._prompts = {e.name: training_prompt(getattr(e, "prompt", ""), cfg.token,
                                                 cfg.init_word)
                         for e in (*train_examples, *val_examples)}
        super().__init__(cfg, generator, train_examples, val_examples, **kwargs)

    # --- what is trained ----------------------------------------------------------------------
    def _setup_trainable(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if self.dist.world_size > 1:
            raise ValueError("--method textual_inversion trains on one process; run it "
                             "without torchrun (the vectors are a few KB)")
        check_token(cfg.token, self.clip_text.tokenizer)
        self.handle = None
        cast_frozen_weights(self.gen, self.base_dtype)
        self.gen.to(self.device)
        self.clip_text.to(self.device)
        clip_v, t5_v = initial_vectors(self.clip_text, self.t5, cfg.init_word or cfg.token,
                                       cfg.num_vectors)
        self.vectors = nn.Parameter(clip_v.to(self.device))
        self.t5_vectors = t5_v
        self.params = [self.vectors]
        self.adapted_layers = 0
        log.info("textual inversion of %r: %d vector(s) per tower, initialised from %r",
                 cfg.token, cfg.num_vectors, cfg.init_word or cfg.token)
        return [{"params": [self.vectors], "lr": cfg.lr, "weight_decay": cfg.weight_decay}]

    @property
    def embedding(self) -> TokenEmbedding:
        """The token as trained so far (CPU copies)."""
        return TokenEmbedding(self.cfg.token, self.vectors.detach().float().cpu().clone(),
                              self.t5_vectors.clone())

    def prompts(self, names: Sequence[str]) -> list[str]:
        return [self._prompts[n] for n in names]

    def _text(self, names: Sequence[str]) -> torch.Tensor:
        return encode_clip(self.clip_text, self.prompts(names), [self.embedding],
                           {self.cfg.token: self.vectors})

    def batch_loss(self, batch, draws) -> torch.Tensor:
        text = self._text(batch.names)
        batch = dataclasses.replace(batch, text_f=text.to(batch.text_f.dtype))
        return training_loss(self.model, self.gen, batch, draws)

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {TRAINED_KEY: self.vectors.detach().clone()}

    def load_trained_state(self, params: dict[str, torch.Tensor]) -> None:
        saved = params.get(TRAINED_KEY)
        if saved is None or tuple(saved.shape) != tuple(self.vectors.shape):
            shape = None if saved is None else tuple(saved.shape)
            raise ValueError(f"the checkpoint's token vectors have shape {shape}, this run "
                             f"trains {tuple(self.vectors.shape)}")
        with torch.no_grad():
            self.vectors.copy_(saved.to(self.vectors))

    def write_trained(self, path: Path, metadata: dict[str, Any]) -> None:
        save_embedding(path, self.embedding, variant=self.cfg.variant,
                       identities=tokenizer_identities(self.clip_text, self.t5),
                       metadata={"method": self.cfg.method, "init_word": self.cfg.init_word,
                                 **metadata})

    # --- validation and samples see the current vectors -----------------------------------
    @torch.no_grad()
    def _refresh_text(self, store: ExampleStore, indices: Sequence[int]) -> None:
        """Re-encode the stored CLIP-text features of these examples with the current vectors
        (validation and samples read the store)."""
        if not len(indices):
            return
        text = self._text([store.name(i) for i in indices]).float().cpu()
        for row, i in enumerate(indices):
            store.tensors[i]["text_clip_f"] = text[row]

    def validate(self):
        if len(self.val_store) and self.is_main:
            self._refresh_text(self.val_store, range(len(self.val_store)))
        return super().validate()

    def _sample_features(self):
        store = self.val_store if len(self.val_store) else self.train_store
        self._refresh_text(store, [0] if len(store) else [])
        found = super()._sample_features()
        if found is not None:
            found[0].prompts = self.prompts([store.name(0)])
        return found

    def write_curves(self) -> None:
        if self.is_main:
            from selva_core.training.report import plot_curves

            plot_curves(self.log.read(), self.run_folder.curve_path,
                        title=f"textual inversion {self.cfg.token} on {self.cfg.variant}")

    # --- the end of a completed run ---------------------------------------------------------
    def finish(self) -> TrainResult:
        cfg = self.cfg
        if self.last_val is None or self.val_base is None:
            self.validate()
        val_final = self.last_val.loss if self.last_val else None
        path = self.run_folder.final_embedding
        self.write_trained(path, self.record.adapter_metadata(
            self.progress, val_loss_final=val_final, config=cfg.to_dict()))
        self.write_sample("final")
        self.write_curves()
        self.log.write({"kind": "end", "step": self.step, "time": time.time()})
        return self.result("completed", adapter_path=str(path),
                           adapter_mb=path.stat().st_size / 1e6, val_loss_final=val_final,
                           adapter_storage=f"textual-inversion embedding, "
                                           f"{path.stat().st_size / 1e3:.1f} KB",
                           token=cfg.token, num_vectors=cfg.num_vectors)
