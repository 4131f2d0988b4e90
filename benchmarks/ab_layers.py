"""The fused recurrent layers of another checkout against the current ones, in one process.

    git worktree add /tmp/base <commit>
    python benchmarks/ab_layers.py /tmp/base/src [--kind LSTM|GRU] [--batch 20] [--steps 20]
                                   [--hidden 200] [--reps 150] [--malloc steady|default]
    python benchmarks/ab_layers.py /tmp/base/src --bits

``benchmarks/ab_trees.py`` compares two checkouts in alternating processes; with two threads
this machine's process-to-process spread (±25 % on unchanged code) hides changes of a few
per cent. This script loads the base checkout's ``noisyact/rnn/_fused_common.py``,
``_fused_lstm.py`` and ``_fused_gru.py`` beside the installed ones (the rest of the package,
compiler included, is shared: the base must call it as the current code does) and times a
2-layer NoisyLSTM/NoisyGRU (NAH) training step of the torch layer, the base layers and the
current ones in turn within every repetition (``benchmarks/rnn.py``'s interleaving). It prints
the median tokens/s, the median per-repetition time ratio new/base (< 1: the current code is
faster) and the speed × torch.

``--bits`` times nothing: it runs both versions of both layers (2 layers, NAH, 7 steps) at batch
sizes 1-8 on the same inputs and noise, in training (output and every gradient) and in
evaluation, and prints whether each case is identical to the bit (exit status 1 if one is
not): a change meant to keep the numbers must pass it, since the committed results reproduce
only if every product sums in the same order.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from types import ModuleType

import torch
from rnn import _interleaved, _rates, _steady_malloc  # benchmarks/rnn.py, beside this script
from torch import nn

import noisyact
import noisyact.rnn as rnn_pkg
import noisyact.rnn._fused_common as current_common
import noisyact.rnn.modules as rnn_modules


def _load(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _base_layers(src: str) -> tuple[object, object]:
    """(fused_lstm_layer, fused_gru_layer) of the checkout whose source folder is ``src``; its
    layers import its own ``_fused_common``."""
    folder = os.path.join(src, "noisyact", "rnn")
    common = _load("noisyact.rnn._fused_common_base", os.path.join(folder, "_fused_common.py"))
    sys.modules["noisyact.rnn._fused_common"] = rnn_pkg._fused_common = common
    try:
        lstm = _load("noisyact.rnn._fused_lstm_base", os.path.join(folder, "_fused_lstm.py"))
        gru = _load("noisyact.rnn._fused_gru_base", os.path.join(folder, "_fused_gru.py"))
    finally:
        sys.modules["noisyact.rnn._fused_common"] = rnn_pkg._fused_common = current_common
    return lstm.fused_lstm_layer, gru.fused_gru_layer


def _outputs(m: nn.Module, x: torch.Tensor, training: bool) -> list[torch.Tensor]:
    """The output and (in training) every parameter gradient of ``m`` on ``x``, noise drawn
    from seed 0."""
    m.train(training)
    m.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    if not training:
        with torch.no_grad():
            return [m(x)[0]]
    y = m(x)[0]
    y.square().sum().backward()
    return [y.detach()] + [p.grad for p in m.parameters() if p.grad is not None]


def _check_bits(use, base: tuple[object, object], new: tuple[object, object]) -> bool:
    """Print whether base and new layers give the same bits; True if they all do."""
    same_all = True
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("| layer | batch | mode | identical | max abs difference |")
    print("|---|---:|---|---|---:|")
    for kind in ("LSTM", "GRU"):
        for batch in range(1, 9):
            torch.manual_seed(batch)
            m = getattr(noisyact, f"Noisy{kind}")(16, 32, 2, variant="NAH")
            x = torch.randn(7, batch, 16)
            for training in (True, False):
                use(base)
                a = _outputs(m, x, training)
                use(new)
                b = _outputs(m, x, training)
                if len(a) != len(b):  # a different set of gradients
                    same, diff = False, float("inf")
                else:
                    same = all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
                    diff = max((u - v).abs().max().item() for u, v in zip(a, b, strict=True))
                same_all &= same
                print(f"| {kind} | {batch} | {'train' if training else 'eval'} | "
                      f"{'yes' if same else 'NO'} | {diff:.3g} |")
    return same_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="source folder of the base checkout, e.g. /tmp/base/src")
    ap.add_argument("--kind", choices=("LSTM", "GRU"), default="LSTM")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--reps", type=int, default=150)
    ap.add_argument("--malloc", choices=("steady", "default"), default="steady")
    ap.add_argument("--bits", action="store_true",
                    help="compare the two versions' numbers bit for bit instead of timing them")
    args = ap.parse_args()
    if args.malloc == "steady":
        _steady_malloc()
    noisyact.set_compile_after(0)
    new = (rnn_modules.fused_lstm_layer, rnn_modules.fused_gru_layer)
    base = _base_layers(args.base)

    def use(layers: tuple[object, object]) -> None:
        rnn_modules.fused_lstm_layer, rnn_modules.fused_gru_layer = layers  # type: ignore[assignment]

    if args.bits:
        same = _check_bits(use, base, new)
        use(new)
        raise SystemExit(0 if same else 1)
    torch.manual_seed(0)
    B, T, H = args.batch, args.steps, args.hidden
    ours = getattr(noisyact, f"Noisy{args.kind}")(H, H, 2, variant="NAH")
    ref = getattr(nn, args.kind)(H, H, 2)
    x = torch.randn(T, B, H)

    def train(m: nn.Module, layers: tuple[object, object] | None = None) -> None:
        if layers is not None:
            use(layers)
        m.zero_grad(set_to_none=True)
        m(x)[0].sum().backward()

    names = ("torch", "base", "new")
    fns = [lambda: train(ref), lambda: train(ours, base), lambda: train(ours, new)]
    times = _interleaved(fns, args.reps, "cpu")
    use(new)
    rates = _rates(times, B * T)
    new_base = statistics.median(n / b for b, n in zip(times[1], times[2], strict=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.kind} 2×{H}, "
          f"batch {B}, {T} steps, {args.reps} repetitions, malloc {args.malloc}")
    print("| layers | train tok/s | time new/base | × torch |")
    print("|---|---:|---:|---:|")
    for name, (rate, vs_torch) in zip(names, rates, strict=True):
        ratio = {"base": "1.000", "new": f"{new_base:.3f}"}.get(name, "")
        print(f"| {name} | {rate:,.0f} | {ratio} | {vs_torch:.3f} |")


if __name__ == "__main__":
    main()
