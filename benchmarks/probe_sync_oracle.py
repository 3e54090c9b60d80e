"""Can the tiny generator follow a sync signal at all? Train it on oracle sync tokens.

Instead of the TextSynch's features, every sync token carries the true audio's 1-6 kHz band
energy (log10, :func:`bench_sync._token_energies`) times one fixed random direction, taken
either over the span whose latent frames read the token (``--oracle read``: a perfect encoder
that also undoes SelVA's token layout) or over the two frames the token is computed from
(``--oracle seen``: a perfect encoder of its own window, as a real one is). The generator
stage of ``scripts/train_tiny_base.py`` (same loss, schedule and draws) trains on these tokens
for ``--steps`` steps on the base's training clips; the codec, text encoders and TextSynch
come from the shipped ``tiny_16k``. Unseen clips (``--data_seed``) are then rendered with
their own oracle tokens and with the next clip's, and scored like ``bench_sync.py``.

``read`` high and ``seen`` near ``bench_sync.py --layout_ceiling``: the generator follows the
tokens but reads them where they are read, not where they were seen (it does not undo the
layout); both low: the generator stage itself does not learn to use the sync tokens.

Prints a table, then one JSON object as the last line. Minutes on one CPU thread.

    python benchmarks/probe_sync_oracle.py --oracle read --classes bounce --steps 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_sync import DURATION, _corr, _token_energies  # noqa: E402

DIRECTION_SEED = 5
FLOOR = 1e-4  # of the band energy before log10


def _train_script():
    spec = importlib.util.spec_from_file_location("train_tiny_base",
                                                  ROOT / "scripts" / "train_tiny_base.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def oracle_tokens(audio, starts, span: float, dim: int, sample_rate: int):
    """(B, tokens, dim): standardised log band energy of each token's span, one direction."""
    import numpy as np
    import torch

    direction = torch.randn(dim, generator=torch.Generator().manual_seed(DIRECTION_SEED))
    direction *= 8 / direction.norm()
    energy = np.stack([np.log10(_token_energies(a, sample_rate, starts, span) + FLOOR)
                       for a in audio])
    return torch.from_numpy((energy + 2.5) / 1.5).float()[..., None] * direction


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oracle", choices=("read", "seen"), default="read")
    parser.add_argument("--classes", default="bounce", help="comma-separated synthetic classes")
    parser.add_argument("--steps", type=int, default=1000, help="generator steps")
    parser.add_argument("--clips", type=int, default=4, help="unseen clips per class (>= 2)")
    parser.add_argument("--train_clips", type=int, default=96, help="training clips per class")
    parser.add_argument("--data_seed", type=int, default=77)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from selva_core.data.synthetic import CLASS_PROMPTS, synthetic_clip
    from selva_core.model.generator import SYNC_FPS, sync_token_times
    from selva_core.pipeline import SelvaPipeline
    from selva_core.training.objective import FeatureBatch

    torch.set_num_threads(1)
    train = _train_script()
    pipe = SelvaPipeline.tiny(duration=DURATION)
    variant = pipe.variant
    seq = variant.sequence_lengths(DURATION)
    seen, read, _ = (t.numpy().astype(np.float64) for t in sync_token_times(DURATION, seq.sync))
    starts, span = (read, DURATION / seq.sync) if args.oracle == "read" else (seen, 2 / SYNC_FPS)
    dim, sr = variant.generator.sync_dim, pipe.sample_rate
    classes = args.classes.split(",")

    def clips(seed, count):
        for name in classes:
            data = [synthetic_clip(name, i, duration=DURATION, seed=seed) for i in range(count)]
            video = torch.stack([torch.from_numpy(f).permute(0, 3, 1, 2) for f, _ in data])
            audio = np.stack([np.asarray(a[:seq.audio_samples], np.float32) for _, a in data])
            yield name, video, audio

    parts = []
    for name, video, audio in clips(train.DATA_SEED, args.train_clips):
        with torch.no_grad():
            text = pipe.extract_features(video, CLASS_PROMPTS[name], DURATION).text_clip_f
            moments = pipe.encode_audio(audio, sr, duration=DURATION)
        parts.append((moments.mean.float(), moments.std.float(),
                      oracle_tokens(audio, starts, span, dim, sr), text.float()))
    mean, std, sync, text = (torch.cat(x) for x in zip(*parts))
    batch = FeatureBatch(mean, std, sync, torch.ones(len(mean), seq.sync, dtype=torch.bool),
                         text, [f"clip{i}" for i in range(len(mean))])
    cfg = train.BaseTrainConfig(generator_steps=args.steps)
    pipe.generator, _ = train.train_generator(batch, seq, cfg, variant)

    rows = []
    for name, video, audio in clips(args.data_seed, args.clips):
        features = pipe.extract_features(video, CLASS_PROMPTS[name], DURATION)
        features.sync_f = oracle_tokens(audio, starts, span, dim, sr).to(features.sync_f.dtype)
        waves = pipe.render(features, seed=1, num_steps=10).numpy()
        for i, true in enumerate(audio):
            swap = (i + 1) % len(audio)
            n = min(len(true), waves.shape[-1])
            rows.append((name, _corr(waves[i, :n], true[:n], sr),
                         _corr(waves[swap, :n], true[:n], sr)))
    out = {"benchmark": "sync_oracle", "oracle": args.oracle, "steps": args.steps,
           "data_seed": args.data_seed}
    print(f"{'class':<8} {'corr own':>9} {'corr swapped':>13}")
    for name in classes:
        own = float(np.mean([r[1] for r in rows if r[0] == name]))
        other = float(np.mean([r[2] for r in rows if r[0] == name]))
        print(f"{name:<8} {own:>9.3f} {other:>13.3f}")
        out[f"{name}_corr_own"], out[f"{name}_corr_swapped"] = round(own, 4), round(other, 4)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
