"""``python -m selva_core.merge A.safetensors:0.7 B.safetensors:0.3 -o merged.safetensors``.

A thin CLI over :func:`selva_core.model.lora.merge.merge_adapter_files` (the methods are
described there). Exit status 0 written, 2 nothing written (bad file, different model
variants, a kind that cannot merge, wrong flags): one line on stderr names the file or layer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .console import say
from .model.lora.merge import DEFAULT_DENSITY, METHODS
from .schema import cli_number


def build_arg_parser() -> argparse.ArgumentParser:
    from .generate import parse_adapter

    p = argparse.ArgumentParser(
        prog="python -m selva_core.merge",
        description="Merge SelVA LoRA adapter files into one adapter file.",
        epilog="Methods: linear = the weighted sum kept exactly (factors concatenated, the "
               "ranks add up); svd = the weighted sum re-factorised to --rank per layer (the "
               "worst layer's relative error is printed, every layer's is in the file); ties "
               "= trim each change to --density by magnitude, elect signs, average the "
               "agreeing entries, then --rank; dare = drop entries at random (keep --density, "
               "rescale), sum, then --rank. Only lora-kind adapters (PiSSA included) merge; "
               "bake DoRA into the model with python -m selva_core.export. Exit status: 0 "
               "written, 2 nothing written (one line says why).",
    )
    p.add_argument("adapters", nargs="+", type=parse_adapter, metavar="FILE[:WEIGHT]",
                   help="adapter files with their weights (default 1), e.g. a.safetensors:0.7")
    p.add_argument("-o", "--output", required=True,
                   help="the merged adapter file to write (.safetensors)")
    p.add_argument("--method", choices=METHODS, default="linear",
                   help="how to combine the changes (default: linear, exact)")
    p.add_argument("--rank", type=cli_number(integer=True, low=1), default=None,
                   help="rank of svd / ties / dare (default: the largest rank among the files)")
    p.add_argument("--density", type=cli_number(low=0, low_open=True, high=1),
                   default=DEFAULT_DENSITY,
                   help=f"fraction of each change ties / dare keep (default {DEFAULT_DENSITY})")
    p.add_argument("--seed", type=int, default=0, help="seed of dare's random masks (default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    from .atomic import save_safetensors_atomic
    from .model.lora.io import AdapterLoadError
    from .model.lora.merge import MergeError, merge_adapter_files

    try:
        result = merge_adapter_files([(str(p), s) for p, s in args.adapters], args.method,
                                     rank=args.rank, density=args.density, seed=args.seed)
    except (MergeError, AdapterLoadError) as e:
        say(f"error: {e}", file=sys.stderr)
        return 2
    out = save_safetensors_atomic(args.output, result.tensors, result.metadata)
    n_layers = len(result.tensors) // 2
    say(f"wrote {out}: {n_layers} layers, rank {result.metadata['file_rank']}, "
          f"method {args.method}")
    if result.worst is not None:
        layer, err = result.worst
        say(f"worst relative error of a layer's change: {err:.3e} ({layer})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
