"""Seeing the noise: per-unit statistics of a training model, and a tracker for any loop.

A noisy unit adds noise only where its input saturates (∆ = h(x) − u(x) ≠ 0, Eq. 8). A model
converted with :func:`noisyact.noisify` whose pre-activations stay in the linear regime therefore
trains without any noise, and nothing else tells. :func:`monitor` attaches forward hooks (off
until called; remove them with :meth:`NoiseMonitor.remove` or a ``with`` block) that record, per
noisy unit and in training mode only:

- ``saturated``: the share of inputs in saturation (∆ ≠ 0);
- ``mean_sigma``: the mean noise scale σ over the inputs (Eq. 9 for NAN, NAH and NANIL; c for
  NANI; c where saturated for NANIS; not defined for NANIL-authors, whose σ depends on ξ);
- ``moved``: the share of outputs that the noise moved by more than ``moved_by`` (0.001) from
  the unit's noiseless test-time value (what the noise actually changed);
- ``c``: the unit's current c.

Units inside :class:`~noisyact.NoisyLSTM`/:class:`~noisyact.NoisyGRU` are observed on sampled
calls of the layer: those calls run the reference per-step loop (a unit with forward hooks is
run through its module), the others stay on the fused path. ``every`` sets the sampling.

:class:`NoiseTracker` is the plain-loop counterpart of the Lightning callback
(:mod:`noisyact.integrations.lightning`): it steps a :class:`~noisyact.NoiseAnnealer`, keeps its
state for checkpoints and hands the monitor's statistics to a logging function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .anneal import NoiseAnnealer, Schedule
from .functional import broadcast_p, noise_scale, saturation
from .modules import NoisyActivation
from .variants import get_variant

__all__ = ["NoiseMonitor", "NoiseTracker", "UnitStats", "monitor"]


@dataclass
class UnitStats:
    """What one noisy unit saw since the last reset (in training mode)."""

    calls: int = 0
    elements: int = 0
    saturated_sum: float = 0.0
    sigma_sum: float = math.nan
    moved_sum: float = 0.0
    c: float = math.nan

    @property
    def saturated(self) -> float:
        """The share of inputs in saturation (∆ ≠ 0)."""
        return self.saturated_sum / self.elements if self.elements else math.nan

    @property
    def mean_sigma(self) -> float:
        """The mean noise scale σ over the inputs (NaN where σ is not defined)."""
        return self.sigma_sum / self.elements if self.elements else math.nan

    @property
    def moved(self) -> float:
        """The share of outputs that the noise moved from the noiseless value."""
        return self.moved_sum / self.elements if self.elements else math.nan

    def as_dict(self) -> dict[str, float]:
        return {"saturated": self.saturated, "mean_sigma": self.mean_sigma,
                "moved": self.moved, "c": self.c, "calls": float(self.calls)}


def _sigma(unit: NoisyActivation, x: Tensor, delta: Tensor) -> Tensor | None:
    """σ of the unit's variant at x (None where it depends on ξ)."""
    v = get_variant(unit.variant)
    c = unit.c.to(x.dtype)
    if v.sigma == "fixed":
        return c.expand_as(x)
    if v.sigma == "saturated":
        return c * (delta != 0).to(x.dtype)
    if v.sigma == "eq9":
        assert unit.p is not None
        return noise_scale(delta, broadcast_p(unit.p.detach(), x, unit.dim).to(x.dtype), c)
    return None


class NoiseMonitor:
    """Forward hooks that record :class:`UnitStats` per noisy unit of ``model``.

    Args:
        model: the model (every :class:`~noisyact.NoisyActivation` in it, those of the noisy
            recurrent layers included).
        every: record one call in ``every`` per unit (per recurrent layer for the units inside
            one), to keep the cost low on long runs. Default 1: every call.
        moved_by: an output counts as moved by the noise when it differs from the noiseless
            value by more than this (default 0.001: σ of Eq. 9 is tiny next to the threshold,
            and the training and eval computations differ by rounding).

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 8), noisyact.NoisyHardTanh("NAN"))
        >>> with noisyact.monitor(model) as mon:
        ...     _ = model(3 * torch.randn(16, 4))
        >>> stats = mon.stats()["1"]
        >>> 0 <= stats.saturated <= 1 and stats.calls == 1
        True
    """

    def __init__(self, model: nn.Module, every: int = 1, moved_by: float = 1e-3) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if not (isinstance(moved_by, int | float) and moved_by > 0):
            raise ValueError(f"moved_by must be a number > 0, got {moved_by!r}")
        self.every, self.moved_by = every, float(moved_by)
        self._stats: dict[str, UnitStats] = {}
        self._handles: list[Any] = []
        self._seen: dict[str, int] = {}
        from .rnn import NoisyGRU, NoisyLSTM

        inside: set[int] = set()
        for name, m in model.named_modules():
            if isinstance(m, NoisyLSTM | NoisyGRU):
                units = [(f"{name}.{n}" if name else n, u) for n, u in m.named_modules()
                         if isinstance(u, NoisyActivation)]
                inside.update(id(u) for _, u in units)
                self._watch_layer(name, m, units)
        for name, m in model.named_modules():
            if isinstance(m, NoisyActivation) and id(m) not in inside:
                self._stats[name] = UnitStats(c=float(m.c))
                self._handles.append(m.register_forward_hook(self._sampled_hook(name)))
        if not self._stats:
            raise ValueError("model contains no noisy unit to monitor")

    # -- hooks --
    def _sampled_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not module.training:
                return
            n = self._seen.get(name, 0)
            self._seen[name] = n + 1
            if n % self.every == 0:
                self._record(name, module, inputs[0], output)  # type: ignore[arg-type]

        return hook

    def _watch_layer(self, name: str, layer: nn.Module,
                     units: list[tuple[str, NoisyActivation]]) -> None:
        for unit_name, u in units:
            self._stats[unit_name] = UnitStats(c=float(u.c))
        attached: list[Any] = []

        def record(unit_name: str) -> Callable[..., None]:
            def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
                self._record(unit_name, module, inputs[0], output)  # type: ignore[arg-type]

            return hook

        def before(module: nn.Module, args: Any) -> None:
            n = self._seen.get(name, 0)
            self._seen[name] = n + 1
            if module.training and n % self.every == 0:  # this call runs through the units
                attached.extend(u.register_forward_hook(record(un)) for un, u in units)

        def after(module: nn.Module, args: Any, output: Any) -> None:
            while attached:
                attached.pop().remove()

        self._handles += [layer.register_forward_pre_hook(before),
                          layer.register_forward_hook(after)]

    @torch.no_grad()
    def _record(self, name: str, unit: NoisyActivation, x: Tensor, y: Tensor) -> None:
        x = x.detach()
        xf = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        delta = saturation(unit.fn.h(xf), unit.fn.u(xf))
        st = self._stats[name]
        st.calls += 1
        st.elements += x.numel()
        st.saturated_sum += float((delta != 0).sum())
        sigma = _sigma(unit, xf, delta)
        if sigma is not None:
            st.sigma_sum = (0.0 if math.isnan(st.sigma_sum) else st.sigma_sum) + float(sigma.sum())
        moved = (y.detach() - unit._expectation(x)).abs() > self.moved_by
        st.moved_sum += float(moved.sum())
        st.c = float(unit.c)

    # -- results --
    def stats(self) -> dict[str, UnitStats]:
        """Per unit (its name in the model), what it saw since the last :meth:`reset`."""
        return dict(self._stats)

    def as_dict(self, prefix: str = "noise/") -> dict[str, float]:
        """Flat ``{prefix}{unit}/{statistic}`` values for a logger (units that saw no call in
        training mode left out)."""
        return {f"{prefix}{name}/{k}": v for name, st in self._stats.items() if st.calls
                for k, v in st.as_dict().items() if k != "calls" and not math.isnan(v)}

    def reset(self) -> None:
        """Start counting again (c is kept)."""
        for name, st in self._stats.items():
            self._stats[name] = UnitStats(c=st.c)

    def remove(self) -> None:
        """Remove every hook (the model is as before :func:`monitor`)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> NoiseMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __str__(self) -> str:
        lines = [f"{'unit':40s} {'calls':>6s} {'saturated':>9s} {'mean σ':>8s} {'moved':>7s} "
                 f"{'c':>8s}"]
        for name, st in self._stats.items():
            lines.append(f"{name or '<root>':40s} {st.calls:6d} {st.saturated:9.3f} "
                         f"{st.mean_sigma:8.4f} {st.moved:7.3f} {st.c:8.4g}")
        silent = [n for n, st in self._stats.items() if st.calls and st.moved_sum == 0]
        if silent:
            lines.append(f"{len(silent)} unit(s) saw no noise: no output moved (inputs that "
                         "never or barely saturate; larger pre-activations or c, or train "
                         "longer)")
        return "\n".join(lines)


def monitor(model: nn.Module, every: int = 1, moved_by: float = 1e-3) -> NoiseMonitor:
    """Attach a :class:`NoiseMonitor` to ``model`` (see the module documentation)."""
    return NoiseMonitor(model, every, moved_by)


class NoiseTracker:
    """Noise annealing and monitoring for a hand-written loop, with state for checkpoints.

    Call :meth:`step` after each optimizer step: it advances the annealer (if a schedule is
    given), and every ``log_every`` steps hands the monitor's statistics and c to ``log`` (e.g.
    ``lambda d, step: writer.add_scalars(...)``) and resets them. :meth:`state_dict` holds the
    annealer's step: save it beside the model, and :meth:`load_state_dict` it on a restart so
    that the schedule goes on where it was.

    Args:
        model: the model.
        schedule: a :class:`~noisyact.anneal.Schedule` for c, or None (monitoring only).
        log_every: steps between two calls of ``log`` (0: no monitor, nothing logged).
        log: ``log(values, step)`` with a flat dict of numbers.
        every: the monitor's sampling (:class:`NoiseMonitor`).
        **annealer: passed to :class:`~noisyact.NoiseAnnealer` (``variants=``).
    """

    def __init__(self, model: nn.Module, schedule: Schedule | None = None, *,
                 log_every: int = 50, log: Callable[[dict[str, float], int], None] | None = None,
                 every: int = 1, **annealer: Any) -> None:
        if not isinstance(log_every, int) or log_every < 0:
            raise ValueError(f"log_every must be an int >= 0, got {log_every!r}")
        self.annealer = NoiseAnnealer(model, schedule, **annealer) if schedule is not None \
            else None
        self.monitor = NoiseMonitor(model, every) if log_every else None
        self.log_every, self.log = log_every, log
        self.steps = 0

    def step(self) -> dict[str, float] | None:
        """After an optimizer step: anneal, and every ``log_every`` steps return (and ``log``)
        the statistics since the last time."""
        self.steps += 1
        values: dict[str, float] = {}
        if self.annealer is not None:
            self.annealer.step()
        if not (self.monitor and self.steps % self.log_every == 0):
            return None
        values.update(self.monitor.as_dict())
        if self.annealer is not None:
            values["noise/c"] = self.annealer.c
        self.monitor.reset()
        if self.log is not None:
            self.log(values, self.steps)
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps,
                "annealer": None if self.annealer is None else self.annealer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        if self.annealer is not None and state.get("annealer") is not None:
            self.annealer.load_state_dict(state["annealer"])

    def remove(self) -> None:
        """Remove the monitor's hooks."""
        if self.monitor is not None:
            self.monitor.remove()
