"""Building the networks of a variant and loading weights into them strictly.

:func:`load_checked` compares a state dict with a module's keys and shapes *before* touching
the module and loads it strictly only when everything matches, so a network is never left
half-loaded; a file of another variant is recognised and named. :func:`build_component`
constructs a network (on the meta device it costs nothing, which is how other variants'
shapes are obtained for that diagnosis).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ..variants import VARIANTS, ModelVariant, get_variant
from .errors import WeightsError
from .safe_read import LIST_LIMIT, count_keys, describe_keys

logger = logging.getLogger(__name__)


def obsolete_keys(component: str) -> tuple[str, ...]:
    """Keys the reference deletes before its strict load (buffers old checkpoints still hold).

    The generator owns the list (``SelvaGenerator.OBSOLETE_KEYS``); other components have none.
    """
    if component == "generator":
        from ..model.generator import SelvaGenerator

        return tuple(SelvaGenerator.OBSOLETE_KEYS)
    return ()


COMPONENTS = ("generator", "video_encoder", "vae", "vocoder")


Shapes = Mapping[str, tuple[int, ...]]


def build_component(component: str, variant: ModelVariant) -> nn.Module:
    """Construct (random init, current default device) the network ``component`` of ``variant``.

    Under ``with torch.device('meta'):`` this costs no memory, which is how the shapes of
    other variants are obtained for the "this file belongs to variant X" diagnosis.
    """
    if component == "generator":
        from ..model.generator import SelvaGenerator

        return SelvaGenerator(variant.generator, variant.sequence_lengths())
    if component == "video_encoder":
        from ..model.video_encoder import TextSynch

        return TextSynch(variant.video_encoder)
    if component == "vae":
        from ..model.vae import MelVAE

        return MelVAE(variant.vae)
    if component == "vocoder":
        from ..model.bigvgan import BigVGAN

        return BigVGAN(variant.vocoder)
    raise ValueError(f"unknown component {component!r}; choose one of: {', '.join(COMPONENTS)}")


def state_dict_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a module's state dict (works on meta modules)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


class _SkipRandomInit(torch.overrides.TorchFunctionMode):
    """Skip in-place random initialisation (``nn.init.*``, ``Tensor.normal_/uniform_``)."""

    _SKIP = {torch.Tensor.normal_, torch.Tensor.uniform_} | {
        f for n, f in vars(nn.init).items() if n.endswith("_") and not n.startswith("_")
    }

    def __init__(self, meta_only: bool):
        super().__init__()
        self.meta_only = meta_only

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SKIP:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and (target.is_meta or not self.meta_only):
                return target
        return func(*args, **kwargs)


def skip_random_init(meta_only: bool = False) -> _SkipRandomInit:
    """Context manager: build modules without their random initialisation.

    For networks whose every persistent tensor is about to be overwritten by a checked strict
    load (saves seconds on the big generators), and for meta-device shape builds
    (``meta_only=True``), where ``normal_`` would otherwise pull in torch's slow reference
    kernels. Deterministic, non-random set-up (RoPE tables, filters) still runs.
    """
    return _SkipRandomInit(meta_only)


def _component_config(component: str, variant: ModelVariant):
    return {
        "generator": variant.generator,
        "video_encoder": variant.video_encoder,
        "vae": variant.vae,
        "vocoder": variant.vocoder,
    }.get(component)


@functools.lru_cache(maxsize=64)
def _config_shapes(component: str, config, variant_name: str):
    # Keyed by the (frozen, hashable) component config: variants sharing a VAE, vocoder or
    # video encoder are built once. ``variant_name`` only supplies the rest of the variant.
    with torch.device("meta"), skip_random_init(meta_only=True):
        module = build_component(component, get_variant(variant_name))
    return tuple(sorted(state_dict_shapes(module).items()))


def expected_shapes(component: str, variant_name: str) -> dict[str, tuple[int, ...]]:
    """State-dict shapes ``component`` of a registered variant has (built on the meta device)."""
    variant = get_variant(variant_name)
    config = _component_config(component, variant)
    if config is None:
        raise ValueError(
            f"unknown component {component!r}; choose one of: {', '.join(COMPONENTS)}"
        )
    first = next(n for n, v in VARIANTS.items() if _component_config(component, v) == config)
    return dict(_config_shapes(component, config, first))


def _registered_candidates(component: str, variant_name: str) -> dict[str, Shapes]:
    """Shapes of ``component`` in every other registered variant with a different config."""
    own = VARIANTS.get(variant_name)
    own_cfg = _component_config(component, own) if own is not None else None
    out: dict[str, Shapes] = {}
    for name, other in VARIANTS.items():
        if name == variant_name:
            continue
        cfg = _component_config(component, other)
        if cfg is None or cfg == own_cfg:
            continue
        try:
            out[name] = expected_shapes(component, name)
        except Exception as exc:  # diagnosis only; never mask the real error
            logger.debug("cannot build %s of %s on meta: %s", component, name, exc)
    return out


def _compare(
    shapes: Mapping[str, tuple[int, ...]], expected: Shapes
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [k for k in shapes if k in expected and tuple(shapes[k]) != tuple(expected[k])]
    return missing, unexpected, wrong


def _guess_variants(shapes: Mapping[str, tuple[int, ...]], candidates: Mapping[str, Shapes]):
    """Variants whose keys/shapes explain the file: exact matches, else fitting subsets."""
    exact, partial = [], []
    for name, exp in candidates.items():
        missing, unexpected, wrong = _compare(shapes, exp)
        if unexpected or wrong:
            continue
        (partial if missing else exact).append(name)
    return exact, partial


# --- strict loading ------------------------------------------------------------------------------
def load_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    component: str,
    variant: str,
    drop_keys: Iterable[str] = (),
    transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    source: str | os.PathLike | None = None,
    candidates: Mapping[str, Shapes] | None = None,
) -> nn.Module:
    """Load ``state_dict`` into ``module`` strictly, or raise one :class:`WeightsError`.

    Steps: drop the component's known obsolete keys and ``drop_keys``; apply ``transform``
    (e.g. legacy weight-norm renaming); compare keys and shapes with ``module.state_dict()``.
    Missing, unexpected and wrong-shape keys are all listed in one error, which also names the
    variant the file seems to belong to (``candidates``: ``{variant: {key: shape}}``; default:
    every registered variant, built on the meta device). The module is modified only when
    everything matches; tensors are cast to the dtype of the module's tensors.
    """
    where = f" from {source}" if source is not None else ""
    sd = dict(state_dict)
    dropped = [k for k in (*obsolete_keys(component), *drop_keys) if k in sd]
    for k in dropped:
        del sd[k]
    if dropped:
        logger.debug("dropped obsolete keys %s%s", dropped, where)
    if transform is not None:
        sd = dict(transform(sd))

    target = module.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    missing, unexpected, wrong = _compare(shapes, {k: tuple(v.shape) for k, v in target.items()})
    if missing or unexpected or wrong:
        lines = [f"the {component} weights{where} do not fit the {variant} {component}:"]
        if unexpected or wrong:  # a merely incomplete file says nothing about its variant
            cands = (
                candidates
                if candidates is not None
                else _registered_candidates(component, variant)
            )
            exact, partial = _guess_variants(shapes, cands)
            if exact:
                shared = f" (they share this {component})" if len(exact) > 1 else ""
                lines.append(
                    f"  this file looks like variant {' or '.join(exact)}{shared}, not "
                    f"{variant}: choose the matching variant or the {variant} file."
                )
            elif partial:
                lines.append(
                    f"  this file looks like (part of) variant {' or '.join(partial)}, "
                    f"not {variant}."
                )
        if missing:
            lines.append(f"  missing {count_keys(len(missing))}: {describe_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected {count_keys(len(unexpected))}: {describe_keys(unexpected)}")
        if wrong:
            shown = [f"{k!r} file {shapes[k]} vs model {tuple(target[k].shape)}" for k in wrong]
            more = f", ... ({len(wrong)} in all)" if len(wrong) > LIST_LIMIT else ""
            lines.append(
                f"  {count_keys(len(wrong))} with the wrong shape: "
                + "; ".join(shown[:LIST_LIMIT])
                + more
            )
        lines.append("  nothing was loaded; the model is unchanged.")
        raise WeightsError("\n".join(lines))

    cast = {}
    for k, v in sd.items():
        ref = target[k]
        cast[k] = v.to(ref.dtype) if v.is_floating_point() and ref.is_floating_point() else v
    module.load_state_dict(cast, strict=True)
    logger.info("loaded %s %s weights%s (%d tensors)", variant, component, where, len(cast))
    return module
