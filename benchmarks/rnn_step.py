"""Where one time step of the noisy LSTM goes, against nn.LSTM's cost per step, in one run.

    python benchmarks/rnn_step.py [--batch 20] [--hidden 200] [--steps 20] [--malloc steady|default]

Defaults: the PTB size of benchmarks/rnn.py (Zaremba small, batch 20, 2×200; one layer here).
Prints, in µs (median of repeated calls with the same arguments, two threads unless
OMP_NUM_THREADS says otherwise; --malloc as in benchmarks/rnn.py):
  fused forward step    one compiled per-step call of NoisyLSTM (NAH) in training: the recurrent
                        product h @ W_hh and every unit of the step, saving its backward
                        coefficients
  fused backward step   one compiled backward call (a few products and dpre @ W_hh)
  recurrent GEMM        the product of one step alone, (B, H) @ (H, 4H), with ATen's default GEMM,
                        and (where this build has them) with the weight packed once, as oneDNN's
                        fused LSTM does: torch.ops.mkldnn._linear_pointwise on a weight reordered
                        by torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkl._mkl_linear on
                        one packed by torch.ops.mkl._mkl_reorder_linear_weight (private ops)
  sequence GEMMs        the products over the whole sequence that both layers run once per call
                        (input projection, its input and weight gradients, the recurrent weight
                        gradient), their sum divided by T: their share of one step
  recurrent GEMM, bwd   the backward step's product dpre @ W_hh, (B, 4H) @ (4H, H)
  every GEMM of a step  the forward and backward recurrent GEMMs + that share: what the step
                        would cost with units, noise and bookkeeping free
  nn.LSTM per step      a one-layer nn.LSTM training step (forward + backward, oneDNN), the
                        difference between 2T and T steps divided by T: everything per step
                        (input projection share included)
The compiled steps are reached by wrapping noisyact.rnn._fused_lstm.loop_kernel (private).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from rnn import _steady_malloc  # benchmarks/rnn.py, beside this script
from torch import nn

import noisyact
from noisyact.rnn import _fused_lstm


def _us(fn: Callable[[], Any], n: int) -> float:
    """Median µs per call over 5 batches of ``n`` calls, after a warm-up."""
    for _ in range(max(10, n // 10)):
        fn()
    batches = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(batches)


def _captured_steps(B: int, H: int, T: int) -> dict[str, tuple[Callable[..., Any], tuple]]:
    """The compiled forward and backward step of a NoisyLSTM layer with the arguments of their
    first call in a training step."""
    captured: dict[str, tuple[Callable[..., Any], tuple]] = {}
    original = _fused_lstm.loop_kernel

    def capturing(kernel: Callable[..., Any], *a: Any, **k: Any) -> Callable[..., Any]:
        fn = original(kernel, *a, **k)

        def call(*args: Any) -> Any:
            captured.setdefault(kernel.__name__, (fn, args))
            return fn(*args)

        return call

    _fused_lstm.loop_kernel = capturing  # type: ignore[assignment]
    try:
        m = noisyact.NoisyLSTM(H, H, 1, variant="NAH")
        m(torch.randn(T, B, H))[0].sum().backward()
    finally:
        _fused_lstm.loop_kernel = original  # type: ignore[assignment]
    return captured


def _onednn_packed(h: torch.Tensor, w: torch.Tensor) -> Callable[[], torch.Tensor]:
    packed = torch.ops.mkldnn._reorder_linear_weight(w, h.shape[0])
    return lambda: torch.ops.mkldnn._linear_pointwise(h, packed, None, "none", [], "")


def _mkl_packed(h: torch.Tensor, w: torch.Tensor) -> Callable[[], torch.Tensor]:
    packed = torch.ops.mkl._mkl_reorder_linear_weight(w, h.shape[0])
    return lambda: torch.ops.mkl._mkl_linear(h, packed, w, None, h.shape[0])


def _packed_gemms(h: torch.Tensor, w: torch.Tensor, n: int) -> list[tuple[str, float]]:
    """µs of ``h @ w.T`` with ``w`` (4H, H) packed once by the private oneDNN and MKL ops this
    build has (each checked against the plain product)."""
    rows = []
    for name, make in [("recurrent GEMM, oneDNN packed weight", _onednn_packed),
                       ("recurrent GEMM, MKL packed weight", _mkl_packed)]:
        try:
            fn = make(h, w)
            torch.testing.assert_close(fn(), h @ w.t(), rtol=1e-4, atol=1e-3)
        except (AttributeError, RuntimeError):  # not in this build
            continue
        rows.append((name, _us(fn, n)))
    return rows


def _sequence_gemms(B: int, H: int, T: int, n: int) -> float:
    """µs per step of the whole-sequence products of one layer (see the module docstring)."""
    x, w, b = torch.randn(T * B, H), torch.randn(4 * H, H), torch.randn(4 * H)
    d = torch.randn(T * B, 4 * H)
    projection = _us(lambda: torch.addmm(b, x, w.t()), n)
    input_grad = _us(lambda: d @ w, n)
    # the input and the recurrent weight gradients have the same shapes: timed once, counted twice
    weight_grad = _us(lambda: d.t() @ x, n)
    return (projection + input_grad + 2 * weight_grad) / T


def _torch_per_step(B: int, H: int, T: int, n: int) -> float:
    lstm = nn.LSTM(H, H, 1)

    def step(x: torch.Tensor) -> None:
        lstm.zero_grad(set_to_none=True)
        lstm(x)[0].sum().backward()

    x1, x2 = torch.randn(T, B, H), torch.randn(2 * T, B, H)
    return (_us(lambda: step(x2), n) - _us(lambda: step(x1), n)) / T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--calls", type=int, default=1000, help="calls per timed batch")
    ap.add_argument("--malloc", choices=("steady", "default"), default="steady",
                    help="as in benchmarks/rnn.py")
    args = ap.parse_args()
    steady = args.malloc == "steady" and _steady_malloc()
    B, H, T = args.batch, args.hidden, args.steps
    noisyact.set_compile_after(0)
    steps = _captured_steps(B, H, T)
    fwd, fwd_args = steps["_fwd_step"]
    bwd, bwd_args = steps["_bwd_step"]
    h, w = torch.randn(B, H), torch.randn(4 * H, H)
    w_t = w.t().contiguous()  # W_hhᵀ made once per layer call, as the step multiplies by it
    recurrent = _us(lambda: h @ w_t, args.calls)
    d_pre = torch.randn(B, 4 * H)
    recurrent_bwd = _us(lambda: d_pre @ w, args.calls)
    sequence = _sequence_gemms(B, H, T, max(1, args.calls // 20))
    rows = [
        ("fused forward step", _us(lambda: fwd(*fwd_args), args.calls)),
        ("fused backward step", _us(lambda: bwd(*bwd_args), args.calls)),
        ("recurrent GEMM", recurrent),
        *_packed_gemms(h, w, args.calls),
        ("recurrent GEMM, backward", recurrent_bwd),
        ("sequence GEMMs, per step", sequence),
        ("every GEMM of a step (recurrent forward + backward + sequence share)",
         recurrent + recurrent_bwd + sequence),
        ("nn.LSTM per step (fwd + bwd)", _torch_per_step(B, H, T, max(1, args.calls // 20))),
    ]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"B{B} H{H} T{T}, one layer, NAH, malloc {'steady' if steady else 'glibc default'}")
    print("| per step | µs |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
