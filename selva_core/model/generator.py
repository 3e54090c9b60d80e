"""SelvaGenerator: the MM-DiT velocity network of SelVA / MMAudio (REFERENCE_ARCHITECTURE §1).

Three token streams (audio latent, CLIP-visual, CLIP-text) go through *joint* blocks that share
one attention over the concatenated sequence, then the latent alone goes through *fused*
blocks. Global conditioning (time + pooled clip/text) and per-token conditioning (global +
upsampled sync features) drive adaptive LayerNorm modulation.

Parameter names equal the reference checkpoints' keys (``tests/reference/generator_*.json``),
so official weights load with ``strict=True`` once :attr:`SelvaGenerator.OBSOLETE_KEYS`
are dropped.

The work that does not depend on the flow time (input projections of the conditions, sync
upsampling, pooled condition projections) is done once by
:meth:`SelvaGenerator.preprocess_conditions`; each sampling step only calls
:meth:`SelvaGenerator.predict_flow`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from selva_core.model.checkpointing import checkpoint_block
from selva_core.model.layers import MLP, ChannelLastConv1d, ConvMLP, HeadRMSNorm, swiglu_hidden_dim
from selva_core.model.rope import apply_rope, rope_tables
from selva_core.variants import (
    SYNC_FPS,
    SYNC_STEP_FRAMES,
    SYNC_TOKENS_PER_SEGMENT,
    GeneratorConfig,
    ModelVariant,
    SequenceLengths,
    get_variant,
)

logger = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-5
T_EMBED_FREQ_DIM = 256  # v1 sinusoidal width; v2 uses hidden_dim
T_EMBED_MAX_PERIOD = 10000.0  # v1; v2 uses 1
Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (L, head_dim / 2) float32


@functools.lru_cache(maxsize=64)
def _sync_index_cpu(n_in: int, n_out: int) -> torch.Tensor:
    # Cached across calls, so never an inference tensor (autograd may save it later).
    with torch.inference_mode(False):
        return _interpolated_index(n_in, n_out)


def _interpolated_index(n_in: int, n_out: int) -> torch.Tensor:
    positions = torch.arange(n_in, dtype=torch.float32, device="cpu").view(1, 1, n_in)
    picked = F.interpolate(positions, size=n_out, mode="nearest-exact")
    return picked.view(n_out).long()


def sync_upsample_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source token of each of ``n_out`` outputs when ``n_in`` sync tokens are upsampled.

    This is ``F.interpolate(mode='nearest-exact')`` evaluated on float32 on the CPU, whose
    float32 rounding of ``(i + 0.5) * n_in / n_out`` decides exact ties the way the reference
    does (see tests/reference/golden/README.md). Computing the index once and gathering
    makes the result identical for every activation dtype and device. Returns a new int64
    CPU tensor ``(n_out,)``.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sync upsampling needs positive lengths, got {n_in} -> {n_out}")
    return _sync_index_cpu(int(n_in), int(n_out)).clone()


def upsample_sync(x: torch.Tensor, n_out: int) -> torch.Tensor:
    """Nearest-exact upsampling of tokens (B, n_in, D) -> (B, n_out, D) along the sequence.

    Equal to ``F.interpolate(x.transpose(1, 2), size=n_out, mode='nearest-exact')`` on
    float32 for every dtype (see :func:`sync_upsample_index`); differentiable (a gather).
    """
    index = _sync_index_cpu(int(x.shape[1]), int(n_out)).to(x.device, non_blocking=True)
    return x.index_select(1, index)


def sync_token_times(duration: float, tokens: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """Where each of ``tokens`` sync tokens of a ``duration``-second clip comes from and where
    the generator reads it: ``(seen, read, blind)``, float32 seconds, each ``(tokens,)``.

    * ``seen``: start of the two frames token ``j`` of window ``k`` is computed from,
      ``0.32 k + 0.08 j`` (16-frame windows at 25 fps, stride 8, tubelets of 2 frames);
    * ``read``: start of the span whose latent frames read it after :func:`upsample_sync`,
      ``(8 k + j) duration / tokens``. Within a window the tokens are read at about half the
      frames' pace, and each window is read ``8 duration / tokens - 0.32`` s later than the one
      before: the drift adds up to about 0.32 s over a clip of several windows, however long;
    * ``blind``: the closest a token can get to reporting the moment it is read at while
      knowing only its own window (a window is encoded alone, so ``k`` is unknown to it):
      ``0.32 k + c + j duration / tokens`` with ``c`` half the clip's drift, read exactly in
      the middle window and off by whole per-window drifts elsewhere. A model that reads the
      tokens without knowing where the sequence starts can place events no better than this.
    """
    per_token = duration / tokens
    windows = tokens // SYNC_TOKENS_PER_SEGMENT
    hop = SYNC_STEP_FRAMES / SYNC_FPS
    centre = (SYNC_TOKENS_PER_SEGMENT * per_token - hop) * (windows - 1) / 2
    k = torch.arange(tokens).div(SYNC_TOKENS_PER_SEGMENT, rounding_mode="floor")
    j = torch.arange(tokens) % SYNC_TOKENS_PER_SEGMENT
    seen = k * hop + j * (2 / SYNC_FPS)
    read = torch.arange(tokens) * per_token
    return seen, read, k * hop + centre + j * per_token


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


@dataclass
class PreprocessedConditions:
    """Step-independent conditioning, computed once per sampling run or training batch.

    clip_f (B, clip_N, D), sync_f (B, N, D) already upsampled to the latent length,
    text_f (B, 77, D), clip_f_c / text_f_c (B, D) pooled condition projections.
    """

    clip_f: torch.Tensor
    sync_f: torch.Tensor
    text_f: torch.Tensor
    clip_f_c: torch.Tensor
    text_f_c: torch.Tensor

    def _map(self, fn) -> PreprocessedConditions:
        return PreprocessedConditions(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    @property
    def batch_size(self) -> int:
        return self.clip_f.shape[0]

    @staticmethod
    def concat(items: list[PreprocessedConditions]) -> PreprocessedConditions:
        """Concatenate several condition sets along the batch (e.g. [cond, uncond] for CFG)."""
        if not items:
            raise ValueError("PreprocessedConditions.concat needs at least one item")
        return PreprocessedConditions(
            **{f.name: torch.cat([getattr(c, f.name) for c in items]) for f in fields(items[0])}
        )

    def cat(self, other: PreprocessedConditions) -> PreprocessedConditions:
        """``[self, other]`` along the batch."""
        return PreprocessedConditions.concat([self, other])

    def expand(self, batch: int) -> PreprocessedConditions:
        """Broadcast a batch-1 set to ``batch`` rows without copying (a no-op if equal)."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(
                f"cannot expand conditions of batch {self.batch_size} to {batch}: only a "
                f"batch of 1 broadcasts; use repeat() to tile"
            )
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    def repeat(self, times: int) -> PreprocessedConditions:
        """Tile the whole batch ``times`` times: [a, b] -> [a, b, a, b, ...] (copies)."""
        return self._map(lambda t: t.repeat(times, *([1] * (t.dim() - 1))))

    def to(self, *args, **kwargs) -> PreprocessedConditions:
        return self._map(lambda t: t.to(*args, **kwargs))


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the flow time t in [0, 1] (used as is), then a 2-layer MLP.

    ``freqs_k = (10000 / max_period) / 10000^(2k / F)``; embedding ``[cos(t f), sin(t f)]``.
    """

    def __init__(self, dim: int, freq_dim: int, max_period: float):
        super().__init__()
        if freq_dim % 2:
            raise ValueError(f"time-embedding width must be even, got {freq_dim}")
        self.freq_dim = freq_dim
        self.max_period = float(max_period)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        # Computed on the CPU (same numbers everywhere), placed where a surrounding
        # ``with torch.device(...)`` builds the module; a real CPU table under "meta".
        where = torch.empty(0).device
        self.register_buffer("freqs", self._make_freqs("cpu" if where.type == "meta" else where),
                             persistent=False)

    def _make_freqs(self, device: torch.device | str = "cpu") -> torch.Tensor:
        k2 = torch.arange(0, self.freq_dim, 2, dtype=torch.float32, device="cpu")
        freqs = 1.0 / (10000.0 ** (k2 / self.freq_dim))
        freqs = (10000.0 / self.max_period) * freqs
        return freqs.to(device)

    def _apply(self, fn, recurse=True):
        # Keep the frequency table float32 (and real) whatever .to()/.half()/.to_empty() did.
        super()._apply(fn, recurse)
        device = self.freqs.device
        if device.type != "meta":
            self.freqs = self._make_freqs(device)
        return self

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # The sinusoid is computed in float32 and handed to the MLP in its weight dtype, so a
        # float32 t works with a model cast to bf16 (under autocast the weights stay float32).
        args = t[:, None].float() * self.freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class SelfAttention(nn.Module):
    """Fused qkv projection + per-head RMSNorm of q and k (+ optional RoPE).

    The reference lays qkv channels out as ``(heads, head_dim, 3)``: q, k and v are
    interleaved per channel, not stacked in blocks.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = HeadRMSNorm(self.head_dim)
        self.k_norm = HeadRMSNorm(self.head_dim)

    def forward(
        self, x: torch.Tensor, rope: Rope | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) -> q, k, v each (B, heads, L, head_dim)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, self.num_heads, self.head_dim, 3)
        # One copy to (3, B, heads, L, head_dim): contiguous q/k/v let SDPA use its fused
        # kernels (a strided v sends CPU SDPA to the slow math path).
        q, k, v = qkv.permute(4, 0, 2, 1, 3).contiguous().unbind(0)
        q = self.q_norm(q)
        k = self.k_norm(k)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        return q, k, v


def _merge_heads(o: torch.Tensor) -> torch.Tensor:
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


class MMDiTBlock(nn.Module):
    """One stream of an MM-DiT block: adaLN-modulated attention + SwiGLU feed-forward.

    ``kernel_size`` 1 uses Linear layers (text stream), otherwise channel-last 1-D convs.
    ``pre_only`` (clip/text streams of the last joint block) only produces q, k, v.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_hidden: int, kernel_size: int, pre_only: bool = False
    ):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(dim, num_heads)
        n_mod = 2 if pre_only else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, n_mod * dim, bias=True))
        if pre_only:
            return
        if kernel_size == 1:
            self.linear1 = nn.Linear(dim, dim)
            self.ffn = MLP(dim, mlp_hidden)
        else:
            pad = kernel_size // 2
            self.linear1 = ChannelLastConv1d(dim, dim, kernel_size, padding=pad)
            self.ffn = ConvMLP(dim, mlp_hidden, kernel_size=kernel_size)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=LAYER_NORM_EPS)

    def pre_attention(
        self, x: torch.Tensor, c: torch.Tensor, rope: Rope | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        mod = self.adaLN_modulation(c).chunk(2 if self.pre_only else 6, dim=-1)
        h = _modulate(self.norm1(x), mod[0], mod[1])
        return self.attn(h, rope), mod[2:]

    def post_attention(
        self, x: torch.Tensor, attn_out: torch.Tensor, mod: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        if self.pre_only:
            return x
        gate1, shift2, scale2, gate2 = mod
        x = x + self.linear1(attn_out) * gate1
        return x + self.ffn(_modulate(self.norm2(x), shift2, scale2)) * gate2

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Rope | None) -> torch.Tensor:
        """Single-stream use (fused blocks)."""
        qkv, mod = self.pre_attention(x, c, rope)
        o = _merge_heads(F.scaled_dot_product_attention(*qkv))
        return self.post_attention(x, o, mod)


class JointBlock(nn.Module):
    """Latent, clip and text streams attending jointly over [latent, clip, text] tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, pre_only: bool):
        super().__init__()
        self.pre_only = pre_only
        self.latent_block = MMDiTBlock(dim, num_heads, mlp_hidden, kernel_size=3)
        self.clip_block = MMDiTBlock(dim, num_heads, mlp_hidden, kernel_size=3, pre_only=pre_only)
        self.text_block = MMDiTBlock(dim, num_heads, mlp_hidden, kernel_size=1, pre_only=pre_only)

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        text_f: torch.Tensor,
        global_c: torch.Tensor,
        extended_c: torch.Tensor,
        latent_rope: Rope,
        clip_rope: Rope,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_qkv, x_mod = self.latent_block.pre_attention(latent, extended_c, latent_rope)
        c_qkv, c_mod = self.clip_block.pre_attention(clip_f, global_c, clip_rope)
        t_qkv, t_mod = self.text_block.pre_attention(text_f, global_c, None)
        q, k, v = (torch.cat(parts, dim=2) for parts in zip(x_qkv, c_qkv, t_qkv))
        o = _merge_heads(F.scaled_dot_product_attention(q, k, v))
        n_lat, n_clip = latent.shape[1], clip_f.shape[1]
        latent = self.latent_block.post_attention(latent, o[:, :n_lat], x_mod)
        if not self.pre_only:
            clip_f = self.clip_block.post_attention(clip_f, o[:, n_lat : n_lat + n_clip], c_mod)
            text_f = self.text_block.post_attention(text_f, o[:, n_lat + n_clip :], t_mod)
        return latent, clip_f, text_f


class FinalLayer(nn.Module):
    """adaLN (shift, scale) from the global condition, then a k=7 conv to latent channels."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        self.conv = ChannelLastConv1d(dim, out_dim, kernel_size=7, padding=3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(_modulate(self.norm(x), shift, scale))


class SelvaGenerator(nn.Module):
    """The MM-DiT generator (reference class ``MMAudio``) for every SelVA/MMAudio variant.

    ``seq`` fixes the token counts (latent, clip, sync) the RoPE tables are built for; change
    them with :meth:`update_seq_lengths`. No weight depends on the sequence lengths.
    """

    #: Keys found in some reference checkpoints that are buffers here (not in our state dict).
    OBSOLETE_KEYS: tuple[str, ...] = ("t_embed.freqs", "latent_rot", "clip_rot")
    #: Parameters that are loaded but never trained.
    FROZEN_PARAMETERS: tuple[str, ...] = ("latent_mean", "latent_std", "empty_string_feat")

    def __init__(self, cfg: GeneratorConfig, seq: SequenceLengths):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        hidden = swiglu_hidden_dim(d, cfg.mlp_ratio)
        act = nn.SiLU if cfg.v2 else nn.SELU

        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.latent_dim, d, kernel_size=7, padding=3),
            act(),
            ConvMLP(d, hidden, kernel_size=7),
        )
        clip_layers = [nn.Linear(cfg.clip_dim, d)] + ([nn.SiLU()] if cfg.v2 else [])
        self.clip_input_proj = nn.Sequential(*clip_layers, ConvMLP(d, hidden, kernel_size=3))
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.sync_dim, d, kernel_size=7, padding=3),
            act(),
            ConvMLP(d, hidden, kernel_size=3),
        )
        text_layers = [nn.Linear(cfg.text_dim, d)] + ([nn.SiLU()] if cfg.v2 else [])
        self.text_input_proj = nn.Sequential(*text_layers, MLP(d, hidden))

        self.clip_cond_proj = nn.Linear(d, d)
        self.text_cond_proj = nn.Linear(d, d)
        self.global_cond_mlp = MLP(d, hidden)
        if cfg.v2:
            self.t_embed = TimestepEmbedder(d, freq_dim=d, max_period=1.0)
        else:
            self.t_embed = TimestepEmbedder(d, T_EMBED_FREQ_DIM, T_EMBED_MAX_PERIOD)

        n_joint = cfg.joint_depth
        if n_joint < 1 or cfg.fused_depth < 0:
            raise ValueError(
                f"GeneratorConfig needs depth > fused_depth >= 0, got depth {cfg.depth}, "
                f"fused_depth {cfg.fused_depth}"
            )
        self.joint_blocks = nn.ModuleList(
            JointBlock(d, cfg.num_heads, hidden, pre_only=(i == n_joint - 1))
            for i in range(n_joint)
        )
        self.fused_blocks = nn.ModuleList(
            MMDiTBlock(d, cfg.num_heads, hidden, kernel_size=3) for _ in range(cfg.fused_depth)
        )
        self.final_layer = FinalLayer(d, cfg.latent_dim)

        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_TOKENS_PER_SEGMENT, cfg.sync_dim))
        self.latent_mean = nn.Parameter(torch.zeros(1, 1, cfg.latent_dim), requires_grad=False)
        self.latent_std = nn.Parameter(torch.ones(1, 1, cfg.latent_dim), requires_grad=False)
        self.empty_string_feat = nn.Parameter(
            torch.zeros(cfg.text_seq_len, cfg.text_dim), requires_grad=False
        )
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_dim))
        self._init_embeddings()

        self.register_buffer("latent_rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("latent_rope_sin", torch.empty(0), persistent=False)
        self.register_buffer("clip_rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("clip_rope_sin", torch.empty(0), persistent=False)
        self._seq = seq
        self.update_seq_lengths(seq)
        self.gradient_checkpointing = False
        self.selective_checkpointing = True

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_variant(cls, variant: str | ModelVariant, duration: float = 8.0) -> SelvaGenerator:
        """Randomly initialised generator of a named variant, set up for ``duration`` s."""
        v = get_variant(variant) if isinstance(variant, str) else variant
        return cls(v.generator, v.sequence_lengths(duration))

    @torch.no_grad()
    def _init_embeddings(self) -> None:
        # Real weights replace all of this; a random model still gets distinct, O(1)-scaled
        # null features so that conditional and unconditional predictions differ.
        nn.init.normal_(self.sync_pos_emb, std=0.02)
        nn.init.normal_(self.empty_clip_feat, std=0.02)
        nn.init.normal_(self.empty_sync_feat, std=0.02)
        # CLIP-text features are unit-norm per token.
        nn.init.normal_(self.empty_string_feat)
        self.empty_string_feat.copy_(F.normalize(self.empty_string_feat, dim=-1))

    def _build_rope(self, device: torch.device) -> None:
        seq, hd = self._seq, self.cfg.head_dim
        lat = rope_tables(seq.latent, hd)
        clip = rope_tables(seq.clip, hd, freq_scale=seq.latent / seq.clip)
        names = ("latent_rope_cos", "latent_rope_sin", "clip_rope_cos", "clip_rope_sin")
        for name, table in zip(names, (*lat, *clip)):
            setattr(self, name, table.to(device))

    def _apply(self, fn, recurse=True):
        # RoPE tables stay float32 and real after .to(dtype) / .half() / .to_empty().
        super()._apply(fn, recurse)
        device = self.latent_rope_cos.device
        if device.type != "meta":
            self._build_rope(device)
        return self

    def set_gradient_checkpointing(self, enabled: bool = True, *, selective: bool = True) -> None:
        """Recompute most of each MM-DiT block in the backward pass instead of keeping it.

        While gradients are being recorded, each block keeps its inputs and, when
        ``selective``, the few outputs that are dear to recompute and cheap to keep
        (:mod:`selva_core.model.checkpointing`); the backward pass re-runs the rest of the
        block's forward (non-reentrant ``torch.utils.checkpoint``, RNG state preserved), so the
        gradients equal the plain path's. ``selective=False`` keeps only the inputs (least
        memory, slowest). Has no effect without autograd (sampling), and no weight or output
        changes.
        """
        self.gradient_checkpointing = bool(enabled)
        self.selective_checkpointing = bool(selective)

    def _run_block(self, block: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint_block(block, *args, selective=self.selective_checkpointing)
        return block(*args)

    def update_seq_lengths(self, seq: SequenceLengths) -> None:
        """Set the token counts (latent, clip, sync) and rebuild the RoPE tables."""
        if not isinstance(seq, SequenceLengths):
            raise TypeError(
                f"update_seq_lengths expects a SequenceLengths (variant.sequence_lengths(d)), "
                f"got {type(seq).__name__}"
            )
        if seq.sync < SYNC_TOKENS_PER_SEGMENT or seq.sync % SYNC_TOKENS_PER_SEGMENT:
            raise ValueError(
                f"sync length {seq.sync} must be a positive multiple of "
                f"{SYNC_TOKENS_PER_SEGMENT} (tokens per sync window)"
            )
        if seq.latent < 1 or seq.clip < 1:
            raise ValueError(f"latent and clip lengths must be >= 1, got {seq}")
        if seq.text != self.cfg.text_seq_len:
            raise ValueError(
                f"text length {seq.text} differs from the generator's text_seq_len "
                f"{self.cfg.text_seq_len}"
            )
        self._seq = seq
        device = self.latent_rope_cos.device
        self._build_rope(torch.device("cpu") if device.type == "meta" else device)

    @property
    def seq(self) -> SequenceLengths:
        return self._seq

    @property
    def latent_rope(self) -> Rope:
        return self.latent_rope_cos, self.latent_rope_sin

    @property
    def clip_rope(self) -> Rope:
        return self.clip_rope_cos, self.clip_rope_sin

    # -- conditions -------------------------------------------------------------------------
    def _check_stream(self, name: str, x: torch.Tensor, length: int, dim: int) -> None:
        if x.dim() != 3 or x.shape[1] != length or x.shape[2] != dim:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, expected (B, {length}, {dim}) for a "
                f"{self._seq.duration:g} s clip; for another duration call "
                f"update_seq_lengths(variant.sequence_lengths(duration)) first"
            )

    def preprocess_conditions(
        self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor
    ) -> PreprocessedConditions:
        """Project the raw condition features once (independent of latent and time).

        clip_f (B, clip_N, clip_dim), sync_f (B, sync_N, sync_dim), text_f (B, 77, text_dim).
        """
        cfg, seq = self.cfg, self._seq
        self._check_stream("clip_f", clip_f, seq.clip, cfg.clip_dim)
        self._check_stream("sync_f", sync_f, seq.sync, cfg.sync_dim)
        self._check_stream("text_f", text_f, cfg.text_seq_len, cfg.text_dim)
        b = clip_f.shape[0]
        if sync_f.shape[0] != b or text_f.shape[0] != b:
            raise ValueError(
                f"condition batch sizes differ: clip_f {b}, sync_f {sync_f.shape[0]}, "
                f"text_f {text_f.shape[0]}"
            )
        sync_f = sync_f.unflatten(1, (-1, SYNC_TOKENS_PER_SEGMENT)) + self.sync_pos_emb
        sync_f = sync_f.flatten(1, 2)

        clip = self.clip_input_proj(clip_f)
        sync = self.sync_input_proj(sync_f)
        text = self.text_input_proj(text_f)
        sync = upsample_sync(sync, seq.latent)

        clip_c = self.clip_cond_proj(clip.mean(dim=1))
        text_c = self.text_cond_proj(text.mean(dim=1))
        return PreprocessedConditions(clip, sync, text, clip_c, text_c)

    def empty_conditions(
        self, batch: int, negative_text_f: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw null features (clip, sync, text) for ``batch`` rows, as broadcast views.

        The null video is the learned empty clip/sync token repeated to the current lengths;
        the null text is ``negative_text_f`` when given (a negative prompt's CLIP-text
        features, (B or 1, 77, text_dim)), else the stored ``empty_string_feat``.
        """
        seq, cfg = self._seq, self.cfg
        clip0 = self.empty_clip_feat.unsqueeze(0).expand(batch, seq.clip, -1)
        sync0 = self.empty_sync_feat.unsqueeze(0).expand(batch, seq.sync, -1)
        if negative_text_f is None:
            text0 = self.empty_string_feat.unsqueeze(0).expand(batch, -1, -1)
        else:
            self._check_stream("negative_text_f", negative_text_f, cfg.text_seq_len, cfg.text_dim)
            if negative_text_f.shape[0] not in (1, batch):
                raise ValueError(
                    f"negative_text_f has batch {negative_text_f.shape[0]}, expected 1 or {batch}"
                )
            text0 = negative_text_f.expand(batch, -1, -1)
        return clip0, sync0, text0

    # -- velocity ---------------------------------------------------------------------------
    def predict_flow(
        self, latent: torch.Tensor, t: torch.Tensor, cond: PreprocessedConditions
    ) -> torch.Tensor:
        """Velocity (B, N, C) at normalised latent ``latent`` (B, N, C) and time ``t`` (B,).

        ``t`` may also be a scalar / 1-element tensor; conditions of batch 1 broadcast.
        """
        cfg, seq = self.cfg, self._seq
        self._check_stream("latent", latent, seq.latent, cfg.latent_dim)
        b = latent.shape[0]
        t = torch.as_tensor(t, device=latent.device)
        if t.dim() == 0 or t.numel() == 1:
            t = t.reshape(1).expand(b)
        if t.shape != (b,):
            raise ValueError(f"t has shape {tuple(t.shape)}, expected ({b},) or a scalar")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            t = t.float()
        cond = cond.expand(b)

        x = self.audio_input_proj(latent)
        global_c = self.global_cond_mlp(cond.clip_f_c + cond.text_f_c)
        global_c = (self.t_embed(t) + global_c).unsqueeze(1)  # (B, 1, D)
        extended_c = global_c + cond.sync_f  # (B, N, D)

        clip_f, text_f = cond.clip_f, cond.text_f
        latent_rope, clip_rope = self.latent_rope, self.clip_rope
        for block in self.joint_blocks:
            x, clip_f, text_f = self._run_block(
                block, x, clip_f, text_f, global_c, extended_c, latent_rope, clip_rope
            )
        for block in self.fused_blocks:
            x = self._run_block(block, x, extended_c, latent_rope)
        return self.final_layer(x, global_c)

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        sync_f: torch.Tensor,
        text_f: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """preprocess_conditions + predict_flow in one call."""
        return self.predict_flow(latent, t, self.preprocess_conditions(clip_f, sync_f, text_f))

    # -- latent statistics ------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latent (B, N, C) -> the generator's normalised space (new tensor)."""
        return (x - self.latent_mean) / self.latent_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B, N, C) -> VAE latent (new tensor)."""
        return x * self.latent_std + self.latent_mean
