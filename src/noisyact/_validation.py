"""Argument checks shared by the functional and module forms: errors name the argument."""

from __future__ import annotations

import math
import numbers

import torch

_VARIANTS = ("NAN", "NAH", "NANI", "NANIL", "NANIS")


def check_variant(variant: object) -> str:
    """Return the canonical (upper-case) variant name or raise ``ValueError``."""
    if isinstance(variant, str) and variant.upper() in _VARIANTS:
        return variant.upper()
    raise ValueError(f"variant must be one of {', '.join(_VARIANTS)}; got {variant!r}")


def check_nonnegative(name: str, value: object) -> float:
    """A finite, non-negative real number (a Python number or a one-element tensor)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape "
                             f"{list(value.shape)}")
        v = float(value.detach().reshape(()).item())
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
    else:
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def check_c(c: object) -> float:
    """c (noise scale): finite and >= 0."""
    return check_nonnegative("c", c)


def check_hyperparameters(*, alpha: object, c: object) -> None:
    """α and c: finite and non-negative (α < 0 would flip the sign of h)."""
    check_nonnegative("alpha", alpha)
    if isinstance(c, torch.Tensor) and (torch.compiler.is_compiling() or c.device.type != "cpu"):
        # A value check would force a graph break or a device sync; modules check c when it is
        # set (constructor, annealing schedules).
        if c.numel() != 1:
            raise ValueError(f"c must be a single number, got a tensor of shape {list(c.shape)}")
        return
    check_c(c)
