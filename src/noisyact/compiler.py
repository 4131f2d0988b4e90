r"""How the fused kernels run: compiled once per kind of input, then called with little overhead.

A *kernel* is a pure tensor function ``kernel(*args, *static)`` (no Python branch on tensor
values). Its ``args`` are tensors, ``None`` (absent) or tuples of them, NamedTuples included
(e.g. :class:`noisyact.fused.UnitTensors`), so that a kernel's signature names what it reads:
they are flattened to a list of tensors outside the compiled code and rebuilt inside the traced
function (:mod:`noisyact._kernel_args`), and its outputs likewise. The ``static`` arguments are
hashable Python values (numbers, bools, frozen dataclasses such as
:class:`noisyact.variants.Variant`). In ``"compile"`` mode a kernel is compiled once per
*signature*: the static arguments, the structure of the arguments, which tensors are absent, and
each tensor's dtype, device and which of its dimensions have size 0 or 1 (the sizes a symbolic
trace specialises); every other size is symbolic, so one compiled kernel serves every batch,
hidden and sequence size. How one kernel is traced, compiled and called is
:mod:`noisyact._inductor`. Tensor arguments must be contiguous (the compiled code assumes
row-major strides): a strided one is an error at lookup, and :func:`run_kernel` makes them
contiguous.

When a kernel is compiled. Compiling costs 1-5 s per signature and process; running a kernel
eagerly costs a few times its compiled time per call. A process that calls a kernel a few times
(a notebook, a test, a script that checks a checkpoint) should never pay the first price, and a
training run should not pay the second for long. So in ``"compile"`` mode a kernel runs eagerly
at first and is compiled once the eager calls of its signature have taken
:func:`compile_after` seconds in all (default 2 s; on a device other than the CPU, where eager
calls return before the work is done, after 20 calls): the choice of the ski-rental problem,
which never pays more than about twice what the best choice in hindsight would have when the
budget is close to what compiling costs (2 s stands for the 1-5 s of tracing with Inductor's
on-disk cache warm; a first build on a new machine costs more, and the bound is looser). The
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
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._inductor import Dynamo, Standalone, has_standalone_compile
from ._kernel_args import Spec, flatten, map_tensors, unflatten
from ._validation import env_choice

__all__ = ["compile_after", "compile_after_chosen", "compiled_kernel", "flatten", "fused_mode",
           "loop_kernel", "run_kernel", "set_compile_after", "set_fused_mode", "unflatten"]

_MODES = ("compile", "eager", "off")
# mode None: not chosen yet; the first use reads NOISYACT_FUSED (default "compile"). Read lazily
# so that a bad value fails the run that uses the fused path, not ``import noisyact``.
# compile_after None: not chosen yet; the first use reads NOISYACT_COMPILE_AFTER (default 2).
_state: dict[str, Any] = {"mode": None, "compiled": {}, "compile_after": None,
                          "compile_after_chosen": False}

#: Eager calls of one signature before it is compiled, on devices whose eager calls return
#: before their work is done (so that their time says nothing).
COMPILE_AFTER_CALLS = 20

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


def set_compile_after(seconds: float | None) -> None:
    """In ``"compile"`` mode, compile a kernel once its eager calls (of one signature) have taken
    ``seconds`` in all (default 2; 0: at the first call; ``math.inf``: never, i.e. eager). Also
    settable with the environment variable ``NOISYACT_COMPILE_AFTER``; ``None`` forgets a budget
    set here (back to that variable, or the default)."""
    if seconds is None:
        _state["compile_after"], _state["compile_after_chosen"] = None, False
        return
    _state["compile_after"] = _checked_budget(seconds, "seconds")
    _state["compile_after_chosen"] = True


def _checked_budget(seconds: float | str, name: str) -> float:
    try:
        value = float(seconds)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {seconds!r}")
    return value


def compile_after() -> float:
    """The eager time after which a kernel is compiled (see :func:`set_compile_after`); until
    one is set, that of ``NOISYACT_COMPILE_AFTER`` (default 2), checked here."""
    if _state["compile_after"] is None:
        raw = os.environ.get("NOISYACT_COMPILE_AFTER", "2")
        _state["compile_after"] = _checked_budget(raw, "NOISYACT_COMPILE_AFTER")
    return float(_state["compile_after"])


def compile_after_chosen() -> bool:
    """Whether the budget of :func:`compile_after` was chosen, by :func:`set_compile_after` or by
    ``NOISYACT_COMPILE_AFTER``, rather than being the default."""
    return bool(_state["compile_after_chosen"]) or "NOISYACT_COMPILE_AFTER" in os.environ


_CLIPPED: dict[tuple[int, ...], tuple[int, ...]] = {}  # shape -> its sizes clipped to 2


def _clipped(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The sizes of ``shape`` with every size above 2 written as 2 (memoised: a recurrence asks
    for the same few shapes thousands of times)."""
    c = _CLIPPED.get(shape)
    if c is None:
        if len(_CLIPPED) > 4096:
            _CLIPPED.clear()
        c = _CLIPPED[shape] = tuple(min(d, 2) for d in shape)
    return c


def _signature(leaves: Sequence[Tensor | None]) -> tuple[Any, ...]:
    return tuple([None if a is None else (a.dtype, a.device, _clipped(a.shape)) for a in leaves])


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


def _compile(kernel: Callable[..., Any], args: Sequence[Any], static: tuple[Any, ...],
             inline: bool) -> Callable[..., Any]:
    """``kernel`` compiled for the signature of ``args`` (eager, with a warning, if that fails)."""
    _announce_first_build()
    try:
        if has_standalone_compile():
            inner: Callable[..., Any] = Standalone(kernel, args, static, inline)
        else:
            inner = Dynamo(kernel, static, inline)
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
        self._on_cpu = on_cpu
        self._compiled: Callable[..., Any] | None = None

    @property
    def compiled(self) -> bool:
        """Whether the kernel has been compiled (or compiling it has been tried)."""
        return self._compiled is not None

    def __call__(self, *args: Any) -> Any:
        if self._compiled is not None:
            return self._compiled(*args)
        # the budget is read at each call: a set_compile_after() after this kernel was first
        # seen applies to it too
        budget = compile_after() if self._on_cpu else float(COMPILE_AFTER_CALLS)
        if fused_mode() == "compile" and self._cost >= budget:
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
    (:data:`noisyact._inductor.INLINE_OPTIONS`). Otherwise the kernel runs eagerly. A loop that
    calls one kernel many times with the same kinds of inputs uses :func:`loop_kernel`.
    """
    if fused_mode() != "compile":
        return _Eager(kernel, static)
    leaves: list[Tensor | None] = []
    spec = flatten(tuple(args), leaves)
    for i, a in enumerate(leaves):
        if a is not None and not a.is_contiguous():
            raise ValueError(f"{getattr(kernel, '__name__', 'kernel')}: tensor argument {i} is "
                             "not contiguous (compiled kernels assume row-major strides)")
    return _lookup(kernel, args, static, inline, spec, leaves)


def _lookup(kernel: Callable[..., Any], args: Sequence[Any], static: tuple[Any, ...],
            inline: bool, spec: Spec, leaves: list[Tensor | None]) -> Callable[..., Any]:
    """:func:`compiled_kernel` for arguments already flattened to ``spec`` and ``leaves``."""
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
    if fused_mode() != "compile":
        return kernel(*map_tensors(Tensor.contiguous, args), *static)
    leaves: list[Tensor | None] = []
    spec = flatten(args, leaves)
    if not all(a is None or a.is_contiguous() for a in leaves):  # rare: copy, flatten again
        args = map_tensors(Tensor.contiguous, args)
        leaves = []
        spec = flatten(args, leaves)
    return _lookup(kernel, args, static, inline, spec, leaves)(*args)


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
