"""Argument checks shared by the functional and module forms: errors name the argument."""

from __future__ import annotations

import math
import numbers

import torch

from .variants import get_variant


def check_variant(variant: object, argument: str = "variant") -> str:
    """Return the canonical variant name (:data:`noisyact.variants.VARIANTS`, looked up without
    regard to case) or raise ``ValueError`` naming ``argument``."""
    return get_variant(variant, argument).name


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


def check_fits(dtype: torch.dtype, *, alpha: object, c: object) -> None:
    """α and c representable in the dtype that an input of ``dtype`` is
    computed in (float32 for float16/bfloat16): a c that passes as finite but overflows there
    would make every output NaN (c·0 = ∞·0 in the linear regime)."""
    cdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    if not cdt.is_floating_point:
        return
    big = torch.finfo(cdt).max
    for name, v in (("alpha", alpha), ("c", c)):
        if isinstance(v, torch.Tensor):  # checked where no sync or graph break is needed
            if torch.compiler.is_compiling() or v.device.type != "cpu" or v.numel() != 1:
                continue
            v = float(v.detach().reshape(()).item())
        if isinstance(v, numbers.Real) and abs(float(v)) > big:
            raise ValueError(f"{name} = {float(v):g} overflows {cdt} (largest {big:.4g}), the "
                             f"dtype that an input of {dtype} is computed in")


def env_choice(variable: str, choices: tuple[str, ...], default: str) -> str:
    """The value of environment variable ``variable`` (``default`` when unset), which must be
    one of ``choices`` (``ValueError`` naming the variable otherwise)."""
    import os

    value = os.environ.get(variable, default)
    if value not in choices:
        raise ValueError(f"environment variable {variable} must be one of {', '.join(choices)}, "
                         f"got {value!r}")
    return value
