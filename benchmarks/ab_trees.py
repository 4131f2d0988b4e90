"""Two checkouts of noisyact timed against each other, interleaved: is a change slower?

    git worktree add /tmp/base <commit>
    python benchmarks/ab_trees.py /tmp/base/src src [--reps 4] [--threads 1]

Each repetition runs one process per source tree (``PYTHONPATH``), in alternating order, and each
process times, after a warm-up, a ``NoisyHardTanh`` (NAH) forward + backward over 2048×2048 and
64×1024 and a tiny 8×16 (where the Python overhead per call shows), and a 2-layer ``NoisyLSTM``
(NAH, PTB size: batch 20, 20 steps, 200 units) in training and inference, every kernel compiled
at its first call. It prints the per-repetition ratios B/A of the median times (> 1: B slower)
and their median, so that a machine drifting over minutes affects both trees alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CODE = r"""
import json, os, time, torch, noisyact
torch.manual_seed(0)
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

def median_time(f, n):
    for _ in range(3):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2]

res = {}
for shape, n in (((2048, 2048), 9), ((64, 1024), 300), ((8, 16), 2000)):
    act = noisyact.NoisyHardTanh("NAH")
    x = (torch.randn(*shape) * 2).requires_grad_()
    res[f"activation {shape[0]}x{shape[1]} fwd+bwd"] = median_time(
        lambda: act(x).sum().backward(), n)
m = noisyact.NoisyLSTM(200, 200, num_layers=2, variant="NAH")
x = torch.randn(20, 20, 200)

def train():
    m.train(); m.zero_grad(set_to_none=True); m(x)[0].sum().backward()

def infer():
    m.eval()
    with torch.no_grad():
        m(x)

res["LSTM 2x200 B20 T20 train step"] = median_time(train, 20)
res["LSTM 2x200 B20 T20 inference"] = median_time(infer, 60)
print(json.dumps(res))
"""


def _run(tree: str, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(threads),
           "NOISYACT_COMPILE_AFTER": "0"}
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="source folder of the base (A), e.g. /tmp/base/src")
    ap.add_argument("b", help="source folder of the change (B), e.g. src")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {args.a: [], args.b: []}
    for r in range(args.reps):
        for tree in (args.a, args.b) if r % 2 == 0 else (args.b, args.a):
            runs[tree].append(_run(os.path.abspath(tree), args.threads))
    print(f"A = {args.a}, B = {args.b}, {args.reps} repetitions, {args.threads} thread(s)")
    print("| case | A (ms) | B (ms) | B/A per repetition | B/A median |")
    print("|---|---:|---:|---|---:|")
    for case in runs[args.a][0]:
        a = [r[case] for r in runs[args.a]]
        b = [r[case] for r in runs[args.b]]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        print(f"| {case} | {statistics.median(a) * 1e3:.3f} | {statistics.median(b) * 1e3:.3f} | "
              f"{', '.join(f'{q:.3f}' for q in ratios)} | {statistics.median(ratios):.3f} |")


if __name__ == "__main__":
    main()
