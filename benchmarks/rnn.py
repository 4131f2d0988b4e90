"""Noisy LSTM/GRU throughput vs nn.LSTM/nn.GRU vs a plain Python loop, in one run.

    python benchmarks/rnn.py [--device cpu|cuda] [--reps N] [--malloc steady|default]

Configurations: batch 32, 35 steps, 2 layers of 256 (input 256); and the paper's PTB size
(Zaremba small): batch 20, 20 steps, 2 layers of 200. For each: training tokens/s (forward +
backward) and inference tokens/s (eval, no grad) of
  torch        nn.LSTM / nn.GRU (oneDNN/cuDNN, soft units)
  ours         noisyact.NoisyLSTM / NoisyGRU, NAH units (default fused path)
  plain loop   a Python loop over a hand-written noisy cell (noisyact.functional per gate)
The models of a configuration are timed in turn within each repetition; "× torch" is the median
over repetitions of the speed ratio to the torch module (robust to the machine's drift).

--malloc steady (the default; glibc only) keeps freed memory in the process instead of returning
it to the system and faulting it in again at the next allocation (mmap threshold fixed at 32 MiB,
no trimming: what MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ or jemalloc/tcmalloc give).
With glibc's adaptive defaults the page faults come and go between runs and cost nn.LSTM up to
a fifth of its speed, which made the ratios swing by ±0.1 from run to run; --malloc default
measures that state.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import time

import torch
from torch import nn

import noisyact
from noisyact import functional as F


class PlainLoopLSTM(nn.Module):
    """The obvious implementation: a per-step cell calling the noisy functions, autograd does the rest."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.LSTMCell(input_size if i == 0 else hidden_size, hidden_size)
                                    for i in range(num_layers))
        self.p = nn.ParameterList(nn.Parameter(torch.rand(5 * hidden_size) * 2 - 1)
                                  for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for cell, p in zip(self.layers, self.p, strict=True):
            H = cell.hidden_size
            h = x.new_zeros(x.shape[1], H)
            c = x.new_zeros(x.shape[1], H)
            outs = []
            for t in range(x.shape[0]):
                pre = cell.weight_ih @ x[t].T + cell.weight_hh @ h.T
                pre = pre.T + cell.bias_ih + cell.bias_hh
                i, f, g, o = pre.chunk(4, 1)
                kw = {"variant": "NAH", "training": self.training, "dim": -1}
                gates = F.noisy_hard_sigmoid(torch.cat([i, f, o], 1), p[:3 * H], **kw)
                i, f, o = gates.chunk(3, 1)
                c = f * c + i * F.noisy_hard_tanh(g, p[3 * H:4 * H], **kw)
                h = o * F.noisy_hard_tanh(c, p[4 * H:], **kw)
                outs.append(h)
            x = torch.stack(outs)
        return x


def _steady_malloc() -> bool:
    """glibc's mallopt: mmap threshold 32 MiB (M_MMAP_THRESHOLD, -3), trim threshold 1 GiB
    (M_TRIM_THRESHOLD, -1). False where the C library has no mallopt or refuses."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 1 << 30))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _interleaved(fns: list, reps: int, device: str) -> list[list[float]]:
    """Seconds per call of each function, timed in turn within every repetition, so that the
    drift of a shared machine (±30 % over minutes on this CPU) affects all of them alike."""
    for _ in range(3):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times, strict=True):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t)
    return times


def _rates(times: list[list[float]], tokens: int) -> list[tuple[float, float]]:
    """(median tokens/s, median over repetitions of this model's speed / the first model's)."""
    med = statistics.median
    return [(tokens / med(ts), med(t0 / t for t0, t in zip(times[0], ts, strict=True)))
            for ts in times]


def bench(kind: str, B: int, T: int, H: int, layers: int, reps: int, device: str):
    x = torch.randn(T, B, H, device=device)
    torch_cls = nn.LSTM if kind == "LSTM" else nn.GRU
    ours_cls = noisyact.NoisyLSTM if kind == "LSTM" else noisyact.NoisyGRU
    models = {
        f"nn.{kind}": torch_cls(H, H, layers).to(device),
        f"Noisy{kind} (NAH)": ours_cls(H, H, layers, variant="NAH").to(device),
    }
    if kind == "LSTM":
        models["plain loop (NAH)"] = PlainLoopLSTM(H, H, layers).to(device)
    train, infer = [], []
    for m in models.values():

        def train_step(m=m) -> None:
            m.train()
            m.zero_grad(set_to_none=True)
            out = m(x)
            (out[0] if isinstance(out, tuple) else out).sum().backward()

        def infer_step(m=m) -> None:
            m.eval()
            with torch.no_grad():
                m(x)

        train.append(train_step)
        infer.append(infer_step)
    tr = _rates(_interleaved(train, reps, device), B * T)
    inf = _rates(_interleaved(infer, reps, device), B * T)
    return [(name, *a, *b) for name, a, b in zip(models, tr, inf, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--malloc", choices=("steady", "default"), default="steady",
                    help="steady: freed memory stays in the process (glibc); default: as is")
    args = ap.parse_args()
    malloc = "glibc default"
    if args.malloc == "steady":
        malloc = "steady (mallopt)" if _steady_malloc() else "default (no glibc mallopt)"
    # the compiled kernels from the first call: the steady state of a training run, whose
    # kernels are compiled once they have cost compile_after() seconds of eager calls
    noisyact.set_compile_after(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"fused mode {noisyact.fused_mode()}, malloc {malloc}")
    print("| model | config | train tok/s | × torch | infer tok/s | × torch |")
    print("|---|---|---:|---:|---:|---:|")
    configs = [("B32 T35 2×256", 32, 35, 256, 2), ("PTB small: B20 T20 2×200", 20, 20, 200, 2)]
    for kind in ("LSTM", "GRU"):
        for label, B, T, H, L in configs:
            rows = bench(kind, B, T, H, L, args.reps, args.device)
            for name, tr, tr_x, inf, inf_x in rows:
                print(f"| {name} | {label} | {tr:,.0f} | {tr_x:.2f} | {inf:,.0f} | {inf_x:.2f} |")
            if len(rows) == 3:
                print(f"| ours vs plain loop | {label} | | {rows[1][2] / rows[2][2]:.2f}× | | "
                      f"{rows[1][4] / rows[2][4]:.2f}× |")


if __name__ == "__main__":
    main()
