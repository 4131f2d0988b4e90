"""Turn an existing model noisy in one call, and keep weight decay off the learned p."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import rnn
from .modules import (
    LazyNoisyHardSigmoid,
    LazyNoisyHardTanh,
    LazyNoisySigmoid,
    LazyNoisyTanh,
    NoisyActivation,
    NoisyHardSigmoid,
    NoisyHardTanh,
    NoisySigmoid,
    NoisyTanh,
)

__all__ = ["NoisifyReport", "noise_parameters", "noisify", "param_groups", "register_converter"]

Converter = Callable[[nn.Module, str, dict[str, Any]], nn.Module]


#: Private keyword of the built-in converters: one p per feature (lazily sized).
_PER_FEATURE = "_per_feature"


def _activation(hard: type[NoisyActivation], lazy: type[NoisyActivation], variant: str,
                kw: dict[str, Any]) -> nn.Module:
    kw = dict(kw)
    cls = lazy if kw.pop(_PER_FEATURE, False) else hard
    return cls(variant, **kw)  # type: ignore[call-arg]


def _tanh(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    return _activation(NoisyHardTanh, LazyNoisyHardTanh, variant, kw)


def _sigmoid(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    return _activation(NoisyHardSigmoid, LazyNoisyHardSigmoid, variant, kw)


def _hardtanh(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    assert isinstance(m, nn.Hardtanh)
    if (m.min_val, m.max_val) != (-1.0, 1.0):
        raise _Skip(f"Hardtanh({m.min_val}, {m.max_val}) is not the paper's hard-tanh")
    return _tanh(m, variant, kw)


def _elman(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    raise _Skip(f"{type(m).__name__} (Elman RNN) has no noisy counterpart: its nonlinearity runs "
                "inside torch's RNN kernel; use nn.LSTM/nn.GRU or a loop over noisy modules")


class _Skip(Exception):
    """A converter declines a module (the reason goes into the report)."""


# (_PER_FEATURE is not passed on: recurrent units always have one p per unit)
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
    nn.RNN: _elman,
    nn.RNNCell: _elman,
}
_SOFT: dict[type[nn.Module], tuple[type[NoisyActivation], type[NoisyActivation]]] = {
    nn.Tanh: (NoisyTanh, LazyNoisyTanh), nn.Sigmoid: (NoisySigmoid, LazyNoisySigmoid)}
_FUNCTIONAL: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


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


def _floating(m: nn.Module) -> torch.Tensor | None:
    """The first floating-point parameter or buffer of ``m`` (recursively), if any."""
    for t in (*m.parameters(), *m.buffers()):
        if t.is_floating_point():
            return t
    return None


def _factory(m: nn.Module, ancestors: list[nn.Module]) -> dict[str, Any]:
    """device and dtype for the module replacing ``m``: those of its own tensors, else of the
    nearest ancestor that has any (an ``nn.Tanh`` inside a float64 ``nn.Sequential``)."""
    for owner in (m, *reversed(ancestors)):
        t = _floating(owner)
        if t is not None:
            return {"device": t.device, "dtype": t.dtype}
    return {}


def noisify(model: nn.Module, variant: str = "NAH", *, soft: bool = False,
            per_feature: bool = False, trace: bool = False, **kwargs: Any) -> NoisifyReport:
    """Replace ``nn.Tanh``, ``nn.Sigmoid``, ``nn.Hardtanh`` and ``nn.LSTM``/``nn.GRU`` by noisy ones.

    The model is changed in place (weights of converted recurrent layers are kept); if ``model``
    itself is converted, the new root is ``report.model``. New modules get the device and dtype
    of the module they replace (of its nearest parent with parameters or buffers, for a module
    without any), unless ``device``/``dtype`` are given. ``nn.RNN``/``nn.RNNCell`` have no noisy
    counterpart and are listed in ``report.skipped``.

    Activations called as functions inside ``forward`` (``torch.tanh(x)``, ``torch.sigmoid``,
    ``F.tanh``, ``F.sigmoid``, ``x.tanh()``, ``x.sigmoid()``) are not modules and are only
    converted with ``trace=True``: the model is then traced with :mod:`torch.fx` (noisy modules
    and recurrent layers are kept as leaves) and each such call becomes a call of a new noisy
    module, registered in the returned :class:`torch.fx.GraphModule` (``report.model``) under the
    name listed in ``report.replaced``. Tracing needs a ``forward`` without data-dependent
    Python control flow; in-place calls (``x.tanh_()``) are not converted.

    Args:
        model: the model.
        variant: the paper's variant for every new unit.
        soft: keep the soft shapes (:class:`NoisyTanh`, :class:`NoisySigmoid`) instead of the
            hard ones.
        per_feature: give each new activation one p per feature along ``dim`` (keyword, default
            1 as ``nn.PReLU``; ``dim=-1`` for (batch, time, features)) instead of one scalar p.
            The size is taken from the first input (lazy modules, as ``nn.LazyLinear``): run
            one forward pass before building the optimizer. Recurrent layers always have one p
            per unit.
        trace: also convert functional calls, by tracing with :mod:`torch.fx` (see above).
        **kwargs: passed to each new module (``alpha``, ``c``, ``clip_output``, ...; recurrent
            layers take their own keywords, see :class:`noisyact.NoisyLSTM`).

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
    if per_feature and "num_parameters" in kwargs:
        raise ValueError("per_feature=True sizes p from the first input; do not also give "
                         "num_parameters")

    def convert(m: nn.Module, name: str, ancestors: list[nn.Module]) -> nn.Module | None:
        if isinstance(m, NoisyActivation | rnn.NoisyLSTM | rnn.NoisyGRU | rnn.NoisyLSTMCell
                      | rnn.NoisyGRUCell):
            return None
        if type(m) not in _CONVERTERS and not (soft and type(m) in _SOFT):
            return None
        kw = {**_factory(m, ancestors), **kwargs}
        if soft and type(m) in _SOFT:
            new: nn.Module = _SOFT[type(m)][per_feature](variant, **kw)
        else:
            conv = _CONVERTERS[type(m)]
            if per_feature and conv in (_tanh, _sigmoid, _hardtanh):
                kw[_PER_FEATURE] = True
            try:
                new = conv(m, variant, kw)
            except _Skip as why:
                report.skipped.append((name, str(why)))
                return None
        new.train(m.training)
        return new

    def walk(parent: nn.Module, prefix: str, ancestors: list[nn.Module]) -> None:
        for child_name, child in list(parent.named_children()):
            full = f"{prefix}.{child_name}" if prefix else child_name
            new = convert(child, full, [*ancestors, parent])
            if new is None:
                walk(child, full, [*ancestors, parent])
            else:
                setattr(parent, child_name, new)
                report.replaced.append((full, type(child).__name__, type(new).__name__))

    root = convert(model, "", [])
    if root is not None:
        report.replaced.append(("", type(model).__name__, type(root).__name__))
        report.model = root
    else:
        walk(model, "", [])
    if trace:
        _convert_functional(report, lambda m, name, anc: convert(m, name, anc))
    return report


class _LeafTracer(torch.fx.Tracer):
    """Keeps noisy modules and recurrent layers as leaves (their forward is not traceable)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, NoisyActivation | rnn.NoisyLSTM | rnn.NoisyGRU | rnn.NoisyLSTMCell
                      | rnn.NoisyGRUCell):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _functional_kind(node: torch.fx.Node) -> str | None:
    """"tanh"/"sigmoid" for a call the tracer recorded as such (one tensor argument), else None."""
    if node.op == "call_function":
        kind = {torch.tanh: "tanh", torch.sigmoid: "sigmoid", torch.special.expit: "sigmoid",
                torch.nn.functional.tanh: "tanh",
                torch.nn.functional.sigmoid: "sigmoid"}.get(node.target)  # type: ignore[call-overload]
        label = f"torch.{kind}" if kind else None
    elif node.op == "call_method" and node.target in _FUNCTIONAL:
        kind = str(node.target)
        label = f"Tensor.{kind}"
    else:
        return None
    if kind is None or len(node.args) != 1 or node.kwargs:
        return None
    return label


def _convert_functional(report: NoisifyReport,
                        convert: Callable[[nn.Module, str, list[nn.Module]], nn.Module | None],
                        ) -> None:
    """Trace ``report.model`` with torch.fx and turn functional tanh/sigmoid calls into noisy
    modules (see :func:`noisify`)."""
    model = report.model
    tracer = _LeafTracer()
    graph = tracer.trace(model)
    gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    count = 0
    for node in list(graph.nodes):
        label = _functional_kind(node)
        if label is None:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        owner_path = next(reversed(stack.values()))[0] if stack else ""
        owner = model.get_submodule(owner_path) if owner_path else model
        ancestors = [model] if owner is model else [model, owner]
        name = f"noisy_{node.name}"
        while hasattr(gm, name):
            name += "_"
        new = convert(_FUNCTIONAL[label.split(".")[1]](), name, ancestors)
        if new is None:
            continue
        new.train(model.training)
        gm.add_submodule(name, new)
        with graph.inserting_before(node):
            call = graph.call_module(name, node.args)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        where = f" in {owner_path}" if owner_path else ""
        report.replaced.append((name, label + where, type(new).__name__))
        count += 1
    if count:
        graph.lint()
        gm.recompile()
        gm.train(model.training)
        report.model = gm


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
