r"""How the fused kernels run: compiled once per kind of input, then called with little overhead.

A *kernel* is a pure tensor function ``kernel(*args, *static)`` (no Python branch on tensor
values). Its ``args`` are tensors, ``None`` (absent) or tuples of them, NamedTuples included
(e.g. :class:`noisyact.fused.UnitTensors`), so that a kernel's signature names what it reads:
they are flattened to a list of tensors outside the compiled code and rebuilt inside the traced
function (:func:`flatten`), and its outputs likewise. The ``static`` arguments are hashable Python
values (numbers, bools, frozen dataclasses such as :class:`noisyact.variants.Variant`). In
``"compile"`` mode a kernel is compiled once per *signature*: the static arguments, the structure
of the arguments, which tensors are absent, and each tensor's dtype, device and which of its dimensions
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

When a kernel is compiled. Compiling costs 1-5 s per signature and process; running a kernel
eagerly costs a few times its compiled time per call. A process that calls a kernel a few times
(a notebook, a test, a script that checks a checkpoint) should never pay the first price, and a
training run should not pay the second for long. So in ``"compile"`` mode a kernel runs eagerly
at first and is compiled once the eager calls of its signature have taken
:func:`compile_after` seconds in all (default 2 s; on a device other than the CPU, where eager
calls return before the work is done, after 20 calls): the choice of the ski-rental problem,
which never pays more than about twice what the best choice in hindsight would have. The
first call of a noisy module thus costs what the eager path costs; ``set_compile_after(0)``
compiles at the first call.

With a torch that lacks ``standalone_compile``, kernels are compiled with
``torch.compile(dynamic=True)`` instead. If compilation fails (no working C++ compiler, no
Triton), a warning is given once and every kernel runs eagerly from then on: the same numbers,
only slower.
"""

from __future__ import annotations

import math
import os
import time
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._validation import env_choice

__all__ = ["compile_after", "compiled_kernel", "flatten", "fused_mode", "loop_kernel",
           "run_kernel", "set_compile_after", "set_fused_mode", "unflatten"]

_MODES = ("compile", "eager", "off")
# mode None: not chosen yet; the first use reads NOISYACT_FUSED (default "compile"). Read lazily
# so that a bad value fails the run that uses the fused path, not ``import noisyact``.
_state: dict[str, Any] = {"mode": None, "compiled": {}, "compile_after": None}

#: Eager calls of one signature before it is compiled, on devices whose eager calls return
#: before their work is done (so that their time says nothing).
COMPILE_AFTER_CALLS = 20

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
    if _state["mode"] is None:
        _state["mode"] = env_choice("NOISYACT_FUSED", _MODES, "compile")
    return str(_state["mode"])


def set_compile_after(seconds: float) -> None:
    """In ``"compile"`` mode, compile a kernel once its eager calls (of one signature) have taken
    ``seconds`` in all (default 2; 0: at the first call; ``math.inf``: never, i.e. eager). Also
    settable with the environment variable ``NOISYACT_COMPILE_AFTER``."""
    value = float(seconds)
    if math.isnan(value) or value < 0:
        raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
    _state["compile_after"] = value


def compile_after() -> float:
    """The eager time after which a kernel is compiled (see :func:`set_compile_after`); until
    one is set, that of ``NOISYACT_COMPILE_AFTER`` (default 2), checked here."""
    if _state["compile_after"] is None:
        raw = os.environ.get("NOISYACT_COMPILE_AFTER", "2")
        try:
            set_compile_after(float(raw))
        except ValueError:
            raise ValueError(f"NOISYACT_COMPILE_AFTER must be a number of seconds >= 0, "
                             f"got {raw!r}") from None
    return float(_state["compile_after"])


# Structured arguments. A *spec* describes a structure: ``None`` for a leaf (a tensor or None),
# else (type, child specs) for a tuple, list or NamedTuple. Specs are hashable (part of a
# kernel's signature). This is the small subset of torch.utils._pytree (private) kernels need.

Spec = tuple[type, tuple[Any, ...]] | None


def flatten(obj: Any, leaves: list[Tensor | None]) -> Spec:
    """Append the leaves (tensors and None) of ``obj`` to ``leaves``; return its spec."""
    if obj is None or isinstance(obj, Tensor):
        leaves.append(obj)
        return None
    if isinstance(obj, tuple | list):
        return (type(obj), tuple(flatten(o, leaves) for o in obj))
    raise TypeError(f"kernel arguments must be tensors, None or tuples of them; got "
                    f"{type(obj).__name__}")


def unflatten(spec: Spec, leaves: Any) -> Any:
    """The structure of ``spec`` rebuilt from an iterator over its leaves."""
    if spec is None:
        return next(leaves)
    typ, children = spec
    values = [unflatten(c, leaves) for c in children]
    if typ is tuple or typ is list:
        return typ(values)
    return typ(*values)  # a NamedTuple


def _gatherer(spec: Spec, leaves: Sequence[Tensor | None]) -> Callable[[tuple[Any, ...]], list[Tensor]]:
    """A function that returns the present tensors of arguments with this spec and these absent
    leaves, in flattening order, by direct indexing (generated once per compiled kernel: the
    recursive walk it replaces cost a few µs a call, which a recurrence pays twice per step)."""
    paths: list[str] = []

    def walk(sp: Spec, expr: str) -> None:
        if sp is None:
            paths.append(expr)
            return
        for i, child in enumerate(sp[1]):
            walk(child, f"{expr}[{i}]")

    walk(spec, "args")
    present = [p for p, leaf in zip(paths, leaves, strict=True) if leaf is not None]
    namespace: dict[str, Any] = {}
    exec(f"def gather(args):\n    return [{', '.join(present)}]\n", namespace)
    return namespace["gather"]


def _map(fn: Callable[[Tensor], Tensor], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to each of its tensors (structure kept)."""
    if obj is None:
        return None
    if isinstance(obj, Tensor):
        return fn(obj)
    vals = [_map(fn, o) for o in obj]
    return type(obj)(vals) if type(obj) in (tuple, list) else type(obj)(*vals)


def _signature(leaves: Sequence[Tensor | None]) -> tuple[Any, ...]:
    return tuple(None if a is None else (a.dtype, a.device, tuple(min(d, 2) for d in a.shape))
                 for a in leaves)


def _inductor_options(inline: bool) -> dict[str, Any]:
    import torch._inductor.config as inductor_config

    return {k: v for k, v in INLINE_OPTIONS.items() if inline and hasattr(inductor_config, k)}


class _Standalone:
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
        self._gather = _gatherer(spec, leaves)
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


class _Dynamo:
    """``torch.compile(dynamic=True)``: for a torch without ``standalone_compile``."""

    def __init__(self, kernel: Callable[..., Any], static: tuple[Any, ...], inline: bool) -> None:
        self._fn = torch.compile(_clone(kernel), dynamic=True, fullgraph=True,
                                 options=_inductor_options(inline) or None)
        self._static = static

    def __call__(self, *args: Any) -> Any:
        # detached: requires_grad and view bases stay out of Dynamo's guards
        return self._fn(*_map(Tensor.detach, args), *self._static)


class _Eager:
    def __init__(self, kernel: Callable[..., Any], static: tuple[Any, ...]) -> None:
        self._kernel, self._static = kernel, static

    def __call__(self, *args: Any) -> Any:
        return self._kernel(*args, *self._static)


class _Guarded:
    """A compiled kernel that falls back to eager (for good, with one warning) if a call fails."""

    def __init__(self, compiled: Callable[..., Any], kernel: Callable[..., Any],
                 static: tuple[Any, ...]) -> None:
        self._compiled, self._kernel, self._static = compiled, kernel, static

    def __call__(self, *args: Any) -> Any:
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


def _build_marker() -> str:
    """A file whose presence says this machine has built the kernels once (per torch version)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "noisyact", f"built-torch-{torch.__version__}")


def _announce_first_build() -> None:
    """Say once, on a machine that has never built the kernels, that the first build is slow."""
    if _state.get("announced"):
        return
    _state["announced"] = True
    marker = _build_marker()
    if os.path.exists(marker):
        return
    import sys

    print("noisyact: compiling the fused kernels for this machine; the first use of each kind "
          "of unit takes up to a minute, later processes reuse the on-disk cache "
          "(noisyact.set_fused_mode('eager') skips compilation)", file=sys.stderr)
    try:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w") as f:
            f.write("the fused kernels were compiled on this machine\n")
    except OSError:
        pass


def _has_standalone_compile() -> bool:
    try:
        from torch._inductor import standalone_compile  # noqa: F401
    except ImportError:
        return False
    return True


def _compile(kernel: Callable[..., Any], args: Sequence[Any], static: tuple[Any, ...],
             inline: bool) -> Callable[..., Any]:
    """``kernel`` compiled for the signature of ``args`` (eager, with a warning, if that fails)."""
    _announce_first_build()
    try:
        if _has_standalone_compile():
            inner: Callable[..., Any] = _Standalone(kernel, args, static, inline)
        else:
            inner = _Dynamo(kernel, static, inline)
    except Exception as exc:
        _give_up(exc)
        return _Eager(kernel, static)
    return _Guarded(inner, kernel, static)


class _Tiered:
    """A kernel run eagerly until its eager calls have cost :func:`compile_after` seconds (or,
    off the CPU, :data:`COMPILE_AFTER_CALLS` calls), then compiled (module docstring)."""

    def __init__(self, kernel: Callable[..., Any], static: tuple[Any, ...], inline: bool,
                 on_cpu: bool) -> None:
        self._kernel, self._static, self._inline = kernel, static, inline
        self._cost = 0.0  # eager seconds so far (on the CPU) or calls (elsewhere)
        self._budget = compile_after() if on_cpu else float(COMPILE_AFTER_CALLS)
        self._on_cpu = on_cpu
        self._compiled: Callable[..., Any] | None = None

    @property
    def compiled(self) -> bool:
        """Whether the kernel has been compiled (or compiling it has been tried)."""
        return self._compiled is not None

    def __call__(self, *args: Any) -> Any:
        if self._compiled is not None:
            return self._compiled(*args)
        if fused_mode() == "compile" and self._cost >= self._budget:
            self._compiled = _compile(self._kernel, args, self._static, self._inline)
            return self._compiled(*args)
        start = time.perf_counter()
        out = self._kernel(*args, *self._static)
        self._cost += time.perf_counter() - start if self._on_cpu else 1.0
        return out


def compiled_kernel(kernel: Callable[..., Any], args: Sequence[Any],
                    static: tuple[Any, ...] = (), inline: bool = False) -> Callable[..., Any]:
    """A callable that runs ``kernel(*a, *static)`` for arguments ``a`` with the signature of
    ``args`` (same structure, absent tensors, dtypes, devices, size-0/1 dimensions), all
    tensors contiguous.

    In ``"compile"`` mode it is compiled (see the module docstring) once its eager calls have
    cost :func:`compile_after` seconds, at once if that is 0, and cached per signature;
    ``inline`` compiles the kernel as one loop nest without intermediate buffers
    (:data:`INLINE_OPTIONS`). Otherwise the kernel runs eagerly. A loop that calls one kernel
    many times with the same kinds of inputs uses :func:`loop_kernel`.
    """
    if fused_mode() != "compile":
        return _Eager(kernel, static)
    leaves: list[Tensor | None] = []
    spec = flatten(tuple(args), leaves)
    for i, a in enumerate(leaves):
        if a is not None and not a.is_contiguous():
            raise ValueError(f"{getattr(kernel, '__name__', 'kernel')}: tensor argument {i} is "
                             "not contiguous (compiled kernels assume row-major strides)")
    key = (kernel, static, inline, spec, _signature(leaves))
    compiled = _state["compiled"].get(key)
    if compiled is None:
        if compile_after() == 0:
            compiled = _compile(kernel, args, static, inline)
            if isinstance(compiled, _Eager):
                return compiled
        else:
            on_cpu = all(a is None or a.device.type == "cpu" for a in leaves)
            compiled = _Tiered(kernel, static, inline, on_cpu)
        _state["compiled"][key] = compiled
    return compiled


def run_kernel(kernel: Callable[..., Any], *args: Any, static: tuple[Any, ...] = (),
               inline: bool = False) -> Any:
    """Run ``kernel(*args, *static)`` once: :func:`compiled_kernel` for these arguments, their
    tensors made contiguous."""
    args = _map(Tensor.contiguous, args)
    return compiled_kernel(kernel, args, static, inline)(*args)


class _FirstCall:
    def __init__(self, kernel: Callable[..., Any], static: tuple[Any, ...], inline: bool) -> None:
        self._kernel, self._static, self._inline = kernel, static, inline
        self._run: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        run = self._run
        if run is None:
            run = self._run = compiled_kernel(self._kernel, args, self._static, self._inline)
        out = run(*args)
        if type(run) is _Tiered and run._compiled is not None:
            self._run = run._compiled  # the loop calls the compiled kernel directly from now on
        return out


def loop_kernel(kernel: Callable[..., Any], static: tuple[Any, ...] = (),
                inline: bool = False) -> Callable[..., Any]:
    """``kernel(*a, *static)`` for a loop whose calls all have the signature of the first one
    (structure and kinds of tensors, all contiguous): :func:`compiled_kernel` is looked up once,
    at the first call."""
    return _FirstCall(kernel, static, inline)
