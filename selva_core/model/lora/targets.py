"""Which modules an adapter wraps: presets and name patterns on qualified module names.

Adaptable modules are ``nn.Linear`` and ``nn.Conv1d`` (``ChannelLastConv1d`` included) and
existing LoRA wrappers (a second adapter joins the wrapper already there).

Pattern forms, OR-ed together:

* a preset name (:data:`PRESETS`), e.g. ``attn``;
* ``re:<regex>``: ``re.fullmatch`` on the qualified name;
* a glob with ``*``, ``?`` or ``[...]`` (``fnmatch``; ``*`` also crosses dots);
* a plain dotted name: that exact module or any module whose name ends in ``.<name>``
  (``attn.qkv`` hits every stream's qkv).

MMAudio layout (docs/REFERENCE_ARCHITECTURE.md 1.3): in ``joint_blocks.{i}`` the latent and
clip streams have kernel-3 ``ChannelLastConv1d`` ``linear1`` and ConvMLP ``ffn.w1/w2/w3``, the
text stream has ``nn.Linear`` ones; ``fused_blocks.{j}`` are latent-only with convs; the clip
and text streams of the last joint block have only ``attn.qkv`` and ``adaLN_modulation.1``.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable

from torch import nn

_BLOCKS = r"(?:joint_blocks|fused_blocks)\.\d+(?:\.\w+_block)?"
PRESETS: dict[str, tuple[str, ...]] = {
    # attention q/k/v projections of every stream of every joint and fused block
    "qkv": (rf"re:{_BLOCKS}\.attn\.qkv",),
    # qkv + the post-attention projection linear1 (a kernel-3 conv on the latent/clip streams)
    "attn": (rf"re:{_BLOCKS}\.attn\.qkv", rf"re:{_BLOCKS}\.linear1"),
    # SwiGLU feed-forward projections (ConvMLP on latent/clip streams, MLP on text)
    "ffn": (rf"re:{_BLOCKS}\.ffn\.w[123]",),
    "attn+ffn": (
        rf"re:{_BLOCKS}\.attn\.qkv",
        rf"re:{_BLOCKS}\.linear1",
        rf"re:{_BLOCKS}\.ffn\.w[123]",
    ),
    # every Linear and Conv1d inside the joint and fused blocks (adaLN modulation included)
    "all": (rf"re:{_BLOCKS}\..+",),
}
PRESETS["qkv+linear1"] = PRESETS["attn"]

_GLOB_CHARS = set("*?[")


def is_adaptable(module: nn.Module) -> bool:
    """True for modules a LoRA wrapper can take: Linear, Conv1d (groups 1), LoRA wrappers."""
    from .layers import LoRALayer

    if isinstance(module, LoRALayer):
        return True
    return isinstance(module, (nn.Linear, nn.Conv1d))


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> adaptable module; the insides of LoRA wrappers are not listed."""
    from .layers import LoRALayer

    found: dict[str, nn.Module] = {}
    skip_prefixes: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p) for p in skip_prefixes):
            continue
        if isinstance(module, LoRALayer):
            found[name] = module
            skip_prefixes.append(name + ".")
        elif is_adaptable(module):
            found[name] = module
    return found


def expand_patterns(patterns: Iterable[str]) -> list[str]:
    """Replace preset names by their patterns; keep other patterns as given."""
    out: list[str] = []
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ValueError(f"LoRA target pattern must be a non-empty string, got {p!r}")
        out.extend(PRESETS.get(p, (p,)))
    return out


def name_matches(name: str, pattern: str) -> bool:
    """Does qualified module ``name`` match one (non-preset) ``pattern``?"""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if _GLOB_CHARS & set(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def summarize_names(names: Iterable[str], limit: int = 40) -> str:
    """Collapse block indices (``joint_blocks.3.`` -> ``joint_blocks.*.``) and count repeats."""
    counts = Counter(re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names)
    items = [f"{k} (x{v})" if v > 1 else k for k, v in sorted(counts.items())]
    more = len(items) - limit
    text = ", ".join(items[:limit])
    return text + (f", ... and {more} more" if more > 0 else "")


def resolve_targets(
    model: nn.Module, targets: Iterable[str], exclude: Iterable[str] = ()
) -> list[str]:
    """Qualified names of the adaptable modules matched by ``targets`` minus ``exclude``.

    Raises ``ValueError`` listing the adaptable modules (shortened) when nothing matches, or
    when one of ``targets`` matches no adaptable module (a typo, or a container such as
    ``adaLN_modulation`` whose Linear is ``adaLN_modulation.1``): a pattern that silently
    adapts nothing would train a different adapter than the one asked for.
    """
    targets = tuple(targets)
    excl = expand_patterns(exclude)
    available = adaptable_modules(model)
    hits = {t: {n for n in available if any(name_matches(n, p) for p in expand_patterns([t]))}
            for t in targets}
    chosen = [
        n
        for n in available
        if any(n in hit for hit in hits.values()) and not any(name_matches(n, p) for p in excl)
    ]
    unmatched = [t for t, hit in hits.items() if not hit]
    if not chosen or unmatched:
        what = (f"LoRA target {unmatched[0]!r} matches" if chosen else
                f"LoRA targets {list(targets)} (exclude {list(exclude)}) match")
        raise ValueError(
            f"{what} no adaptable module of "
            f"{type(model).__name__}. Adaptable modules (Linear/Conv1d; block indices shown as *): "
            f"{summarize_names(available) or 'none'}. Presets: {', '.join(PRESETS)}; or use "
            "'re:<regex>', a glob, or a name suffix such as 'attn.qkv'."
        )
    return chosen
