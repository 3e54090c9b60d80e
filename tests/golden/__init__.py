"""Generic runner for golden cases (seeded weights + inputs + reference outputs).

A *case* is a pair ``<case>.json`` + ``<case>.safetensors`` in one folder (format:
``tests/reference/golden/README.md``). The runner builds our network from the case's config
(sequence lengths follow the duration rules, never the file), loads the seeded weights the
way a real checkpoint is loaded, feeds the stored inputs and compares every ``output.*``
tensor with its ``tolerance_atol``. Nothing is special-cased to particular files, so the
same runner checks any other set of cases made the same way (seeds, durations, variants).

    python -m tests.golden FOLDER [--case NAME ...] [--skip NAME ...]
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch
from safetensors.torch import load_file

HERE = pathlib.Path(__file__).resolve().parent
BUNDLED_REFERENCE = HERE.parent / "reference"  # our copy of shared/reference


@dataclass
class GoldenCase:
    """One case: its JSON description, its tensors and where it came from."""

    name: str
    spec: dict
    tensors: dict[str, torch.Tensor]
    folder: pathlib.Path

    @property
    def component(self) -> str:
        return self.spec["component"]

    @property
    def config(self) -> dict:
        return self.spec.get("config") or {}

    def inputs(self) -> dict[str, torch.Tensor]:
        return {k[len("input."):]: v for k, v in self.tensors.items() if k.startswith("input.")}

    def tolerance(self, key: str) -> float:
        return float(self.spec["tolerance_atol"][key])


@dataclass
class Check:
    name: str
    max_error: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_error <= self.atol


@dataclass
class CaseResult:
    case: str
    checks: list[Check] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)


def load_case(json_path: str | pathlib.Path) -> GoldenCase:
    json_path = pathlib.Path(json_path)
    spec = json.loads(json_path.read_text())
    tensor_file = json_path.parent / spec["file"]
    return GoldenCase(spec["case"], spec, load_file(str(tensor_file)), json_path.parent)


def discover_cases(folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Every ``*.json`` in ``folder`` that describes a case (has ``case`` and ``file``)."""
    found = []
    for path in sorted(pathlib.Path(folder).glob("*.json")):
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(spec, dict) and "case" in spec and "file" in spec:
            found.append(path)
    return found


def _first_existing(candidates: list[pathlib.Path], what: str) -> pathlib.Path:
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{what} not found; looked in: " + ", ".join(map(str, candidates)))


def seeded_weights_module(case: GoldenCase) -> ModuleType:
    """The case folder's ``seeded_weights.py`` (the recipe travels with the cases)."""
    path = _first_existing(
        [case.folder / "seeded_weights.py", BUNDLED_REFERENCE / "golden" / "seeded_weights.py"],
        "seeded_weights.py",
    )
    spec = importlib.util.spec_from_file_location("golden_seeded_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_manifest(path: pathlib.Path) -> bool:
    # Case JSONs and manifests can share a file name (vae_16k.json); a manifest has param_count.
    try:
        return "param_count" in json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def manifest_path(case: GoldenCase) -> pathlib.Path:
    """Resolve the case's manifest (relative to ``shared/``) with sensible fallbacks."""
    rel = pathlib.Path(case.spec["manifest"])
    candidates = [
        case.folder.parent.parent / rel,  # FOLDER = shared/reference/golden
        case.folder.parent / rel.name,
        case.folder / rel.name,
        BUNDLED_REFERENCE / rel.name,
    ]
    return _first_existing([c for c in candidates if c.is_file() and _is_manifest(c)]
                           or candidates[:1], f"manifest {rel}")


def seeded_state_dict(case: GoldenCase, check_fingerprint: bool = True) -> dict[str, torch.Tensor]:
    sw = seeded_weights_module(case)
    sd = sw.seeded_state_dict(str(manifest_path(case)), case.spec["seed"])
    want = case.spec.get("weights_fingerprint")
    if check_fingerprint and want and sw.state_dict_fingerprint(sd) != want:
        raise RuntimeError(
            f"{case.name}: seeded weights fingerprint differs from the case's "
            "(the recipe or torch's RNG changed, not the model)"
        )
    return sd


def manifest_shapes(path: str | pathlib.Path) -> dict[str, list[int]]:
    """``{state-dict key: shape}`` of a manifest JSON (``param_count`` / ``_meta`` left out)."""
    data = json.loads(pathlib.Path(path).read_text())
    return {k: v for k, v in data.items() if k not in ("param_count", "_meta")}


def max_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    if ours.shape != ref.shape:
        raise ValueError(f"shape {tuple(ours.shape)} != golden {tuple(ref.shape)}")
    if ref.dtype == torch.bool:
        return float((ours.bool() != ref).sum().item())
    return float((ours.detach().double() - ref.double()).abs().max().item())


def compare(case: GoldenCase, produced: dict[str, torch.Tensor]) -> list[Check]:
    """Check every ``output.*`` of the case (plus any produced ``inter.*`` it lists)."""
    checks = []
    for key in sorted(case.spec["tolerance_atol"]):
        if key.startswith("output.") and key not in produced:
            raise KeyError(f"{case.name}: the runner produced no {key}")
        if key in produced:
            checks.append(Check(key, max_error(produced[key], case.tensors[key]),
                                case.tolerance(key)))
    return checks


Runner = Callable[[GoldenCase], dict[str, torch.Tensor]]


def run_case(case: GoldenCase) -> CaseResult:
    from tests.golden.components import RUNNERS

    result = CaseResult(case.name)
    runner = RUNNERS.get(case.component)
    if runner is None:
        result.error = f"unknown component {case.component!r} (known: {', '.join(RUNNERS)})"
        return result
    try:
        with torch.inference_mode():
            produced = runner(case)
        result.checks = compare(case, produced)
    except Exception as exc:  # reported per case; the CLI exits non-zero
        result.error = f"{type(exc).__name__}: {exc}"
    return result
