"""Noise annealing (§6.6, continuation): schedules for c and an annealer attached to a model.

The paper anneals c from 30 to 0.5 with c_t = c0 / √(t + 1), t advanced every 200 updates. A
schedule maps the number of updates done to c; :class:`NoiseAnnealer` writes that c into every
noisy module of a model, the way an LR scheduler writes the learning rate into an optimizer::

    annealer = NoiseAnnealer(model, InverseSqrt(c0=30.0, every=200, floor=0.5))
    for batch in data:
        loss(model(batch)).backward(); opt.step()
        annealer.step()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from ._validation import check_nonnegative, check_variant
from .variants import VARIANTS

__all__ = [
    "Constant",
    "Cosine",
    "Exponential",
    "InverseSqrt",
    "Linear",
    "NoiseAnnealer",
    "Schedule",
]


class Schedule(Protocol):
    """c as a function of the number of updates done."""

    def __call__(self, step: int) -> float: ...


def _check_steps(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Constant:
    """c_t = c."""

    c: float

    def __post_init__(self) -> None:
        check_nonnegative("c", self.c)

    def __call__(self, step: int) -> float:
        return float(self.c)


@dataclass(frozen=True)
class InverseSqrt:
    """The paper's schedule (§6.6): c_t = max(floor, c0 / √(t + 1)), t = ⌊step / every⌋.

    The paper anneals "from 30 to 0.5" without saying how c stops at 0.5 (30/√(t+1) only reaches
    it at t = 3599); ``floor`` makes that explicit. ``every`` may be a fraction (t then advances
    several times per update), which compresses the schedule for short runs.

    Args:
        c0: c at step 0 (the paper: 30).
        every: updates per increment of t (the paper: 200).
        floor: lower bound of c. Default 0.5, the paper's final value, so that c never falls
            below it on a long run; pass ``floor=0.0`` for the unbounded c0 / √(t + 1).
    """

    c0: float
    every: float = 200
    floor: float = 0.5

    def __post_init__(self) -> None:
        check_nonnegative("c0", self.c0)
        check_nonnegative("floor", self.floor)
        if not (isinstance(self.every, int | float) and self.every > 0):
            raise ValueError(f"every must be > 0, got {self.every!r}")

    def __call__(self, step: int) -> float:
        t = math.floor(step / self.every + 1e-9)
        return max(float(self.floor), self.c0 / math.sqrt(t + 1))


@dataclass(frozen=True)
class Linear:
    """c goes linearly from c0 to c1 over ``steps`` updates, then stays at c1."""

    c0: float
    c1: float
    steps: int

    def __post_init__(self) -> None:
        check_nonnegative("c0", self.c0)
        check_nonnegative("c1", self.c1)
        _check_steps("steps", self.steps)

    def __call__(self, step: int) -> float:
        f = min(step, self.steps) / self.steps
        return self.c0 + (self.c1 - self.c0) * f


@dataclass(frozen=True)
class Exponential:
    """c_t = max(floor, c0 · gamma^⌊step / every⌋)."""

    c0: float
    gamma: float
    every: int = 1
    floor: float = 0.0

    def __post_init__(self) -> None:
        check_nonnegative("c0", self.c0)
        check_nonnegative("floor", self.floor)
        if not (0.0 < self.gamma <= 1.0):
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")
        _check_steps("every", self.every)

    def __call__(self, step: int) -> float:
        return max(float(self.floor), self.c0 * self.gamma ** (step // self.every))


@dataclass(frozen=True)
class Cosine:
    """Half-cosine from c0 down to c_min over ``steps`` updates, then c_min."""

    c0: float
    c_min: float
    steps: int

    def __post_init__(self) -> None:
        check_nonnegative("c0", self.c0)
        check_nonnegative("c_min", self.c_min)
        _check_steps("steps", self.steps)

    def __call__(self, step: int) -> float:
        f = min(step, self.steps) / self.steps
        return self.c_min + (self.c0 - self.c_min) * 0.5 * (1.0 + math.cos(math.pi * f))


def _first_step_at(schedule: Schedule, c: float, horizon: int = 1 << 40) -> int | None:
    """The first step at which a non-increasing ``schedule`` gives ``c``, or None."""
    if schedule(horizon) > schedule(0):
        return None  # not a decreasing schedule: a c does not say where it is
    lo, hi = 0, horizon
    while lo < hi:  # first step with schedule(step) <= c
        mid = (lo + hi) // 2
        if schedule(mid) <= c:
            hi = mid
        else:
            lo = mid + 1
    return lo if math.isclose(schedule(lo), c, rel_tol=1e-9, abs_tol=1e-12) else None


def noisy_modules(model: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    """Every module of ``model`` whose noise scale can be set (it has ``set_c``)."""
    mods = model.modules() if isinstance(model, nn.Module) else model
    return [m for m in mods if callable(getattr(m, "set_c", None))]


#: Variants annealed by default: those whose c scales a learned σ (σ(x) of Eq. 9, §6.6 anneals
#: NAN/NANIL; and the authors' NANIL σ): NAN, NAH, NANIL, NANIL-authors.
ANNEALED_VARIANTS = tuple(n for n, v in VARIANTS.items() if v.learned_p)


class NoiseAnnealer:
    """Sets c of every noisy module of ``model`` from ``schedule`` after each update.

    By default only the variants whose c scales the learned σ(x) of Eq. 9 are annealed (NAN,
    NAH, NANIL: the paper anneals NAN and NANIL, §6.6). NANI and NANIS modules are skipped: their c
    is the fixed input-noise σ (Table 3 uses σ = 0.05), and a schedule starting at c0 = 30 would
    drown their input. Pass ``variants`` to choose, e.g. ``variants=None`` for every module.

    Args:
        model: a model (its noisy modules are annealed) or an iterable of noisy modules.
        schedule: a :class:`Schedule`, e.g. :class:`InverseSqrt`.
        last_step: number of updates already done (to resume without a state dict). Default:
            0, or, for a model whose c was set since it was built (a checkpoint loaded into it),
            the first step at which the schedule gives that c, with a warning that says how to
            resume exactly.
        variants: the variants to anneal (modules with a ``variant`` attribute outside it are
            left alone; modules without one are always annealed), or ``None`` for all.
            Default ``("NAN", "NAH", "NANIL")``.

    Raises:
        ValueError: if the model contains no noisy module to anneal.
    """

    def __init__(self, model: nn.Module | Iterable[nn.Module], schedule: Schedule,
                 last_step: int = 0,
                 variants: Iterable[str] | None = ANNEALED_VARIANTS) -> None:
        found = noisy_modules(model)
        if variants is None:
            self.variants: tuple[str, ...] | None = None
            self.modules = found
        else:
            self.variants = tuple(check_variant(v) for v in variants)
            self.modules = [m for m in found
                            if getattr(m, "variant", None) in (None, *self.variants)]
        if not self.modules:
            skipped = sorted({str(getattr(m, "variant", "")) for m in found})
            hint = (f" ({len(found)} module(s) of variant {', '.join(skipped)} skipped: pass "
                    f"variants= to anneal them)" if found else "")
            raise ValueError("model contains no noisy module to anneal" + hint)
        self.schedule = schedule
        self.last_step = int(last_step)
        if self.last_step == 0:
            self.last_step = self._resume_from_model()
        self._apply()

    def _resume_from_model(self) -> int:
        """The step to start at when none is given: 0 for a model as built; for a model whose
        c was set since (a checkpoint of an annealed run loaded into it), the first step at
        which the schedule gives that c, with a warning; 0 with a warning if there is none."""
        cs = {float(m.c) for m in self.modules if hasattr(m, "c")}  # type: ignore[arg-type]
        built = {getattr(m, "_c_built", None) for m in self.modules}
        if len(cs) != 1 or cs == built:
            return 0
        c = cs.pop()
        if math.isclose(c, self.schedule(0), rel_tol=1e-9, abs_tol=1e-12):
            return 0
        step = _first_step_at(self.schedule, c)
        how = ("restore the annealer's state_dict (saved beside the model) or pass last_step= "
               "for the exact step")
        if step is None:
            warnings.warn(f"NoiseAnnealer: the model's c = {c:.6g} is not a value of this "
                          f"schedule (c = {self.schedule(0):.6g} at step 0): it was set by "
                          f"something else; starting the schedule at step 0 ({how})",
                          stacklevel=3)
            return 0
        warnings.warn(f"NoiseAnnealer: the model's c = {c:.6g} was set since it was built "
                      f"(a checkpoint of an annealed run?): resuming the schedule at step "
                      f"{step}, the first step with that c ({how})", stacklevel=3)
        return step

    @property
    def c(self) -> float:
        """The c currently written into the modules."""
        return float(self.schedule(self.last_step))

    def _apply(self) -> None:
        c = self.c
        for m in self.modules:
            m.set_c(c)  # type: ignore[operator]

    def step(self) -> float:
        """Advance by one update and return the new c."""
        self.last_step += 1
        self._apply()
        return self.c

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()
