"""``python -m selva_core.dataset prepare SRC... --out DIR`` and ``... inspect DIR``.

``prepare`` cuts raw footage into a training folder (:mod:`.prepare`) and then inspects it;
``inspect`` checks an existing folder (:mod:`.inspect`) and writes ``dataset_report.json``,
``dataset_report.html`` and ``dataset_summary.png`` into it, with a one-screen summary.
Exit status: 0 done, 1 done but some sources skipped, 2 nothing done or a wrong command line
(one line on stderr), 130 interrupted (every clip written so far is whole; rerun to go on).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from selva_core.console import say
from selva_core.data.errors import BadClipError
from selva_core.dataset import checks
from selva_core.dataset.cutting import DEFAULT_MIN_LOUDNESS
from selva_core.dataset.defaults import DEFAULT_LUFS
from selva_core.dataset.prepare import (
    PrepareError,
    PrepareSettings,
    prepare,
)
from selva_core.variants import DEFAULT_VARIANT, TRAIN_DURATION_S, VARIANTS

log = logging.getLogger(__name__)

EXIT_OK, EXIT_SOME_SKIPPED, EXIT_NOTHING_DONE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", default=DEFAULT_VARIANT, choices=sorted(VARIANTS),
                   help="model the folder is for: its audio rate and, for the round trip, its "
                        f"VAE and vocoder (default {DEFAULT_VARIANT})")
    p.add_argument("--duration", type=float, default=TRAIN_DURATION_S,
                   help=f"training window in seconds (default {TRAIN_DURATION_S:g}, the official "
                        "models' window); inspect flags shorter clips")
    p.add_argument("--round_trip", choices=("auto", "on", "off"), default="auto",
                   help="VAE round trip per clip: 'auto' runs it when the variant's weights are "
                        "there (tiny_16k always), 'on' requires them, 'off' skips it")
    p.add_argument("--max_round_trip_lsd", type=float, default=checks.ROUND_TRIP_LSD_DB,
                   help="flag clips whose round-trip log-spectral distance exceeds this (dB; "
                        f"default {checks.ROUND_TRIP_LSD_DB:g})")
    p.add_argument("--models_dir", default=None, help="models folder (default: the usual one)")
    p.add_argument("--device", default=None, help="device for the round trip (default: GPU "
                                                   "if there is one)")
    p.add_argument("--verbose", action="store_true", help="log every step")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m selva_core.dataset",
        description="From raw footage to a training folder for train_lora.py, and checks of "
                    "any training folder.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "prepare", help="cut videos into training clips, then inspect them",
        description="Cut videos of any length into clips of --duration seconds where the "
                    "sound is active and no shot cut falls inside; writes CLIP.mp4 (the "
                    "original frames, re-encoded), CLIP.wav (loudness-normalised at the "
                    "variant's rate), prompts.txt and the inspection report into --out. "
                    "A rerun skips the clips already there.")
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="video files or folders of them (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (not inside a source folder)")
    _common(p)
    p.add_argument("--hop", type=float, default=None,
                   help="seconds between window starts (default: --duration, no overlap)")
    p.add_argument("--min_loudness", type=float, default=DEFAULT_MIN_LOUDNESS,
                   help="a window is kept when 90%% of its 400 ms blocks are at least this "
                        f"loud (dB on the LUFS scale; default {DEFAULT_MIN_LOUDNESS:g})")
    p.add_argument("--lufs", type=float, default=DEFAULT_LUFS,
                   help=f"loudness of the prepared WAVs (ITU-R BS.1770; default {DEFAULT_LUFS:g})")
    p.add_argument("--compress", action="store_true",
                   help="gentle compressor (2:1 above -24 dB) and peak limiter in the copies")
    p.add_argument("--max_clips", type=int, default=None,
                   help="at most this many clips per source, spread over it")
    p.add_argument("--prompt", default=None,
                   help="prompt of every clip (default: the source's line in a prompts.txt "
                        "beside it, else its folder's name)")
    q = sub.add_parser("inspect", help="check a training folder and write its report",
                       description="Check every clip of a training folder (the trainer's "
                                   "view of it) and write dataset_report.json/.html and "
                                   "dataset_summary.png into it.")
    q.add_argument("folder", metavar="DIR")
    _common(q)
    return parser


def round_trip_pipeline(args) -> object | None:
    """The pipeline for the round trip, or None (off, or 'auto' without weights)."""
    if args.round_trip == "off":
        return None
    from selva_core.pipeline import SelvaPipeline
    from selva_core.weights import WeightsError

    try:
        return SelvaPipeline.build(args.variant, models_dir=args.models_dir,
                                   device=args.device, need_vae_encoder=True)
    except WeightsError as error:
        if args.round_trip == "on":
            raise
        say(f"no VAE round trip: {str(error).splitlines()[0]}", file=sys.stderr)
        return None


def _inspect(folder, args, pipeline) -> None:
    from selva_core.dataset.inspect import inspect_folder
    from selva_core.dataset.report import format_summary, write_report

    result = inspect_folder(folder, variant=args.variant, duration=args.duration,
                            pipeline=pipeline, max_lsd=args.max_round_trip_lsd)
    paths = write_report(result)
    say(format_summary(result))
    say(f"report: {paths['json']}  page: {paths['html']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    if args.duration <= 0:
        parser.error(f"--duration {args.duration:g}: must be positive")
    code = EXIT_OK
    try:
        if args.command == "prepare":
            settings = PrepareSettings(
                variant=args.variant, duration=args.duration, hop=args.hop,
                min_loudness=args.min_loudness, lufs=args.lufs, compress=args.compress,
                max_clips=args.max_clips, prompt=args.prompt)
            started = time.perf_counter()
            result = prepare(args.sources, args.out, settings)
            seconds = time.perf_counter() - started
            for error in result.skipped:
                say(f"skipped {error}", file=sys.stderr)
            say(f"{len(result.written)} clip(s) written, {len(result.existing)} already there, "
                f"from {result.seconds:.0f} s of footage in {seconds:.1f} s; "
                f"{len(result.skipped)} source(s) skipped")
            if not result.written and not result.existing:
                return EXIT_NOTHING_DONE
            code = EXIT_SOME_SKIPPED if result.skipped else EXIT_OK
            folder = args.out
        else:
            folder = args.folder
        _inspect(folder, args, round_trip_pipeline(args))
    except KeyboardInterrupt:
        say("interrupted: every clip written so far is whole; rerun to continue",
            file=sys.stderr)
        return EXIT_INTERRUPTED
    except (PrepareError, BadClipError, ValueError, OSError) as error:
        say(f"error: {error}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    return code


if __name__ == "__main__":
    sys.exit(main())
