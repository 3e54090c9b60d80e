#!/usr/bin/env python
"""Compare SelVA LoRA adapters by listening and measuring (``python eval_adapters.py --help``).

    python eval_adapters.py SPEC.json
    python eval_adapters.py --example > spec.json      # a spec to start from

Renders every clip x seed x adapter x strength (plus the baseline without adapter), then
writes WAVs and MP4s, ``eval_summary.json``, ``metrics.csv``, charts and ``index.html`` (a
listening grid that works offline) into the spec's ``output_dir``. Running the same spec again
finishes an interrupted evaluation and redoes nothing that is done. Exit status: 0 finished,
130 interrupted (run again to continue), 2 bad spec or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.evaluation.spec import FIELD_HELP, EvalSpecError, load_spec  # noqa: E402
from selva_core.variants import CFG_STRENGTH, SAMPLING_STEPS  # noqa: E402

log = logging.getLogger("eval_adapters")

EXAMPLE_SPEC = {
    "name": "my_lora",
    "data_dir": "lora_output",
    "output_dir": "eval_output/my_lora",
    "adapters": [
        {"id": "base", "path": ""},
        {"id": "final", "path": "lora_output/adapter_final.safetensors"},
        {"id": "run", "path": "lora_output"},
    ],
    "strengths": [0.5, 1.0],
    "seeds": [1, 2],
    "steps": SAMPLING_STEPS,
    "cfg": CFG_STRENGTH,
}

METRICS_HELP = """\
metrics (no download):
  hf_energy_ratio, spectral_centroid_hz, spectral_rolloff_hz, spectral_flatness,
  temporal_variance   the closest tool's five spectral metrics; the high-frequency cut is the
                      same fraction of the model's band as 4 kHz of 22.05 kHz (1.45 kHz at
                      16 kHz); compare with the reference's values
  lsd_db, mcd_db      log-spectral and mel-cepstral distance to the reference (lower = closer)
  drift_lsd_db        LSD between the render with the adapter and the baseline render of the
                      same clip and seed (how much the adapter changes; use drift_dir clips
                      unlike the training set to see what it should leave alone); both sides
                      as their 16-bit WAVs hold them, so strength 0 drifts by exactly 0
  env_corr_lag0, env_best_lag_ms, env_corr_best
                      weight-free sync against the reference recording: Pearson correlation
                      of the 1-6 kHz RMS envelopes (20 ms frames) at lag 0, the lag within
                      +-0.5 s where it peaks (ms, + = render late) and the correlation there
  motion_corr_lag0, motion_best_lag_ms, motion_corr_best
                      the same for the render's onsets against the picture's motion energy
                      (every clip with a video; no reference needed). Correlations: higher
                      is better; lags: closer to 0; n/a where the sound is silent
  desync_s            av-benchmark's DeSync from Synchformer (ext_weights/
                      synchformer_state_dict.pth, which SelVA/MMAudio ship); "unavailable" with
                      the reason when the file is missing
optional (explicit weights only): clap_score and fad_clap with 'clap_model'.
Numbers guide; listening decides: open index.html."""


def _fields_help() -> str:
    lines = ["spec fields (JSON object):"]
    for name, default, text in FIELD_HELP:
        head = f"  {name} (default {default})"
        lines.append(head)
        lines += textwrap.wrap(text.replace('\\"', '"'), 88, initial_indent="      ",
                               subsequent_indent="      ")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval_adapters.py",
        description=("Evaluate SelVA LoRA adapters: render a grid of clips x seeds x adapters "
                     "x strengths, measure it and build an offline listening page."),
        epilog=_fields_help() + "\n\n" + METRICS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", nargs="?", help="the evaluation spec: a JSON file (or JSON text)")
    parser.add_argument("--output_dir", "--output-dir", help="override the spec's output_dir")
    parser.add_argument("--device", help="override the spec's device (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--example", action="store_true",
                        help="print an example spec and exit")
    parser.add_argument("--quiet", action="store_true",
                        help="only warnings and the final summary (no progress bars)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.example:
        print(json.dumps(EXAMPLE_SPEC, indent=2))
        return 0
    if not args.spec:
        parser.error("give the spec file (or --example to print one)")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from selva_core.atomic import check_writable_folder, is_out_of_space
    from selva_core.data import BadClipError
    from selva_core.evaluation.report import format_summary
    from selva_core.evaluation.runner import run_evaluation

    expected = (EvalSpecError, BadClipError, FileNotFoundError, FileExistsError, ValueError)
    try:
        from selva_core.weights import WeightsError

        expected = (*expected, WeightsError)
    except ImportError:  # pragma: no cover
        pass
    try:
        spec = load_spec(args.spec)
        if args.output_dir:
            spec.output_dir = args.output_dir
        if args.device:
            spec.device = args.device
        check_writable_folder(spec.output_dir, "output_dir")
        result = run_evaluation(spec, progress=not args.quiet)
    except expected as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not is_out_of_space(exc):
            raise
        print(f"\nerror: {exc}; what was rendered so far is kept: run the same command again "
              "once there is room (nothing done is redone)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while the model loads: nothing of the grid was started
        print("\ninterrupted; run the same command again", file=sys.stderr)
        return 130
    print(format_summary(result.summary))
    if result.status == "interrupted":
        print("interrupted: run the same command again to finish (nothing done is redone)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
