"""The noise monitor over a short annealed run: which units saturate, and what the noise moves.

An ``nn.LSTM`` regression model is converted with ``noisify`` (NAN) and trained with c annealed
from 30 (``InverseSqrt``) while a :class:`noisyact.NoiseTracker` logs the monitor, twice: with
inputs of scale 1, and of scale 8. The figure (docs/figures/monitor.png in the documentation)
plots, per unit of the LSTM, the share of inputs in saturation and the share of outputs the
noise moved, with c::

    python examples/monitor.py --out docs/figures/monitor.png    # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import noisyact


def run(steps: int = 400, scale: float = 1.0, log_every: int = 20,
        seed: int = 0) -> list[tuple[int, dict]]:
    """Train the model on inputs of ``scale``; return the logged ``(step, values)`` pairs."""
    torch.manual_seed(seed)
    model = nn.ModuleDict({"rnn": nn.LSTM(1, 32), "head": nn.Linear(32, 1)})
    print(noisyact.noisify(model, "NAN"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    logged: list[tuple[int, dict]] = []
    tracker = noisyact.NoiseTracker(model, noisyact.InverseSqrt(c0=30.0, every=10, floor=0.5),
                                    log_every=log_every, log=lambda v, s: logged.append((s, v)))
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(20, 32, 1, generator=g)  # the task: the running sum of the sequence
        out, _ = model["rnn"](scale * x)
        loss = nn.functional.mse_loss(model["head"](out), x.cumsum(0) / 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.step()
    tracker.remove()
    return logged


def plot(runs: dict[float, list[tuple[int, dict]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), sharex=True)
    colours = {"gate": "C0", "cand": "C1", "cell": "C2"}
    for scale, logged in runs.items():
        steps = [s for s, _ in logged]
        style = "-" if scale == 1 else ":"
        for unit, colour in colours.items():
            key = f"noise/rnn.noise_l0.{unit}"
            label = f"{unit}, inputs ×{scale:g}"
            axes[0].plot(steps, [v[f"{key}/saturated"] for _, v in logged], style,
                         color=colour, label=label)
            axes[1].plot(steps, [v[f"{key}/moved"] for _, v in logged], style, color=colour)
    axes[0].set_title("inputs in saturation (share)")
    axes[1].set_title("outputs moved by the noise by > 0.001 (share)")
    for ax in axes:
        ax.set_xlabel("updates")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7, ncol=2)
    logged = next(iter(runs.values()))
    twin = axes[1].twinx()
    twin.plot([s for s, _ in logged], [v["noise/c"] for _, v in logged], "k--")
    twin.set_ylabel("c (dashed)")
    fig.suptitle("noisyact.monitor: NAN LSTM (noisify of nn.LSTM), c annealed from 30 "
                 "(InverseSqrt, every 10 updates)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("monitor.png"), help="the figure to write")
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    runs = {scale: run(args.steps, scale) for scale in (1.0, 8.0)}
    plot(runs, args.out)
    for scale, logged in runs.items():
        step, last = logged[-1]
        print(f"inputs ×{scale:g}, step {step}: c = {last['noise/c']:.3g}, saturated: "
              + ", ".join(f"{u} {last[f'noise/rnn.noise_l0.{u}/saturated']:.3f}"
                          for u in ("gate", "cand", "cell")))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
