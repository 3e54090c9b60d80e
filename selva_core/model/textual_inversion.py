"""Textual inversion: a new word for a sound, as learned vectors in the text encoders' tables.

A :class:`TokenEmbedding` holds, for one token such as ``<metal-scrape>``, ``N`` vectors for
the CLIP text tower's input table (they condition the generator) and ``N`` for FLAN-T5's
(they reach TextSynch). No tokenizer is changed: a prompt is cut at each occurrence of a known
token, the pieces are tokenised as usual and the token's vectors are spliced in at the token
embedding layer (:func:`encode_clip`, :func:`encode_t5`). A prompt without any known token is
encoded exactly as without embeddings, so the base model and other prompts are unchanged.

Files are safetensors (``clip``: (N, clip width), ``t5``: (N, d_model), float32) with the
token, the variant and the tokenizers' identities in the metadata; :func:`read_embedding`
checks variant, shapes and finiteness and raises one :class:`AdapterLoadError`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selva_core.atomic import save_safetensors_atomic
from selva_core.model.lora.io import AdapterLoadError
from selva_core.run_folder import FINAL_EMBEDDING_FILE

log = logging.getLogger(__name__)

FORMAT = "selva_textual_inversion"
FORMAT_VERSION = "1"
MAX_TOKEN_CHARS = 64
# What looks like a placeholder token in a prompt (warned about once when no embedding has it).
_TOKEN_LIKE = re.compile(r"<[^<>\s]+>")
_warned_unknown: set[str] = set()


@dataclass
class TokenEmbedding:
    """One token's vectors per tower (rows = the token's sub-vectors, in prompt order)."""

    token: str
    clip: torch.Tensor  # (N, clip width)
    t5: torch.Tensor  # (N, T5 d_model)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def num_vectors(self) -> int:
        return int(self.clip.shape[0])


# --- tokens ------------------------------------------------------------------------------------
def check_token(token: str, clip_tokenizer: Any | None = None) -> str:
    """The token itself, or one ``ValueError`` saying why it cannot be a new word.

    Refused: empty, whitespace or non-printable/non-ASCII characters (the tokenizers would
    split or rewrite it), longer than :data:`MAX_TOKEN_CHARS`, or a word the CLIP vocabulary
    already holds whole (every prompt using that word would change).
    """
    if not isinstance(token, str) or not token:
        raise ValueError("the token is empty; give a new word such as '<metal-scrape>'")
    if any(c.isspace() for c in token) or not token.isascii() or not token.isprintable():
        raise ValueError(
            f"token {token!r} would be split oddly by the tokenizers (whitespace, non-ASCII or "
            "non-printable characters); use one printable ASCII word such as '<metal-scrape>'")
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"token {token!r} is longer than {MAX_TOKEN_CHARS} characters")
    vocab = getattr(clip_tokenizer, "encoder", None)
    if isinstance(vocab, Mapping) and f"{token.lower()}</w>" in vocab:
        raise ValueError(
            f"token {token!r} collides with a real word of the CLIP vocabulary: every prompt "
            f"using it would change; use a new word such as '<{token.strip('<>')}-sound>'")
    return token


def _pattern(tokens: Sequence[str]) -> re.Pattern | None:
    if not tokens:
        return None
    alts = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])({alts})(?![\w-])")


def split_prompt(prompt: str, tokens: Sequence[str]) -> list[str | tuple[str]]:
    """The prompt as text pieces and ``(token,)`` markers, in order (text pieces stripped,
    empty ones left out)."""
    pat = _pattern(tokens)
    if pat is None:
        return [prompt]
    out: list[str | tuple[str]] = []
    pos = 0
    for m in pat.finditer(prompt):
        if prompt[pos:m.start()].strip():
            out.append(prompt[pos:m.start()].strip())
        out.append((m.group(1),))
        pos = m.end()
    if prompt[pos:].strip():
        out.append(prompt[pos:].strip())
    return out


def training_prompt(prompt: str, token: str, init_word: str | None) -> str:
    """A clip's prompt with ``init_word`` (whole word, any case) replaced by ``token``; a
    prompt without it gets the token appended (an empty prompt is the token)."""
    prompt = (prompt or "").strip()
    if init_word:
        pat = re.compile(rf"(?<![\w-]){re.escape(init_word)}(?![\w-])", re.IGNORECASE)
        if pat.search(prompt):
            return pat.sub(token, prompt)
    if token in prompt:
        return prompt
    return f"{prompt}, {token}" if prompt else token


def warn_unknown_tokens(prompts: Sequence[str], known: Sequence[str]) -> None:
    """Warn once per placeholder-like word (``<...>``) that no loaded embedding defines; it
    stays plain text."""
    for prompt in prompts:
        for word in _TOKEN_LIKE.findall(prompt):
            if word not in known and word not in _warned_unknown:
                _warned_unknown.add(word)
                log.warning("prompt word %r is no loaded embedding's token: it is read as "
                            "plain text (load its embedding file to use it)", word)


def _by_token(embeddings: Sequence[TokenEmbedding]) -> dict[str, TokenEmbedding]:
    return {e.token: e for e in embeddings}


# --- CLIP ---------------------------------------------------------------------------------------
def _clip_piece_ids(clip_encoder: nn.Module, text: str) -> list[int]:
    """CLIP ids of a text piece without SOT/EOT (the tokenizer's own call, so its cleaning)."""
    ids = clip_encoder.tokenize([text])[0]
    real = ids[ids != 0].tolist()
    return real[1:-1]


def encode_clip(clip_encoder: nn.Module, prompts: Sequence[str],
                embeddings: Sequence[TokenEmbedding],
                vectors: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """CLIP-text features (B, 77, width) with the tokens' vectors spliced in.

    ``vectors`` (token -> (N, width)) overrides the embeddings' stored CLIP vectors (the
    trainer passes its parameters, so the result is differentiable in them). Rows without a
    known token are encoded exactly as :meth:`ClipTextEncoder.encode` would.
    """
    table = _by_token(embeddings)
    vecs = {t: (vectors[t] if vectors and t in vectors else e.clip) for t, e in table.items()}
    tokenizer = clip_encoder.tokenizer
    sot, eot = int(tokenizer.sot_token_id), int(tokenizer.eot_token_id)
    length = clip_encoder.context_length
    tower = clip_encoder.tower
    plain = clip_encoder.tokenize(list(prompts)).to(clip_encoder.device)
    embeds = tower.token_embedding(plain)
    rows = []
    for b, prompt in enumerate(prompts):
        parts = split_prompt(prompt, list(table))
        if all(isinstance(p, str) for p in parts):
            rows.append(embeds[b])
            continue
        pieces: list[torch.Tensor] = []
        for part in parts:
            if isinstance(part, tuple):
                pieces.append(vecs[part[0]].to(embeds))
            else:
                ids = torch.tensor(_clip_piece_ids(clip_encoder, part), dtype=torch.long,
                                   device=embeds.device)
                pieces.append(tower.token_embedding(ids))
        body = torch.cat(pieces)[: length - 2]
        ends = tower.token_embedding(torch.tensor([sot, eot], device=embeds.device))
        row = torch.cat([ends[:1], body, ends[1:]])
        pad = tower.token_embedding(torch.zeros(length - row.shape[0], dtype=torch.long,
                                                device=embeds.device))
        rows.append(torch.cat([row, pad]))
    return clip_encoder(plain, embeds=torch.stack(rows))


# --- T5 -----------------------------------------------------------------------------------------
def _t5_piece_ids(t5_encoder: nn.Module, text: str) -> list[int]:
    ids, mask = t5_encoder.tokenize([text])
    real = ids[0][mask[0]].tolist()
    eos = getattr(t5_encoder.tokenizer, "eos_token_id", None)
    return real[:-1] if real and real[-1] == eos else real


def encode_t5(t5_encoder: nn.Module, prompts: Sequence[str],
              embeddings: Sequence[TokenEmbedding]) -> tuple[torch.Tensor, torch.Tensor]:
    """FLAN-T5 (states (B, L, d), mask (B, L)) with the tokens' vectors spliced in; without a
    known token in any prompt, exactly :meth:`T5TextEncoder.encode`."""
    table = _by_token(embeddings)
    split = [split_prompt(p, list(table)) for p in prompts]
    if all(isinstance(x, str) for parts in split for x in parts):
        return t5_encoder.encode(list(prompts))
    table_w = t5_encoder.model.get_input_embeddings()
    device = t5_encoder.device
    eos = int(t5_encoder.tokenizer.eos_token_id)
    pad = int(getattr(t5_encoder.tokenizer, "pad_token_id", 0))
    rows = []
    for parts in split:
        pieces = []
        for part in parts:
            if isinstance(part, tuple):
                pieces.append(table[part[0]].t5.to(device, table_w.weight.dtype))
            else:
                ids = torch.tensor(_t5_piece_ids(t5_encoder, part), dtype=torch.long,
                                   device=device)
                pieces.append(table_w(ids))
        pieces.append(table_w(torch.tensor([eos], device=device)))
        rows.append(torch.cat(pieces)[-t5_encoder.max_length:])
    longest = max(r.shape[0] for r in rows)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool, device=device)
    padded = []
    for i, r in enumerate(rows):
        mask[i, : r.shape[0]] = True
        fill = table_w(torch.full((longest - r.shape[0],), pad, device=device))
        padded.append(torch.cat([r, fill]))
    with torch.no_grad():
        out = t5_encoder.model(inputs_embeds=torch.stack(padded),
                               attention_mask=mask.long()).last_hidden_state
    return out, mask


# --- initialisation ----------------------------------------------------------------------------
def initial_vectors(clip_encoder: nn.Module, t5_encoder: nn.Module, text: str,
                    num_vectors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip (N, width), t5 (N, d)) float32 copies of ``text``'s input embeddings, its pieces
    repeated cyclically to fill ``num_vectors`` rows."""
    if num_vectors < 1:
        raise ValueError(f"--num_vectors must be a positive integer, got {num_vectors!r}")
    clip_ids = _clip_piece_ids(clip_encoder, text)
    t5_ids = _t5_piece_ids(t5_encoder, text)
    if not clip_ids or not t5_ids:
        raise ValueError(f"init word {text!r} gives no tokens; choose a word such as 'scrape'")
    clip_w = clip_encoder.tower.token_embedding.weight
    t5_w = t5_encoder.model.get_input_embeddings().weight
    pick = [clip_ids[i % len(clip_ids)] for i in range(num_vectors)]
    pick5 = [t5_ids[i % len(t5_ids)] for i in range(num_vectors)]
    return (clip_w.detach()[pick].float().cpu().clone(),
            t5_w.detach()[pick5].float().cpu().clone())


# --- files -------------------------------------------------------------------------------------
def tokenizer_identities(clip_encoder: nn.Module, t5_encoder: nn.Module) -> dict[str, str]:
    """Names that identify the two tokenizers (a file is only meaningful with the same ones)."""
    t5_tok = t5_encoder.tokenizer
    return {"clip_tokenizer": str(getattr(clip_encoder, "tokenizer_name", "")),
            "t5_tokenizer": str(getattr(t5_tok, "name_or_path", "") or type(t5_tok).__name__),
            "t5_vocab_size": str(int(t5_encoder.model.get_input_embeddings().weight.shape[0]))}


def save_embedding(path: str | os.PathLike, embedding: TokenEmbedding, *, variant: str,
                   identities: Mapping[str, str], metadata: Mapping[str, Any] | None = None
                   ) -> Path:
    """Write the embedding file atomically (float32 vectors, metadata as strings)."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "token": embedding.token,
            "variant": variant, "num_vectors": str(embedding.num_vectors),
            **{k: str(v) for k, v in identities.items()},
            "training": json.dumps(dict(metadata or {}), sort_keys=True, default=str)}
    tensors = {"clip": embedding.clip.detach().float().cpu().contiguous(),
               "t5": embedding.t5.detach().float().cpu().contiguous()}
    return save_safetensors_atomic(path, tensors, meta)


def embedding_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an embedding file (``training`` decoded), read without its tensors;
    not a readable embedding file: one :class:`AdapterLoadError` naming it."""
    from safetensors import safe_open

    where = f"embedding {path}"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:
        raise AdapterLoadError(f"{where} cannot be read ({type(exc).__name__}: {exc}); the "
                               "file is damaged or not safetensors: re-copy it") from exc
    if meta.get("format") != FORMAT:
        raise AdapterLoadError(f"{where} is not a SelVA textual-inversion file (no "
                               f"format={FORMAT} in its metadata); a LoRA adapter goes into "
                               "the LoRA loader / --adapter instead")
    try:
        meta["training"] = json.loads(meta.get("training", "{}"))
    except json.JSONDecodeError:
        meta["training"] = {}
    return meta


def read_embedding(path: str | os.PathLike, *, variant: str, clip_width: int, t5_dim: int,
                   identities: Mapping[str, str] | None = None,
                   clip_tokenizer: Any | None = None) -> TokenEmbedding:
    """Read and check an embedding file; any problem is one :class:`AdapterLoadError` naming
    the file and what to do."""
    from safetensors import safe_open

    path = Path(path)
    where = f"embedding {path}"
    if not path.is_file():
        raise AdapterLoadError(f"{where}: no such file; give the path of an "
                               f"{FINAL_EMBEDDING_FILE} written by the trainer")
    meta = embedding_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise AdapterLoadError(f"{where}: its tensors cannot be read ({exc}); the file is "
                               "damaged: re-copy it") from exc
    if meta.get("variant") != variant:
        raise AdapterLoadError(f"{where} was trained for variant {meta.get('variant')!r}, this "
                               f"model is {variant!r}; use an embedding trained on {variant}")
    token = meta.get("token", "")
    try:
        check_token(token, clip_tokenizer)
    except ValueError as exc:
        raise AdapterLoadError(f"{where}: {exc}") from exc
    for name, width in (("clip", clip_width), ("t5", t5_dim)):
        t = tensors.get(name)
        if t is None or t.ndim != 2 or t.shape[1] != width or t.shape[0] < 1:
            shape = None if t is None else tuple(t.shape)
            raise AdapterLoadError(f"{where}: tensor {name!r} has shape {shape}, this model "
                                   f"needs (N, {width}); the file belongs to another model")
        if not torch.isfinite(t).all():
            raise AdapterLoadError(f"{where}: tensor {name!r} holds NaN/Inf values; the "
                                   "training diverged or the file is damaged")
    if tensors["clip"].shape[0] != tensors["t5"].shape[0]:
        raise AdapterLoadError(f"{where}: {tensors['clip'].shape[0]} CLIP vectors but "
                               f"{tensors['t5'].shape[0]} T5 vectors; the file is damaged")
    for key, want in (identities or {}).items():
        if key in meta and meta[key] != want:
            raise AdapterLoadError(f"{where}: made with {key} {meta[key]!r}, this model has "
                                   f"{want!r}; use an embedding trained on this model")
    return TokenEmbedding(token=token, clip=tensors["clip"].float(), t5=tensors["t5"].float(),
                          metadata=meta, source=str(path))


__all__ = ["FINAL_EMBEDDING_FILE", "TokenEmbedding", "check_token", "embedding_metadata",
           "encode_clip", "encode_t5", "initial_vectors", "read_embedding", "save_embedding",
           "split_prompt", "tokenizer_identities", "training_prompt", "warn_unknown_tokens"]
