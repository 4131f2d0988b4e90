"""First-call cost: whole processes (import included) doing one useful step, noisy vs torch.

    python benchmarks/startup.py [--reps N] [--device cpu|cuda] [--options]

Each scenario is a fresh Python process that imports torch (and noisyact), builds the module and
runs one forward + backward (the activation: NoisyHardTanh vs nn.Hardtanh over 64×1024; the
recurrent layer: one SGD training step of a 2-layer NoisyLSTM vs nn.LSTM at the PTB size, batch
20, 20 steps, 200 units), with noisyact's default settings (kernels run eagerly until they have
cost 2 s, then compiled) and with its kernels compiled at the first call
(``NOISYACT_COMPILE_AFTER=0``). The first process of each kind warms the on-disk caches (Inductor's,
and whatever noisyact keeps) and is reported separately; the timed processes then alternate
torch / noisyact, and the table gives medians and the median of the per-repetition differences
and ratios, so that a machine drifting over minutes affects both alike.

``--options`` measures instead what each way of shipping compiled kernels costs a new process
before its first call (the same small elementwise kernel, saved once, loaded per process, each
process against a plain ``import torch`` one, interleaved): noisyact's eager fallback, its
compiled path (traced again per process, Inductor's code cache warm), an Inductor
``CompiledArtifact`` saved with ``standalone_compile`` and reloaded, an AOTInductor package
(``aoti_load_package``), and a C++ extension built once with ``torch.utils.cpp_extension`` and
loaded from its build folder with ``torch.ops.load_library``.
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

ACT = "noisyact.NoisyHardTanh('NAH', num_parameters=1024, dim=-1)"
NLSTM = "noisyact.NoisyLSTM(200, 200, num_layers=2, variant='NAH')"
#: noisyact's kernels compiled at their first call instead of once they have cost 2 s of eager
#: calls (the default; see noisyact.compiler)
AT_ONCE = "import os; os.environ['NOISYACT_COMPILE_AFTER'] = '0'\nimport noisyact"

SCENARIOS = {
    "activation 64×1024 fwd+bwd": (ACTIVATION, "torch.nn.Hardtanh()", "import noisyact", ACT),
    "activation, compiled at the first call": (
        ACTIVATION, "torch.nn.Hardtanh()", AT_ONCE, ACT),
    "2-layer LSTM 200, B20 T20, one train step": (
        LSTM, "torch.nn.LSTM(200, 200, num_layers=2)", "import noisyact", NLSTM),
    "LSTM, compiled at the first call": (
        LSTM, "torch.nn.LSTM(200, 200, num_layers=2)", AT_ONCE, NLSTM),
}


def _run(code: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scenario failed:\n{code}\n{proc.stderr[-3000:]}")
    return wall


OPTION_KERNEL = "def f(x, y):\n    return (torch.tanh(x) * y + 1,)\n"
X = "x = torch.randn(64, 1024); y = torch.randn(64, 1024)\n"

OPTIONS = {
    "noisyact eager fallback": (
        "import os; os.environ['NOISYACT_FUSED'] = 'eager'\n"
        + ACTIVATION.format(imp="import noisyact", dev="cpu", make=ACT)),
    "noisyact compiled (traced per process)": ACTIVATION.format(imp=AT_ONCE, dev="cpu",
                                                                make=ACT),
    "Inductor CompiledArtifact.load": (
        "import torch\nfrom torch._inductor import CompiledArtifact\n" + X
        + "f = CompiledArtifact.load(path='{dir}/artifact.bin')\nf(x, y)\n"),
    "AOTInductor aoti_load_package": (
        "import torch\n" + X
        + "f = torch._inductor.aoti_load_package('{dir}/kernel.pt2')\nf(x, y)\n"),
    "C++ extension (torch.ops.load_library)": (
        "import torch\n" + X
        + "torch.ops.load_library('{dir}/ext/startup_ext.so')\ntorch.ops.startup_ext.f(x, y)\n"),
}

CPP = """
#include <torch/extension.h>
torch::Tensor f(torch::Tensor x, torch::Tensor y) { return torch::tanh(x) * y + 1; }
TORCH_LIBRARY(startup_ext, m) { m.def("f", &f); }
"""


def _prepare_options(d: str) -> None:
    """Save the kernel once in each form (this is the one-time build, not timed)."""
    import torch
    from torch._inductor import standalone_compile
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils import cpp_extension

    ns: dict = {"torch": torch}
    exec(OPTION_KERNEL, ns)
    f = ns["f"]
    x, y = torch.randn(64, 1024), torch.randn(64, 1024)
    gm = make_fx(f, tracing_mode="symbolic")(x, y)
    standalone_compile(gm, [x, y], dynamic_shapes="from_graph").save(path=f"{d}/artifact.bin")

    class M(torch.nn.Module):
        def forward(self, x, y):
            return f(x, y)[0]

    d0, d1 = torch.export.Dim("d0"), torch.export.Dim("d1")
    ep = torch.export.export(M(), (x, y), dynamic_shapes=({0: d0, 1: d1}, {0: d0, 1: d1}))
    torch._inductor.aoti_compile_and_package(ep, package_path=f"{d}/kernel.pt2")
    os.makedirs(f"{d}/ext", exist_ok=True)
    cpp_extension.load_inline("startup_ext", CPP, build_directory=f"{d}/ext", is_python_module=False)


def options(reps: int) -> None:
    import tempfile

    d = tempfile.mkdtemp(prefix="noisyact-startup-")
    _prepare_options(d)
    baseline = "import torch\n" + X
    print("| way to ship a compiled kernel | process (s) | `import torch` process (s) | "
          "extra cost (s) |")
    print("|---|---:|---:|---:|")
    for name, code in OPTIONS.items():
        code = code.replace("{dir}", d)
        _run(code)  # warm the caches this option uses
        a, b = [], []
        for _ in range(reps):
            a.append(_run(baseline))
            b.append(_run(code))
        diff = statistics.median(y - x for x, y in zip(a, b, strict=True))
        print(f"| {name} | {statistics.median(b):.2f} | {statistics.median(a):.2f} | "
              f"{diff:+.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--options", action="store_true",
                    help="compare ways of shipping compiled kernels (see the docstring)")
    args = ap.parse_args()
    if args.options:
        options(args.reps)
        return
    print(f"python {sys.version.split()[0]}, device {args.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, {args.reps} repetitions")
    print("| scenario | first process (cold caches?) torch / noisyact (s) | torch (s) | "
          "noisyact (s) | noisyact − torch (s) | × torch |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (template, make_torch, imp, make_ours) in SCENARIOS.items():
        torch_code = template.format(imp="", make=make_torch, dev=args.device)
        ours_code = template.format(imp=imp, make=make_ours, dev=args.device)
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
