"""The two text encoders SelVA conditions on, through the libraries that define them.

* :class:`ClipTextEncoder` — the DFN5B CLIP ViT-H/14 text tower (open_clip).  SelVA's
  generator consumes its **per-token** hidden states after ``ln_final`` for all 77 positions,
  without EOT pooling and without ``text_projection``, each token vector L2-normalised
  (``docs/REFERENCE_ARCHITECTURE.md`` §3.2) -> (B, 77, width).
* :class:`T5TextEncoder` — the FLAN-T5-base encoder (transformers), feeding TextSynch:
  ``last_hidden_state`` (B, L, 768) and a boolean mask (True = real token), padded to the
  longest prompt of the batch (§3.4).

Only the CLIP *text* tower is built and only its tensors are read from the checkpoint (the
ViT-H visual tower, ~2.5 GB in fp32, is never materialised).  Both classes have ``tiny``
builders: small random networks of the same libraries with offline tokenizers, for tests and
the demo (no downloads).

Sources: a local folder with the repository's files or a hub id
(``hf-hub:apple/DFN5B-CLIP-ViT-H-14-384`` / ``google/flan-t5-base``, fetched into the Hugging
Face cache unless ``HF_HUB_OFFLINE`` is set).  The models folder holds both as folders named
after their repositories (``<models_dir>/DFN5B-CLIP-ViT-H-14-384``, ``<models_dir>/flan-t5-base``,
filled by ``python -m selva_core.download``); :func:`load_text_encoders` with ``models_dir``
uses them and never touches the network.  A source that cannot be found raises
:class:`TextEncoderUnavailableError` saying what to download and where to put it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selva_core.variants import (
    CLIP_TEXT_HUB_ID,
    CLIP_TOKENIZER_NAME,
    T5_HUB_ID,
    TEXT_SEQ_LEN,
    TINY_T5_DIM,
    TINY_TEXT_DIM,
    TextEncoderConfig,
    repo_folder_name,
)

log = logging.getLogger(__name__)

CLIP_CONFIG_NAME = "open_clip_config.json"
# Weight files an open_clip hub repository / folder may hold, most preferred first.
CLIP_WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
CLIP_VOCAB_SIZE = 49408
# Where the official text encoders' files can be fetched by hand (error messages).
_CLIP_URL = "https://huggingface.co/" + CLIP_TEXT_HUB_ID.removeprefix("hf-hub:")
_T5_URL = "https://huggingface.co/" + T5_HUB_ID
T5_MAX_LENGTH = 512  # flan-t5 model_max_length
TINY_T5_VOCAB = 2048
T5_PAD_ID, T5_EOS_ID, T5_UNK_ID = 0, 1, 2
_DOWNLOAD_HINT = "(`python -m selva_core.download --variant <variant>` fetches every file)"


class TextEncoderUnavailableError(FileNotFoundError):
    """The files of a text encoder are neither in the given folder nor obtainable."""


# --- sources -----------------------------------------------------------------------------------
def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, read now (not only at import time)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False


def _is_local(source: str | os.PathLike) -> bool:
    """A Path, an existing path or something that can only be a path (absolute, ./, ~)."""
    if isinstance(source, os.PathLike):
        return True
    s = str(source)
    return os.path.exists(s) or os.path.isabs(s) or s.startswith((".", "~"))


def _unavailable(what: str, hub_id: str, files: str, cause: BaseException | None) -> Exception:
    repo = hub_id.removeprefix("hf-hub:")
    reason = (
        "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"
        if _hub_offline()
        else f"it could not be downloaded ({type(cause).__name__}: {cause})"
    )
    return TextEncoderUnavailableError(
        f"{what} {hub_id!r} is not available: {reason}. Download {files} from "
        f"https://huggingface.co/{repo} into a folder and pass that folder as the source, "
        "or allow downloads (unset HF_HUB_OFFLINE) so huggingface_hub can cache them."
    )


# --- CLIP --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _clip_tokenizer(name: str):
    import open_clip

    return open_clip.get_tokenizer(name)


def _build_clip_text_tower(model_cfg: Mapping[str, Any]) -> nn.Module:
    """open_clip's own text tower for a CLIP ``model_cfg`` (the one ``CLIP`` would build)."""
    from open_clip.model import CLIPTextCfg, _build_text_tower

    text_cfg = dict(model_cfg["text_cfg"])
    if text_cfg.get("hf_model_name"):
        raise ValueError(
            f"CLIP text tower {text_cfg['hf_model_name']!r} is a Hugging Face text model; "
            "SelVA needs an open_clip TextTransformer (e.g. DFN5B-CLIP-ViT-H-14-384)"
        )
    return _build_text_tower(
        embed_dim=int(model_cfg["embed_dim"]),
        text_cfg=CLIPTextCfg(**text_cfg),
        quick_gelu=bool(model_cfg.get("quick_gelu", False)),
        cast_dtype=None,
    )


def _read_clip_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the open_clip config {path}: {exc}") from exc
    model_cfg = data.get("model_cfg", data)
    if "text_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise ValueError(
            f"{path} is not an open_clip config (needs model_cfg.text_cfg and embed_dim)"
        )
    return model_cfg


def _read_clip_text_weights(path: Path, wanted: set[str]) -> dict[str, torch.Tensor]:
    """The text-tower tensors of an open_clip checkpoint (visual tensors are never loaded).

    Accepts CLIP layout (``token_embedding.weight`` ...) and CustomTextCLIP layout
    (``text.token_embedding.weight`` ...), optionally under ``state_dict`` / ``module.``.
    """

    def pick(key: str) -> str | None:
        key = key.removeprefix("module.")
        if key in wanted:
            return key
        if key.startswith("text.") and key[5:] in wanted:
            return key[5:]
        return None

    out: dict[str, torch.Tensor] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    name = pick(key)
                    if name is not None:
                        out[name] = f.get_tensor(key)
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
                obj = obj["state_dict"]
            if not isinstance(obj, Mapping):
                raise ValueError(f"holds a {type(obj).__name__}, not a state dict")
            for key, value in obj.items():
                name = pick(str(key))
                if name is not None:
                    out[name] = value
    except Exception as exc:
        raise ValueError(
            f"cannot read CLIP weights from {path} ({type(exc).__name__}: {exc}); "
            "re-download the file"
        ) from exc
    return out


def _resolve_clip_files(
    source: str | os.PathLike, tokenizer_name: str, cache_dir: str | os.PathLike | None
) -> tuple[dict, Path]:
    """(model_cfg, weight file) of a local folder / file or a hub repository."""
    if _is_local(source):
        path = Path(source).expanduser()
        if path.is_file():
            config = path.parent / CLIP_CONFIG_NAME
            if config.is_file():
                return _read_clip_config(config), path
            import open_clip

            model_cfg = open_clip.get_model_config(tokenizer_name)
            if model_cfg is None:
                raise ValueError(
                    f"{path} has no {CLIP_CONFIG_NAME} next to it and {tokenizer_name!r} is no "
                    "built-in open_clip config; put the repository's config beside the weights"
                )
            return model_cfg, path
        if not path.is_dir():
            raise TextEncoderUnavailableError(
                f"CLIP text encoder folder {path} does not exist; put {CLIP_CONFIG_NAME} and "
                f"one of {', '.join(CLIP_WEIGHT_NAMES)} from {_CLIP_URL} there {_DOWNLOAD_HINT}"
            )
        missing = [n for n in (CLIP_CONFIG_NAME,) if not (path / n).is_file()]
        weights = next((path / n for n in CLIP_WEIGHT_NAMES if (path / n).is_file()), None)
        if missing or weights is None:
            raise TextEncoderUnavailableError(
                f"CLIP text encoder folder {path} is incomplete: it needs {CLIP_CONFIG_NAME} and "
                f"one of {', '.join(CLIP_WEIGHT_NAMES)} (from the open_clip hub repository, e.g. "
                f"{_CLIP_URL}) {_DOWNLOAD_HINT}"
            )
        return _read_clip_config(path / CLIP_CONFIG_NAME), weights

    from huggingface_hub import hf_hub_download

    hub_id = str(source)
    repo = hub_id.removeprefix("hf-hub:")
    kwargs = dict(repo_id=repo, cache_dir=cache_dir, local_files_only=_hub_offline())
    files = f"{CLIP_CONFIG_NAME} and {CLIP_WEIGHT_NAMES[2]}"
    try:
        config = Path(hf_hub_download(filename=CLIP_CONFIG_NAME, **kwargs))
    except Exception as exc:
        raise _unavailable("CLIP text encoder", hub_id, files, exc) from exc
    last: Exception | None = None
    for name in CLIP_WEIGHT_NAMES:
        try:
            return _read_clip_config(config), Path(hf_hub_download(filename=name, **kwargs))
        except Exception as exc:  # try the next file name the repository may use
            last = exc
    raise _unavailable("CLIP text encoder", hub_id, files, last) from last


class ClipTextEncoder(nn.Module):
    """Per-token, unit-norm CLIP text features: list[str] -> (B, 77, width).

    ``tower`` is an open_clip ``TextTransformer``; the encoding uses its public attributes
    (``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
    ``attn_mask``) the way open_clip's ``encode_text`` does, stopping before pooling.
    """

    def __init__(self, tower: nn.Module, tokenizer_name: str = CLIP_TOKENIZER_NAME):
        super().__init__()
        self.tower = tower
        self.tokenizer_name = tokenizer_name
        self.context_length = int(tower.context_length)
        self.tokenizer = _clip_tokenizer(tokenizer_name)

    @property
    def width(self) -> int:
        return int(self.tower.positional_embedding.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.tower.positional_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tower.positional_embedding.dtype

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def tiny(
        cls,
        width: int = TINY_TEXT_DIM,
        layers: int = 2,
        heads: int = 2,
        seed: int = 0,
        tokenizer_name: str = CLIP_TOKENIZER_NAME,
    ) -> ClipTextEncoder:
        """A small random open_clip text tower (vocab 49408, context 77), built offline."""
        model_cfg = {
            "embed_dim": width,
            "quick_gelu": True,
            "text_cfg": {
                "context_length": TEXT_SEQ_LEN,
                "vocab_size": CLIP_VOCAB_SIZE,
                "width": width,
                "heads": heads,
                "layers": layers,
            },
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tower = _build_clip_text_tower(model_cfg)
        return cls(tower, tokenizer_name).eval()

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        tokenizer_name: str = CLIP_TOKENIZER_NAME,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | os.PathLike | None = None,
    ) -> ClipTextEncoder:
        """Load the text tower of an open_clip model.

        ``source``: a hub id (``hf-hub:apple/DFN5B-CLIP-ViT-H-14-384``), a local folder with
        ``open_clip_config.json`` + weights (``open_clip_pytorch_model.bin`` or a
        ``.safetensors``), or a weight file (config beside it, else the built-in config named
        ``tokenizer_name``).  Only text-tower tensors are read; the load is strict.
        """
        model_cfg, weights = _resolve_clip_files(source, tokenizer_name, cache_dir)
        tower = _build_clip_text_tower(model_cfg)
        wanted = set(tower.state_dict())
        state = _read_clip_text_weights(weights, wanted)
        missing = sorted(wanted - set(state))
        if missing:
            raise ValueError(
                f"{weights} lacks {len(missing)} CLIP text-tower tensors (e.g. "
                f"{', '.join(missing[:3])}); it is not a checkpoint of this open_clip model"
            )
        try:
            tower.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{weights} does not fit the configured text tower: {exc}") from exc
        log.info("CLIP text tower loaded from %s (width %d)", weights, tower.width)
        return cls(tower, tokenizer_name).to(device=device, dtype=dtype).eval()

    # --- encoding --------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP BPE token ids (B, 77): SOT, tokens, EOT, zero padding (truncated to fit)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts), context_length=self.context_length)

    def forward(self, tokens: torch.Tensor, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, 77) -> unit-norm per-token features (B, 77, width).

        ``embeds`` (B, 77, width): input embeddings to use instead of looking ``tokens`` up
        (textual inversion splices learned vectors in; ``tokens`` then only gives the shape).
        """
        t = self.tower
        cast = t.transformer.get_cast_dtype()
        x = (t.token_embedding(tokens.to(self.device)) if embeds is None else embeds).to(cast)
        x = x + t.positional_embedding[: x.shape[1]].to(cast)
        mask = t.attn_mask
        if mask is not None:
            mask = mask[: x.shape[1], : x.shape[1]].to(cast)
        x = t.ln_final(t.transformer(x, attn_mask=mask))
        return F.normalize(x, dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (B, 77, width) unit-norm per-token features (SelVA's ``text_f``)."""
        return self(self.tokenize(texts))


# --- T5 ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class TinyT5Tokenizer:
    """Offline, deterministic stand-in for the T5 tokenizer of tiny test models.

    Words are split with open_clip's bundled CLIP BPE and the ids folded into a small vocab
    (0 = pad, 1 = EOS ``</s>``, 2 = unk reserved); every sequence ends with EOS, as T5's
    does.  Called like a Hugging Face tokenizer.
    """

    pad_token_id = T5_PAD_ID
    eos_token_id = T5_EOS_ID

    def __init__(self, vocab_size: int = TINY_T5_VOCAB, model_max_length: int = T5_MAX_LENGTH):
        if vocab_size <= 3:
            raise ValueError(f"vocab_size must exceed the 3 special ids, got {vocab_size}")
        self.vocab_size = vocab_size
        self.model_max_length = model_max_length

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, EOS appended, no padding or truncation."""
        span = self.vocab_size - 3
        return [3 + i % span for i in _bpe().encode(text)] + [T5_EOS_ID]

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
    ):
        from transformers import BatchEncoding

        if isinstance(texts, str):
            texts = [texts]
        limit = max_length or self.model_max_length
        seqs = [self.encode(t) for t in texts]
        if truncation:
            seqs = [s if len(s) <= limit else s[: limit - 1] + [T5_EOS_ID] for s in seqs]
        if padding in (True, "longest"):
            length = max(len(s) for s in seqs)
        elif padding == "max_length":
            length = limit
        elif padding in (False, "do_not_pad"):
            length = None
        else:
            raise ValueError(f"padding must be True, 'longest', 'max_length' or False: {padding!r}")
        if length is not None:
            mask = [[1] * len(s) + [0] * (length - len(s)) for s in seqs]
            seqs = [s + [T5_PAD_ID] * (length - len(s)) for s in seqs]
        else:
            mask = [[1] * len(s) for s in seqs]
        data = {"input_ids": seqs, "attention_mask": mask}
        if return_tensors == "pt":
            if len({len(s) for s in seqs}) > 1:
                raise ValueError("sequences of different lengths need padding=True for tensors")
            data = {k: torch.tensor(v, dtype=torch.long) for k, v in data.items()}
        elif return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return BatchEncoding(data)


class T5TextEncoder(nn.Module):
    """FLAN-T5 encoder: list[str] -> (last_hidden_state (B, L, d_model), mask (B, L) bool).

    Prompts are padded to the longest in the batch and truncated to ``max_length`` (512);
    EOS is included, so "" gives one real token.  ``mask`` is True for real tokens.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = T5_MAX_LENGTH):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    @property
    def d_model(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def tiny(
        cls,
        d_model: int = TINY_T5_DIM,
        layers: int = 1,
        heads: int = 2,
        seed: int = 0,
        vocab_size: int = TINY_T5_VOCAB,
    ) -> T5TextEncoder:
        """A small random ``T5EncoderModel`` (gated-GELU like FLAN-T5) with an offline tokenizer."""
        from transformers import T5Config, T5EncoderModel

        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        config = T5Config(
            vocab_size=vocab_size,
            d_model=d_model,
            d_kv=d_model // heads,
            d_ff=2 * d_model,
            num_layers=layers,
            num_heads=heads,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=T5_PAD_ID,
            eos_token_id=T5_EOS_ID,
            is_encoder_decoder=False,
            use_cache=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = T5EncoderModel(config)
        return cls(model, TinyT5Tokenizer(vocab_size)).eval()

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | os.PathLike | None = None,
    ) -> T5TextEncoder:
        """Load the encoder half of a T5 checkpoint and its tokenizer.

        ``source``: a hub id (``google/flan-t5-base``) or a local folder holding the
        repository's files (``config.json``, ``model.safetensors``, tokenizer files).
        """
        from transformers import AutoTokenizer, T5EncoderModel

        files = "config.json, model.safetensors, tokenizer.json, tokenizer_config.json, " \
            "special_tokens_map.json and spiece.model"
        if _is_local(source):
            path = Path(source).expanduser()
            if not (path / "config.json").is_file():
                raise TextEncoderUnavailableError(
                    f"T5 text encoder folder {path} has no config.json; put {files} from "
                    f"{_T5_URL} there {_DOWNLOAD_HINT}"
                )
            name, kwargs = str(path), {"local_files_only": True}
        else:
            name = str(source)
            kwargs = {"cache_dir": cache_dir, "local_files_only": _hub_offline()}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
            model = T5EncoderModel.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as exc:
            if _is_local(source):
                raise TextEncoderUnavailableError(
                    f"cannot load a T5 encoder + tokenizer from {name} ({exc}); the folder "
                    f"needs {files} from {_T5_URL}"
                ) from exc
            raise _unavailable("T5 text encoder", name, files, exc) from exc
        if dtype == torch.float16:
            log.warning("T5 in float16 overflows; prefer bfloat16 or float32")
        limit = getattr(tokenizer, "model_max_length", T5_MAX_LENGTH)
        max_length = limit if isinstance(limit, int) and 0 < limit <= 100_000 else T5_MAX_LENGTH
        log.info("T5 encoder loaded from %s (d_model %d)", name, model.config.d_model)
        return cls(model, tokenizer, max_length).to(device=device, dtype=dtype).eval()

    # --- encoding --------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (B, L), attention_mask (B, L) bool) padded to the longest prompt."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("T5TextEncoder needs at least one prompt")
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"].bool()

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids + mask -> last_hidden_state (B, L, d_model)."""
        out = self.model(input_ids=input_ids.to(self.device),
                         attention_mask=mask.to(self.device).long())
        return out.last_hidden_state

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (states (B, L, d_model), mask (B, L) bool, True = real token)."""
        ids, mask = self.tokenize(texts)
        return self(ids, mask), mask.to(self.device)


# --- registry ----------------------------------------------------------------------------------
def text_encoder_folders(
    cfg: TextEncoderConfig, models_dir: str | os.PathLike
) -> tuple[Path, Path]:
    """``(clip folder, t5 folder)`` inside the models folder: named after the hub repositories."""
    folder = Path(models_dir).expanduser()
    return folder / repo_folder_name(cfg.clip_hub_id), folder / repo_folder_name(cfg.t5_hub_id)


def load_text_encoders(
    cfg: TextEncoderConfig,
    clip_source: str | os.PathLike | None = None,
    t5_source: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    models_dir: str | os.PathLike | None = None,
) -> tuple[ClipTextEncoder, T5TextEncoder]:
    """Both text encoders of a variant: tiny random ones when ``cfg.tiny``, else pretrained.

    A source not given is the encoder's folder in ``models_dir`` (see
    :func:`text_encoder_folders`; loaded offline, a missing folder is an error naming it), or
    without ``models_dir`` the variant's hub id.
    """
    if cfg.tiny:
        clip = ClipTextEncoder.tiny(seed=seed, tokenizer_name=cfg.clip_tokenizer)
        t5 = T5TextEncoder.tiny(seed=seed)
        return clip.to(device=device, dtype=dtype), t5.to(device=device, dtype=dtype)
    if models_dir is not None:
        clip_dir, t5_dir = text_encoder_folders(cfg, models_dir)
        clip_source = clip_source or clip_dir
        t5_source = t5_source or t5_dir
    clip = ClipTextEncoder.from_pretrained(
        clip_source or cfg.clip_hub_id, cfg.clip_tokenizer, device, dtype, cache_dir
    )
    t5 = T5TextEncoder.from_pretrained(t5_source or cfg.t5_hub_id, device, dtype, cache_dir)
    return clip, t5
