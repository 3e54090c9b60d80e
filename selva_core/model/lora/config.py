"""``LoRAConfig``: rank, scaling, init mode, kind and targets of one adapter.

Scaling and its defaults
------------------------
The adapter adds ``s * B A`` to a frozen weight ``W``. Two rules for ``s`` exist:

* ``alpha / r`` (Hu et al. 2021, peft's default) and
* rsLoRA ``alpha / sqrt(r)`` (Kalajdzievski 2023, arXiv 2312.03732), which keeps the size of the
  learned update stable as the rank grows *provided alpha is a fixed number*.

The closest existing SelVA tool set ``alpha = 2 r`` and then turned rsLoRA on, which gives
``s = 2 r / sqrt(r) = 2 sqrt(r)`` (8 at r = 16, 22.6 at r = 128): the rank blow-up that rsLoRA
exists to remove. Here alpha is never tied to the rank. When ``alpha`` is left ``None``:

* ``alpha / r`` uses ``alpha = 32``. "LoRA Without Regret" (Thinking Machines, 2025) finds that
  with the 1/r rule and a fixed alpha (32) the best learning rate is nearly independent of the
  rank, so a rank sweep needs no new LR sweep. At the default rank 16 this is ``s = 2``, the same
  scale as the earlier tool's ``alpha = 2 r`` at r = 16, so its tuned LR (1e-4) carries over.
* rsLoRA uses ``alpha = 8``, again ``s = 2`` at r = 16, growing only as ``sqrt(16 / r)`` away
  from it.

rsLoRA is off by default (research notes, section 6: "alpha/r with alpha in {r, 2r}; rsLoRA off,
with fixed alpha if on"). Passing rsLoRA with ``alpha >= r`` logs a warning that names the
resulting scale. The effective scale is logged at attach time and stored in every file.

Init modes (``init``): ``standard`` (A Kaiming-uniform a = sqrt(5), B = 0), ``gaussian``
(A ~ N(0, std 1/r), B = 0, the diffusers convention), ``pissa`` (exact fp32 SVD) and
``pissa_niter_<N>`` (randomized SVD, ``torch.svd_lowrank`` with N subspace iterations).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from .kind import get_kind

logger = logging.getLogger(__name__)

DEFAULT_RANK = 16
DEFAULT_ALPHA = 32.0  # alpha / r rule, fixed alpha: s = 2 at r = 16
DEFAULT_ALPHA_RSLORA = 8.0  # alpha / sqrt(r) rule, fixed alpha: s = 2 at r = 16
INIT_MODES = ("standard", "gaussian", "pissa")
_PISSA_NITER = re.compile(r"^pissa_niter_(\d+)$")


def parse_init(init: str) -> tuple[str, int | None]:
    """``"pissa_niter_4"`` -> ``("pissa", 4)``; ``"pissa"`` -> ``("pissa", None)`` (exact SVD)."""
    m = _PISSA_NITER.match(init)
    if m:
        niter = int(m.group(1))
        if niter < 1:
            raise ValueError(f"init {init!r}: the number of subspace iterations must be >= 1")
        return "pissa", niter
    if init not in INIT_MODES:
        raise ValueError(
            f"unknown LoRA init {init!r}; choose one of {', '.join(INIT_MODES)} or "
            "'pissa_niter_<N>' (randomized SVD with N subspace iterations)"
        )
    return init, None


def compute_scale(rank: int, alpha: float, use_rslora: bool) -> float:
    """``alpha / sqrt(rank)`` with rsLoRA, else ``alpha / rank``."""
    return float(alpha) / (math.sqrt(rank) if use_rslora else rank)


@dataclass(frozen=True)
class LoRAConfig:
    """Hyper-parameters of one adapter.

    ``targets``: presets (``qkv``, ``attn``/``qkv+linear1``, ``ffn``, ``attn+ffn``, ``all``),
    ``re:<regex>`` (full match on the qualified module name), globs (``*``, ``?``, ``[]``) or
    plain dotted names (exact name or a name suffix such as ``attn.qkv``); see ``targets.py``.
    ``kind``: the LoRA kind, ``lora``, ``dora`` or ``loraxs`` ("variant" always means the
    model variant).
    ``seed``: seeds the random A init per layer (``None`` uses torch's global generator).
    """

    rank: int = DEFAULT_RANK
    alpha: float | None = None
    use_rslora: bool = False
    init: str = "standard"
    kind: str = "lora"
    targets: tuple[str, ...] = ("attn",)
    exclude: tuple[str, ...] = ()
    dropout: float = 0.0
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        else:
            object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        else:
            object.__setattr__(self, "exclude", tuple(self.exclude))
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"LoRAConfig.rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRAConfig.alpha must be a positive number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise ValueError("LoRAConfig.targets is empty; give a preset such as 'attn'")
        parse_init(self.init)
        get_kind(self.kind)

    @property
    def effective_alpha(self) -> float:
        """``alpha``, or the documented default for the chosen scaling rule."""
        if self.alpha is not None:
            return float(self.alpha)
        return DEFAULT_ALPHA_RSLORA if self.use_rslora else DEFAULT_ALPHA

    @property
    def scale(self) -> float:
        """The multiplier ``s`` of ``B A``."""
        return compute_scale(self.rank, self.effective_alpha, self.use_rslora)

    def check_scale(self) -> None:
        """Warn about the rsLoRA + alpha-tied-to-rank combination (scale grows as sqrt(r))."""
        if self.use_rslora and self.rank > 1 and self.effective_alpha >= self.rank:
            logger.warning(
                "rsLoRA with alpha=%g >= rank=%d gives scale alpha/sqrt(r)=%.3g, which grows "
                "with sqrt(rank) and undoes rsLoRA; use a fixed alpha (default %g)",
                self.effective_alpha, self.rank, self.scale, DEFAULT_ALPHA_RSLORA,
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["exclude"] = list(self.exclude)
        d["alpha"] = self.effective_alpha
        return d
