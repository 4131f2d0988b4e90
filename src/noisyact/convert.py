"""Turn an existing model noisy in one call, and keep weight decay off the learned p."""

from __future__ import annotations

import difflib
import functools
import inspect
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
    LazyNoisyTorchHardsigmoid,
    NoisyActivation,
    NoisyHardSigmoid,
    NoisyHardswish,
    NoisyHardTanh,
    NoisySigmoid,
    NoisyTanh,
    NoisyTorchHardsigmoid,
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


def _torch_hardsigmoid(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    """nn.Hardsigmoid keeps torch's function (slope 1/6), as a generic saturating unit."""
    return _activation(NoisyTorchHardsigmoid, LazyNoisyTorchHardsigmoid, variant, kw)


def _hardswish(m: nn.Module, variant: str, kw: dict[str, Any]) -> nn.Module:
    """nn.Hardswish = x · hardsigmoid(x): the gate becomes noisy (torch's slope 1/6)."""
    return NoisyHardswish(gate=_torch_hardsigmoid(m, variant, kw))


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
    nn.Hardsigmoid: _torch_hardsigmoid,
    nn.Hardswish: _hardswish,
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
    """Teach :func:`noisify` to replace modules of type ``cls`` (and of its subclasses that keep
    its ``forward``)."""
    _CONVERTERS[cls] = converter


def _converter_for(m: nn.Module, soft: bool) -> tuple[Converter | None, str | None]:
    """(converter, None) for a module noisify replaces, (None, reason) for a subclass of a
    convertible class with its own ``forward`` (reported as skipped), (None, None) otherwise."""
    table: dict[type[nn.Module], Any] = {**_CONVERTERS, **(_SOFT if soft else {})}
    cls = type(m)
    if cls in table:
        return table[cls], None
    for base in cls.__mro__[1:]:
        if base in table:
            if cls.forward is base.forward:  # a subclass that only adds to the parent
                return table[base], None
            return None, (f"{cls.__name__} subclasses {base.__name__} with its own forward, "
                          "which a noisy module would not run; convert its parts, or "
                          "register_converter() for it")
    return None, None


@functools.cache
def _activation_keywords() -> frozenset[str]:
    """The keywords of the noisy activations (for the error on a misspelled one)."""
    return frozenset(k for cls in (NoisyHardTanh, NoisyActivation)
                     for k in inspect.signature(cls.__init__).parameters
                     if k not in ("self", "fn", "variant"))


def _check_keywords(kwargs: dict[str, Any]) -> None:
    known = sorted(_activation_keywords() | set(_RNN_KEYS))
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"noisify got an unknown keyword {key!r}{hint} (it passes on "
                             f"{', '.join(known)})")


@dataclass
class NoisifyReport:
    """What :func:`noisify` did: the (possibly new) root model and one row per module."""

    model: nn.Module
    replaced: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: with ``trace=True``: the parts traced with torch.fx (``""``: the whole model) and the
    #: parts that could not be traced, with the reason (their functional calls stay as they are)
    traced: list[str] = field(default_factory=list)
    untraced: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"noisify: replaced {len(self.replaced)} module(s)"]
        lines += [f"  {name or '<root>'}: {old} -> {new}" for name, old, new in self.replaced]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        lines += [f"  traced {name or '<root>'}" for name in self.traced]
        lines += [f"  not traced {name or '<root>'}: {why}" for name, why in self.untraced]
        if not self.replaced and not self.skipped:
            lines.append("  (nothing to convert: noisify replaces nn.Tanh, nn.Sigmoid, "
                         "nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.LSTM, nn.GRU and their "
                         "cells; functional calls with trace=True; register_converter() for "
                         "other modules)")
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


_NOISY = (NoisyActivation, NoisyHardswish, rnn.NoisyLSTM, rnn.NoisyGRU, rnn.NoisyLSTMCell,
          rnn.NoisyGRUCell)


def noisify(model: nn.Module, variant: str = "NAH", *, soft: bool = False,
            keep_function: bool = False, per_feature: bool = False, trace: bool = False,
            **kwargs: Any) -> NoisifyReport:
    """Replace saturating activations and recurrent layers of ``model`` by noisy ones.

    Converted: ``nn.Tanh``, ``nn.Sigmoid``, ``nn.Hardtanh`` (to the paper's hard units),
    ``nn.Hardsigmoid`` and ``nn.Hardswish`` (torch's own hard-sigmoid, slope 1/6, as a generic
    saturating unit: :class:`NoisyTorchHardsigmoid`, :class:`NoisyHardswish`),
    ``nn.LSTM``/``nn.GRU`` and their cells (weights kept), and subclasses of these that keep
    their parent's ``forward`` (e.g. a library's ``class LSTM(nn.LSTM)`` that only adds
    arguments). A subclass with its own ``forward`` and ``nn.RNN`` are listed in
    ``report.skipped`` with the reason.

    The conversion is all or nothing: if it fails (a bad keyword, a converter's error), the model
    is left exactly as it was. Otherwise it is changed in place; if ``model`` itself is
    converted, the new root is ``report.model``. New modules get the device and dtype of the
    module they replace (of its nearest parent with parameters or buffers, for a module without
    any), unless ``device``/``dtype`` are given.

    Activations called as functions inside ``forward`` (``torch.tanh(x)``, ``torch.sigmoid``,
    ``F.tanh``, ``F.sigmoid``, ``x.tanh()``, ``x.sigmoid()``) are not modules and are only
    converted with ``trace=True``: the model is traced with :mod:`torch.fx` (noisy modules and
    recurrent layers are kept as leaves) and each such call becomes a call of a new noisy module.
    Where the whole model cannot be traced (data-dependent control flow, as in most
    transformers), its largest submodules that can are traced instead; a traced part that holds
    such calls is replaced by its :class:`torch.fx.GraphModule`. ``report.traced`` and
    ``report.untraced`` (with the reason) say which parts were which.

    Args:
        model: the model.
        variant: the paper's variant for every new unit.
        soft: keep the soft shapes (:class:`NoisyTanh`, :class:`NoisySigmoid`) instead of the
            hard ones.
        keep_function: keep the function of a pretrained model: soft shapes for tanh/sigmoid,
            torch's hard-sigmoid for ``nn.Hardsigmoid``/``nn.Hardswish``, and α = 1 (unless
            ``alpha`` is given), so that in eval a NAN model computes what the original did
            (NAH adds the mean of its half-normal noise, Eq. 13). Recurrent layers, whose noisy
            units are hard, are skipped with that reason.
        per_feature: give each new activation one p per feature along ``dim`` (keyword, default
            1 as ``nn.PReLU``; ``dim=-1`` for (batch, time, features)) instead of one scalar p.
            The size is taken from the first input (lazy modules, as ``nn.LazyLinear``): run
            one forward pass before building the optimizer. Recurrent layers always have one p
            per unit.
        trace: also convert functional calls, by tracing with :mod:`torch.fx` (see above).
        **kwargs: passed to each new module (``alpha``, ``c``, ``clip_output``, ...; recurrent
            layers take their own keywords, see :class:`noisyact.NoisyLSTM`). An unknown
            keyword is a ``ValueError`` that names it.

    Returns:
        A :class:`NoisifyReport`; ``print(report)`` lists what was replaced.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Sigmoid())
        >>> print(noisify(net, "NAN", c=0.5))
        noisify: replaced 2 module(s)
          1: Tanh -> NoisyHardTanh
          3: Sigmoid -> NoisyHardSigmoid
    """
    _check_keywords(kwargs)
    if per_feature and "num_parameters" in kwargs:
        raise ValueError("per_feature=True sizes p from the first input; do not also give "
                         "num_parameters")
    if keep_function:
        soft = True
        kwargs = {"alpha": 1.0, **kwargs}
    report = NoisifyReport(model)
    undo: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, name, old child), in order

    def convert(m: nn.Module, name: str, ancestors: list[nn.Module]) -> nn.Module | None:
        if isinstance(m, _NOISY):
            return None
        conv, why_not = _converter_for(m, soft)
        if conv is None:
            if why_not:
                report.skipped.append((name, why_not))
            return None
        if keep_function and conv is _recurrent:
            report.skipped.append((name, f"{type(m).__name__}: keep_function keeps the model's "
                                   "function, and the units of a noisy recurrent layer are hard"))
            return None
        kw = {**_factory(m, ancestors), **kwargs}
        if conv is not _recurrent:  # the recurrent layers' own keywords are not for activations
            kw = {k: v for k, v in kw.items() if k in _activation_keywords()}
        if conv in _SOFT.values():
            new: nn.Module = conv[per_feature](variant, **kw)
        else:
            if per_feature and conv in (_tanh, _sigmoid, _hardtanh, _torch_hardsigmoid,
                                        _hardswish):
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
                undo.append((parent, child_name, child))
                setattr(parent, child_name, new)
                report.replaced.append((full, type(child).__name__, type(new).__name__))

    try:
        root = convert(model, "", [])
        if root is not None:
            report.replaced.append(("", type(model).__name__, type(root).__name__))
            report.model = root
        else:
            walk(model, "", [])
        if trace:
            _trace_and_convert(report, convert, undo)
    except BaseException:
        for parent, child_name, old in reversed(undo):  # all or nothing
            setattr(parent, child_name, old)
        raise
    return report


class _LeafTracer(torch.fx.Tracer):
    """Keeps noisy modules and recurrent layers as leaves (their forward is not traceable)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _NOISY):
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


def _why(exc: BaseException) -> str:
    """The first line of a tracing error, short enough for a report line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _trace_and_convert(report: NoisifyReport,
                       convert: Callable[[nn.Module, str, list[nn.Module]], nn.Module | None],
                       undo: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Convert functional tanh/sigmoid calls (see :func:`noisify`): trace the model, or where
    it cannot be traced the largest submodules that can."""
    root = report.model

    def visit(m: nn.Module, path: str, ancestors: list[nn.Module],
              parent: nn.Module | None) -> None:
        tracer = _LeafTracer()
        children = [(n, c) for n, c in m.named_children() if not isinstance(c, _NOISY)]

        def visit_children() -> None:
            for name, child in children:
                visit(child, f"{path}.{name}" if path else name, [*ancestors, m], m)

        if isinstance(m, nn.ModuleList | nn.ModuleDict):
            return visit_children()  # containers: no forward of their own
        if parent is not None and tracer.is_leaf_module(m, path) and not children:
            return  # torch's own modules (nn.Linear, ...): no forward code of the model's own
        try:
            graph = tracer.trace(m)
        except Exception as exc:  # torch.fx's errors are of every type
            report.untraced.append((path, _why(exc)))
            return visit_children()
        report.traced.append(path)
        gm = _convert_graph(m, tracer, graph, path, ancestors, convert, report)
        if gm is None:
            return
        if parent is None:
            report.model = gm
        else:
            name = path.rsplit(".", 1)[-1]
            undo.append((parent, name, m))
            setattr(parent, name, gm)

    # an untraced part's own forward keeps its functional calls; its children were tried apart
    visit(root, "", [], None)


def _convert_graph(m: nn.Module, tracer: torch.fx.Tracer, graph: torch.fx.Graph, path: str,
                   ancestors: list[nn.Module],
                   convert: Callable[[nn.Module, str, list[nn.Module]], nn.Module | None],
                   report: NoisifyReport) -> torch.fx.GraphModule | None:
    """The traced ``m`` with its functional tanh/sigmoid calls as noisy modules, or None if it
    has none."""
    gm = torch.fx.GraphModule(tracer.root, graph, type(m).__name__)
    count = 0
    for node in list(graph.nodes):
        label = _functional_kind(node)
        if label is None:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        owner_path = next(reversed(stack.values()))[0] if stack else ""
        owner = m.get_submodule(owner_path) if owner_path else m
        chain = [*ancestors, m] if owner is m else [*ancestors, m, owner]
        name = f"noisy_{node.name}"
        while hasattr(gm, name):
            name += "_"
        full = f"{path}.{name}" if path else name
        new = convert(_FUNCTIONAL[label.split(".")[1]](), full, chain)
        if new is None:
            continue
        new.train(m.training)
        gm.add_submodule(name, new)
        with graph.inserting_before(node):
            call = graph.call_module(name, node.args)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        inner = ".".join(x for x in (path, owner_path) if x)
        where = f" in {inner}" if inner else ""
        report.replaced.append((full, label + where, type(new).__name__))
        count += 1
    if not count:
        return None
    graph.lint()
    gm.recompile()
    gm.train(m.training)
    return gm


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
