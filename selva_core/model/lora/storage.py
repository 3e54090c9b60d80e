"""How adapter factors are stored in files: exact float32, ``q16`` fixed point, or half floats.

A file holds, per adapted layer, factors ``A`` (R, in[, k]) and ``B`` (out, R[, 1]) whose
product ``scale * B A`` is the change on the unmodified base weight. Storages (metadata field
``storage_dtype``):

* ``float32``: the factors as trained, bit for bit (``save -> load`` is exact).
* ``q16``: the change re-factorised by an exact low-rank SVD (``lowrank.py``) into balanced
  factors ``B = U sqrt(S)``, ``A = sqrt(S) V^T``, then every rank direction (a column of B, a
  row of A) stored as int16 with its own float32 step ``max|x| / 32767``; file keys
  ``lora_A``/``lora_B`` (int16) plus ``lora_A_qscale``/``lora_B_qscale`` (R,). Half the bytes
  of float32. The columns of U and V are unit vectors whose entries span a narrow range, which
  fixed point with one step per direction resolves better than float16's 11-bit mantissa
  (``benchmarks/bench_lora.py`` prints both errors; every lossy save logs its own). Its effect
  on a layer's output is that error times ``||dW x|| / ||y||``, small because an adapter
  changes a layer's output by a small fraction.
* ``float16`` / ``bfloat16``: the balanced factors rounded (kept for tools that want plain
  half-precision tensors).

``auto`` (the default of :func:`resolve_storage`) keeps exactness where it is free and size
where it is not: ``q16`` only for a PiSSA adapter whose file holds a wider delta than was
trained (PiSSA adapters are saved as the rank-2r delta ``[B, -B0] [A; A0]``, see ``io.py``,
which in float32 is twice the size of a plain adapter; ``q16`` brings it back to that size),
float32 for everything else: standard / gaussian inits, DoRA, and plain adapters whose rank an
edit grew (``intruders.reduce_intruders``) stay exact. Every lossy save reports its error
(:func:`change_error`).

Balancing first matters for PiSSA: ``[B, -B0] [A; A0]`` is a small difference of large
principal terms that any rounding of the raw factors would destroy; the balanced factors are
of the size of the change itself.
"""

from __future__ import annotations

import math

import torch

from .lowrank import lowrank_svd, refactor

AUTO = "auto"
FLOAT_STORAGES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STORAGES = ("float32", "q16", "float16", "bfloat16")
# short names used by the CLIs (``--adapter_dtype``)
ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
Q16_MAX = 32767
Q16_KEYS = ("lora_A_qscale", "lora_B_qscale")


def canonical_storage(storage: str | torch.dtype) -> str:
    """``auto`` or one of :data:`STORAGES` from a name, a CLI alias or a float dtype."""
    if isinstance(storage, torch.dtype):
        for name, dt in FLOAT_STORAGES.items():
            if dt == storage:
                return name
        raise ValueError(f"adapter storage dtype must be one of {list(FLOAT_STORAGES)}, "
                         f"got {storage}")
    name = ALIASES.get(storage, storage)
    if name != AUTO and name not in STORAGES:
        raise ValueError(
            f"unknown adapter storage {storage!r}; choose one of "
            f"{[AUTO, *STORAGES]} (or {list(ALIASES)})"
        )
    return name


def resolve_storage(
    storage: str | torch.dtype, file_rank: int, trained_rank: int, *, pissa: bool
) -> str:
    """The concrete storage; ``auto``: q16 for a PiSSA delta wider than the trained rank, else
    float32 (a plain adapter is never made lossy by ``auto``)."""
    name = canonical_storage(storage)
    if name != AUTO:
        return name
    return "q16" if pissa and file_rank > trained_rank else "float32"


def file_keys(storage: str) -> tuple[str, ...]:
    """Per-layer key suffixes of the factors in a file of this storage."""
    return ("lora_A", "lora_B", *Q16_KEYS) if storage == "q16" else ("lora_A", "lora_B")


def balanced(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) in layer shapes with ``B A`` unchanged, re-factorised as (sqrt(S) V^T, U sqrt(S))."""
    B2, A2 = B.reshape(B.shape[0], B.shape[1]), A.reshape(A.shape[0], -1)
    U, S, V = lowrank_svd(B2.detach(), A2.detach())
    Bb, Ab = refactor(U, S, V, 1.0)
    k = Ab.shape[0]
    return Ab.reshape(k, *A.shape[1:]), Bb.reshape(Bb.shape[0], k, *B.shape[2:])


def _quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int16 values and the float32 step of each slice along ``dim`` (a rank direction)."""
    x64 = x.double()
    reduce = [d for d in range(x.dim()) if d != dim]
    peak = x64.abs().amax(dim=reduce) if reduce else x64.abs()
    step = torch.where(peak > 0, peak / Q16_MAX, torch.ones_like(peak)).float()
    shape = [1] * x.dim()
    shape[dim] = -1
    q = torch.round(x64 / step.double().reshape(shape)).clamp_(-Q16_MAX, Q16_MAX)
    return q.to(torch.int16), step


def _dequantize(q: torch.Tensor, step: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * q.dim()
    shape[dim] = -1
    return q.float() * step.float().reshape(shape)


def encode(A: torch.Tensor, B: torch.Tensor, storage: str) -> dict[str, torch.Tensor]:
    """File tensors (key suffix -> tensor) of the factors ``A``, ``B`` in a concrete storage."""
    if storage == "float32":
        return {"lora_A": A.detach().float().clone(), "lora_B": B.detach().float().clone()}
    Ab, Bb = balanced(A, B)
    if storage in FLOAT_STORAGES:
        dt = FLOAT_STORAGES[storage]
        return {"lora_A": Ab.to(dt), "lora_B": Bb.to(dt)}
    if storage != "q16":
        raise ValueError(f"unknown adapter storage {storage!r}")
    qA, sA = _quantize(Ab, 0)
    qB, sB = _quantize(Bb, 1)
    return {"lora_A": qA, "lora_B": qB, "lora_A_qscale": sA, "lora_B_qscale": sB}


def decode(tensors: dict[str, torch.Tensor], storage: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 factors (A, B) from the file tensors of one layer (key suffix -> tensor)."""
    if storage == "q16":
        return (
            _dequantize(tensors["lora_A"], tensors["lora_A_qscale"], 0),
            _dequantize(tensors["lora_B"], tensors["lora_B_qscale"], 1),
        )
    return tensors["lora_A"].float(), tensors["lora_B"].float()


@torch.no_grad()
def change_error(
    A: torch.Tensor, B: torch.Tensor, stored: dict[str, torch.Tensor], storage: str
) -> float:
    """Relative Frobenius error ``||B'A' - B A|| / ||B A||`` of a layer's change as stored
    (0 for an exact storage or a zero change). Computed from r x r Gram matrices in float64,
    so no dense (out, in) product is formed."""
    A2, B2 = decode(stored, storage)
    Af, Bf = A.detach().reshape(A.shape[0], -1), B.detach().reshape(B.shape[0], B.shape[1])
    Ac = torch.cat([Af.double(), A2.reshape(A2.shape[0], -1).double().to(Af.device)], 0)
    Bc = torch.cat([Bf.double(), -B2.reshape(B2.shape[0], B2.shape[1]).double().to(Bf.device)], 1)

    def sq_norm(Bm, Am):  # ||Bm Am||_F^2 = tr((Bm^T Bm)(Am Am^T))
        return float(((Bm.T @ Bm) * (Am @ Am.T)).sum())

    ref = sq_norm(Bf.double(), Af.double())
    if ref <= 0.0:
        return 0.0
    return math.sqrt(max(sq_norm(Bc, Ac), 0.0) / ref)


def check_layer_tensors(tensors: dict[str, torch.Tensor], storage: str, where: str) -> None:
    """One clear error when a layer's file tensors do not fit the storage (dtype, scale shape)."""
    A, B = tensors["lora_A"], tensors["lora_B"]
    if storage == "q16":
        for key, t in (("lora_A", A), ("lora_B", B)):
            if t.dtype != torch.int16:
                raise ValueError(f"{where}.{key} is {t.dtype}, but storage q16 stores int16")
        for key, t, rank in (("lora_A_qscale", tensors["lora_A_qscale"], A.shape[0]),
                             ("lora_B_qscale", tensors["lora_B_qscale"], B.shape[1])):
            if not t.is_floating_point() or tuple(t.shape) != (rank,):
                raise ValueError(
                    f"{where}.{key} must be a float vector of length {rank} (one step per rank "
                    f"direction), got {t.dtype} {tuple(t.shape)}"
                )
        return
    for key, t in (("lora_A", A), ("lora_B", B)):
        if not t.is_floating_point():
            raise ValueError(f"{where}.{key} is {t.dtype}, but storage {storage} stores floats")
