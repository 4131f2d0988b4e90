r"""How the fused kernels run: compiled once per kind of input, then called with little overhead.

A *kernel* is a pure tensor function ``kernel(*tensors_or_None, *static)`` (no Python branch on
tensor values). In ``"compile"`` mode it is compiled once per *signature*: the static arguments,
which tensor arguments are absent, and each tensor's dtype, device and which of its dimensions
have size 0 or 1 (the sizes a symbolic trace specialises); every other size is symbolic, so one
compiled kernel serves every batch, hidden and sequence size. The kernel is traced with
:func:`torch.fx.experimental.proxy_tensor.make_fx` (symbolic sizes, duck sizing off so that sizes
which happen to be equal while tracing stay independent) and compiled by Inductor with
``torch._inductor.standalone_compile``, with a C++ wrapper where it builds (else Inductor's
Python one) and without size asserts. Outside autograd (grad mode off, as in the recurrent layers'
forward and backward functions) the compiled module is called directly; with grad mode on,
through the artifact's wrappers. A direct call costs a few µs; ``torch.compile``'s frame
evaluation, guards and wrappers cost 40-60 µs a call on a CPU, which a recurrence calling two
kernels per time step would pay thousands of times per batch. The price is paid once per
signature and process: 1-5 s of tracing even when Inductor's cache holds the code. Tensor
arguments must be contiguous (the compiled code assumes row-major strides): a strided one is an
error at lookup, and :func:`run_kernel` makes them contiguous.

With a torch that lacks ``standalone_compile``, kernels are compiled with
``torch.compile(dynamic=True)`` instead. If compilation fails (no working C++ compiler, no
Triton), a warning is given once and every kernel runs eagerly from then on: the same numbers,
only slower.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["compiled_kernel", "fused_mode", "loop_kernel", "run_kernel", "set_fused_mode"]

_MODES = ("compile", "eager", "off")
# mode None: not chosen yet; the first use reads NOISYACT_FUSED (default "compile"). Read lazily
# so that a bad value fails the run that uses the fused path, not ``import noisyact``.
_state: dict[str, Any] = {"mode": None, "compiled": {}}

#: Inductor settings for kernels that should be one loop nest: never store an intermediate (the
#: heuristics that do so on reuse or on long expressions would add a full-size buffer and a
#: second pass over memory, and the counter noise makes every expression long).
INLINE_OPTIONS = {"realize_opcount_threshold": 1 << 20, "realize_acc_reads_threshold": 1 << 20,
                  "realize_reads_threshold": 1 << 20}


def set_fused_mode(mode: str) -> None:
    """Choose the training path of NAN/NAH on hard functions and of the noisy RNN layers.

    ``"compile"`` (default): fused autograd functions with kernels compiled by Inductor;
    ``"eager"``: the same fused functions with kernels run op by op (no compiler needed);
    ``"off"``: the reference path of :mod:`noisyact.functional` (plain autograd ops).
    Also settable with the environment variable ``NOISYACT_FUSED``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    _state["mode"] = mode


def fused_mode() -> str:
    """The current mode (see :func:`set_fused_mode`); until one is set, that of the environment
    variable ``NOISYACT_FUSED`` (default ``"compile"``), checked here: ``ValueError`` if it names
    no mode."""
    mode = _state["mode"]
    if mode is None:
        mode = os.environ.get("NOISYACT_FUSED", "compile")
        if mode not in _MODES:
            raise ValueError(f"environment variable NOISYACT_FUSED must be one of "
                             f"{', '.join(_MODES)}, got {mode!r}")
        _state["mode"] = mode
    return str(mode)


def _signature(args: Sequence[Tensor | None]) -> tuple[Any, ...]:
    return tuple(None if a is None else (a.dtype, a.device, tuple(min(d, 2) for d in a.shape))
                 for a in args)


def _inductor_options(inline: bool) -> dict[str, Any]:
    import torch._inductor.config as inductor_config

    return {k: v for k, v in INLINE_OPTIONS.items() if inline and hasattr(inductor_config, k)}


class _Standalone:
    """A kernel traced with symbolic sizes and compiled without Dynamo. Absent (None) tensor
    arguments and outputs are fixed by the signature, so the graph sees tensors only."""

    def __init__(self, kernel: Callable[..., Any], args: Sequence[Tensor | None],
                 static: tuple[Any, ...], inline: bool) -> None:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config
        from torch._inductor import standalone_compile
        from torch._inductor.compile_fx import compile_fx_inner
        from torch.fx.experimental import _config as fx_config
        from torch.fx.experimental.proxy_tensor import make_fx

        n = len(args)
        present = [i for i, a in enumerate(args) if a is not None]
        layout: list[Any] = []  # output structure: "single", or a list with None where absent

        def graph_fn(*tensors: Tensor) -> tuple[Tensor, ...]:  # always a tuple of tensors
            full: list[Tensor | None] = [None] * n
            for i, t in zip(present, tensors, strict=True):
                full[i] = t
            out = kernel(*full, *static)
            if isinstance(out, Tensor):
                layout.append("single")
                return (out,)
            layout.append([o is None for o in out])
            return tuple(o for o in out if o is not None)

        graphs: list[Any] = []  # what Inductor compiled, for the direct call

        def inner_compile(*a: Any, **k: Any) -> Any:
            graphs.append(compile_fx_inner(*a, **k))
            return graphs[-1]

        example = [a.detach() for a in args if a is not None]
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
        self._layout = layout[0]
        # Inductor's compiled module, called directly: the artifact's wrappers (AOT runtime
        # wrapper, Dynamo's disable wrapper) cost 10-15 µs a call and do nothing for a pure
        # kernel outside autograd
        self._direct = getattr(graphs[0], "current_callable", None) if len(graphs) == 1 else None

    def __call__(self, *args: Tensor | None) -> Any:
        tensors = [a for a in args if a is not None]
        if self._direct is not None and not torch.is_grad_enabled():
            out = self._direct(tensors)
        else:
            out = self._artifact(*tensors)
        if self._layout == "single":
            return out[0]
        it = iter(out)
        return tuple(None if absent else next(it) for absent in self._layout)


def _clone(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object, hence its own ``torch.compile`` cache."""
    clone = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                               fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    return clone


class _Dynamo:
    """``torch.compile(dynamic=True)``: for a torch without ``standalone_compile``."""

    def __init__(self, kernel: Callable[..., Any], static: tuple[Any, ...], inline: bool) -> None:
        self._fn = torch.compile(_clone(kernel), dynamic=True, fullgraph=True,
                                 options=_inductor_options(inline) or None)
        self._static = static

    def __call__(self, *args: Tensor | None) -> Any:
        # detached: requires_grad and view bases stay out of Dynamo's guards
        return self._fn(*[None if a is None else a.detach() for a in args], *self._static)


class _Eager:
    def __init__(self, kernel: Callable[..., Any], static: tuple[Any, ...]) -> None:
        self._kernel, self._static = kernel, static

    def __call__(self, *args: Tensor | None) -> Any:
        return self._kernel(*args, *self._static)


class _Guarded:
    """A compiled kernel that falls back to eager (for good, with one warning) if a call fails."""

    def __init__(self, compiled: Callable[..., Any], kernel: Callable[..., Any],
                 static: tuple[Any, ...]) -> None:
        self._compiled, self._kernel, self._static = compiled, kernel, static

    def __call__(self, *args: Tensor | None) -> Any:
        if fused_mode() == "compile":
            try:
                return self._compiled(*args)
            except Exception as exc:
                _give_up(exc)
        return self._kernel(*args, *self._static)


def _give_up(exc: Exception) -> None:
    warnings.warn(f"noisyact: compiling the fused kernels failed ({type(exc).__name__}: {exc}); "
                  "running them eagerly", RuntimeWarning, stacklevel=3)
    _state["mode"] = "eager"


def _has_standalone_compile() -> bool:
    try:
        from torch._inductor import standalone_compile  # noqa: F401
    except ImportError:
        return False
    return True


def compiled_kernel(kernel: Callable[..., Any], args: Sequence[Tensor | None],
                    static: tuple[Any, ...] = (), inline: bool = False) -> Callable[..., Any]:
    """A callable that runs ``kernel(*a, *static)`` for tensor arguments ``a`` with the signature
    of ``args`` (same absent arguments, dtypes, devices, size-0/1 dimensions), all contiguous.

    In ``"compile"`` mode it is compiled on first request (see the module docstring) and cached;
    ``inline`` compiles the kernel as one loop nest without intermediate buffers
    (:data:`INLINE_OPTIONS`). Otherwise the kernel runs eagerly. A loop that calls one kernel
    many times with the same kinds of inputs uses :func:`loop_kernel`.
    """
    if fused_mode() != "compile":
        return _Eager(kernel, static)
    for i, a in enumerate(args):
        if a is not None and not a.is_contiguous():
            raise ValueError(f"{getattr(kernel, '__name__', 'kernel')}: tensor argument {i} is "
                             "not contiguous (compiled kernels assume row-major strides)")
    key = (kernel, static, inline, _signature(args))
    compiled = _state["compiled"].get(key)
    if compiled is None:
        try:
            if _has_standalone_compile():
                inner: Callable[..., Any] = _Standalone(kernel, args, static, inline)
            else:
                inner = _Dynamo(kernel, static, inline)
        except Exception as exc:
            _give_up(exc)
            return _Eager(kernel, static)
        compiled = _Guarded(inner, kernel, static)
        _state["compiled"][key] = compiled
    return compiled


def run_kernel(kernel: Callable[..., Any], *args: Tensor | None, static: tuple[Any, ...] = (),
               inline: bool = False) -> Any:
    """Run ``kernel(*args, *static)`` once: :func:`compiled_kernel` for these arguments, made
    contiguous."""
    args = tuple(None if a is None else a.contiguous() for a in args)
    return compiled_kernel(kernel, args, static, inline)(*args)


class _FirstCall:
    def __init__(self, kernel: Callable[..., Any], static: tuple[Any, ...], inline: bool) -> None:
        self._kernel, self._static, self._inline = kernel, static, inline
        self._run: Callable[..., Any] | None = None

    def __call__(self, *args: Tensor | None) -> Any:
        if self._run is None:
            self._run = compiled_kernel(self._kernel, args, self._static, self._inline)
        return self._run(*args)


def loop_kernel(kernel: Callable[..., Any], static: tuple[Any, ...] = (),
                inline: bool = False) -> Callable[..., Any]:
    """``kernel(*a, *static)`` for a loop whose calls all have the signature of the first one
    (contiguous tensors): :func:`compiled_kernel` is looked up once, at the first call."""
    return _FirstCall(kernel, static, inline)
