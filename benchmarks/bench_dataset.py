"""Benchmark dataset preparation and inspection on the CPU (no downloads).

* ``prepare_x_realtime``: seconds of footage prepared per second of wall time by
  ``prepare`` (decoding, shot cuts, activity, loudness, WAV and MP4 writing; no round trip)
  on a synthetic source of ``--seconds`` s at ``--width`` x ``--height``, 25 fps, 48 kHz stereo
  AAC, with a hard cut every 20 s and a silent stretch. Target >= 20 on a 2-core machine.
* ``inspect_s_per_clip``: seconds per clip of ``inspect`` without the round trip.
* ``round_trip_s_per_clip``: seconds per clip of the VAE round trip (encode, decode, vocoder,
  LSD) of the tiny model; an official variant's networks are larger.

Prints a table, then one JSON object as the last line.

    python benchmarks/bench_dataset.py [--seconds 120] [--width 320] [--height 240]
                                        [--duration 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_source(path: Path, seconds: float, width: int, height: int) -> Path:
    import numpy as np

    from selva_core.data.synthetic import write_video

    fps, sr = 25, 48000
    n = round(seconds * fps)
    rng = np.random.default_rng(0)
    x = np.arange(width)
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        shot = int(i / fps // 20)
        frames[i] = (40 + 60 * shot) % 200
        frames[i, :, np.abs(x - (i * 3) % width) < 12] = 255
    t = np.arange(round(seconds * sr)) / sr
    audio = 0.1 * rng.standard_normal((2, t.size)) + 0.2 * np.sin(2 * np.pi * 330 * t)
    audio[:, (t % 60 > 30) & (t % 60 < 36)] = 0.0
    return write_video(path, frames, fps=fps, audio=audio.astype(np.float32), sample_rate=sr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from selva_core.dataset.inspect import inspect_folder
    from selva_core.dataset.prepare import PrepareSettings, prepare
    from selva_core.dataset.roundtrip import round_trip
    from selva_core.pipeline import SelvaPipeline

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_dataset_"))
    (tmp / "src").mkdir()
    make_source(tmp / "src" / "footage.mp4", args.seconds, args.width, args.height)

    settings = PrepareSettings(variant="tiny_16k", duration=args.duration)
    start = time.perf_counter()
    result = prepare([tmp / "src"], tmp / "clips", settings)
    prepare_s = time.perf_counter() - start
    clips = len(result.written)

    start = time.perf_counter()
    inspection = inspect_folder(tmp / "clips", variant="tiny_16k", duration=args.duration)
    inspect_s = time.perf_counter() - start

    pipe = SelvaPipeline.build("tiny_16k", device="cpu", precision="fp32",
                               need_vae_encoder=True)
    waves = [r.heard for r in inspection.clips[:4]]
    round_trip(pipe, waves[0], pipe.sample_rate)  # warm-up
    start = time.perf_counter()
    for wave in waves:
        round_trip(pipe, wave, pipe.sample_rate)
    trip_s = (time.perf_counter() - start) / max(1, len(waves))

    figures = {
        "footage_s": args.seconds, "clips": clips, "size": f"{args.width}x{args.height}",
        "threads": args.threads, "prepare_s": round(prepare_s, 2),
        "prepare_x_realtime": round(args.seconds / prepare_s, 1),
        "inspect_s_per_clip": round(inspect_s / max(1, clips), 3),
        "round_trip_s_per_clip": round(trip_s, 3),
    }
    print(f"{'figure':<24}{'value':>14}")
    for key, value in figures.items():
        print(f"{key:<24}{value!s:>14}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
