"""Does the shipped tiny SelVA hear the picture? Envelope sync of its renders on unseen clips.

For ``--clips`` unseen synthetic clips of each class the tiny base was trained on (``beep``,
``swell``; drawn with ``--data_seed``, which neither the base training nor the demo uses), the
tiny model renders each clip twice with the same prompt and seed: with its own video and with
the next clip's video of the same class (the swap). Each render is compared with the clip's
true audio by :func:`selva_core.audio.sync.envelope_sync` (1-6 kHz, 20 ms RMS envelopes,
Pearson correlation at lag 0). A render whose envelope is flat has no timing: it counts as 0.

* ``corr_own``: mean correlation of the renders with their own video (target >= 0.6);
* ``corr_swapped``: the same with another clip's video;
* ``drop``: ``corr_own - corr_swapped`` (target >= 0.3: the picture places the events);
* ``corr_codec``: the true audio through the VAE and vocoder alone (encode, decode): what a
  perfect generator could reach through this codec (a class the codec cannot play scores
  nothing however well the generator follows the picture).

``--layout_ceiling`` measures no model: it asks how well *any* model can do that reads SelVA's
sync tokens without knowing where the token sequence starts. A window of 16 frames is encoded
alone, and the generator reads its tokens 0.08 s later per window than the frames they come
from (2 s clips; :func:`selva_core.model.generator.sync_token_times`). The ceiling "render"
plays, at every moment, the true sound of the moment its token can report when blind to its
window's index (``blind``), and is scored like a render (also for ``blip`` and the held-out
``burst``).

``--feature_probe`` trains no network either: it asks whether the shipped TextSynch's sync
tokens carry each class's events at all. A ridge readout (one linear map per class, fitted on
48 clips of the base's training seed) predicts from each token the 1-6 kHz band energy of
the true audio over the two frames the token sees (``seen``) and over the span whose latent
frames read it (``read``), scored by correlation on ``--clips`` unseen clips. High ``seen``
with low ``read`` means the events are in the features but a generator has to undo the
token layout to place them.

Prints a table, then one JSON object as the last line.

    python benchmarks/bench_sync.py [--clips 4] [--steps 10] [--seed 1] [--data_seed 77]
    python benchmarks/bench_sync.py --layout_ceiling [--clips 12]
    python benchmarks/bench_sync.py --feature_probe [--clips 16]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.data.synthetic import BASE_CLASSES as TRAINED_CLASSES  # noqa: E402

DURATION = 2.0


def _corr(render, true, sample_rate: int) -> float:
    from selva_core.audio.sync import envelope_sync

    value = envelope_sync(render, true, sample_rate).corr_lag0
    return 0.0 if math.isnan(value) else value


def measure(pipe, *, clips: int, steps: int, seed: int, data_seed: int,
            classes=TRAINED_CLASSES) -> list[dict]:
    """One row per clip: correlation of the render with its own video and with the swap."""
    import numpy as np
    import torch

    from selva_core.data.synthetic import CLASS_PROMPTS, synthetic_clip

    rows = []
    for name in classes:
        data = [synthetic_clip(name, i, duration=DURATION, seed=data_seed) for i in range(clips)]
        videos = [torch.from_numpy(f).permute(0, 3, 1, 2) for f, _ in data]
        features = pipe.extract_features(torch.stack(videos), CLASS_PROMPTS[name], DURATION)
        waves = pipe.render(features, seed=seed, num_steps=steps).numpy()
        truth = np.stack([np.asarray(a, np.float32) for _, a in data])
        codec = pipe.decode(pipe.encode_audio(truth, pipe.sample_rate, duration=DURATION).mean)
        for i, (_, true) in enumerate(data):
            swap = (i + 1) % clips
            n = min(len(true), waves.shape[-1])
            true = np.asarray(true[:n], np.float32)
            rows.append({"clip": f"{name}_{i:03d}", "video_of": f"{name}_{swap:03d}",
                         "corr_own": _corr(waves[i, :n], true, pipe.sample_rate),
                         "corr_swapped": _corr(waves[swap, :n], true, pipe.sample_rate),
                         "corr_codec": _corr(codec[i, :n].numpy(), true, pipe.sample_rate)})
    return rows


def layout_ceiling(*, clips: int, data_seed: int, classes=(*TRAINED_CLASSES, "blip", "burst"),
                   sample_rate: int = 16000, latent_hop: int = 512) -> list[dict]:
    """One row per clip: correlation of the window-blind ceiling render with the true audio."""
    import numpy as np

    from selva_core.data.synthetic import synthetic_clip
    from selva_core.model.generator import sync_token_times, sync_upsample_index
    from selva_core.variants import get_variant

    seq = get_variant("tiny_16k").sequence_lengths(DURATION)
    _, read, blind = (t.numpy().astype(np.float64) for t in sync_token_times(DURATION, seq.sync))
    token = sync_upsample_index(seq.sync, seq.latent).numpy()
    rows = []
    for name in classes:
        for i in range(clips):
            _, true = synthetic_clip(name, i, duration=DURATION, seed=data_seed)
            t = np.arange(len(true)) / sample_rate
            n = token[np.minimum(np.arange(len(true)) // latent_hop, seq.latent - 1)]
            source = np.round((blind[n] + t - read[n]) * sample_rate).astype(int)
            render = true[np.clip(source, 0, len(true) - 1)]
            rows.append({"clip": f"{name}_{i:03d}", "corr_ceiling": _corr(render, true,
                                                                          sample_rate)})
    return rows


PROBE_FIT_SEED = 1000  # the base training's data seed (scripts/train_tiny_base.py)
PROBE_FIT_CLIPS = 48
PROBE_RIDGE = 1e-2


def _token_energies(true, sample_rate: int, starts, span: float):
    """Mean 1-6 kHz envelope (20 ms frames) over ``[start, start + span)`` per token."""
    import numpy as np

    from selva_core.audio.sync import SYNC_FRAME_S, band_envelope

    env = band_envelope(true, sample_rate)
    centres = (np.arange(len(env)) + 0.5) * SYNC_FRAME_S
    return np.array([env[(centres >= a) & (centres < a + span)].mean() for a in starts])


def feature_probe(pipe, *, clips: int, data_seed: int,
                  classes=(*TRAINED_CLASSES, "burst", "blip", "bounce", "hum")) -> dict:
    """Per class, test correlation of a ridge readout from sync tokens to band energy."""
    import numpy as np
    import torch

    from selva_core.data.synthetic import CLASS_PROMPTS, synthetic_clip
    from selva_core.model.generator import SYNC_FPS, sync_token_times

    tokens = pipe.variant.sequence_lengths(DURATION).sync
    seen, read, _ = (t.numpy().astype(np.float64) for t in sync_token_times(DURATION, tokens))
    spans = {"seen": (seen, 2 / SYNC_FPS), "read": (read, DURATION / tokens)}
    out = {}
    for name in classes:
        sets = {}
        for seed, count in ((PROBE_FIT_SEED, PROBE_FIT_CLIPS), (data_seed, clips)):
            data = [synthetic_clip(name, i, duration=DURATION, seed=seed) for i in range(count)]
            video = torch.stack([torch.from_numpy(f).permute(0, 3, 1, 2) for f, _ in data])
            feats = pipe.extract_features(video, CLASS_PROMPTS[name], DURATION).sync_f
            x = feats.float().reshape(-1, feats.shape[-1]).numpy().astype(np.float64)
            x = np.c_[x, np.ones(len(x))]
            y = {k: np.concatenate([_token_energies(a, pipe.sample_rate, t, w) for _, a in data])
                 for k, (t, w) in spans.items()}
            sets[seed] = (x, y)
        (x_fit, y_fit), (x_test, y_test) = sets[PROBE_FIT_SEED], sets[data_seed]
        gram = x_fit.T @ x_fit + PROBE_RIDGE * np.eye(x_fit.shape[1])
        for key in spans:
            w = np.linalg.solve(gram, x_fit.T @ y_fit[key])
            out[f"{name}_probe_{key}"] = round(float(np.corrcoef(x_test @ w, y_test[key])[0, 1]),
                                               4)
    return out


def summarise(rows: list[dict]) -> dict:
    import numpy as np

    out = {"clips": len(rows)}
    for key in ("corr_own", "corr_swapped", "corr_codec"):
        out[key] = round(float(np.mean([r[key] for r in rows])), 4)
    out["drop"] = round(out["corr_own"] - out["corr_swapped"], 4)
    for name in sorted({r["clip"].rsplit("_", 1)[0] for r in rows}):
        mine = [r for r in rows if r["clip"].startswith(name + "_")]
        for key in ("corr_own", "corr_swapped", "corr_codec"):
            out[f"{name}_{key}"] = round(float(np.mean([r[key] for r in mine])), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="unseen clips per class (>= 2)")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps per render")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed of every render")
    parser.add_argument("--data_seed", type=int, default=77,
                        help="seed of the unseen clips (the base trains on 1000, the demo on 0)")
    parser.add_argument("--layout_ceiling", action="store_true",
                        help="score the window-blind ceiling of the sync-token layout instead "
                             "of the model (no model is run)")
    parser.add_argument("--feature_probe", action="store_true",
                        help="fit a linear readout of band energy from the shipped TextSynch's "
                             "sync tokens instead (no render)")
    args = parser.parse_args(argv)
    if args.layout_ceiling:
        return _print_ceiling(layout_ceiling(clips=args.clips, data_seed=args.data_seed),
                              args.data_seed)
    if args.clips < 2:
        parser.error("--clips must be at least 2 (the swap takes another clip's video)")

    import torch

    from selva_core.pipeline import SelvaPipeline

    torch.set_num_threads(1)
    pipe = SelvaPipeline.tiny(duration=DURATION)
    if args.feature_probe:
        return _print_probe(feature_probe(pipe, clips=args.clips, data_seed=args.data_seed),
                            args.data_seed)
    rows = measure(pipe, clips=args.clips, steps=args.steps, seed=args.seed,
                   data_seed=args.data_seed)
    print(f"{'clip':<12} {'video of':<12} {'corr own':>9} {'corr swapped':>13} {'codec':>7}")
    for r in rows:
        print(f"{r['clip']:<12} {r['video_of']:<12} {r['corr_own']:>9.3f} "
              f"{r['corr_swapped']:>13.3f} {r['corr_codec']:>7.3f}")
    result = summarise(rows)
    print(f"mean: own {result['corr_own']:.3f}, swapped {result['corr_swapped']:.3f}, "
          f"drop {result['drop']:.3f} (targets: own >= 0.6, drop >= 0.3)")
    print(json.dumps({"benchmark": "sync", "steps": args.steps, "seed": args.seed,
                      "data_seed": args.data_seed, **result}))
    return 0


def _print_probe(result: dict, data_seed: int) -> int:
    print(f"{'class':<8} {'probe seen':>11} {'probe read':>11}")
    for name in dict.fromkeys(k.split("_probe_")[0] for k in result):
        print(f"{name:<8} {result[name + '_probe_seen']:>11.3f} "
              f"{result[name + '_probe_read']:>11.3f}")
    print(json.dumps({"benchmark": "sync_feature_probe", "data_seed": data_seed,
                      "fit_seed": PROBE_FIT_SEED, "fit_clips": PROBE_FIT_CLIPS, **result}))
    return 0


def _print_ceiling(rows: list[dict], data_seed: int) -> int:
    import numpy as np

    print(f"{'clip':<12} {'corr ceiling':>13}")
    for r in rows:
        print(f"{r['clip']:<12} {r['corr_ceiling']:>13.3f}")
    out = {"benchmark": "sync_layout_ceiling", "data_seed": data_seed, "clips": len(rows)}
    for name in sorted({r["clip"].rsplit("_", 1)[0] for r in rows}):
        mine = [r["corr_ceiling"] for r in rows if r["clip"].startswith(name + "_")]
        out[f"{name}_corr_ceiling"] = round(float(np.mean(mine)), 4)
    trained = [r["corr_ceiling"] for r in rows if r["clip"].rsplit("_", 1)[0] in TRAINED_CLASSES]
    out["trained_corr_ceiling"] = round(float(np.mean(trained)), 4)
    print(f"window-blind ceiling: trained classes {out['trained_corr_ceiling']:.3f} "
          "(target 0.6), per class: " + ", ".join(
              f"{k[:-13]} {v:.3f}" for k, v in out.items() if k.endswith("_corr_ceiling")
              and not k.startswith("trained")))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
