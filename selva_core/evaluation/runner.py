"""The render grid: every clip x seed x adapter x strength, with metrics, resume and reports.

:func:`run_evaluation` is what ``eval_adapters.py`` and the LoRA Evaluator node call:

1. find the clips (:mod:`.clips`; a training run's held-out clips by default), the adapters'
   model variant (their metadata) and build the pipeline (or take the caller's);
2. extract each clip's features once (reused from an earlier evaluation or from the training
   run's feature cache) -- adapters only touch the generator, so every render shares them;
3. copy the reference sound (``reference/<stem><its extension>``, the video's own track as a
   WAV), the clip's video as an MP4 browsers play (``reference/<stem>.mp4``) with a poster
   frame (``reference/posters/<stem>.jpg``), and measure the reference;
4. render baseline first, then every adapter x strength x seed, clips of equal duration
   batched through the sampler; per render a WAV and an MP4 with the sound muxed onto the
   clip's video (its picture re-encoded where browsers do not play it), its metrics
   (:mod:`~selva_core.audio.metrics`, every one on the 16-bit samples its WAV holds; drift
   against the baseline render of the same clip and seed; the weight-free sync figures against
   the reference sound and the clip's motion energy), DeSync (:mod:`.desync`) and CLAP
   (:mod:`.embeddings`) when available;
   ``eval_summary.json`` is rewritten atomically after every render;
5. aggregate, write ``metrics.csv``, the charts and ``index.html`` (:mod:`.report`).

A rerun with the same spec redoes nothing that is finished: a render counts as done when the
summary lists it and its WAV exists (an adapter file that changed is rendered again). Ctrl-C
(or a node's interruption) leaves the summary with status ``interrupted`` and every finished
render in place. A clip without sound, an unreadable adapter or one for another model variant
is reported in the summary and skipped; everything else is still done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selva_core.atomic import json_safe, write_json_atomic
from selva_core.audio import metrics as M
from selva_core.audio.wav import write_wav
from selva_core.checksums import file_sha256
from selva_core.data.clips import ClipSource
from selva_core.data.errors import BadClipError
from selva_core.evaluation.clips import (
    cat_features,
    clip_key,
    clip_motion,
    extract_clip_features,
    select_clips,
    selection_note,
)
from selva_core.evaluation.references import Scorers, fad, save_embedding, write_references
from selva_core.evaluation.spec import AdapterEntry, EvalSpec, default_duration
from selva_core.feature_cache import default_model_tag
from selva_core.run_folder import RunFolder, RunInfo
from selva_core.variants import TRAIN_DURATION_S

log = logging.getLogger(__name__)

SUMMARY_FILE = "eval_summary.json"
SUMMARY_FORMAT = "selva.eval_summary"
SUMMARY_VERSION = 1


class EvalInterrupted(Exception):
    """Raised by ``should_stop`` hooks (nodes) to stop between sampler steps."""


@dataclass
class EvalResult:
    """What an evaluation left: its summary (also on disk) and the paths of its reports."""

    status: str
    output_dir: Path
    summary: dict[str, Any]
    summary_path: Path
    chart_path: Path | None = None
    html_path: Path | None = None
    csv_path: Path | None = None
    rendered: int = 0
    reused: int = 0

    @property
    def completed(self) -> bool:
        return self.status == "completed"


@dataclass
class _Job:
    clip: ClipSource
    adapter: AdapterEntry
    strength: float
    seed: int
    duration: float

    @property
    def key(self) -> str:
        return render_key(self.clip.role, self.clip.name, self.adapter.id, self.strength,
                          self.seed)


def render_key(role: str, clip: str, adapter: str, strength: float, seed: int) -> str:
    return f"{role}/{clip}|{adapter}|{strength:g}|{seed}"


def strength_label(adapter: AdapterEntry, strength: float) -> str:
    return "base" if adapter.is_baseline else f"s{strength:g}"


def render_relpath(job_or_clip, adapter: AdapterEntry | None = None, strength: float = 0.0,
                   seed: int = 0, suffix: str = ".wav") -> str:
    """``renders/<adapter>/<strength>/[drift/]<stem>__seed<seed><suffix>`` (stem-keyed)."""
    if isinstance(job_or_clip, _Job):
        clip, adapter, strength, seed = (job_or_clip.clip, job_or_clip.adapter,
                                         job_or_clip.strength, job_or_clip.seed)
    else:
        clip = job_or_clip
    assert adapter is not None
    sub = "drift/" if clip.role == "drift" else ""
    return (f"renders/{adapter.id}/{strength_label(adapter, strength)}/{sub}"
            f"{clip.name}__seed{seed}{suffix}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --- variant and adapters ----------------------------------------------------------------------
def _adapter_variant(entry: AdapterEntry) -> tuple[str | None, dict[str, str], str | None]:
    """(model variant, metadata, error) of an adapter file, read without loading it."""
    from selva_core.model.lora import AdapterLoadError, read_adapter_file
    from selva_core.model.textual_inversion import embedding_metadata

    try:
        if entry.is_embedding:
            meta = embedding_metadata(entry.path)
            return meta.get("variant") or None, {k: v for k, v in meta.items()
                                                 if isinstance(v, str)}, None
        _, meta = read_adapter_file(entry.path)
    except AdapterLoadError as exc:
        return None, {}, str(exc)
    variant = meta.get("model_variant") or None
    return variant, dict(meta), None


def choose_variant(spec: EvalSpec, infos: dict[str, tuple[str | None, dict, str | None]],
                   run: RunInfo | None) -> str:
    """The spec's variant, else the adapters' own (the most common), else the run's, else the
    library default."""
    if spec.variant:
        return spec.variant
    counts: dict[str, int] = defaultdict(int)
    for variant, _, error in infos.values():
        if variant and not error:
            counts[variant] += 1
    if counts:
        best = max(sorted(counts), key=lambda v: counts[v])
        if len(counts) > 1:
            log.warning("the adapters were trained for several variants %s; evaluating %s "
                        "(set 'variant' in the spec to choose)", dict(counts), best)
        return best
    if run is not None and run.variant:
        return run.variant
    from selva_core.variants import DEFAULT_VARIANT

    return DEFAULT_VARIANT


def _short_meta(meta: dict[str, str]) -> dict[str, Any]:
    keep = ("model_variant", "lora_kind", "rank", "alpha", "targets", "init", "steps",
            "use_rslora", "storage", "prompt", "prompts")
    return {k: meta[k] for k in keep if k in meta}


# --- the runner --------------------------------------------------------------------------------
@dataclass
class _State:
    spec: EvalSpec
    out: Path
    summary: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    rendered: int = 0
    reused: int = 0
    seed_lists: bool | None = None  # does pipeline.render take one seed per clip?
    motions: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)  # per clip key

    def write(self) -> None:
        self.summary["progress"] = {"done": len(self.records), "total":
                                    self.summary["progress"]["total"]}
        write_json_atomic(self.out / SUMMARY_FILE, json_safe(self.summary))


def build_eval_pipeline(spec: EvalSpec, variant: str):
    """The pipeline the evaluation renders with (tiny_16k: the shipped trained tiny model, no
    download; other variants from the models folder, never downloaded here)."""
    from selva_core.pipeline import SelvaPipeline

    device = None if spec.device == "auto" else spec.device
    return SelvaPipeline.build(variant, models_dir=spec.models_dir, device=device,
                               precision=spec.precision, download=False)


def _check_adapters(spec: EvalSpec, infos: dict, variant: str
                    ) -> tuple[list[AdapterEntry], list[dict[str, Any]]]:
    """The adapters that can be rendered (readable, trained for ``variant``) and one summary
    row per adapter of the spec, a skipped one with its reason."""
    adapters: list[AdapterEntry] = []
    summary_adapters = []
    for entry in spec.adapters:
        row: dict[str, Any] = {"id": entry.id, "path": entry.path, "group": entry.group,
                               "step": entry.step, "baseline": entry.is_baseline,
                               "strengths": spec.strengths_of(entry), "meta": {},
                               "status": "pending", "error": None}
        if not entry.is_baseline:
            file_variant, meta, error = infos[entry.id]
            row["meta"] = _short_meta(meta)
            if error is None and file_variant and file_variant != variant:
                error = (f"{entry.path} was trained for model variant {file_variant!r} but this "
                         f"evaluation runs {variant!r}; evaluate it in a spec with 'variant': "
                         f"{file_variant!r}")
            if error is None:
                row["sha256"] = file_sha256(entry.path)
            if error is not None:
                row.update(status="skipped", error=error)
                log.warning("adapter %s skipped: %s", entry.id, error)
        summary_adapters.append(row)
        if row["status"] != "skipped":
            adapters.append(entry)
    return adapters, summary_adapters


def _prepare_clips(spec, pipeline, clips, run, state, skipped, model_tag, should_stop,
                   progress: bool):
    """Each clip's features (saved as soon as they exist), its render duration and motion
    energy; unreadable clips go to ``skipped``. Returns (usable clips, features, durations)."""
    from tqdm.auto import tqdm

    feature_dir = state.out / "features"
    durations: dict[str, float] = {}
    features: dict[str, Any] = {}
    usable: list[ClipSource] = []
    for clip in tqdm(clips, desc="features", unit="clip", disable=not progress):
        if should_stop is not None and should_stop():
            raise EvalInterrupted("stopped")
        duration = default_duration(clip.seconds, spec,
                                    run.duration if run is not None else TRAIN_DURATION_S)
        try:
            features[clip_key(clip)] = extract_clip_features(pipeline, clip, duration,
                                                          feature_dir, model_tag, run)
        except BadClipError as exc:
            skipped.append({"clip": clip.name, "role": clip.role, "reason": str(exc)})
            log.warning("skipping clip %s: %s", clip.name, exc)
            continue
        durations[clip_key(clip)] = duration
        motion = clip_motion(pipeline, clip, duration, features[clip_key(clip)])
        if motion is not None:
            state.motions[clip_key(clip)] = motion
        usable.append(clip)
    return usable, features, durations


def _render_phase(state, pipeline, adapters, clips, durations, features, references, scorers,
                  *, progress, on_render, should_stop) -> EvalResult:
    """Every adapter x strength x seed x clip not rendered yet (baseline first), then the
    summary, table, charts and page; an interruption (Ctrl-C, ComfyUI's Cancel) finishes
    with status ``interrupted``."""
    from tqdm.auto import tqdm

    adapters.sort(key=lambda a: not a.is_baseline)  # baseline first: drift compares with it
    jobs = [_Job(c, a, s, seed, durations[clip_key(c)]) for a in adapters
            for s in state.spec.strengths_of(a) for seed in state.spec.seed_list for c in clips]
    keys = {j.key for j in jobs}
    state.records = {k: r for k, r in state.records.items() if k in keys}
    state.summary["progress"] = {"done": 0, "total": len(jobs)}
    state.summary.pop("stage", None)
    _sync_summary(state)
    state.write()

    total = len(jobs)
    bar = tqdm(total=total, desc="renders", unit="render", disable=not progress)
    status = "completed"
    try:
        _render_all(state, pipeline, jobs, features, references, scorers, bar, on_render,
                    should_stop, state.spec)
    except (KeyboardInterrupt, EvalInterrupted):
        status = "interrupted"
        log.warning("evaluation interrupted; %d of %d renders are done; run the same spec "
                    "again to finish", len(state.records), total)
    except BaseException as exc:
        if type(exc).__name__ == "InterruptProcessingException":  # ComfyUI's cancel button
            status = "interrupted"
        else:
            state.summary["status"] = f"failed: {exc}"
            _finish(state, adapters, clips, scorers, status="failed")
            raise
    finally:
        bar.close()
    return _finish(state, adapters, clips, scorers, status=status)


def run_evaluation(
    spec: EvalSpec,
    *,
    pipeline=None,
    progress: bool = True,
    on_render: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_tag: str | None = None,
) -> EvalResult:
    """Run (or resume) the evaluation ``spec`` describes; see the module docstring.

    ``pipeline``: render with this pipeline (nodes pass theirs; it is left as found: adapters
    go onto forks); else one is built for the variant. ``on_render(done, total)`` after every
    render; ``should_stop()`` is polled between sampler steps and renders -- True stops
    cleanly with status ``interrupted`` (as Ctrl-C does). ``model_tag`` names non-official
    encoder weights (features saved by another model are never reused).
    """
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = RunFolder(spec.data_dir).info()
    clips_dir = run.clips_dir if run else Path(spec.data_dir)
    clips, skipped = select_clips(spec, run, clips_dir)

    infos = {a.id: _adapter_variant(a) for a in spec.adapters if not a.is_baseline}
    if pipeline is None:
        variant = choose_variant(spec, infos, run)
        pipeline = build_eval_pipeline(spec, variant)
    variant = pipeline.variant.name
    if model_tag is None:
        model_tag = default_model_tag(variant)
    sr = pipeline.sample_rate

    settings = {"variant": variant, "steps": spec.steps, "cfg": spec.cfg,
                "negative_prompt": spec.negative_prompt, "duration": spec.duration,
                "model_tag": model_tag}
    summary, finished = _load_or_start(spec, out, settings)
    state = _State(spec, out, summary)
    state.records = {rec["key"]: rec for rec in finished}
    summary.update({
        "name": spec.name, "data_dir": spec.data_dir, "clips_dir": str(clips_dir),
        "run_dir": str(run.run_dir) if run else None, "output_dir": str(out),
        "steps": spec.steps, "seed": spec.seed, "seeds": spec.seed_list,
        "strengths": spec.strengths, "cfg": spec.cfg, "negative_prompt": spec.negative_prompt,
        "variant": variant, "sample_rate": sr, "hf_cut_hz": M.hf_cut_hz(sr),
        "settings": settings, "status": "running", "completed_at": None,
        "metrics_info": [dataclasses.asdict(m) for m in M.METRICS],
        "clip_selection": selection_note(spec, run),
    })

    adapters, summary_adapters = _check_adapters(spec, infos, variant)
    summary["adapters"] = summary_adapters
    # drop finished renders of adapters whose file changed since
    shas = {r["id"]: r.get("sha256") for r in summary_adapters}
    for key, rec in list(state.records.items()):
        if rec.get("adapter_sha256") != shas.get(rec["adapter"], rec.get("adapter_sha256")):
            del state.records[key]

    # features, references (each clip's features are saved as soon as they exist)
    feature_dir = out / "features"
    try:
        clips, features, durations = _prepare_clips(spec, pipeline, clips, run, state, skipped,
                                                    model_tag, should_stop, progress)
        summary["skipped"] = skipped
        summary["n_clips"] = len([c for c in clips if c.role == "eval"])
        summary["n_drift_clips"] = len([c for c in clips if c.role == "drift"])

        scorers = Scorers.create(spec, pipeline, summary)
        references = write_references(clips, durations, out, sr, scorers, summary,
                                       state.motions)
    except (KeyboardInterrupt, EvalInterrupted):
        log.warning("evaluation interrupted while preparing the clips; the features extracted "
                    "so far are kept in %s; run the same spec again to continue", feature_dir)
        summary.update(status="interrupted", stage="features", skipped=skipped)
        _sync_summary(state)  # keeps the renders finished by earlier runs listed
        write_json_atomic(out / SUMMARY_FILE, json_safe(summary))
        return EvalResult("interrupted", out, summary, out / SUMMARY_FILE)

    return _render_phase(state, pipeline, adapters, clips, durations, features, references,
                         scorers, progress=progress, on_render=on_render,
                         should_stop=should_stop)


def _load_or_start(spec: EvalSpec, out: Path, settings: dict[str, Any]
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary of an earlier run in ``out`` (same settings) and its finished renders
    (those whose WAV exists), or a fresh summary."""
    path = out / SUMMARY_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("format") == SUMMARY_FORMAT:
            if old.get("settings") != settings:
                diff = {k: (old.get("settings", {}).get(k), v) for k, v in settings.items()
                        if old.get("settings", {}).get(k) != v}
                raise ValueError(
                    f"{out} holds an evaluation made with other settings "
                    f"({', '.join(f'{k}: {a!r} then, {b!r} now' for k, (a, b) in diff.items())}"
                    "); choose another output_dir, or delete that folder to start over")
            records = [r for c in old.get("adapters", []) for r in c.get("clips", [])]
            return old, [r for r in records if (out / r.get("wav", "\0")).is_file()]
    return {"format": SUMMARY_FORMAT, "version": SUMMARY_VERSION, "started_at": _now(),
            "progress": {"done": 0, "total": 0}}, []


# --- rendering ---------------------------------------------------------------------------------
def _render_batch(pipe, feats, seed: int, spec: EvalSpec, step_cb, state: _State
                  ) -> torch.Tensor:
    """One render call with one seed per clip (each clip's noise depends on its own seed
    only, never on its batch); clip by clip when the pipeline takes a single seed."""
    kwargs = dict(num_steps=spec.steps, cfg_strength=spec.cfg,
                  negative_prompt=spec.negative_prompt or None, duration=feats.duration,
                  progress_callback=step_cb)
    if feats.batch_size == 1:
        return pipe.render(feats, seed=seed, **kwargs)
    if state.seed_lists is not False:
        try:
            wave = pipe.render(feats, seed=[seed] * feats.batch_size, **kwargs)
            state.seed_lists = True
            return wave
        except (TypeError, ValueError) as exc:
            if state.seed_lists:
                raise
            log.info("the pipeline takes one seed per call (%s); rendering clip by clip", exc)
            state.seed_lists = False
    parts = []
    for i in range(feats.batch_size):
        one = cat_features([_row(feats, i)])
        parts.append(pipe.render(one, seed=seed, **kwargs))
    return torch.cat(parts)


def _token_features(pipe, feats):
    """The clips' features for an embedding column: the CLIP-text features of each prompt
    with the token in place of the init word (the file's training record), through the pipeline
    that knows the token; the sync features stay the base prompt's, as in training."""
    from selva_core.model.textual_inversion import training_prompt

    emb = pipe.embeddings[-1]
    init_word = emb.metadata.get("training", {}).get("init_word")
    prompts = [training_prompt(p, emb.token, init_word) for p in feats.prompts]
    text = pipe.encode_prompt(prompts)[0].to(feats.text_clip_f)
    return dataclasses.replace(feats, text_clip_f=text, prompts=prompts)


def _row(feats, i: int):
    from selva_core.features import ConditionFeatures

    return ConditionFeatures(text_clip_f=feats.text_clip_f[i: i + 1],
                             sync_f=feats.sync_f[i: i + 1], duration=feats.duration,
                             prompts=[feats.prompts[i]], variant=feats.variant)


def _render_all(state: _State, pipeline, jobs: list[_Job], features, references, scorers,
                bar, on_render, should_stop, spec: EvalSpec) -> None:
    groups: dict[tuple, list[_Job]] = defaultdict(list)
    order: list[tuple] = []
    for job in jobs:
        gk = (job.adapter.id, job.strength, job.seed, round(job.duration, 4))
        if gk not in groups:
            order.append(gk)
        groups[gk].append(job)
    adapter_rows = {r["id"]: r for r in state.summary["adapters"]}
    done_count = sum(1 for j in jobs if j.key in state.records)
    bar.update(done_count)
    state.reused = done_count
    pipes: dict[tuple[str, float], Any] = {}

    def step_cb(_i: int, _n: int) -> None:
        if should_stop is not None and should_stop():
            raise EvalInterrupted("stopped")

    for gk in order:
        group = [j for j in groups[gk] if j.key not in state.records]
        adapter = groups[gk][0].adapter
        row = adapter_rows[adapter.id]
        if row["status"] == "skipped":
            continue
        if not group:
            continue
        pk = (adapter.id, groups[gk][0].strength)
        if pk not in pipes:
            pipes.clear()  # one adapter pipeline alive at a time
            try:
                if adapter.is_embedding:
                    pipes[pk] = pipeline.with_embeddings([adapter.path])
                else:
                    pipes[pk] = pipeline if adapter.is_baseline else pipeline.with_adapters(
                        [(adapter.path, groups[gk][0].strength)])
            except ValueError as exc:  # AdapterLoadError is a ValueError
                row.update(status="skipped", error=str(exc))
                log.warning("adapter %s skipped: %s", adapter.id, exc)
                state.write()
                continue
        pipe = pipes[pk]
        row["status"] = "running"
        for start in range(0, len(group), spec.batch_size):
            if should_stop is not None and should_stop():
                raise EvalInterrupted("stopped")
            chunk = group[start: start + spec.batch_size]
            feats = cat_features([features[clip_key(j.clip)] for j in chunk])
            if adapter.is_embedding:
                feats = _token_features(pipe, feats)
            t0 = time.perf_counter()
            waves = _render_batch(pipe, feats, chunk[0].seed, spec, step_cb, state)
            per = (time.perf_counter() - t0) / len(chunk)
            for job, wave in zip(chunk, waves):
                _finish_render(state, job, wave.numpy(), pipeline.sample_rate, references,
                               scorers, per, row.get("sha256"))
                bar.update(1)
                if on_render is not None:
                    on_render(len(state.records), len(jobs))
    for row in state.summary["adapters"]:
        if row["status"] in ("pending", "running"):
            row["status"] = "ok"


def _finish_render(state: _State, job: _Job, wave: np.ndarray, sr: int, references, scorers,
                   seconds: float, adapter_sha: str | None) -> None:
    out = state.out
    rel = render_relpath(job)
    write_wav(out / rel, wave, sr)
    # Measure what the file holds: the baseline is read back from its WAV, so both sides of
    # every metric are 16-bit (rounding is never counted as drift).
    wave = M.pcm16(wave)
    rec: dict[str, Any] = {
        "key": job.key, "clip": job.clip.name, "role": job.clip.role, "adapter": job.adapter.id,
        "strength": job.strength, "seed": job.seed, "duration": job.duration, "wav": rel,
        "mp4": None, "render_s": round(seconds, 4), "adapter_sha256": adapter_sha,
    }
    if state.spec.mp4 and job.clip.video_path is not None:
        rec["mp4"] = _mux(job, wave, sr, out)
    t0 = time.perf_counter()
    reference = references.get(clip_key(job.clip))
    baseline = None
    if not job.adapter.is_baseline:
        base_rel = render_relpath(job.clip, state.spec.baseline, 0.0, job.seed)
        if (out / base_rel).is_file():
            import soundfile as sf

            baseline = sf.read(str(out / base_rel), dtype="float32")[0]
    metrics = M.render_metrics(wave, sr, reference=reference, baseline=baseline,
                               motion=state.motions.get(clip_key(job.clip)))
    ds = scorers.desync_of(job.clip, job.duration, wave, sr)
    if ds is not None:
        metrics["desync_s"] = ds
    clap, emb = scorers.clap_of(job.clip, wave, sr)
    if clap is not None:
        metrics["clap_score"] = clap
        rec["clap_embedding"] = save_embedding(out, rel, emb)
    rec["metrics"] = metrics
    rec["metrics_s"] = round(time.perf_counter() - t0, 4)
    state.records[job.key] = rec
    state.rendered += 1
    _sync_summary(state)
    state.write()


_MUX_NOTE: dict[str, str] = {}


def _mux(job: _Job, wave: np.ndarray, sr: int, out: Path) -> str | None:
    try:
        from selva_core.media import mux_audio
    except ImportError as exc:
        if "mux" not in _MUX_NOTE:
            _MUX_NOTE["mux"] = str(exc)
            log.warning("MP4s skipped: selva_core.media.mux_audio is unavailable (%s)", exc)
        return None
    rel = render_relpath(job, suffix=".mp4")
    try:
        mux_audio(job.clip.video_path, torch.from_numpy(np.ascontiguousarray(wave)), sr,
                  out / rel, browser=True)
    except Exception as exc:  # a broken container must not stop the grid
        log.warning("%s: MP4 not written (%s)", rel, exc)
        return None
    return rel


def _eval_means(recs: list[dict[str, Any]], with_reference: set[str]) -> dict[str, float]:
    """Means over eval renders. The sound-describing metrics, which are read against the
    reference's, average over the clips that have a reference (as ``reference_avg`` does;
    every clip when none has one); the others over every clip."""
    evals = [r for r in recs if r["role"] == "eval"]
    out = M.mean_metrics([r["metrics"] for r in evals])
    if with_reference and any(r["clip"] not in with_reference for r in evals):
        ref_means = M.mean_metrics([r["metrics"] for r in evals if r["clip"] in with_reference])
        for key in M.SPECTRAL_KEYS:
            if key in ref_means:
                out[key] = ref_means[key]
    return out


def _sync_summary(state: _State) -> None:
    """Put the records into the summary (per adapter, in grid order) and refresh averages."""
    by_adapter: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in state.records.values():
        by_adapter[rec["adapter"]].append(rec)
    with_reference = {r["clip"] for r in state.summary.get("reference_clips", [])
                      if r.get("role") == "eval" and r.get("audio")}
    for row in state.summary["adapters"]:
        recs = sorted(by_adapter.get(row["id"], []),
                      key=lambda r: (r["role"], r["clip"], r["strength"], r["seed"]))
        row["clips"] = recs
        row["avg_metrics"] = _eval_means(recs, with_reference)
        drift = [r["metrics"] for r in recs if r["role"] == "drift"]
        row["drift_avg_metrics"] = M.mean_metrics(drift) if drift else {}
        row["by_strength"] = [
            {"strength": s,
             "avg_metrics": _eval_means([r for r in recs if r["strength"] == s],
                                        with_reference),
             "drift_avg_metrics": M.mean_metrics([r["metrics"] for r in recs
                                                  if r["role"] == "drift"
                                                  and r["strength"] == s])}
            for s in row["strengths"]]


def _finish(state: _State, adapters, clips, scorers, *, status: str) -> EvalResult:
    from selva_core.evaluation import report
    from selva_core.evaluation.verdict import best_choice

    summary = state.summary
    _sync_summary(state)
    if scorers.clap is not None:
        fad(summary, clips)
    summary["rank_by"] = state.spec.rank_by
    summary["verdict"] = best_choice(summary, state.spec.rank_by)
    summary["status"] = status
    summary["completed_at"] = _now() if status == "completed" else None
    state.write()
    paths = report.write_reports(state.out, summary)
    summary["reports"] = {k: str(Path(v).relative_to(state.out)) for k, v in paths.items()
                          if v is not None}
    state.write()
    return EvalResult(status, state.out, summary, state.out / SUMMARY_FILE,
                      chart_path=paths.get("chart"), html_path=paths.get("html"),
                      csv_path=paths.get("csv"), rendered=state.rendered, reused=state.reused)


__all__ = ["run_evaluation", "EvalResult", "EvalInterrupted", "render_key", "render_relpath",
           "SUMMARY_FILE", "choose_variant", "build_eval_pipeline"]
