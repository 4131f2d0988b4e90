"""Training steps of a 2-layer NoisyLSTM (or nn.LSTM) in a loop, for an outside profiler.

    perf record -D 15000 -F 2000 -g python benchmarks/lstm_loop.py --steps 1200
    perf report --no-children --sort dso,sym

Every kernel is compiled at its first call and 10 steps warm up before the timed loop (perf's
``-D`` delay, in ms, should cover import, compilation and warm-up, so that the profile holds the
steady state only); then ``--steps`` training steps (forward, sum, backward) of the PTB size of
benchmarks/rnn.py by default (batch 20, 20 steps, 2×200, NAH), with the steady allocator unless
``--malloc default``. Prints the mean time per step.
"""

from __future__ import annotations

import argparse
import time

import torch
from rnn import _steady_malloc  # benchmarks/rnn.py, beside this script
from torch import nn

import noisyact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--seq", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--torch", action="store_true", help="nn.LSTM instead of NoisyLSTM")
    ap.add_argument("--malloc", choices=("steady", "default"), default="steady")
    args = ap.parse_args()
    if args.malloc == "steady":
        _steady_malloc()
    noisyact.set_compile_after(0)
    H = args.hidden
    m = nn.LSTM(H, H, 2) if args.torch else noisyact.NoisyLSTM(H, H, 2, variant="NAH")
    x = torch.randn(args.seq, args.batch, H)

    def train() -> None:
        m.zero_grad(set_to_none=True)
        m(x)[0].sum().backward()

    for _ in range(10):
        train()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train()
    print(f"{(time.perf_counter() - t0) / args.steps * 1e3:.2f} ms per training step")


if __name__ == "__main__":
    main()
