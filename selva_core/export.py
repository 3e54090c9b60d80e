"""``python -m selva_core.export --adapter FILE[:STRENGTH] ... -o generator_merged.safetensors``.

A thin CLI over :func:`selva_core.weights.export.export_merged_generator`: the generator with
the adapters merged into its weights, in the official checkpoint's key layout. Exit status 0
written, 2 nothing written (one line on stderr says why).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .console import say
from .variants import VARIANTS
from .weights.export import FORMATS


def build_arg_parser() -> argparse.ArgumentParser:
    from .generate import parse_adapter

    p = argparse.ArgumentParser(
        prog="python -m selva_core.export",
        description="Write a SelVA generator with LoRA adapters merged into its weights, in "
                    "the official checkpoint's key layout (any SelVA tool loads it as a base "
                    "generator). Every adapter kind (lora, PiSSA, dora) can be baked in.",
        epilog="Exit status: 0 written, 2 nothing written (bad adapter, adapters of different "
               "model variants, --variant differing from the adapters', missing weights).",
    )
    p.add_argument("--adapter", type=parse_adapter, action="append", required=True,
                   metavar="FILE[:STRENGTH]",
                   help="adapter file with its strength (default 1); repeat to merge several")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="the generator file to write, e.g. generator_merged.safetensors")
    p.add_argument("--variant", default=None, choices=list(VARIANTS),
                   help="model variant of the base generator (default: the adapters')")
    p.add_argument("--format", dest="fmt", default=None, choices=FORMATS,
                   help="safetensors, or pth: a plain tensor dict through torch.save (loads "
                        "with weights_only=True) for tools that read only the official .pth "
                        "(default: from the output's extension, else safetensors)")
    p.add_argument("--models_dir", type=Path, default=None,
                   help="folder holding the base weights (default: the project's models folder)")
    p.add_argument("--download", action="store_true",
                   help="download the base generator into --models_dir when it is missing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    from .model.lora.io import AdapterLoadError
    from .weights import WeightsError
    from .weights.export import ExportError, export_merged_generator

    fmt = args.fmt or ("pth" if args.output.suffix.lower() in (".pth", ".pt") else "safetensors")
    try:
        result = export_merged_generator(
            [(str(p), s) for p, s in args.adapter], args.output, variant=args.variant,
            models_dir=args.models_dir, fmt=fmt, download=args.download)
    except (ExportError, AdapterLoadError, WeightsError) as e:
        say(f"error: {e}", file=sys.stderr)
        return 2
    say(f"wrote {result.path}: the {result.variant} generator ({result.tensors} tensors, "
          f"{fmt}) with {len(args.adapter)} adapter(s) merged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
