"""A/B of one detail of the compiled-kernel call: gathering the argument tensors.

    python benchmarks/ab_gather.py [--reps N]

Each compiled kernel gathers the tensors of its (structured) arguments at every call with an
indexer generated once (``noisyact._kernel_args.gatherer``). This script swaps it, in one process,
for the recursive walk over the arguments that it replaced, and times `NoisyLSTM` (2 layers of
200, batch 20, 20 steps: the PTB size, NAH units) in inference and in training with the two
interleaved; it prints the median of the per-repetition time ratios walk / indexer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import noisyact
from noisyact import compiler


def walk(args: Any, out: list[torch.Tensor]) -> list[torch.Tensor]:
    """The recursive gathering the indexer replaced."""
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif a is not None:
            walk(a, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    # the compiled kernels from the first call: the steady state of a training run, whose
    # kernels are compiled once they have cost compile_after() seconds of eager calls
    noisyact.set_compile_after(0)
    torch.set_num_threads(1)
    noisyact.set_fused_mode("compile")
    model = noisyact.NoisyLSTM(200, 200, num_layers=2, variant="NAH")
    x = torch.randn(20, 20, 200)

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    def train() -> None:
        model.train()
        model.zero_grad()
        model(x)[0].sum().backward()

    for f in (infer, train, infer, train):  # compile every kernel first
        f()
    kernels = [k._compiled for k in compiler._state["compiled"].values()
               if hasattr(getattr(k, "_compiled", None), "_gather")]
    indexers = [k._gather for k in kernels]

    def use(which: str) -> None:
        for k, g in zip(kernels, indexers, strict=True):
            k._gather = g if which == "indexer" else (lambda a: walk(a, []))

    def timed(f: Callable[[], None], n: int = 30) -> float:
        start = time.perf_counter()
        for _ in range(n):
            f()
        return (time.perf_counter() - start) / n

    print(f"{len(kernels)} compiled kernels; ratio = time with the walk / time with the indexer")
    for name, f in (("inference", infer), ("training", train)):
        ratios = []
        for _ in range(args.reps):
            use("walk")
            a = timed(f)
            use("indexer")
            b = timed(f)
            ratios.append(a / b)
        use("indexer")
        print(f"{name}: median {statistics.median(ratios):.3f} "
              f"(range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
