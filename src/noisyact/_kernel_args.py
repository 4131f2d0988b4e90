"""Structured kernel arguments: tensors, ``None`` (absent) and tuples of them, NamedTuples
included, flattened to a list of leaves outside a compiled kernel and rebuilt inside its trace.

A *spec* describes a structure: ``None`` for a leaf (a tensor or None), else (type, child specs)
for a tuple, list or NamedTuple. Specs are hashable (part of a kernel's signature). This is the
small subset of ``torch.utils._pytree`` (private) that the kernels need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

__all__ = ["Spec", "flatten", "gatherer", "map_tensors", "unflatten"]

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


def gatherer(spec: Spec, leaves: Sequence[Tensor | None]) -> Callable[[tuple[Any, ...]], list[Tensor]]:
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


def map_tensors(fn: Callable[[Tensor], Tensor], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to each of its tensors (structure kept)."""
    if obj is None:
        return None
    if isinstance(obj, Tensor):
        return fn(obj)
    vals = [map_tensors(fn, o) for o in obj]
    return type(obj)(vals) if type(obj) in (tuple, list) else type(obj)(*vals)
