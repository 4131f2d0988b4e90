"""Turn an existing model noisy in one call, and keep weight decay off the learned p."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from . import rnn
from .modules import NoisyActivation, NoisyHardSigmoid, NoisyHardTanh, NoisySigmoid, NoisyTanh

__all__ = ["NoisifyReport", "noise_parameters", "noisify", "param_groups", "register_converter"]

Converter = Callable[[nn.Module, str, dict[str, Any]], nn.Module]


def _tanh(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    return NoisyHardTanh(variant, **kw)


def _sigmoid(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    return NoisyHardSigmoid(variant, **kw)


def _hardtanh(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    assert isinstance(m, nn.Hardtanh)
    if (m.min_val, m.max_val) != (-1.0, 1.0):
        raise _Skip(f"Hardtanh({m.min_val}, {m.max_val}) is not the paper's hard-tanh")
    return NoisyHardTanh(variant, **kw)


class _Skip(Exception):
    """A converter declines a module (the reason goes into the report)."""


_RNN_KEYS = ("gate_variant", "unit_variant", "gate_alpha", "unit_alpha", "gate_c", "unit_c",
             "generator", "clip_output", "gate_clip_output", "unit_clip_output")


def _recurrent(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    """nn.LSTM/GRU(Cell) -> noisy counterpart with the same weights; α, c go to every unit."""
    rkw: dict[str, Any] = {k: v for k, v in kw.items() if k in _RNN_KEYS}
    for key in ("alpha", "c"):
        if key in kw:
            rkw.setdefault(f"gate_{key}", kw[key])
            rkw.setdefault(f"unit_{key}", kw[key])
    if getattr(m, "proj_size", 0):
        raise _Skip("LSTM with proj_size is not supported")
    return rnn.from_torch(m, variant=variant, **rkw)  # type: ignore[arg-type]


_CONVERTERS: dict[type[nn.Module], Converter] = {
    nn.Tanh: _tanh,
    nn.Sigmoid: _sigmoid,
    nn.Hardtanh: _hardtanh,
    nn.LSTM: _recurrent,
    nn.GRU: _recurrent,
    nn.LSTMCell: _recurrent,
    nn.GRUCell: _recurrent,
}
_SOFT: dict[type[nn.Module], type[NoisyActivation]] = {nn.Tanh: NoisyTanh, nn.Sigmoid: NoisySigmoid}


def register_converter(cls: type[nn.Module], converter: Converter) -> None:
    """Teach :func:`noisify` to replace modules of type ``cls`` (exact type match)."""
    _CONVERTERS[cls] = converter


@dataclass
class NoisifyReport:
    """What :func:`noisify` did: the (possibly new) root model and one row per module."""

    model: nn.Module
    replaced: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"noisify: replaced {len(self.replaced)} module(s)"]
        lines += [f"  {name or '<root>'}: {old} -> {new}" for name, old, new in self.replaced]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def noisify(model: nn.Module, variant: str = "NAH", *, soft: bool = False,
            **kwargs: Any) -> NoisifyReport:
    """Replace ``nn.Tanh``, ``nn.Sigmoid``, ``nn.Hardtanh`` and ``nn.LSTM``/``nn.GRU`` by noisy ones.

    The model is changed in place (weights of converted recurrent layers are kept); if ``model``
    itself is converted, the new root is ``report.model``. Activations called as functions inside
    ``forward`` (``torch.tanh(x)``) cannot be seen and are not converted.

    Args:
        model: the model.
        variant: the paper's variant for every new unit.
        soft: keep the soft shapes (:class:`NoisyTanh`, :class:`NoisySigmoid`) instead of the
            hard ones.
        **kwargs: passed to each new module (``alpha``, ``c``, ...; recurrent layers take their
            own keywords, see :class:`noisyact.NoisyLSTM`).

    Returns:
        A :class:`NoisifyReport`; ``print(report)`` lists what was replaced.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Sigmoid())
        >>> print(noisify(net, "NAN", c=0.5))
        noisify: replaced 2 module(s)
          1: Tanh -> NoisyHardTanh
          3: Sigmoid -> NoisyHardSigmoid
    """
    report = NoisifyReport(model)

    def convert(m: nn.Module, name: str) -> nn.Module | None:
        if isinstance(m, NoisyActivation | rnn.NoisyLSTM | rnn.NoisyGRU | rnn.NoisyLSTMCell
                      | rnn.NoisyGRUCell):
            return None
        if soft and type(m) in _SOFT:
            return _SOFT[type(m)](variant, **kwargs)
        conv = _CONVERTERS.get(type(m))
        if conv is None:
            return None
        try:
            new = conv(m, variant, kwargs)
        except _Skip as why:
            report.skipped.append((name, str(why)))
            return None
        new.train(m.training)
        return new

    def walk(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            full = f"{prefix}.{child_name}" if prefix else child_name
            new = convert(child, full)
            if new is None:
                walk(child, full)
            else:
                setattr(parent, child_name, new)
                report.replaced.append((full, type(child).__name__, type(new).__name__))

    root = convert(model, "")
    if root is not None:
        report.replaced.append(("", type(model).__name__, type(root).__name__))
        report.model = root
    else:
        walk(model, "")
    return report


def noise_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The learned p of every noisy unit in ``model`` (each once)."""
    seen: set[int] = set()
    for m in model.modules():
        p = getattr(m, "p", None) if isinstance(m, NoisyActivation) else None
        if isinstance(p, nn.Parameter) and id(p) not in seen:
            seen.add(id(p))
            yield p


def param_groups(model: nn.Module, weight_decay: float = 0.0,
                 **group_options: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups with every p in a group without weight decay.

    As for ``nn.PReLU``'s slope, decaying p towards 0 would shrink σ(x) (Eq. 9) and silence the
    noise. Example: ``torch.optim.AdamW(param_groups(model, weight_decay=0.01), lr=1e-3)``.
    """
    noise_ids = {id(p) for p in noise_parameters(model)}
    others = [p for p in model.parameters() if id(p) not in noise_ids]
    noisy = [p for p in model.parameters() if id(p) in noise_ids]
    groups = [{"params": others, "weight_decay": weight_decay, **group_options}]
    if noisy:
        groups.append({"params": noisy, "weight_decay": 0.0, **group_options})
    return groups
