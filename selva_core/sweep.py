"""Sweeps: train several LoRA experiments from one JSON file (``train_lora.py --sweep``).

::

    {"name": "ranks", "output_dir": "sweeps/ranks",
     "base": {"data_dir": "my_clips", "steps": 2000, "val_clips": 2},
     "experiments": [{"id": "r8", "overrides": {"rank": 8}},
                     {"id": "r32", "rank": 32, "lr": 5e-5}],
     "eval": {"strengths": [0.5, 1.0], "seeds": [1, 2]}}

``base`` holds training settings (the fields of :class:`TrainConfig`, as in ``config.json``);
each experiment overrides some of them (under ``overrides`` or directly beside its ``id``).
Every experiment trains in ``OUTPUT_DIR/<id>/``; all share one feature cache
(``OUTPUT_DIR/feature_cache`` unless ``base`` names one) and one pipeline per model variant, so
the dataset's features are extracted once for all experiments (an experiment that changes
what the features depend on, e.g. ``duration``, extracts its own once).

A rerun skips finished experiments and resumes an unfinished one from its newest checkpoint.
Creating the file ``OUTPUT_DIR/skip_current.flag`` stops the running experiment cleanly after
its current step (a resumable checkpoint is saved; the flag is removed) and goes on with the
next; Ctrl-C stops the sweep (rerun to continue). ``sweep_summary.json`` (rewritten atomically
after every experiment) and ``val_curves.png`` (every experiment's validation loss, with its
smoothed training loss, on one chart) sit in ``OUTPUT_DIR``. With ``eval`` (an evaluation spec
as an object or a file path; ``data_dir``, ``output_dir`` and ``adapters`` may be left out)
every finished experiment's checkpoints and final adapter are evaluated in one grid in
``OUTPUT_DIR/eval`` (default clips: the first experiment's held-out clips), and
``leaderboard.csv`` (also ``leaderboard`` in the summary) ranks every experiment x checkpoint x
strength by the evaluation's verdict metric (the eval spec's ``rank_by``, default ``lsd_db``),
with its spread over seeds and the checkpoint's validation loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selva_core.atomic import savefig_atomic, write_json_atomic, write_text_atomic
from selva_core.console import say
from selva_core.run_folder import CHECKPOINTS_DIR, RunFolder
from selva_core.schema import REQUIRED, Field, Schema
from selva_core.training.config import TrainConfig

log = logging.getLogger(__name__)


SUMMARY_FILE = "sweep_summary.json"
LEADERBOARD_FILE = "leaderboard.csv"
CHART_FILE = "val_curves.png"
SKIP_FLAG = "skip_current.flag"
EVAL_DIR = "eval"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
# Per-experiment fields the sweep sets itself.
_MANAGED = {"output_dir", "resume", "resume_from", "overwrite", "demo"}


#: The sweep file's fields (its checks and the docs' table).
SWEEP_SCHEMA = Schema([
    Field("name", "str", "sweep", check=lambda v: bool(_ID_RE.match(v)),
          want="1-64 letters, digits or . _ + -",
          help="name of the sweep (default output folder)"),
    Field("output_dir", "str", None, nullable=True, shown_default="sweeps/NAME", help=(
        "where each experiment trains (OUTPUT_DIR/<id>/), the shared feature cache, "
        "sweep_summary.json, val_curves.png and leaderboard.csv go (relative paths: from the "
        "sweep file's folder)")),
    Field("base", "dict", {}, shown_default="{}",
          want="an object of training settings (the flags of train_lora.py --help)", help=(
              "training settings every experiment starts from: TrainConfig's fields as in "
              "config.json (output_dir, resume, resume_from, overwrite and demo are set by the "
              "sweep)")),
    Field("experiments", "list", REQUIRED, check=bool,
          want='a non-empty list of {"id", "overrides"} objects', help=(
              'list of {"id", "overrides": {...}} (settings may also sit beside the id); the id '
              "names the experiment's folder")),
    Field("eval", "any", None, nullable=True, check=lambda v: isinstance(v, (dict, str)),
          want="an evaluation spec object or its file path", help=(
              "evaluate every finished experiment's checkpoints and final adapter in one grid "
              "(OUTPUT_DIR/eval): an evaluation spec object or file; data_dir, output_dir and "
              "adapters may be left out")),
])


class SweepError(ValueError):
    """A sweep file with problems; the message lists each one."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"invalid sweep {source}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class Experiment:
    id: str
    overrides: dict[str, Any]
    config: TrainConfig


@dataclass
class Sweep:
    name: str
    output_dir: Path
    base: dict[str, Any]
    experiments: list[Experiment]
    eval: dict[str, Any] | None = None
    source: str = "(sweep)"
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def skip_flag(self) -> Path:
        return self.output_dir / SKIP_FLAG


def load_sweep(path_or_text: str | Path) -> Sweep:
    """Read and check a sweep (file path or JSON text); one :class:`SweepError` if bad."""
    text = str(path_or_text)
    if text.lstrip().startswith("{"):
        source, raw, base_dir = "(JSON text)", text, Path.cwd()
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise SweepError(str(path), [f"file {path} does not exist"])
        source, raw, base_dir = str(path), path.read_text(encoding="utf-8"), path.resolve().parent
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SweepError(source, [f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                                  f"{exc.colno}"]) from None
    return parse_sweep(data, source, base_dir)


def _resolve(value: Any, base_dir: Path) -> Any:
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        return str(base_dir / value)
    return value


def parse_sweep(data: Any, source: str = "(sweep)", base_dir: Path | None = None) -> Sweep:
    base_dir = base_dir or Path.cwd()
    if not isinstance(data, dict):
        raise SweepError(source, ["the sweep must be a JSON object with 'base' and "
                                  "'experiments'"])
    problems: list[str] = []
    top = SWEEP_SCHEMA.parse(data, problems)
    name = top["name"]
    out = top["output_dir"] or f"sweeps/{name}"
    output_dir = Path(_resolve(out, base_dir))
    base = top["base"]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in sorted(set(base) - known):
        problems.append(f"base.{key} is not a training setting (see train_lora.py --help)")
    for key in sorted(set(base) & _MANAGED):
        problems.append(f"base.{key} is set by the sweep for each experiment; remove it")
    base = {k: v for k, v in base.items() if k in known and k not in _MANAGED}
    for key in ("data_dir", "cache_dir", "models_dir"):
        if key in base:
            base[key] = _resolve(base[key], base_dir)
    base.setdefault("cache_dir", str(output_dir / "feature_cache"))
    experiments: list[Experiment] = []
    raw_exps = top["experiments"] or []
    seen: set[str] = set()
    for i, item in enumerate(raw_exps):
        where = f"experiments[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where} must be an object with an 'id', got {item!r}")
            continue
        ident = item.get("id")
        if not isinstance(ident, str) or not _ID_RE.match(ident):
            problems.append(f"{where}.id {ident!r} must be 1-64 letters, digits or . _ + - "
                            "(it names the experiment's folder)")
            continue
        if ident.lower() in seen:
            problems.append(f"{where}.id {ident!r} is used twice")
            continue
        seen.add(ident.lower())
        overrides = dict(item.get("overrides") or {})
        if not isinstance(item.get("overrides", {}), dict):
            problems.append(f"{where}.overrides must be an object")
        overrides.update({k: v for k, v in item.items() if k not in ("id", "overrides")})
        bad = sorted(set(overrides) - known)
        if bad:
            problems.append(f"{where} ({ident}): {', '.join(bad)} are not training settings")
        managed = sorted(set(overrides) & _MANAGED)
        if managed:
            problems.append(f"{where} ({ident}): {', '.join(managed)} are set by the sweep")
        overrides = {k: _resolve(v, base_dir) if k in ("data_dir", "cache_dir", "models_dir")
                     else v for k, v in overrides.items() if k in known and k not in _MANAGED}
        settings = {**base, **overrides, "output_dir": str(output_dir / ident)}
        try:
            cfg = TrainConfig.from_dict(settings).validate()
        except (TypeError, ValueError) as exc:
            problems.append(f"{where} ({ident}): {exc}")
            continue
        experiments.append(Experiment(ident, overrides, cfg))
    evaluation = top["eval"]
    if isinstance(evaluation, str):
        path = Path(_resolve(evaluation, base_dir))
        try:
            evaluation = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(evaluation, dict):
                for key in ("data_dir", "output_dir", "models_dir", "synchformer",
                            "clap_model", "drift_dir"):
                    if key in evaluation:
                        evaluation[key] = _resolve(evaluation[key], path.parent)
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"field 'eval': cannot read the evaluation spec {path} ({exc})")
            evaluation = None
    if evaluation is not None and not isinstance(evaluation, dict):
        problems.append(SWEEP_SCHEMA.bad("eval", evaluation, SWEEP_SCHEMA["eval"].allowed()))
        evaluation = None
    if problems:
        raise SweepError(source, problems)
    return Sweep(name, output_dir, base, experiments, evaluation, source, base_dir)


# --- state of one experiment folder -------------------------------------------------------------
def experiment_state(out: Path) -> str:
    """``finished``, ``resumable`` (has a checkpoint), ``stale`` (trained, no checkpoint) or
    ``new``."""
    from selva_core.training.run import holds_a_run

    if RunFolder(out).is_finished():
        return "finished"
    found = holds_a_run(out) if out.is_dir() else []
    if CHECKPOINTS_DIR in found:
        return "resumable"
    return "stale" if found else "new"


def _row(exp: Experiment, status: str, result=None) -> dict[str, Any]:
    out = exp.config.output_path
    summary = (result.summary if result is not None else RunFolder(out).read_summary()) or {}
    keys = ("steps_done", "steps", "val_loss_base", "val_loss_final", "first_train_loss",
            "last_train_loss", "train_time_s", "adapter_path", "adapter_mb", "rank", "alpha",
            "init", "target")
    return {"id": exp.id, "overrides": exp.overrides, "status": status,
            "output_dir": str(out), **{k: summary.get(k) for k in keys}}


# --- the chart ----------------------------------------------------------------------------------
def plot_val_curves(sweep: Sweep, path: Path) -> Path | None:
    """Every experiment's validation loss (solid) and smoothed training loss (dotted)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from selva_core.training.report import read_jsonl, smooth

    fig = Figure(figsize=(9, 5.5), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    drawn = False
    for i, exp in enumerate(sweep.experiments):
        records = read_jsonl(RunFolder(exp.config.output_path).log_path)
        colour = f"C{i % 10}"
        val = [r for r in records if r.get("kind") == "val"
               and isinstance(r.get("val_loss"), (int, float)) and math.isfinite(r["val_loss"])]
        train = [r for r in records if r.get("kind") == "train"
                 and isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", color=colour,
                    lw=1.6, ms=3, label=f"{exp.id} validation")
            drawn = True
        if train:
            ax.plot([r["step"] for r in train], smooth([r["loss"] for r in train]), ":",
                    color=colour, lw=1.0, label=f"{exp.id} train (smoothed)")
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title(f"sweep {sweep.name}: validation loss per experiment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return savefig_atomic(path, fig)


# --- running ------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    status: str  # completed | interrupted
    summary: dict[str, Any]
    summary_path: Path
    chart_path: Path | None
    eval_result: Any = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _shared_pipeline(pipeline, pipes: dict[tuple, Any], cfg):
    """The caller's pipeline, else one per (variant, models folder, device), built once."""
    if pipeline is not None:
        return pipeline
    from selva_core.training.run import build_pipeline

    key = (cfg.variant, cfg.models_dir, cfg.device)
    if key not in pipes:
        pipes[key] = build_pipeline(cfg, _device(cfg.device))
    return pipes[key]


def run_sweep(
    sweep: Sweep,
    *,
    pipeline=None,
    should_stop: Callable[[], bool] | None = None,
    after_step: Callable[[Any, int], None] | None = None,
    on_experiment: Callable[[int, int, str], None] | None = None,
    progress: bool = True,
) -> SweepResult:
    """Train (or resume, or skip) every experiment, then chart and optionally evaluate.

    ``pipeline``: share this pipeline (experiments train on forks of it); else one is built
    per model variant and shared. ``should_stop()`` (nodes' interruption) stops the whole sweep
    cleanly; ``after_step(trainer, step)`` is passed to every run (progress);
    ``on_experiment(index, total, id)`` before each experiment.
    """
    from selva_core.training.run import run_training
    from selva_core.training.trainer import TrainHooks

    out = sweep.output_dir
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "format": "selva.sweep_summary", "version": 1, "name": sweep.name,
        "source": sweep.source, "output_dir": str(out), "started_at": _now(),
        "completed_at": None, "status": "running", "base": sweep.base,
        "experiments": [_row(e, experiment_state(e.config.output_path))
                        for e in sweep.experiments],
    }
    path = out / SUMMARY_FILE

    def save() -> None:
        write_json_atomic(path, summary)

    save()
    pipes: dict[tuple, Any] = {}
    status = "completed"
    sweep.skip_flag.unlink(missing_ok=True)  # a flag left from before stops nothing new
    for i, exp in enumerate(sweep.experiments):
        state = experiment_state(exp.config.output_path)
        if state == "finished":
            summary["experiments"][i] = _row(exp, "finished")
            log.info("experiment %s is finished; skipped", exp.id)
            continue
        if should_stop is not None and should_stop():
            status = "interrupted"
            break
        cfg = dataclasses.replace(exp.config, resume=state == "resumable",
                                  overwrite=state == "stale",
                                  quiet=exp.config.quiet or not progress)
        if on_experiment is not None:
            on_experiment(i, len(sweep.experiments), exp.id)
        log.info("experiment %d/%d: %s (%s)", i + 1, len(sweep.experiments), exp.id,
                 "resuming" if cfg.resume else "starting")
        flagged = {"skip": False}

        def stop(flag: Path = sweep.skip_flag, flagged: dict = flagged) -> bool:
            if flag.exists():
                flagged["skip"] = True
                return True
            return should_stop is not None and should_stop()

        hooks = TrainHooks(after_step=after_step, should_stop=stop)
        shared = _shared_pipeline(pipeline, pipes, cfg)
        summary["experiments"][i] = _row(exp, "running")
        save()
        try:
            result = run_training(cfg, pipeline=shared, hooks=hooks)
        except KeyboardInterrupt:
            summary["experiments"][i] = _row(exp, "interrupted")
            status = "interrupted"
            break
        if result.completed:
            summary["experiments"][i] = _row(exp, "finished", result)
        elif flagged["skip"]:
            sweep.skip_flag.unlink(missing_ok=True)
            summary["experiments"][i] = _row(exp, "skipped (skip flag; a rerun resumes it)",
                                             result)
            log.warning("experiment %s skipped by %s at step %d", exp.id, SKIP_FLAG,
                        result.steps_done)
        else:
            summary["experiments"][i] = _row(exp, "interrupted", result)
            status = "interrupted"
            save()
            break
        save()
    chart = plot_val_curves(sweep, out / CHART_FILE)
    summary["chart"] = CHART_FILE if chart else None
    eval_result = None
    if status == "completed" and sweep.eval is not None:
        eval_result = _evaluate(sweep, summary, pipeline, should_stop, progress)
        if eval_result is not None and not eval_result.completed:
            status = "interrupted"
    summary["status"] = status
    summary["completed_at"] = _now() if status == "completed" else None
    save()
    return SweepResult(status, summary, path, chart, eval_result)


def _evaluate(sweep: Sweep, summary: dict[str, Any], pipeline, should_stop, progress):
    """One evaluation grid over every finished experiment's final adapter."""
    from selva_core.evaluation.runner import run_evaluation
    from selva_core.evaluation.spec import EvalSpec

    finished = [(e, r) for e, r in zip(sweep.experiments, summary["experiments"])
                if r["status"] == "finished"]
    if not finished:
        summary["eval"] = {"status": "skipped", "reason": "no finished experiment"}
        return None
    spec = dict(sweep.eval)
    spec.setdefault("name", f"{sweep.name}_eval")
    spec.setdefault("data_dir", str(finished[0][0].config.output_path))
    spec.setdefault("output_dir", str(sweep.output_dir / EVAL_DIR))
    spec.setdefault("variant", finished[0][0].config.variant)
    adapters = list(spec.get("adapters") or [])
    # a run folder stands for its checkpoints and final adapter (<id>@step_..., <id>@final)
    adapters += [{"id": e.id, "path": str(e.config.output_path)} for e, _ in finished]
    spec["adapters"] = adapters
    eval_spec = EvalSpec.from_dict(spec, f"{sweep.source} (eval)", sweep.base_dir)
    result = run_evaluation(eval_spec, pipeline=pipeline, progress=progress,
                            should_stop=should_stop)
    summary["eval"] = {"status": result.status, "output_dir": str(result.output_dir),
                       "summary": str(result.summary_path),
                       "html": str(result.html_path) if result.html_path else None}
    by_id = {row["id"]: row for row in result.summary.get("adapters", [])}
    for row in summary["experiments"]:
        final = by_id.get(f"{row['id']}@final") or by_id.get(row["id"])
        if final is not None:
            row["eval_avg_metrics"] = final.get("avg_metrics", {})
    board = leaderboard(sweep, summary, result.summary)
    summary["leaderboard"] = board
    summary["eval"]["leaderboard"] = str(write_leaderboard(sweep.output_dir, board))
    return result


_BOARD_COLUMNS = ("rank", "experiment", "checkpoint", "strength", "metric", "mean", "spread",
                  "seeds", "val_loss")


def leaderboard(sweep: Sweep, summary: dict[str, Any], eval_summary: dict[str, Any]
                ) -> list[dict[str, Any]]:
    """Every evaluated experiment x checkpoint x strength (and the baseline), best first by
    the evaluation's verdict metric, with the checkpoint's validation loss (manifest rows;
    the final adapter: the run's final validation loss)."""
    from selva_core.evaluation.verdict import best_choice
    from selva_core.training.checkpoint import CheckpointError, CheckpointManager

    verdict = eval_summary.get("verdict") or best_choice(eval_summary)
    val: dict[str, float | None] = {}
    for exp, row in zip(sweep.experiments, summary["experiments"]):
        try:
            entries = CheckpointManager(RunFolder(exp.config.output_path).checkpoints_dir).entries()
        except CheckpointError:
            entries = []
        val.update({f"{exp.id}@{e.folder}": e.val_loss for e in entries})
        val[f"{exp.id}@final"] = row.get("val_loss_final")
    board = []
    for i, r in enumerate(verdict.get("ranking") or []):
        exp, _, checkpoint = r["adapter"].partition("@")
        board.append({"rank": i + 1, "experiment": exp,
                      "checkpoint": "" if r["baseline"] else checkpoint or "final",
                      "strength": r["strength"], "metric": verdict["metric"], "mean": r["mean"],
                      "spread": r["spread"], "seeds": r["seeds"],
                      "val_loss": val.get(r["adapter"])})
    return board


def write_leaderboard(out: Path, board: list[dict[str, Any]]) -> Path:
    """``leaderboard.csv`` (atomic): one row per ranked column, best first."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_BOARD_COLUMNS)
    for row in board:
        w.writerow(["" if row[k] is None else row[k] for k in _BOARD_COLUMNS])
    return write_text_atomic(out / LEADERBOARD_FILE, buf.getvalue())


def format_sweep_summary(summary: dict[str, Any]) -> str:
    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"

    lines = ["=" * 78, f"SelVA LoRA sweep {summary.get('name')}: {summary.get('status')}",
             "=" * 78,
             f"{'experiment':<20}{'status':<14}{'steps':>8}{'val base':>11}{'val final':>11}"
             f"{'LSD dB':>9}"]
    for row in summary.get("experiments", []):
        lsd = (row.get("eval_avg_metrics") or {}).get("lsd_db")
        steps = f"{row.get('steps_done') or 0}/{row.get('steps') or '?'}"
        lines.append(f"{row['id']:<20}{row['status'].split(' ')[0]:<14}{steps:>8}"
                     f"{fmt(row.get('val_loss_base')):>11}{fmt(row.get('val_loss_final')):>11}"
                     f"{fmt(lsd):>9}")
    lines += ["-" * 78, f"output   {summary.get('output_dir')}",
              f"chart    {summary.get('chart') or 'n/a'}   summary {SUMMARY_FILE}"]
    board = summary.get("leaderboard") or []
    if board:
        lines.append(f"leaderboard by {board[0]['metric']} (best first; {LEADERBOARD_FILE}):")
        for row in board[:5]:
            where = f"{row['experiment']} {row['checkpoint']}".strip()
            lines.append(f"  {row['rank']:>2}. {where:<34} x{row['strength']:<5g}"
                         f"{fmt(row['mean']):>10}  spread {fmt(row['spread'])}"
                         f"   val {fmt(row['val_loss'])}")
    if summary.get("eval", {}).get("html"):
        lines.append(f"listen   {summary['eval']['html']}")
    lines.append(f"skip the running experiment: create {SKIP_FLAG} in the output folder")
    lines.append("=" * 78)
    return "\n".join(lines)


def main_sweep(argv: list[str] | None = None) -> int:
    """``train_lora.py --sweep SWEEP.json``: exit 0 all done, 130 interrupted, 2 bad input."""
    parser = argparse.ArgumentParser(
        prog="train_lora.py --sweep",
        description=__doc__.split("\n\n")[0] + " See the module docs of "
        "selva_core.sweep for the file format.",
        epilog=("SWEEP.json: {\"name\", \"output_dir\", \"base\": {training settings}, "
                "\"experiments\": [{\"id\", \"overrides\": {...}}], \"eval\": {eval spec} "
                f"}}. Create OUTPUT_DIR/{SKIP_FLAG} to stop the running experiment and go on "
                "with the next; rerun to resume."))
    parser.add_argument("--sweep", required=True, metavar="SWEEP.json",
                        help="the sweep file (base settings + experiments with overrides)")
    parser.add_argument("--quiet", action="store_true", help="only warnings and the summary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from selva_core.data import BadClipError
    from selva_core.training.checkpoint import CheckpointError

    try:
        sweep = load_sweep(args.sweep)
        result = run_sweep(sweep, progress=not args.quiet)
    except (SweepError, BadClipError, CheckpointError, FileExistsError, FileNotFoundError,
            ValueError) as exc:
        say(f"\nerror: {exc}", file=sys.stderr)
        return 2
    say(format_sweep_summary(result.summary))
    return 0 if result.completed else 130


__all__ = ["Sweep", "Experiment", "SweepError", "SweepResult", "load_sweep", "parse_sweep",
           "run_sweep", "main_sweep", "experiment_state", "plot_val_curves", "SKIP_FLAG"]
