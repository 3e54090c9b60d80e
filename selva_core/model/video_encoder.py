"""TextSynch: SelVA's text-conditioned Synchformer video encoder.

The Synchformer video branch (a MotionFormer, i.e. a divided space-time ViT on 16-frame
windows) with one text cross-attention block inserted between the space-time blocks and
the spatial aggregation layer, a projection of the FLAN-T5 text states and learned
supplementary [SUP] text tokens.  It turns 25 fps frames plus a prompt into the 8 tokens per
0.32 s "sync" features the generator consumes (``docs/REFERENCE_ARCHITECTURE.md`` §2).

Parameter names equal the reference checkpoint ``weights/video_enc_sup_5.pth`` (manifest
``tests/reference/video_enc.json``), so the official file loads with ``strict=True``.  All
sizes come from :class:`~selva_core.variants.TextSynchConfig`; the tiny test variant is the
same class with smaller numbers.

Layout of one forward pass, ``frames (B, T, 3, H, W)`` in [-1, 1]:

1. cut ``S = (T - 16) // 8 + 1`` windows of 16 frames (stride 8);
2. per window: tubelet embedding (2 x 16 x 16) -> ``tokens_per_segment x patches_per_frame``
   patch tokens + CLS, spatial + temporal position embeddings, ``depth`` divided space-time
   blocks, final LayerNorm, CLS dropped;
3. text cross-attention: every patch token attends to the projected text (SUP + T5 tokens,
   key-padding mask);
4. spatial aggregation: per temporal slot, a CLS token plus the slot's patches go through one
   pre-norm ``nn.TransformerEncoderLayer``; its CLS output is the slot's feature;
5. output ``(B, S * tokens_per_segment, embed_dim)`` in time order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selva_core.model.layers import MLP, HeadRMSNorm, swiglu_hidden_dim
from selva_core.variants import TextSynchConfig

log = logging.getLogger(__name__)

# Prefixes the reference loader keeps from a checkpoint before its strict load.
CHECKPOINT_PREFIXES = (
    "vfeat_extractor",
    "text_proj",
    "synch_text_cross_blocks",
    "sup_text_feat",
    "empty_string_feat",
)

MOTIONFORMER_LN_EPS = 1e-6  # MotionFormer blocks, final norm and spatial aggregator
CROSS_ATTN_LN_EPS = 1e-5  # affine LayerNorms of the text cross-attention block


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """Scaled dot-product attention on (batch, heads, tokens, head_dim) tensors."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class PatchEmbed2d(nn.Module):
    """Per-frame 2-D patch embedding of the original ViT.

    Unused by the video path (the 3-D tubelet embedding replaces it) but part of the
    checkpoint, so it exists, frozen, for a strict load.
    """

    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)


class PatchEmbed3d(nn.Module):
    """Tubelet embedding: Conv3d with kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, dim: int, tubelet: int, patch_size: int):
        super().__init__()
        size = (tubelet, patch_size, patch_size)
        self.proj = nn.Conv3d(3, dim, kernel_size=size, stride=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, F, H, W) -> (N, t * h * w, dim) tokens in (t, h, w) order."""
        return self.proj(x).flatten(2).transpose(1, 2)


class DividedAttention(nn.Module):
    """MotionFormer attention restricted to time or to space, with a global CLS token.

    ``qkv`` is split in contiguous [q | k | v] blocks, heads as ``(h, d)``.  The CLS query
    attends over every token; each patch query attends over its group (``time``: the same
    spatial position in all temporal slots; ``space``: all patches of its temporal slot)
    with the CLS key/value prepended to the group.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_slots: int, mode: str) -> torch.Tensor:
        """x (N, 1 + num_slots * P, D) with CLS first -> same shape."""
        n, length, dim = x.shape
        h = self.num_heads
        d = dim // h
        p = (length - 1) // num_slots
        q, k, v = self.qkv(x).view(n, length, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)

        cls_out = _attend(q[:, :, :1], k, v)  # (n, h, 1, d)

        def grouped(t: torch.Tensor) -> torch.Tensor:
            # patch tokens (n, h, slots * P, d) -> (n, h, groups, group_len, d)
            t = t[:, :, 1:].reshape(n, h, num_slots, p, d)
            return t.transpose(2, 3) if mode == "time" else t

        qg, kg, vg = grouped(q), grouped(k), grouped(v)
        groups, group_len = qg.shape[2], qg.shape[3]
        kg = torch.cat([k[:, :, None, :1].expand(n, h, groups, 1, d), kg], dim=3)
        vg = torch.cat([v[:, :, None, :1].expand(n, h, groups, 1, d), vg], dim=3)

        def flat(t: torch.Tensor) -> torch.Tensor:
            # (n, h, groups, len, d) -> (n * groups, h, len, d) for a 4-D attention call
            return t.transpose(1, 2).reshape(n * groups, h, t.shape[3], d)

        out = _attend(flat(qg), flat(kg), flat(vg))
        out = out.view(n, groups, h, group_len, d).transpose(1, 2)
        if mode == "time":
            out = out.transpose(2, 3)
        out = torch.cat([cls_out, out.reshape(n, h, num_slots * p, d)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class ViTMlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """x += TimeAttn(norm3 x); x += SpaceAttn(norm1 x); x += MLP(norm2 x)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        # Registration order follows the checkpoint's key order.
        self.norm1 = nn.LayerNorm(dim, eps=MOTIONFORMER_LN_EPS)
        self.attn = DividedAttention(dim, num_heads)
        self.timeattn = DividedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=MOTIONFORMER_LN_EPS)
        self.mlp = ViTMlp(dim, mlp_hidden)
        self.norm3 = nn.LayerNorm(dim, eps=MOTIONFORMER_LN_EPS)

    def forward(self, x: torch.Tensor, num_slots: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), num_slots, "time")
        x = x + self.attn(self.norm1(x), num_slots, "space")
        return x + self.mlp(self.norm2(x))


class SpatialAttentionAggregation(nn.TransformerEncoderLayer):
    """One pre-norm transformer layer over [CLS, patches of one temporal slot]; keeps CLS.

    A subclass of ``nn.TransformerEncoderLayer`` so the parameter names
    (``self_attn.in_proj_weight``, ``linear1``, ``norm1`` ...) and the numerics are exactly
    PyTorch's, as in the reference.
    """

    def __init__(self, dim: int, num_heads: int, ff_hidden: int):
        super().__init__(
            d_model=dim,
            nhead=num_heads,
            dim_feedforward=ff_hidden,
            dropout=0.0,
            activation="gelu",
            layer_norm_eps=MOTIONFORMER_LN_EPS,
            batch_first=True,
            norm_first=True,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, P, D) patch tokens of N temporal slots -> (N, D)."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return super().forward(x)[:, 0]


class MotionFormer(nn.Module):
    """Synchformer's video feature extractor (``vfeat_extractor.*`` in the checkpoint)."""

    def __init__(self, cfg: TextSynchConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.cfg = cfg
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.patches_per_frame + 1, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.tokens_per_segment, dim))
        self.patch_embed = PatchEmbed2d(dim, cfg.patch_size)
        self.patch_embed_3d = PatchEmbed3d(dim, cfg.tubelet, cfg.patch_size)
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(dim, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=MOTIONFORMER_LN_EPS)
        self.spatial_attn_agg = SpatialAttentionAggregation(dim, cfg.num_heads, cfg.mlp_hidden)
        self.patch_embed.requires_grad_(False)

    def patch_tokens(self, segments: torch.Tensor) -> torch.Tensor:
        """segments (N, 3, F, H, W) -> normalised patch tokens (N, slots * P, D), no CLS."""
        x = self.patch_embed_3d(segments)
        n = x.shape[0]
        slots, p = self.cfg.tokens_per_segment, self.cfg.patches_per_frame
        pos = self.pos_embed[:, 1:].repeat(1, slots, 1)
        pos = pos + self.temp_embed.repeat_interleave(p, dim=1)
        cls = self.cls_token + self.pos_embed[:, :1]
        x = torch.cat([cls.expand(n, -1, -1), x + pos], dim=1)
        for block in self.blocks:
            x = block(x, slots)
        return self.norm(x[:, 1:])

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (N, slots * P, D) -> one token per temporal slot (N, slots, D)."""
        n, _, dim = x.shape
        slots, p = self.cfg.tokens_per_segment, self.cfg.patches_per_frame
        out = self.spatial_attn_agg.aggregate(x.reshape(n * slots, p, dim))
        return out.view(n, slots, dim)


class TextCrossAttention(nn.Module):
    """Multi-head cross-attention with per-head RMSNorm on q and k, no RoPE.

    ``kv_proj`` output is split interleaved ``(h, d, 2)``: key = even channel, value = odd.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.q_norm = HeadRMSNorm(head_dim)
        self.k_norm = HeadRMSNorm(head_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (N, Lq, D), context (N, Lk, D), mask (N, Lk) bool True = attend -> (N, Lq, D)."""
        n, lq, dim = x.shape
        lk = context.shape[1]
        h = self.num_heads
        d = dim // h
        q = self.q_proj(x).view(n, lq, h, d).transpose(1, 2)
        kv = self.kv_proj(context).view(n, lk, h, d, 2)
        k, v = kv[..., 0].transpose(1, 2), kv[..., 1].transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        out = _attend(q, k, v, mask[:, None, None, :])
        return out.transpose(1, 2).reshape(n, lq, dim)


class TextCrossAttentionBlock(nn.Module):
    """x += LN1(linear1(CrossAttn(x, text))); x += FFN(LN2(x)) (post-LN on the attention)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        # Registration order follows the checkpoint's key order.
        self.norm1 = nn.LayerNorm(dim, eps=CROSS_ATTN_LN_EPS)
        self.attn = TextCrossAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=CROSS_ATTN_LN_EPS)
        self.ffn = MLP(dim, swiglu_hidden_dim(dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.linear1(self.attn(x, context, mask)))
        return x + self.ffn(self.norm2(x))


class TextSynch(nn.Module):
    """Text-steered Synchformer video encoder of SelVA (see module docstring).

    Build on the meta device for shape checks with ``with torch.device("meta"):
    TextSynch(cfg)``.
    """

    def __init__(self, cfg: TextSynchConfig | None = None):
        super().__init__()
        cfg = cfg or TextSynchConfig()
        self.cfg = cfg
        dim = cfg.embed_dim
        # Registration order follows the checkpoint's key order.
        self.sup_text_feat = nn.Parameter(torch.zeros(cfg.num_sup_tokens, cfg.text_dim))
        # T5 encoding of "" (one token); frozen, used only when there is no prompt at all.
        self.empty_string_feat = nn.Parameter(torch.zeros(1, cfg.text_dim), requires_grad=False)
        self.vfeat_extractor = MotionFormer(cfg)
        self.text_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.SiLU(), MLP(dim, swiglu_hidden_dim(dim))
        )
        self.synch_text_cross_blocks = nn.ModuleList(
            TextCrossAttentionBlock(dim, cfg.num_heads) for _ in range(cfg.xattn_depth)
        )
        self._init_embeddings()

    def _init_embeddings(self) -> None:
        """Small random learned tokens (ViT convention, std 0.02) instead of zeros.

        Real use loads a checkpoint over everything; this only keeps a randomly built
        encoder (tests, the tiny demo) from having identical CLS/position/SUP tokens.
        """
        mf = self.vfeat_extractor
        for p in (mf.cls_token, mf.pos_embed, mf.temp_embed, mf.spatial_attn_agg.cls_token,
                  self.sup_text_feat, self.empty_string_feat):
            nn.init.trunc_normal_(p, std=0.02)

    # --- construction helpers -------------------------------------------------------------
    @staticmethod
    def config_from_reference(config: Mapping[str, Any]) -> TextSynchConfig:
        """TextSynchConfig from a reference-style dict (golden case ``config``).

        Maps the reference names ``num_sup_text_tokens``, ``segment_size``, ``step_size``
        onto ours; every other field keeps the SelVA default unless named identically.
        """
        data = dict(config)
        renames = {
            "num_sup_text_tokens": "num_sup_tokens",
            "segment_size": "segment_frames",
            "step_size": "segment_step",
        }
        for ref_name, name in renames.items():
            if ref_name in data:
                data[name] = data.pop(ref_name)
        return TextSynchConfig.from_dict(data)

    def load_checkpoint_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Strictly load a reference checkpoint, keeping only the TextSynch keys.

        The official file may carry other top-level entries; like the reference loader, only
        keys under :data:`CHECKPOINT_PREFIXES` are kept, then every parameter must match.
        """
        kept = {k: v for k, v in state_dict.items() if k.startswith(CHECKPOINT_PREFIXES)}
        dropped = len(state_dict) - len(kept)
        if dropped:
            log.info("TextSynch checkpoint: ignoring %d non-encoder entries", dropped)
        self.load_state_dict(kept, strict=True)

    # --- text side ------------------------------------------------------------------------
    def prepend_sup(
        self, t5_states: torch.Tensor, t5_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepend the learned [SUP] tokens to FLAN-T5 states (before ``text_proj``).

        t5_states (B, L, text_dim), t5_mask (B, L) bool True = real token (None: all real)
        -> states (B, num_sup + L, text_dim), mask (B, num_sup + L) with the SUP positions
        True.
        """
        if t5_states.ndim != 3 or t5_states.shape[-1] != self.cfg.text_dim:
            raise ValueError(
                f"t5_states must be (B, L, {self.cfg.text_dim}), got {tuple(t5_states.shape)}"
            )
        b, length = t5_states.shape[:2]
        if t5_mask is None:
            t5_mask = torch.ones(b, length, dtype=torch.bool, device=t5_states.device)
        elif t5_mask.shape != (b, length):
            raise ValueError(
                f"t5_mask must be (B, L) = {(b, length)}, got {tuple(t5_mask.shape)}"
            )
        sup = self.sup_text_feat.to(t5_states.dtype).unsqueeze(0).expand(b, -1, -1)
        states = torch.cat([sup, t5_states], dim=1)
        sup_mask = torch.ones(b, sup.shape[1], dtype=torch.bool, device=t5_mask.device)
        return states, torch.cat([sup_mask, t5_mask.bool()], dim=1)

    def empty_text(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored T5 features of "" for ``batch`` clips, as (states, mask) without SUP."""
        states = self.empty_string_feat.unsqueeze(0).expand(batch, -1, -1)
        mask = torch.ones(batch, 1, dtype=torch.bool, device=states.device)
        return states, mask

    # --- video side -----------------------------------------------------------------------
    def num_segments(self, num_frames: int) -> int:
        """Number of windows cut from ``num_frames`` frames."""
        cfg = self.cfg
        if num_frames < cfg.segment_frames:
            return 0
        return (num_frames - cfg.segment_frames) // cfg.segment_step + 1

    def _check_inputs(self, frames: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> int:
        cfg = self.cfg
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, T, 3, H, W), got {tuple(frames.shape)}")
        size = (cfg.frame_size, cfg.frame_size)
        if tuple(frames.shape[-2:]) != size:
            raise ValueError(
                f"frames are {tuple(frames.shape[-2:])} pixels; TextSynch needs {size} "
                "(resize with a bicubic squash to the encoder's frame size)"
            )
        segments = self.num_segments(frames.shape[1])
        if segments < 1:
            raise ValueError(
                f"{frames.shape[1]} frames are too few: TextSynch needs at least "
                f"{cfg.segment_frames} frames (25 fps)"
            )
        b = frames.shape[0]
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
            raise ValueError(
                f"text must be (B={b}, L, {cfg.text_dim}) (T5 states with SUP), "
                f"got {tuple(text.shape)}"
            )
        if mask.shape != text.shape[:2]:
            raise ValueError(
                f"text mask must be {tuple(text.shape[:2])}, got {tuple(mask.shape)}"
            )
        return segments

    def encode_video(
        self,
        frames: torch.Tensor,
        text_with_sup: torch.Tensor,
        mask_with_sup: torch.Tensor,
        segment_batch: int | None = None,
    ) -> torch.Tensor:
        """Sync features of a clip steered by its prompt.

        frames (B, T, 3, H, W) in [-1, 1] at 25 fps; text_with_sup (B, L, text_dim) and
        mask_with_sup (B, L) bool (True = real token) from :meth:`prepend_sup`.
        ``segment_batch``: process at most this many windows per clip at a time (bounds
        activation memory on long clips; same result).  Returns (B, 8 * S, embed_dim) with
        S = (T - 16) // 8 + 1.
        """
        cfg = self.cfg
        segments = self._check_inputs(frames, text_with_sup, mask_with_sup)
        if segment_batch is not None and segment_batch < 1:
            raise ValueError(f"segment_batch must be a positive number of windows or None, "
                             f"got {segment_batch!r}")
        chunk = segment_batch or segments
        device = self.vfeat_extractor.pos_embed.device
        dtype = self.vfeat_extractor.pos_embed.dtype
        b = frames.shape[0]
        context = self.text_proj(text_with_sup.to(device=device, dtype=dtype))
        mask = mask_with_sup.to(device=device, dtype=torch.bool)

        outputs = []
        for s0 in range(0, segments, chunk):
            s1 = min(s0 + chunk, segments)
            start = s0 * cfg.segment_step
            stop = (s1 - 1) * cfg.segment_step + cfg.segment_frames
            # unfold: (B, n, 3, H, W, F) windows -> (B * n, 3, F, H, W) for the tubelet conv
            windows = frames[:, start:stop].to(device=device, dtype=dtype)
            windows = windows.unfold(1, cfg.segment_frames, cfg.segment_step)
            n = windows.shape[1]
            windows = windows.permute(0, 1, 2, 5, 3, 4).reshape(
                b * n, 3, cfg.segment_frames, cfg.frame_size, cfg.frame_size
            )
            x = self.vfeat_extractor.patch_tokens(windows)
            # Cross-attention queries are independent, so each window attends to its clip's
            # text on its own (the reference concatenates a clip's windows; same result).
            ctx = context.repeat_interleave(n, dim=0)
            ctx_mask = mask.repeat_interleave(n, dim=0)
            for block in self.synch_text_cross_blocks:
                x = block(x, ctx, ctx_mask)
            outputs.append(self.vfeat_extractor.aggregate(x).view(b, n, -1, cfg.embed_dim))
        out = torch.cat(outputs, dim=1)
        return out.reshape(b, segments * cfg.tokens_per_segment, cfg.embed_dim)

    def forward(
        self,
        frames: torch.Tensor,
        t5_states: torch.Tensor,
        t5_mask: torch.Tensor | None = None,
        segment_batch: int | None = None,
    ) -> torch.Tensor:
        """``prepend_sup`` then ``encode_video``: frames + raw T5 states -> sync features."""
        text, mask = self.prepend_sup(t5_states, t5_mask)
        return self.encode_video(frames, text, mask, segment_batch=segment_batch)
