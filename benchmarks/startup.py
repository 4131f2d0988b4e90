"""First-call cost: whole processes (import included) doing one useful step, noisy vs torch.

    python benchmarks/startup.py [--reps N] [--device cpu|cuda]

Each scenario is a fresh Python process that imports torch (and noisyact), builds the module and
runs one forward + backward (the activation: NoisyHardTanh vs nn.Hardtanh over 64×1024; the
recurrent layer: one SGD training step of a 2-layer NoisyLSTM vs nn.LSTM at the PTB size, batch
20, 20 steps, 200 units). The first process of each kind warms the on-disk caches (Inductor's,
and whatever noisyact keeps) and is reported separately; the timed processes then alternate
torch / noisyact, and the table gives medians and the median of the per-repetition differences
and ratios, so that a machine drifting over minutes affects both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ACTIVATION = """
import torch
{imp}
x = (torch.randn(64, 1024, device="{dev}") * 2).requires_grad_()
act = {make}.to("{dev}")
act(x).sum().backward()
"""

LSTM = """
import torch
{imp}
torch.manual_seed(0)
m = {make}.to("{dev}")
opt = torch.optim.SGD(m.parameters(), lr=1.0)
x = torch.randn(20, 20, 200, device="{dev}")
y, _ = m(x)
y.square().mean().backward()
opt.step()
"""

SCENARIOS = {
    "activation 64×1024 fwd+bwd": (
        ACTIVATION, "torch.nn.Hardtanh()",
        "noisyact.NoisyHardTanh('NAH', num_parameters=1024, dim=-1)"),
    "2-layer LSTM 200, B20 T20, one train step": (
        LSTM, "torch.nn.LSTM(200, 200, num_layers=2)",
        "noisyact.NoisyLSTM(200, 200, num_layers=2, variant='NAH')"),
}


def _run(code: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scenario failed:\n{code}\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, device {args.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, {args.reps} repetitions")
    print("| scenario | first process (cold caches?) torch / noisyact (s) | torch (s) | "
          "noisyact (s) | noisyact − torch (s) | × torch |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (template, make_torch, make_ours) in SCENARIOS.items():
        torch_code = template.format(imp="", make=make_torch, dev=args.device)
        ours_code = template.format(imp="import noisyact", make=make_ours, dev=args.device)
        first = (_run(torch_code), _run(ours_code))
        a, b = [], []
        for _ in range(args.reps):
            a.append(_run(torch_code))
            b.append(_run(ours_code))
        diff = statistics.median(y - x for x, y in zip(a, b, strict=True))
        ratio = statistics.median(y / x for x, y in zip(a, b, strict=True))
        print(f"| {name} | {first[0]:.2f} / {first[1]:.2f} | {statistics.median(a):.2f} | "
              f"{statistics.median(b):.2f} | {diff:+.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
