"""The evaluation spec: which clips, which adapters, which settings (``eval_adapters.py SPEC``).

A JSON object; the closest tool's fields keep their meaning::

    {"name": "drums", "data_dir": "runs/drums", "output_dir": "eval/drums",
     "steps": 25, "seed": 42,
     "adapters": [{"id": "base", "path": ""},
                  {"id": "r16", "path": "runs/drums/adapter_final.safetensors"},
                  {"id": "run", "path": "runs/drums"}]}

``path`` empty = the baseline without adapter (added automatically as ``baseline`` when no
entry has an empty path: drift and the listening grid compare against it). A ``path`` that is
a training run's folder stands for every checkpoint of the run (``checkpoints/step_*``) plus
its final adapter, with ids ``<id>@step_000500`` ... ``<id>@final``. Further fields:
``variant`` (default: the adapters' own, from their metadata), ``models_dir``, ``strengths``
(default ``[1.0]``; an adapter entry may give its own), ``seeds`` (default ``[seed]``),
``cfg``, ``negative_prompt``, ``duration`` (seconds per render; default each clip's
length up to 8 s), ``clips`` (names; default: the held-out clips when ``data_dir`` is a
training run's folder, else every clip), ``batch_size`` (clips per sampler batch),
``drift_dir`` (a folder of clips unlike the training set, rendered with and without each
adapter to measure drift), ``desync`` and ``synchformer`` (DeSync and the Synchformer file),
``clap_model`` (a local CLAP model folder: enables the CLAP score and the FAD-style distance),
``mp4``, ``device``, ``precision`` and ``rank_by`` (the metric the verdict ranks by, default
``lsd_db``). ``embeddings`` (``[{"id", "path"}]``) adds textual-inversion columns to the same
grid: each clip's prompt gets the token in place of the embedding's init word.

:func:`load_spec` / :meth:`EvalSpec.from_dict` check every field and raise ONE
:class:`EvalSpecError` that lists one clear message per bad field.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selva_core.audio.metrics import RANKABLE_KEYS
from selva_core.evaluation.verdict import RANKING_METRIC
from selva_core.model.lora.io import STRENGTH_RANGE
from selva_core.model.precision import BASE_DTYPE_CHOICES
from selva_core.run_folder import (
    CHECKPOINT_ADAPTER_FILE,
    CHECKPOINTS_DIR,
    FINAL_ADAPTER_FILE,
    RunFolder,
)
from selva_core.schema import REQUIRED, Field, Schema, device_problem, is_int, is_number
from selva_core.variants import (
    CFG_STRENGTH,
    NEGATIVE_PROMPT,
    SAMPLING_STEPS,
    TRAIN_DURATION_S,
    VARIANTS,
    min_duration,
)

log = logging.getLogger(__name__)

BASELINE_ID = "baseline"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,79}$")


def _distinct_seeds(value: list) -> bool:
    return bool(value) and all(is_int(s) and s >= 0 for s in value) \
        and len(set(value)) == len(value)


#: Every spec field: type, default, what is allowed and its meaning (the checks, the CLI's
#: --help, the node's tooltip and the docs' table). The list-valued fields ``adapters``,
#: ``embeddings`` and ``strengths`` are read by their own functions below.
SPEC_SCHEMA = Schema([
    Field("data_dir", "str", REQUIRED, shown_default="none, required", help=(
        "folder of clips (videos with their sound, optional same-stem audio files and "
        "prompts.txt), or a training run's output folder (its clips folder and held-out clips "
        "are used)")),
    Field("output_dir", "str", None, nullable=True, shown_default="eval_output/NAME", help=(
        "where renders, references, eval_summary.json, metrics.csv, charts and index.html go "
        "(relative paths: from the spec's folder)")),
    Field("name", "str", "eval", nullable=True, check=lambda v: bool(_ID_RE.match(v)),
          want="1-80 letters, digits or . _ @ + - (it names files)",
          help="name of the evaluation (page title; default output folder)"),
    Field("adapters", "any", None, nullable=True, shown_default="[]",
          want='a list of {"id", "path"[, "strengths"]} objects', help=(
              'list of {"id", "path"[, "strengths"]}: path = adapter .safetensors, a training '
              "run's folder (= every checkpoints/step_* and the final adapter), or \"\" for "
              "the baseline (added as 'baseline' when missing)")),
    Field("embeddings", "any", [], want='a list of {"id", "path"} objects', help=(
        'textual-inversion columns beside the adapters: list of {"id", "path"}: path = an '
        "embedding .safetensors or a training run's folder (its embedding_final.safetensors); "
        "each clip's prompt gets the token in place of the init word (appended without it)")),
    Field("strengths", "any", [1.0], shown_default="[1.0]",
          want=f"a non-empty list of distinct numbers in [{STRENGTH_RANGE[0]:g}, "
               f"{STRENGTH_RANGE[1]:g}]",
          help="adapter strengths rendered for every adapter"),
    Field("seed", "int", 42, low=0, help="noise seed (used when 'seeds' is not given)"),
    Field("seeds", "list", None, nullable=True, check=_distinct_seeds, shown_default="[seed]",
          want="a non-empty list of distinct integers >= 0",
          help="several seeds: every clip is rendered once per seed"),
    Field("steps", "int", SAMPLING_STEPS, low=1, help="Euler steps per render"),
    Field("cfg", "float", CFG_STRENGTH, low=0,
          help="classifier-free guidance strength"),
    Field("negative_prompt", "str", NEGATIVE_PROMPT, nullable=True,
          help="text for the unconditional CFG branch"),
    Field("duration", "float", None, nullable=True, low=min_duration(),
          shown_default="clip length up to 8 s", help=(
              "seconds rendered per clip (a training run's folder as data_dir: up to its "
              "training window)")),
    Field("clips", "list", None, nullable=True,
          check=lambda v: bool(v) and all(isinstance(c, str) and c for c in v),
          shown_default="held-out clips of a run, else all",
          want="a non-empty list of clip names (file stems)",
          help="clip names (file stems) to evaluate"),
    Field("variant", "str", None, nullable=True, choices=tuple(VARIANTS),
          shown_default="the adapters' own",
          help="model variant (tiny_16k runs without any download); leave it out to use the "
               "adapters' own"),
    Field("models_dir", "str", None, nullable=True, shown_default="the pipeline's default",
          help="folder of the model weight files"),
    Field("batch_size", "int", 4, low=1, help="clips rendered together through the sampler"),
    Field("drift_dir", "str", None, nullable=True, help=(
        "folder of clips unlike the training set, rendered with and without each adapter to "
        "measure drift")),
    Field("desync", "bool", True, help="measure DeSync with Synchformer (no download)"),
    Field("synchformer", "str", None, nullable=True,
          shown_default="MODELS_DIR/[ext_weights/]synchformer_state_dict.pth",
          help="the Synchformer weight file for DeSync"),
    Field("clap_model", "str", None, nullable=True, help=(
        "local folder of a CLAP model: enables the CLAP score and the FAD-style distance "
        "(skipped otherwise)")),
    Field("mp4", "bool", True, help="also write each render muxed onto the clip's video"),
    Field("rank_by", "str", RANKING_METRIC, choices=tuple(RANKABLE_KEYS), help=(
        "the metric the verdict ranks adapters, checkpoints and strengths by (its direction "
        "from the metric registry); default the log-spectral distance to the reference clips")),
    Field("device", "str", "auto", check=device_problem, want="one of auto, cpu, cuda, cuda:N",
          help="auto, cpu, cuda or cuda:N"),
    Field("precision", "str", "auto", choices=tuple(BASE_DTYPE_CHOICES),
          help="auto, bf16, fp16 or fp32"),
])

#: (name, default, meaning) of every spec field, from :data:`SPEC_SCHEMA`.
FIELD_HELP: tuple[tuple[str, str, str], ...] = tuple(
    (f.name, f.default_text(), f.help) for f in SPEC_SCHEMA.fields)


class EvalSpecError(ValueError):
    """A spec with bad fields; the message lists each one with what to do."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid evaluation spec {source}:\n{lines}")


@dataclass
class AdapterEntry:
    """One column group of the grid: an adapter file (or none = baseline) and its strengths."""

    id: str
    path: str = ""
    strengths: list[float] | None = None
    group: str = ""  # the spec entry a run folder was expanded from ("" = itself)
    step: int | None = None  # checkpoint step when expanded from a run folder
    kind: str = "adapter"  # or "embedding" (textual inversion; one pseudo-strength 1)

    @property
    def is_baseline(self) -> bool:
        return not self.path

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"


@dataclass
class EvalSpec:
    """Every setting of one evaluation; see the module docstring for each field."""

    data_dir: str
    output_dir: str
    name: str = "eval"
    steps: int = SAMPLING_STEPS
    seed: int = 42
    seeds: list[int] | None = None
    adapters: list[AdapterEntry] = field(default_factory=list)
    variant: str | None = None
    models_dir: str | None = None
    strengths: list[float] = field(default_factory=lambda: [1.0])
    cfg: float = CFG_STRENGTH
    negative_prompt: str = NEGATIVE_PROMPT
    duration: float | None = None
    clips: list[str] | None = None
    batch_size: int = 4
    drift_dir: str | None = None
    desync: bool = True
    synchformer: str | None = None
    clap_model: str | None = None
    mp4: bool = True
    device: str = "auto"
    precision: str = "auto"
    rank_by: str = RANKING_METRIC

    # ------------------------------------------------------------------------------------------
    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    def strengths_of(self, adapter: AdapterEntry) -> list[float]:
        """Strengths rendered for ``adapter`` (one pseudo-strength 0 for the baseline)."""
        if adapter.is_baseline:
            return [0.0]
        if adapter.is_embedding:
            return [1.0]
        return list(adapter.strengths) if adapter.strengths else list(self.strengths)

    @property
    def baseline(self) -> AdapterEntry:
        return next(a for a in self.adapters if a.is_baseline)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "(spec)", base_dir: str | os.PathLike | None
                  = None) -> EvalSpec:
        """Validate ``data``; relative paths are taken from ``base_dir`` (the spec's folder)."""
        return _parse(data, source, Path(base_dir) if base_dir is not None else None)


def load_spec(path_or_text: str | os.PathLike, *, base_dir: str | os.PathLike | None = None
              ) -> EvalSpec:
    """A spec from a JSON file or from JSON text (nodes pass either); one error if bad.

    Relative paths inside a file are resolved against the file's folder; inside JSON text
    against ``base_dir`` (default: the current folder).
    """
    text = str(path_or_text)
    if text.lstrip().startswith("{"):
        source, raw = "(JSON text)", text
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise EvalSpecError(str(path), [f"file {path} does not exist; give the path of a "
                                            "JSON spec or the JSON text itself"])
        source, raw = str(path), _read_spec_text(path)
        base_dir = path.resolve().parent if base_dir is None else base_dir
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EvalSpecError(source, [f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                                     f"{exc.colno}"]) from None
    return EvalSpec.from_dict(data, source, base_dir)


def _read_spec_text(path: Path) -> str:
    """The spec file's text: UTF-8 (with or without a byte-order mark) or UTF-16 with one
    (what some Windows editors save); anything else is one error naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EvalSpecError(str(path), [f"cannot read {path} ({exc.strerror or exc})"]) from None
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EvalSpecError(str(path), [
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 "
            "(or UTF-16 with a byte-order mark)"]) from None


# --- parsing -----------------------------------------------------------------------------------
def _resolve(path: str, base: Path | None) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


_SCALARS = [f.name for f in SPEC_SCHEMA.fields
            if f.name not in ("adapters", "embeddings", "strengths")]
_PATHS = ("models_dir", "synchformer", "clap_model")


def _parse(data: Any, source: str, base: Path | None) -> EvalSpec:
    if not isinstance(data, dict):
        raise EvalSpecError(source, [f"the spec must be a JSON object, got "
                                     f"{type(data).__name__}"])
    problems: list[str] = []
    problems.extend(SPEC_SCHEMA.unknown(sorted(set(data) - set(SPEC_SCHEMA.names))))
    values = SPEC_SCHEMA.parse(data, problems, only=_SCALARS, allow_unknown=True)
    values["name"] = values["name"] or "eval"
    values["negative_prompt"] = values["negative_prompt"] or ""
    for key, what in (("data_dir", "give a folder of clips or a training run's output folder"),
                      ("drift_dir", "give a folder of clips")):
        if values[key] is not None:
            values[key] = _resolve(values[key], base)
            if not Path(values[key]).is_dir():
                problems.append(f"field {key!r}: {values[key]} is not a folder; {what}")
    values["data_dir"] = values["data_dir"] or ""
    output_dir = values["output_dir"]
    values["output_dir"] = _resolve(output_dir, base) if output_dir else str(
        (base or Path.cwd()) / "eval_output" / values["name"])
    for key in _PATHS:
        values[key] = _resolve(values[key], base) if values[key] else None
    values["strengths"] = _strengths(data.get("strengths", [1.0]), "field 'strengths'",
                                     problems)
    adapters = _adapters(data.get("adapters"), base, problems)
    adapters += _embeddings(data.get("embeddings", []), base, {a.id.lower() for a in adapters},
                            problems)
    spec = EvalSpec(adapters=adapters, **values)
    if problems:
        raise EvalSpecError(source, problems)
    return spec


def _strengths(value: Any, where: str, problems: list[str]) -> list[float]:
    if not (isinstance(value, list) and value and all(is_number(s) for s in value)):
        problems.append(f"{where} must be a non-empty list of finite numbers, got {value!r}")
        return [1.0]
    if len(set(value)) != len(value):
        problems.append(f"{where} lists a strength twice: {value!r}")
    low, high = STRENGTH_RANGE
    outside = [s for s in value if not low <= s <= high]
    if outside:
        problems.append(f"{where}: {', '.join(f'{s:g}' for s in outside)} lie(s) outside "
                        f"[{low:g}, {high:g}], the strengths the LoRA Loader offers")
    return [float(s) for s in value]


def _adapters(value: Any, base: Path | None, problems: list[str]) -> list[AdapterEntry]:
    if value is None:
        value = []
    elif value == []:
        log.warning("the spec's 'adapters' is an empty list: only the baseline (the model "
                    "without adapters) is rendered; list adapters to compare them with it")
    if not isinstance(value, list):
        problems.append(f"field 'adapters' must be a list of {{\"id\", \"path\"}} objects, got "
                        f"{value!r}")
        return [AdapterEntry(BASELINE_ID)]
    entries: list[AdapterEntry] = []
    for i, item in enumerate(value):
        where = f"adapters[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where} must be an object with 'id' and 'path', got {item!r}")
            continue
        extra = sorted(set(item) - {"id", "path", "strengths"})
        if extra:
            problems.append(f"{where} has unknown keys {extra}; allowed: id, path, strengths")
        ident, path = item.get("id"), item.get("path", "")
        if not isinstance(ident, str) or not _ID_RE.match(ident):
            problems.append(f"{where}.id {ident!r} must be 1-80 letters, digits or . _ @ + - "
                            "starting with a letter or digit (it names folders)")
            continue
        if not isinstance(path, str):
            problems.append(f"{where}.path must be a string (empty = baseline), got {path!r}")
            continue
        strengths = None
        if "strengths" in item:
            strengths = _strengths(item["strengths"], f"{where}.strengths", problems)
        if not path:
            entries.append(AdapterEntry(ident, "", None))
            continue
        resolved = Path(_resolve(path, base))
        if resolved.is_dir():
            found = RunFolder(resolved).adapters()
            if not found:
                problems.append(f"{where}.path {resolved} is a folder without an adapter: give "
                                f"a .safetensors adapter file or a training run's folder (with "
                                f"{CHECKPOINTS_DIR}/step_*/{CHECKPOINT_ADAPTER_FILE} or "
                                f"{FINAL_ADAPTER_FILE})")
                continue
            for label, step, adapter_path in found:
                entries.append(AdapterEntry(f"{ident}@{label}", str(adapter_path), strengths,
                                            group=ident, step=step))
        elif not resolved.exists():
            problems.append(f"{where}.path {resolved} does not exist")
        else:
            entries.append(AdapterEntry(ident, str(resolved), strengths))
    seen: set[str] = set()
    for e in entries:
        if e.id.lower() in seen:
            problems.append(f"adapter id {e.id!r} is used twice; ids name output folders and "
                            "must be unique (case-insensitively)")
        seen.add(e.id.lower())
    if len([e for e in entries if e.is_baseline]) > 1:
        problems.append("more than one adapter entry has an empty path (the baseline); keep one")
    if not any(e.is_baseline for e in entries) and BASELINE_ID not in seen:
        entries.insert(0, AdapterEntry(BASELINE_ID, "", None))
    elif not any(e.is_baseline for e in entries):
        problems.append(f"no baseline entry (empty path) and the id {BASELINE_ID!r} is taken; "
                        "add {\"id\": \"base\", \"path\": \"\"}")
    return entries


def _embeddings(value: Any, base: Path | None, taken: set[str], problems: list[str]
                ) -> list[AdapterEntry]:
    """The spec's textual-inversion columns (a run folder means its final embedding)."""
    from selva_core.model.textual_inversion import FINAL_EMBEDDING_FILE

    if not isinstance(value, list):
        problems.append(f"field 'embeddings' must be a list of {{\"id\", \"path\"}} objects, "
                        f"got {value!r}")
        return []
    entries = []
    for i, item in enumerate(value):
        where = f"embeddings[{i}]"
        if not (isinstance(item, dict) and set(item) <= {"id", "path"}):
            problems.append(f"{where} must be an object with 'id' and 'path' only, got {item!r}")
            continue
        ident, path = item.get("id"), item.get("path")
        if not isinstance(ident, str) or not _ID_RE.match(ident):
            problems.append(f"{where}.id {ident!r} must be 1-80 letters, digits or . _ @ + - "
                            "starting with a letter or digit (it names folders)")
            continue
        if ident.lower() in taken:
            problems.append(f"{where}.id {ident!r} is used twice; ids name output folders and "
                            "must be unique (case-insensitively)")
            continue
        if not isinstance(path, str) or not path:
            problems.append(f"{where}.path must name an embedding file or a run folder")
            continue
        resolved = Path(_resolve(path, base))
        if resolved.is_dir():
            resolved = resolved / FINAL_EMBEDDING_FILE
        if not resolved.is_file():
            problems.append(f"{where}.path {resolved} does not exist (train one with "
                            "train_lora.py --method textual_inversion)")
            continue
        taken.add(ident.lower())
        entries.append(AdapterEntry(ident, str(resolved), None, kind="embedding"))
    return entries


def default_duration(clip_seconds: float | None, spec: EvalSpec,
                     longest: float = TRAIN_DURATION_S) -> float:
    """Seconds rendered for a clip: the spec's duration, else the clip's length up to
    ``longest`` (8 s, or a training run's window when data_dir is a run folder)."""
    if spec.duration is not None:
        return float(spec.duration)
    if clip_seconds is None:
        return longest
    return max(min_duration(), min(longest, float(clip_seconds)))


__all__ = ["AdapterEntry", "EvalSpec", "EvalSpecError", "BASELINE_ID", "FIELD_HELP", "SPEC_SCHEMA",
           "load_spec", "default_duration"]
