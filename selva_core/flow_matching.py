"""Flow matching for the SelVA generator: training target and loss, t sampling, condition
dropout, and the Euler sampler with classifier-free guidance (REFERENCE_ARCHITECTURE §4).

Convention: t = 0 is noise x0 ~ N(0, I), t = 1 is data x1 (the normalised latent);
``x_t = (1 - (1 - min_sigma) t) x0 + t x1`` and the target velocity is
``x1 - (1 - min_sigma) x0``. With the default ``min_sigma = 0`` these are
``(1 - t) x0 + t x1`` and ``x1 - x0``.

:func:`flow_matching_loss` with :func:`apply_condition_dropout` is the one training objective:
the LoRA trainer, its validator, the learning tools and the tests all compute their loss with it.

The model is any object with the :class:`~selva_core.model.generator.SelvaGenerator`
methods ``forward``, ``preprocess_conditions``, ``predict_flow``, ``empty_conditions`` and
``seq``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from selva_core.model.generator import SelvaGenerator
from selva_core.variants import CFG_STRENGTH, SAMPLING_STEPS

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class FlowMatchingConfig:
    """Flow-matching settings; defaults are those of MMAudio / SelVA."""

    min_sigma: float = 0.0
    num_steps: int = SAMPLING_STEPS
    cfg_strength: float = CFG_STRENGTH
    null_condition_probability: float = 0.1
    t_mean: float = 0.0  # logit-normal location
    t_std: float = 1.0  # logit-normal scale

    def __post_init__(self):
        if not 0.0 <= self.min_sigma < 1.0:
            raise ValueError(f"min_sigma must be in [0, 1), got {self.min_sigma}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.null_condition_probability <= 1.0:
            raise ValueError(
                f"null_condition_probability must be in [0, 1], got "
                f"{self.null_condition_probability}"
            )
        if self.t_std <= 0:
            raise ValueError(f"t_std must be > 0, got {self.t_std}")


DEFAULT_CONFIG = FlowMatchingConfig()


def _draw_device(rng: torch.Generator | None, device) -> torch.device:
    # Draw where the rng lives so a CPU rng gives the same numbers on any device.
    if rng is not None:
        return rng.device
    return torch.device(device) if device is not None else torch.device("cpu")


def sample_t(
    batch: int,
    rng: torch.Generator | None = None,
    device: torch.device | str | None = None,
    *,
    mean: float = DEFAULT_CONFIG.t_mean,
    std: float = DEFAULT_CONFIG.t_std,
) -> torch.Tensor:
    """Logit-normal flow times ``sigmoid(N(mean, std^2))``, float32 (batch,) on ``device``."""
    draw = _draw_device(rng, device)
    n = torch.randn(batch, generator=rng, device=draw, dtype=torch.float32)
    t = torch.sigmoid(n * std + mean)
    return t.to(device) if device is not None else t


def _bcast_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    if t.dim() == 0:
        return t
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def interpolate(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, min_sigma: float = 0.0
) -> torch.Tensor:
    """Point on the path at time ``t`` (B,) or scalar: ``(1 - (1 - min_sigma) t) x0 + t x1``."""
    tb = _bcast_t(t, x0)
    return (1 - (1 - min_sigma) * tb) * x0 + tb * x1


def velocity_target(x0: torch.Tensor, x1: torch.Tensor, min_sigma: float = 0.0) -> torch.Tensor:
    """Target velocity ``x1 - (1 - min_sigma) x0`` (constant along the path)."""
    return x1 - (1 - min_sigma) * x0


class DroppedConditions(NamedTuple):
    """Conditions after dropout; the masks say which rows were replaced (bool (B,))."""

    clip_f: torch.Tensor
    sync_f: torch.Tensor
    text_f: torch.Tensor
    video_dropped: torch.Tensor
    text_dropped: torch.Tensor


def dropout_coins(
    batch: int, rng: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Uniform draws (2, batch) deciding the video (row 0) and text (row 1) dropout of each
    sample; :func:`dropout_masks` turns them into masks. Drawn where ``rng`` lives."""
    u = torch.rand(2, batch, generator=rng, device=_draw_device(rng, None))
    return u.to(device) if device is not None else u


def dropout_masks(coins: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(video_drop, text_drop)`` bool (B,) from coins (2, B): a condition is dropped where
    its coin is below ``p`` (the two coins of a sample are independent)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    return coins[0] < p, coins[1] < p


def apply_condition_dropout(
    model: SelvaGenerator,
    clip_f: torch.Tensor | None,
    sync_f: torch.Tensor,
    text_f: torch.Tensor,
    video_drop: torch.Tensor | None = None,
    text_drop: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """THE null-condition dropout: rows where ``video_drop`` get the model's learned null
    video (clip *and* sync tokens), rows where ``text_drop`` get its ``empty_string_feat``.

    ``clip_f=None`` means "no CLIP-visual features" (SelVA): the null clip token is used.
    Masks are bool (B,) or None (nothing dropped). Returns new tensors; gradients reach the
    learned null tokens where they are used.
    """
    b = sync_f.shape[0]
    clip0, sync0, text0 = model.empty_conditions(b)
    clip = clip0 if clip_f is None else clip_f
    sync, text = sync_f, text_f
    if video_drop is not None:
        vmask = video_drop.to(sync_f.device).view(b, 1, 1)
        clip = torch.where(vmask, clip0.to(clip.dtype), clip)
        sync = torch.where(vmask, sync0.to(sync.dtype), sync)
    if text_drop is not None:
        text = torch.where(text_drop.to(text_f.device).view(b, 1, 1), text0.to(text.dtype),
                           text)
    return clip, sync, text


def drop_conditions(
    model: SelvaGenerator,
    sync_f: torch.Tensor,
    text_f: torch.Tensor,
    clip_f: torch.Tensor | None = None,
    p: float = DEFAULT_CONFIG.null_condition_probability,
    rng: torch.Generator | None = None,
) -> DroppedConditions:
    """Classifier-free-guidance dropout of raw condition features, per sample: coins from
    ``rng`` (:func:`dropout_coins`), then :func:`apply_condition_dropout` with
    probability ``p`` for the video and, independently, for the text."""
    coins = dropout_coins(sync_f.shape[0], rng, sync_f.device)
    video_drop, text_drop = dropout_masks(coins, p)
    clip, sync, text = apply_condition_dropout(model, clip_f, sync_f, text_f, video_drop,
                                               text_drop)
    return DroppedConditions(clip, sync, text, video_drop, text_drop)


class FlowMatchingLoss(NamedTuple):
    """``loss`` reduced as asked; ``per_sample`` (B,) MSE over (N, C); the ``t`` used (B,)."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    t: torch.Tensor


def flow_matching_loss(
    model: SelvaGenerator,
    x1: torch.Tensor,
    clip_f: torch.Tensor | None,
    sync_f: torch.Tensor,
    text_f: torch.Tensor,
    t: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    rng: torch.Generator | None = None,
    reduction: str = "mean",
    config: FlowMatchingConfig = DEFAULT_CONFIG,
    *,
    video_drop: torch.Tensor | None = None,
    text_drop: torch.Tensor | None = None,
    network: Callable[..., torch.Tensor] | None = None,
) -> FlowMatchingLoss:
    """THE training objective: velocity MSE at ``x_t`` for normalised latents ``x1`` (B, N, C),
    with the null-condition dropout of :func:`apply_condition_dropout` where the masks say.

    ``t`` defaults to logit-normal draws and ``x0`` to standard normal noise, both from
    ``rng`` (pass fixed ones for a deterministic grid). ``video_drop`` / ``text_drop``
    (bool (B,)) drop conditions; None keeps them (draw masks with :func:`dropout_coins` and
    :func:`dropout_masks`). ``clip_f=None`` uses the null clip token. ``network`` runs the
    forward ``(x_t, clip, sync, text, t) -> v`` (e.g. a DistributedDataParallel wrapper of
    ``model``); default ``model`` itself. ``reduction``: ``mean``, ``sum`` or ``none``.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    b = x1.shape[0]
    if t is None:
        t = sample_t(b, rng, x1.device, mean=config.t_mean, std=config.t_std)
    t = torch.as_tensor(t, device=x1.device, dtype=torch.float32).reshape(-1).expand(b)
    if x0 is None:
        draw = _draw_device(rng, x1.device)
        x0 = torch.randn(x1.shape, generator=rng, device=draw, dtype=x1.dtype)
        x0 = x0.to(x1.device)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} differs from x1 shape {tuple(x1.shape)}")
    clip, sync, text = apply_condition_dropout(model, clip_f, sync_f, text_f, video_drop,
                                               text_drop)
    xt = interpolate(x0, x1, t, config.min_sigma)
    target = velocity_target(x0, x1, config.min_sigma)
    pred = (network or model)(xt, clip, sync, text, t)
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if reduction == "mean":
        loss = per_sample.mean()
    elif reduction == "sum":
        loss = per_sample.sum()
    else:
        loss = per_sample
    return FlowMatchingLoss(loss, per_sample, t)


def _timesteps(num_steps: int, min_sigma: float, device) -> torch.Tensor:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(0, 1 - min_sigma, num_steps + 1, device=device, dtype=torch.float32)


def euler_sample(
    model: SelvaGenerator,
    x0: torch.Tensor,
    clip_f: torch.Tensor | None,
    sync_f: torch.Tensor,
    text_f: torch.Tensor,
    *,
    negative_text_f: torch.Tensor | None = None,
    num_steps: int = DEFAULT_CONFIG.num_steps,
    cfg_strength: float = DEFAULT_CONFIG.cfg_strength,
    min_sigma: float = DEFAULT_CONFIG.min_sigma,
    progress_callback: ProgressCallback | None = None,
    batched_cfg: bool = True,
) -> torch.Tensor:
    """Integrate the flow from noise ``x0`` (B, N, C) at t = 0 to a normalised latent at t = 1.

    Euler steps on ``linspace(0, 1 - min_sigma, num_steps + 1)`` with classifier-free
    guidance ``v = w v(cond) + (1 - w) v(uncond)``, ``w = cfg_strength``; the unconditional
    branch uses the null video and ``negative_text_f`` (or the empty string) as text. For
    ``w < 1`` only the conditional prediction is made. Conditions are preprocessed once per
    run and, with ``batched_cfg`` (default), both branches run as one forward of batch 2B;
    ``batched_cfg=False`` is the reference two-pass path (:func:`euler_sample_two_pass`).
    ``progress_callback(step, total)`` is called after every step (it may raise to stop).
    Returns the normalised latent; use ``model.unnormalize`` for the VAE.
    """
    b = x0.shape[0]
    if clip_f is None:
        clip_f = model.empty_conditions(b)[0]
    use_cfg = cfg_strength >= 1.0
    if not use_cfg:
        conds = [model.preprocess_conditions(clip_f, sync_f, text_f)]
    else:
        clip0, sync0, text0 = model.empty_conditions(b, negative_text_f)
        if batched_cfg:
            conds = [
                model.preprocess_conditions(
                    torch.cat([clip_f, clip0.to(clip_f.dtype)]),
                    torch.cat([sync_f, sync0.to(sync_f.dtype)]),
                    torch.cat([text_f, text0.to(text_f.dtype)]),
                )
            ]
        else:
            conds = [
                model.preprocess_conditions(clip_f, sync_f, text_f),
                model.preprocess_conditions(clip0, sync0, text0),
            ]

    ts = _timesteps(num_steps, min_sigma, x0.device)
    x = x0
    for i in range(num_steps):
        t = ts[i].expand(b)
        if not use_cfg:
            v = model.predict_flow(x, t, conds[0])
        elif batched_cfg:
            both = model.predict_flow(torch.cat([x, x]), ts[i].expand(2 * b), conds[0])
            v_cond, v_uncond = both.chunk(2)
            v = cfg_strength * v_cond + (1 - cfg_strength) * v_uncond
        else:
            v_cond = model.predict_flow(x, t, conds[0])
            v_uncond = model.predict_flow(x, t, conds[1])
            v = cfg_strength * v_cond + (1 - cfg_strength) * v_uncond
        x = x + (ts[i + 1] - ts[i]) * v.to(x.dtype)
        if progress_callback is not None:
            progress_callback(i + 1, num_steps)
    return x


def euler_sample_two_pass(model: SelvaGenerator, x0: torch.Tensor, *args, **kwargs):
    """Reference path of :func:`euler_sample`: conditional and unconditional as two forwards."""
    return euler_sample(model, x0, *args, batched_cfg=False, **kwargs)


__all__ = [
    "FlowMatchingConfig",
    "DEFAULT_CONFIG",
    "DroppedConditions",
    "FlowMatchingLoss",
    "sample_t",
    "interpolate",
    "velocity_target",
    "dropout_coins",
    "dropout_masks",
    "apply_condition_dropout",
    "drop_conditions",
    "flow_matching_loss",
    "euler_sample",
    "euler_sample_two_pass",
]
