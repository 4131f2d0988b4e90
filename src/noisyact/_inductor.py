r"""One kernel compiled by Inductor: traced with symbolic sizes, compiled without Dynamo, called
directly (private; :mod:`noisyact.compiler` decides when and for which signature).

The kernel is traced with :func:`torch.fx.experimental.proxy_tensor.make_fx` (symbolic sizes,
duck sizing off so that sizes which happen to be equal while tracing stay independent) and
compiled by Inductor with ``torch._inductor.standalone_compile``, with a C++ wrapper where it
builds (else Inductor's Python one) and without size asserts. Outside autograd (grad mode off, as
in the recurrent layers' forward and backward functions) the compiled module is called directly;
with grad mode on, through the artifact's wrappers. A direct call costs a few µs;
``torch.compile``'s frame evaluation, guards and wrappers cost 40-60 µs a call on a CPU, which a
recurrence calling two kernels per time step would pay thousands of times per batch. The price
is paid once per signature and process: 1-5 s of tracing even when Inductor's cache holds the
code. With a torch that lacks ``standalone_compile``, :class:`Dynamo` compiles the kernel with
``torch.compile(dynamic=True)`` instead.

These are the private Inductor entry points the package uses (``standalone_compile``,
``compile_fx_inner`` and its ``current_callable``, the ``use_duck_shape`` switch); the torch range
in ``pyproject.toml`` is the one they are tested with, and a failure falls back to eager kernels.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._kernel_args import flatten, gatherer, map_tensors, unflatten

__all__ = ["INLINE_OPTIONS", "Dynamo", "Standalone", "has_standalone_compile"]

#: Inductor settings for kernels that should be one loop nest: never store an intermediate (the
#: heuristics that do so on reuse or on long expressions would add a full-size buffer and a
#: second pass over memory, and the counter noise makes every expression long).
INLINE_OPTIONS = {"realize_opcount_threshold": 1 << 20, "realize_acc_reads_threshold": 1 << 20,
                  "realize_reads_threshold": 1 << 20}


#: Inductor settings for every kernel. ``cpp.min_chunk_size`` 1: a CPU loop is an OpenMP
#: parallel loop whenever the process has several threads when the kernel is compiled. Inductor
#: decides that once, from the sizes of the example it traces, and by default only for loops of
#: at least 512 elements per thread: a kernel first compiled on a small input (a test, a smoke
#: run, a first small batch) ran serially for every later input, whatever its size, and its
#: on-disk cache entry (keyed without the example's sizes) served that serial code to every later
#: process of the machine. (``cpp.dynamic_threads``, which defers the thread count to run time,
#: fixes that too, at a cost to the recurrent layers' small per-step kernels.)
COMMON_OPTIONS = {"cpp.min_chunk_size": 1}


def _inductor_options(inline: bool) -> dict[str, Any]:
    """The settings above that this torch's Inductor has (a dotted name is a nested one)."""
    import torch._inductor.config as inductor_config

    def known(name: str) -> bool:
        node: Any = inductor_config
        for part in name.split("."):
            if not hasattr(node, part):
                return False
            node = getattr(node, part)
        return True

    wanted = {**COMMON_OPTIONS, **(INLINE_OPTIONS if inline else {})}
    return {k: v for k, v in wanted.items() if known(k)}


class Standalone:
    """A kernel traced with symbolic sizes and compiled without Dynamo. Absent (None) tensor
    arguments and outputs are fixed by the signature, so the graph sees tensors only."""

    def __init__(self, kernel: Callable[..., Any], args: Sequence[Any],
                 static: tuple[Any, ...], inline: bool) -> None:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config
        from torch._inductor import standalone_compile
        from torch._inductor.compile_fx import compile_fx_inner
        from torch.fx.experimental import _config as fx_config
        from torch.fx.experimental.proxy_tensor import make_fx

        leaves: list[Tensor | None] = []
        spec = flatten(tuple(args), leaves)
        self._gather = gatherer(spec, leaves)
        n = len(leaves)
        present = [i for i, a in enumerate(leaves) if a is not None]
        layout: list[Any] = []  # output: (spec, absent leaves)

        def graph_fn(*tensors: Tensor) -> tuple[Tensor, ...]:  # always a tuple of tensors
            full: list[Tensor | None] = [None] * n
            for i, t in zip(present, tensors, strict=True):
                full[i] = t
            out = kernel(*unflatten(spec, iter(full)), *static)
            out_leaves: list[Tensor | None] = []
            layout.append((flatten(out, out_leaves), [o is None for o in out_leaves]))
            return tuple(o for o in out_leaves if o is not None)

        graphs: list[Any] = []  # what Inductor compiled, for the direct call

        def inner_compile(*a: Any, **k: Any) -> Any:
            graphs.append(compile_fx_inner(*a, **k))
            return graphs[-1]

        example = [a.detach() for a in leaves if a is not None]
        # duck sizing off while tracing *and* compiling (the compiler fakifies the inputs again);
        # no size asserts (the arguments are contiguous by contract, checked at lookup); the AOT
        # cache off so that Inductor's own compile (itself cached) is always reached
        with fx_config.patch(use_duck_shape=False):
            with torch.no_grad():
                gm = make_fx(graph_fn, tracing_mode="symbolic")(*example)
            for cpp_wrapper in (True, False):  # a C++ wrapper calls faster, if it builds
                options = {**_inductor_options(inline), "size_asserts": False,
                           "cpp_wrapper": cpp_wrapper}
                try:
                    with inductor_config.patch(options), \
                            functorch_config.patch(enable_autograd_cache=False):
                        self._artifact = standalone_compile(
                            gm, example, dynamic_shapes="from_graph",
                            options={"inner_compile": inner_compile})
                    break
                except Exception:
                    if not cpp_wrapper:
                        raise
                    graphs.clear()
        out_spec, self._absent = layout[0]
        self._single = out_spec is None
        # a flat tuple of outputs (the common case) is rebuilt without unflatten
        self._out_spec = None if out_spec is not None and out_spec[0] is tuple and all(
            c is None for c in out_spec[1]) else out_spec
        # Inductor's compiled module, called directly: the artifact's wrappers (AOT runtime
        # wrapper, Dynamo's disable wrapper) cost 10-15 µs a call and do nothing for a pure
        # kernel outside autograd
        self._direct = getattr(graphs[0], "current_callable", None) if len(graphs) == 1 else None

    def __call__(self, *args: Any) -> Any:
        tensors = self._gather(args)
        if self._direct is not None and not torch.is_grad_enabled():
            out = self._direct(tensors)
        else:
            out = self._artifact(*tensors)
        if self._single:
            return out[0]
        it = iter(out)
        flat = tuple(None if absent else next(it) for absent in self._absent)
        return flat if self._out_spec is None else unflatten(self._out_spec, iter(flat))


def _clone(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object, hence its own ``torch.compile`` cache."""
    clone = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                               fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    return clone


class Dynamo:
    """``torch.compile(dynamic=True)``: for a torch without ``standalone_compile``."""

    def __init__(self, kernel: Callable[..., Any], static: tuple[Any, ...], inline: bool) -> None:
        self._fn = torch.compile(_clone(kernel), dynamic=True, fullgraph=True,
                                 options=_inductor_options(inline))
        self._static = static

    def __call__(self, *args: Any) -> Any:
        # detached: requires_grad and view bases stay out of Dynamo's guards
        return self._fn(*map_tensors(Tensor.detach, args), *self._static)


def has_standalone_compile() -> bool:
    try:
        from torch._inductor import standalone_compile  # noqa: F401
    except ImportError:
        return False
    return True
