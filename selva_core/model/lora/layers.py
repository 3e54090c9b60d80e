"""``LoRALinear`` / ``LoRAConv1d``: wrappers holding any number of named adapters.

A wrapper replaces the target module in its parent (same qualified name) and keeps the original
module, untouched and frozen, as ``base_layer``. Each adapter is an :class:`AdapterState` in
``adapters[name]`` with its factors in peft's shapes:

* Linear: A (r, in), B (out, r);
* Conv1d: A (r, in, k) is a conv with the base kernel, stride, padding and dilation, B
  (out, r, 1) a 1x1 conv. ``ChannelLastConv1d`` (``channel_last = True``) takes and returns
  (B, N, C); the adapter path honours that layout.

Forward: ``y = base(x)``; then for each adapter with strength != 0, its kind adds
``strength * change``. Kinds see the layer in an *internal layout* chosen so that the base
output is a fresh, contiguous tensor that is not a view: Linear runs on (tokens, features),
Conv1d on channel-first (B, C, N) outputs whatever the module's layout. The adapter paths then
accumulate into that output in place, also under autograd (no wrapped layer keeps its output
for backward): one output-sized allocation and copy fewer per layer and step, and no
transposed copies (``benchmarks/bench_lora.py``). With no active adapter, and in merged mode
(merged weights, zero overhead), the plain base module runs. The original weight is kept
while merged and copied back on unmerge, so unmerging is bit-exact.

PiSSA adapters also hold frozen ``lora_A0``/``lora_B0`` and act as the rank-2r delta
``s ([B, -B0] [A; A0])`` on the untouched base weight (see ``init.py``). Chosen over rewriting
the base weight to W_res (and keeping a copy of the original for exact restoration) because
it is exact by construction, costs r (in + out) extra numbers per layer instead of an
(out, in) copy, lets strength / stacking act on the learned change only, and costs about
the same per step as standard LoRA (``benchmarks/bench_lora.py`` prints both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kind import get_kind


class AdapterState(nn.Module):
    """Tensors and settings of one named adapter on one wrapped layer.

    ``scale``: s of ``s B A``; ``strength``: runtime multiplier of the learned change;
    ``init``: how the factors were made (``standard``, ``pissa``, ``loaded``, ``edited``...);
    ``spec``: the model-level description shared by all layers of the adapter.
    """

    def __init__(
        self,
        A: torch.Tensor | None,
        B: torch.Tensor | None,
        *,
        scale: float,
        kind: str = "lora",
        init: str = "standard",
        strength: float = 1.0,
        dropout: float = 0.0,
        A0: torch.Tensor | None = None,
        B0: torch.Tensor | None = None,
        spec=None,
    ):
        super().__init__()
        if (A0 is None) != (B0 is None):
            raise ValueError("PiSSA init factors A0 and B0 come together")
        self.impl = get_kind(kind)
        if (A is None) != (not self.impl.has_factors) or (A is None) != (B is None):
            raise ValueError(f"adapter kind {kind!r} takes factors A and B: "
                             f"{'both' if self.impl.has_factors else 'neither'}")
        if A is None:  # a kind without factors (ia3, hra): only its extra tensors
            self.register_parameter("lora_A", None)
            self.register_parameter("lora_B", None)
        else:
            self.lora_A = nn.Parameter(A)
            self.lora_B = nn.Parameter(B)
        self.register_buffer("lora_A0", A0)
        self.register_buffer("lora_B0", B0)
        self.kind = kind
        self.scale = float(scale)
        self.strength = float(strength)
        self.dropout = float(dropout)
        self.init = init
        self.spec = spec

    @property
    def rank(self) -> int:
        """Rank of the trainable factors (a PiSSA delta has twice this rank); a kind without
        factors says its own (HRA: the number of reflections)."""
        if self.lora_A is None:
            return self.impl.rank(self)
        return self.lora_A.shape[0]

    @property
    def is_pissa(self) -> bool:
        return self.lora_A0 is not None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of the learned change ``s B A`` in layer shapes; PiSSA: [A; A0], [B, -B0]."""
        self.check_has_factors()
        if self.lora_A0 is None:
            return self.lora_A, self.lora_B
        return (
            torch.cat([self.lora_A, self.lora_A0], 0),
            torch.cat([self.lora_B, self.lora_B0.neg()], 1),
        )

    def check_has_factors(self) -> None:
        """One clear error for a factor operation on a kind without factors (ia3, hra)."""
        if self.lora_A is None:
            raise ValueError(
                f"adapter kind {self.kind!r} has no low-rank factors (A, B); this operation "
                "needs a low-rank kind (lora, dora, loraxs)")

    def factors2d(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) as matrices (out, R) and (R, in*k) with change ``s B A``."""
        A, B = self.factors()
        return B.reshape(B.shape[0], B.shape[1]), A.reshape(A.shape[0], -1)

    @torch.no_grad()
    def load_factors(
        self,
        A: torch.Tensor,
        B: torch.Tensor,
        A0: torch.Tensor | None = None,
        B0: torch.Tensor | None = None,
        init: str | None = None,
    ) -> None:
        """Replace the factors (layer shapes). Reuses the parameter objects when the shapes are
        unchanged (optimizer references stay valid), otherwise makes new ones with the same
        ``requires_grad``."""
        self.check_has_factors()
        dev, dt = self.lora_A.device, self.lora_A.dtype
        A, B = A.to(dev, dt), B.to(dev, dt)
        if A.shape == self.lora_A.shape and B.shape == self.lora_B.shape:
            self.lora_A.copy_(A)
            self.lora_B.copy_(B)
        else:
            grad = self.lora_A.requires_grad
            self.lora_A = nn.Parameter(A.clone(), requires_grad=grad)
            self.lora_B = nn.Parameter(B.clone(), requires_grad=grad)
        self.lora_A0 = None if A0 is None else A0.to(dev, dt).clone()
        self.lora_B0 = None if B0 is None else B0.to(dev, dt).clone()
        if init is not None:
            self.init = init

    def set_plain_factors(self, B2d: torch.Tensor, A2d: torch.Tensor, init: str) -> None:
        """Replace the change by ``s B2d A2d`` (a plain delta; drops PiSSA's A0/B0)."""
        a_shape = (A2d.shape[0], *self.lora_A.shape[1:])
        b_shape = (B2d.shape[0], B2d.shape[1], *self.lora_B.shape[2:])
        self.load_factors(A2d.reshape(a_shape), B2d.reshape(b_shape), init=init)

    def snapshot(self) -> dict:
        """Copies of the factors and init label, for :meth:`load_factors` (undo)."""
        def c(t):
            return None if t is None else t.detach().clone()

        return {
            "A": c(self.lora_A), "B": c(self.lora_B), "A0": c(self.lora_A0),
            "B0": c(self.lora_B0), "init": self.init,
        }

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, init={self.init}, rank={self.rank}, scale={self.scale:g}, "
            f"strength={self.strength:g}"
        )


class LoRALayer(nn.Module):
    """Common runtime of the Linear and Conv1d wrappers (see the module docstring)."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.merged = False
        self.register_buffer("_original_weight", None, persistent=False)
        self.register_buffer("_original_bias", None, persistent=False)
        self._base_requires_grad = {
            n: p.requires_grad for n, p in base_layer.named_parameters()
        }
        for p in base_layer.parameters():
            p.requires_grad_(False)

    # -- hooks used by the kinds (x and y in the internal layout) ------------------------
    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """The module input in the layout the kinds see."""
        return x

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``W x + b`` of an internal-layout input, as a fresh internal-layout tensor."""
        return self.base_layer(x)

    def from_internal(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The output in the module's layout, for the original input ``x``."""
        return y

    def apply_a(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def add_b(
        self, y: torch.Tensor, h: torch.Tensor, B: torch.Tensor, coef: float
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def channel_view(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-output-channel vector ``v`` shaped to broadcast over internal output ``y``."""
        return v

    def weight2d(self) -> torch.Tensor:
        """The base weight as an (out, in*k) view (merged weights while merged)."""
        w = self.base_layer.weight
        return w.reshape(w.shape[0], -1)

    def original_weight2d(self) -> torch.Tensor:
        """The original base weight (out, in*k), also while merged."""
        w = self._original_weight if self.merged else self.base_layer.weight
        return w.reshape(w.shape[0], -1)

    def base_bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (for code that inspects ``.weight``; adapters not included)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # -- runtime ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = [] if self.merged else [a for a in self.adapters.values() if a.strength != 0.0]
        if not active:
            return self.base_layer(x)
        xi = self.to_internal(x)
        y = self.base_forward(xi)
        for adapter in active:
            y = adapter.impl.forward(self, adapter, xi, y)
        return self.from_internal(y, x)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """A new tensor: the original base weight plus every active adapter's change at its
        strength (summed in fp32), in the base weight's shape and dtype."""
        w = self.base_layer.weight
        total = None
        for adapter in self.adapters.values():
            if adapter.strength != 0.0:
                d = adapter.impl.delta_weight(self, adapter) * adapter.strength
                total = d if total is None else total + d
        base = self.original_weight2d()
        if total is None:
            return base.reshape(w.shape).clone()
        return (base.float() + total.to(w.device)).reshape(w.shape).to(w.dtype)

    @torch.no_grad()
    def merged_bias(self) -> torch.Tensor | None:
        """A new tensor: the original bias plus the active adapters' bias changes (kinds with
        a ``bias_delta``: IA3's output scaling), or None when no adapter changes the bias."""
        b = self.base_layer.bias
        total = None
        for adapter in self.adapters.values():
            fn = getattr(adapter.impl, "bias_delta", None)
            if b is None or fn is None or adapter.strength == 0.0:
                continue
            d = fn(self, adapter)
            if d is not None:
                d = d * adapter.strength
                total = d if total is None else total + d
        if total is None:
            return None
        base = self._original_bias if self._original_bias is not None else b
        return (base.float() + total.to(b.device)).to(b.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Add every active adapter (at its strength) into the base weight (and bias, for
        kinds that change it); keep the originals."""
        if self.merged:
            return
        w = self.base_layer.weight
        merged = self.merged_weight()
        bias = self.merged_bias()
        self._original_weight = w.detach().clone()
        w.copy_(merged)
        if bias is not None:
            self._original_bias = self.base_layer.bias.detach().clone()
            self.base_layer.bias.copy_(bias)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Copy the original base weight (and bias) back (bit-exact)."""
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._original_weight)
        self._original_weight = None
        if self._original_bias is not None:
            self.base_layer.bias.copy_(self._original_bias)
            self._original_bias = None
        self.merged = False

    def unwrap(self) -> nn.Module:
        """Unmerge, restore the base parameters' ``requires_grad`` and return the base layer."""
        self.unmerge()
        for n, p in self.base_layer.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(n, p.requires_grad))
        return self.base_layer

    def extra_repr(self) -> str:
        return f"merged={self.merged}"


class LoRALinear(LoRALayer):
    """LoRA wrapper of an ``nn.Linear``: ``y = W x + b + sum_a strength_a * change_a(x)``."""

    def __init__(self, base_layer: nn.Linear):
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base_layer).__name__}")
        super().__init__(base_layer)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x

    def from_internal(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y.view(*x.shape[:-1], y.shape[-1]) if x.dim() > 2 else y

    def apply_a(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        return F.linear(x, A)

    def add_b(self, y: torch.Tensor, h: torch.Tensor, B: torch.Tensor, coef: float):
        # Out of place: selective checkpointing may keep ``y`` (the base output) for the
        # backward pass, and a kept tensor must not change.
        if y.dim() == 2:
            return torch.addmm(y, h.to(y.dtype), B.to(y.dtype).t(), alpha=coef)
        return torch.add(y, F.linear(h.to(y.dtype), B.to(y.dtype)), alpha=coef)  # 1-D input


class LoRAConv1d(LoRALayer):
    """LoRA wrapper of an ``nn.Conv1d`` (A: conv with the base kernel, B: 1x1 conv).

    Honours ``channel_last`` (``ChannelLastConv1d``): input and output are (B, N, C).
    """

    def __init__(self, base_layer: nn.Conv1d):
        if not isinstance(base_layer, nn.Conv1d):
            raise TypeError(f"LoRAConv1d wraps nn.Conv1d, got {type(base_layer).__name__}")
        check_wrappable(base_layer)
        super().__init__(base_layer)
        self.channel_last = bool(getattr(base_layer, "channel_last", False))

    def apply_a(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """(B, r, N') channel-first rank-space activations of the A convolution.

        Channel-last, stride-1 convs with integer padding (all of MMAudio's) take a faster
        route: one matmul of the (B, N, C) input with all k taps of A stacked, (B, N, k*r),
        then the k shifted (zero-padded) slices are summed in rank space. A conv with only r
        output channels is inefficient in CPU conv kernels; the matmul route avoids them,
        reads the input once and needs no transposed copy.
        """
        if x.dim() != 3:
            raise ValueError(
                f"LoRAConv1d expects a batched 3-D input, got shape {tuple(x.shape)}"
            )
        b = self.base_layer
        if self.channel_last and b.stride[0] == 1 and not isinstance(b.padding, str):
            r, k, d, p = A.shape[0], A.shape[2], b.dilation[0], b.padding[0]
            taps = F.linear(x, A.permute(2, 0, 1).reshape(k * r, A.shape[1]))  # (B, N, k*r)
            if p:
                taps = F.pad(taps, (0, 0, p, p))
            n_out = taps.shape[1] - d * (k - 1)
            h = taps[:, 0:n_out, 0:r]
            for j in range(1, k):
                h = h + taps[:, j * d: j * d + n_out, j * r: (j + 1) * r]
            return h.transpose(1, 2)
        xc = x.transpose(1, 2) if self.channel_last else x
        return F.conv1d(xc, A, None, b.stride, b.padding, b.dilation)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Channel-first ``W * x + b``, computed here so that it is a fresh tensor (the module
        of a channel-last conv returns a transposed view). Zero padding and groups = 1 are
        checked at wrap time."""
        if x.dim() != 3:
            raise ValueError(
                f"LoRAConv1d expects a batched 3-D input, got shape {tuple(x.shape)}"
            )
        b = self.base_layer
        xc = x.transpose(1, 2) if self.channel_last else x
        return F.conv1d(xc, b.weight, b.bias, b.stride, b.padding, b.dilation)

    def from_internal(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y.transpose(1, 2) if self.channel_last else y

    def add_b(self, y: torch.Tensor, h: torch.Tensor, B: torch.Tensor, coef: float):
        """``y + coef * B h`` on channel-first ``y`` (B, out, N) and ``h`` (B, r, N)."""
        Bm = B.reshape(B.shape[0], B.shape[1]).to(y.dtype).expand(h.shape[0], -1, -1)
        return torch.baddbmm(y, Bm, h.to(y.dtype), alpha=coef)  # out of place, as in LoRALinear

    def channel_view(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, 1)


def check_wrappable(module: nn.Module, path: str = "") -> None:
    """Raise the clear error a wrapper would raise for ``module``, without building one."""
    where = f" ({path})" if path else ""
    if isinstance(module, LoRALayer) or isinstance(module, nn.Linear):
        return
    if isinstance(module, nn.Conv1d):
        if module.groups != 1:
            raise ValueError(
                f"LoRAConv1d supports groups=1 convolutions only, got groups={module.groups}"
                f"{where}; exclude this layer from the targets"
            )
        if module.padding_mode != "zeros":
            raise ValueError(
                f"LoRAConv1d supports padding_mode='zeros' only, got {module.padding_mode!r}"
                f"{where}; exclude this layer from the targets"
            )
        return
    raise ValueError(
        f"LoRA adapts nn.Linear and nn.Conv1d only, got {type(module).__name__}{where}"
    )


def factor_shapes(module: nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes (A, B) of a rank-``rank`` adapter on ``module`` (a base layer or a wrapper)."""
    base = module.base_layer if isinstance(module, LoRALayer) else module
    w = base.weight
    return (rank, *w.shape[1:]), (w.shape[0], rank, *([1] * (w.dim() - 2)))


def wrap_module(module: nn.Module) -> LoRALayer:
    """The right wrapper for ``module`` (Linear or Conv1d)."""
    if isinstance(module, LoRALayer):
        return module
    if isinstance(module, nn.Linear):
        return LoRALinear(module)
    if isinstance(module, nn.Conv1d):
        return LoRAConv1d(module)
    raise TypeError(
        f"LoRA adapts nn.Linear and nn.Conv1d only, got {type(module).__name__}"
    )
