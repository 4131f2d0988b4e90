"""A small name → layer registry (timm ``create_act`` style), so configs can name noisy units.

Names: ``noisy_hard_tanh``, ``noisy_hard_sigmoid``, ``noisy_tanh``, ``noisy_sigmoid`` (variant
from the keywords, default NAH), and one per variant, e.g. ``nan_hard_tanh``, ``nah_hard_sigmoid``,
``nanil_tanh``. Every layer accepts ``inplace``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from .modules import NoisyHardSigmoid, NoisyHardTanh, NoisySigmoid, NoisyTanh
from .variants import VARIANTS

__all__ = ["create_act_layer", "get_act_layer", "list_act_layers"]

_BASE: dict[str, type[nn.Module]] = {
    "hard_tanh": NoisyHardTanh,
    "hard_sigmoid": NoisyHardSigmoid,
    "tanh": NoisyTanh,
    "sigmoid": NoisySigmoid,
}
_LAYERS: dict[str, Callable[..., nn.Module]] = {f"noisy_{k}": v for k, v in _BASE.items()}
_LAYERS.update({
    f"{variant.lower()}_{k}": functools.partial(cls, variant=variant)
    for variant, v in VARIANTS.items()
    for k, cls in _BASE.items()
    # a variant that needs a saturation threshold (NANIS) has no soft member
    if not (v.needs_threshold and cls.fn.threshold is None)
})


def list_act_layers() -> list[str]:
    """All registered names."""
    return sorted(_LAYERS)


def get_act_layer(name: str) -> Callable[..., nn.Module]:
    """The layer class (or partial) registered under ``name``."""
    try:
        return _LAYERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown noisy activation {name!r}; known: {list_act_layers()}") from None


def create_act_layer(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the layer registered under ``name`` with ``kwargs``."""
    return get_act_layer(name)(**kwargs)
