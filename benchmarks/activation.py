"""Fused noisy activation vs plain transcriptions vs the floor, forward + backward, in one run.

    python benchmarks/activation.py [--device cpu|cuda] [--reps N]

Rows (NAH on hard-tanh, per-feature p, float32):
  floor          draw ξ ~ N(0, 1) + F.hardtanh forward and backward
  naive eager    the reference path of noisyact.functional (plain autograd ops)
  naive compiled the same function under torch.compile(fullgraph=True)
  ours (torch noise)   the fused path with noise source "torch": ξ from torch.randn, saved
  ours (fused)   the default fused path (noisyact.fused, compiled kernels, counter noise generated
                 inside both kernels, nothing but x saved)
Times are medians; ratios are to the floor measured in the same run. "saved/input" is the number
of bytes autograd keeps for backward per byte of input. The floor draws ξ with torch.randn,
which on a CPU is one sequential stream; the default path generates its own noise in parallel, so
the row "ours (torch noise)" shows the fused kernels with the floor's generator.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import noisyact
from noisyact import functional as F
from noisyact.saturating import HARD_TANH


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, reps: int, device: str) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _saved_ratio(fn, x: torch.Tensor) -> float:
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved) / (x.numel() * x.element_size())


def bench(shape: tuple[int, int], reps: int, device: str) -> list[tuple[str, float, float]]:
    x = (torch.randn(shape, device=device) * 2).requires_grad_()
    p = (torch.rand(shape[1], device=device) * 2 - 1).requires_grad_()
    g = torch.randn(shape, device=device)

    def reference(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return F.noisy_activation(x, p, fn=HARD_TANH, variant="NAH", alpha=1.15, c=0.5,
                                  training=True, dim=-1)

    compiled = torch.compile(reference, fullgraph=True, dynamic=False)

    def run_floor() -> torch.Tensor:
        torch.randn(shape, device=device)
        return torch.nn.functional.hardtanh(x)

    def run_naive() -> torch.Tensor:
        noisyact.set_fused_mode("off")
        return reference(x, p)

    def run_compiled() -> torch.Tensor:
        noisyact.set_fused_mode("off")
        return compiled(x, p)

    def run_ours() -> torch.Tensor:
        noisyact.set_fused_mode("compile")
        return reference(x, p)

    def run_ours_torch_noise() -> torch.Tensor:
        old = noisyact.noise_source()
        noisyact.set_noise_source("torch")
        try:
            return run_ours()
        finally:
            noisyact.set_noise_source(old)

    rows = []
    for name, fwd in [("floor", run_floor), ("naive eager", run_naive),
                      ("naive compiled", run_compiled), ("ours (torch noise)", run_ours_torch_noise),
                      ("ours (fused)", run_ours)]:

        def step(fwd=fwd) -> None:
            x.grad = None
            p.grad = None
            fwd().backward(g)

        t = _time(step, reps, device)
        rows.append((name, t, _saved_ratio(fwd, x)))
    noisyact.set_fused_mode("compile")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default: by size)")
    args = ap.parse_args()
    # the compiled kernels from the first call: the steady state of a training run, whose
    # kernels are compiled once they have cost compile_after() seconds of eager calls
    noisyact.set_compile_after(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    print("| input | path | fwd+bwd (ms) | × floor | saved/input bytes |")
    print("|---|---|---:|---:|---:|")
    for shape, reps in (((4096, 4096), 5), ((64, 1024), 200)):
        rows = bench(shape, args.reps or reps, args.device)
        floor = rows[0][1]
        for name, t, saved in rows:
            print(f"| {shape[0]}×{shape[1]} | {name} | {t * 1e3:.2f} | {t / floor:.2f} | "
                  f"{saved:.2f} |")
        naive, ours = rows[1][1], rows[-1][1]
        print(f"| {shape[0]}×{shape[1]} | ours vs naive eager | | {naive / ours:.1f}× faster | |")


if __name__ == "__main__":
    main()
