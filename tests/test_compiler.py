"""noisyact.compiler: kernels compiled once per signature, symbolic sizes, eager fallback."""

import inspect
import warnings
from pathlib import Path

import pytest
import torch

import noisyact
from noisyact import _inductor, compiler


def _kernel(x, y, z, scale):
    """Absent arguments and outputs, broadcasting over a size-1 dimension, a static argument."""
    a = x * scale + (0.0 if z is None else z)
    return a + y, None, (x * y).sum(-1)


@pytest.fixture
def compile_mode():
    noisyact.set_fused_mode("compile")
    yield
    noisyact.set_fused_mode("eager")


def _check(args, scale=2.0):
    got = compiler.run_kernel(_kernel, *args, static=(scale,))
    want = _kernel(*args, scale)
    assert got[1] is None
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[2], want[2])


@pytest.mark.slow
def test_compiled_kernel_serves_every_size(compile_mode):
    """Traced once with sizes that happen to be equal (duck sizing would tie them together):
    other, unequal sizes give the eager numbers from the same compiled kernel."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
        _check((torch.randn(5, 5), torch.randn(1, 5), None))
        first = compiler.compiled_kernel(_kernel, (torch.randn(5, 5), torch.randn(1, 5), None),
                                         (2.0,))
        assert isinstance(first, compiler._Guarded)
        for shape in [(3, 7), (11, 2), (2, 9)]:
            _check((torch.randn(*shape), torch.randn(1, shape[1]), None))
            k = compiler.compiled_kernel(_kernel, (torch.randn(*shape), torch.randn(1, shape[1]),
                                                   None), (2.0,))
            assert k is first  # same signature: no new compilation
        # a present z, another static value, a batch of one: each its own kernel
        _check((torch.randn(4, 3), torch.randn(1, 3), torch.randn(4, 3)))
        _check((torch.randn(4, 3), torch.randn(1, 3), None), scale=-1.0)
        _check((torch.randn(1, 3), torch.randn(1, 3), None))
        _check((torch.randn(4, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64),
                None))


def test_non_contiguous_arguments_are_made_contiguous(compile_mode):
    x = torch.randn(6, 4).t()
    assert not x.is_contiguous()
    _check((x, torch.randn(1, 6), None))


def test_failed_compilation_warns_once_and_runs_eagerly(compile_mode, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compiler, "Standalone", broken)
    monkeypatch.setattr(compiler, "Dynamo", broken)
    monkeypatch.setitem(compiler._state, "compiled", {})
    args = (torch.randn(3, 4), torch.randn(1, 4), None)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        _check(args, scale=3.0)
    assert noisyact.fused_mode() == "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _check(args, scale=3.0)  # eager from now on, no second warning


def test_eager_mode_never_compiles(monkeypatch):
    noisyact.set_fused_mode("eager")
    monkeypatch.setitem(compiler._state, "compiled", {})
    k = compiler.compiled_kernel(_kernel, (torch.randn(2, 2), torch.randn(1, 2), None), (1.0,))
    assert isinstance(k, compiler._Eager)
    assert compiler._state["compiled"] == {}


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        noisyact.set_fused_mode("fast")


def test_torch_compile_path_gives_the_same_numbers(compile_mode, monkeypatch):
    """A torch without standalone_compile compiles with torch.compile."""
    monkeypatch.setattr(compiler, "has_standalone_compile", lambda: False)
    monkeypatch.setitem(compiler._state, "compiled", {})
    args = (torch.randn(3, 4), torch.randn(1, 4), None)
    k = compiler.compiled_kernel(_kernel, args, (2.0,))
    assert isinstance(k._compiled, compiler.Dynamo)
    got, want = k(*args), _kernel(*args, 2.0)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[2], want[2])


def test_loop_kernel_compiles_at_its_first_call(compile_mode, monkeypatch):
    monkeypatch.setitem(compiler._state, "compiled", {})
    step = compiler.loop_kernel(_kernel, (2.0,))
    assert compiler._state["compiled"] == {}
    for n in (3, 5):
        args = (torch.randn(n, 4), torch.randn(1, 4), None)
        torch.testing.assert_close(step(*args)[0], _kernel(*args, 2.0)[0])
    assert len(compiler._state["compiled"]) == 1


def test_direct_call_equals_the_wrapped_artifact(compile_mode, monkeypatch):
    """Outside autograd the compiled module is called directly (no AOT/Dynamo wrappers); with
    grad mode on the artifact is called. Both give the eager numbers, a single output unwrapped."""
    monkeypatch.setitem(compiler._state, "compiled", {})
    args = (torch.randn(3, 4), torch.randn(1, 4), None)
    k = compiler.compiled_kernel(_kernel, args, (2.0,))
    assert k._compiled._direct is not None
    want = _kernel(*args, 2.0)
    with torch.no_grad():
        direct = k(*args)
    wrapped = k(*args)
    for got in (direct, wrapped):
        assert got[1] is None
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[2], want[2])
    single = compiler.compiled_kernel(torch.sin, (args[0],))
    with torch.no_grad():
        torch.testing.assert_close(single(args[0]), torch.sin(args[0]))
    torch.testing.assert_close(single(args[0]), torch.sin(args[0]))


def test_compiled_kernels_refuse_non_contiguous_arguments(compile_mode):
    """Compiled code assumes row-major strides (its size asserts are off): a strided argument
    is an error at lookup, not a silent wrong read."""
    x = torch.randn(6, 4).t()
    with pytest.raises(ValueError, match="argument 0 is not contiguous"):
        compiler.compiled_kernel(_kernel, (x, torch.randn(1, 6), None), (2.0,))


def test_c_plus_plus_wrapper_failure_retries_with_the_python_wrapper(compile_mode, monkeypatch):
    import torch._inductor
    import torch._inductor.config as inductor_config

    real = torch._inductor.standalone_compile
    tried = []

    def no_cpp_wrapper(*args, **kwargs):
        tried.append(inductor_config.cpp_wrapper)
        if inductor_config.cpp_wrapper:
            raise RuntimeError("no C++ wrapper here")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch._inductor, "standalone_compile", no_cpp_wrapper)
    monkeypatch.setitem(compiler._state, "compiled", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        _check((torch.randn(3, 4), torch.randn(1, 4), None), scale=5.0)
    assert tried == [True, False]
    assert noisyact.fused_mode() == "compile"


def test_first_build_on_a_machine_is_announced_once(tmp_path, monkeypatch, capsys):
    from noisyact import compiler

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(compiler._state, "announced", False)
    compiler._announce_first_build()
    compiler._announce_first_build()  # same process: silent
    err = capsys.readouterr().err
    assert err.count("noisyact: compiling the fused kernels") == 1 and err.count("\n") == 1
    monkeypatch.setitem(compiler._state, "announced", False)  # a later process on this machine
    compiler._announce_first_build()
    assert capsys.readouterr().err == ""


# Tiered compilation: eager first, compiled once the eager calls have cost compile_after().


class _Recorder:
    """Stands in for the compiler: records each compilation and runs the kernel eagerly."""

    def __init__(self):
        self.built = []

    def __call__(self, kernel, args, static, inline):
        self.built.append(len(args))
        return compiler._Eager(kernel, static)


def test_kernels_run_eagerly_until_their_eager_time_reaches_the_budget(compile_mode,
                                                                        monkeypatch):
    import time

    recorder = _Recorder()
    monkeypatch.setattr(compiler, "_compile", recorder)
    monkeypatch.setitem(compiler._state, "compiled", {})
    noisyact.set_compile_after(0.05)

    def slow(x):
        time.sleep(0.02)
        return x + 1

    x = torch.zeros(3)
    spent = 0.0
    for _ in range(10):
        k = compiler.compiled_kernel(slow, (x,))
        assert isinstance(k, compiler._Tiered)
        if k.compiled:
            break
        assert not recorder.built
        before = time.perf_counter()
        y = k(x)
        spent += time.perf_counter() - before  # the kernel's call only: a first assert_close
        torch.testing.assert_close(y, x + 1)  # in the process takes most of a second
    assert recorder.built == [1]  # compiled once, at the call after the budget was spent
    assert spent >= 0.05
    assert spent - 0.02 < 0.05 + 0.02 * 5  # and not much later (sleep may overshoot)
    k(x)
    assert recorder.built == [1]  # and then never again


def test_a_budget_of_zero_compiles_at_once_and_infinity_never(compile_mode, monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(compiler, "_compile", recorder)
    monkeypatch.setitem(compiler._state, "compiled", {})
    noisyact.set_compile_after(float("inf"))
    k = compiler.compiled_kernel(torch.neg, (torch.ones(2),))
    for _ in range(50):
        k(torch.ones(2))
    assert recorder.built == []
    monkeypatch.setitem(compiler._state, "compiled", {})
    noisyact.set_compile_after(0)
    compiler.compiled_kernel(torch.neg, (torch.ones(2),))
    assert recorder.built == [1]


def test_a_budget_set_later_applies_to_kernels_already_seen(compile_mode, monkeypatch):
    """Issue 35: a kernel first run under a large budget (one small model at the start of a
    script) is compiled once the budget is lowered, also through a fresh lookup."""
    recorder = _Recorder()
    monkeypatch.setattr(compiler, "_compile", recorder)
    monkeypatch.setitem(compiler._state, "compiled", {})
    noisyact.set_compile_after(1e6)
    k = compiler.compiled_kernel(torch.neg, (torch.ones(2),))
    for _ in range(5):
        k(torch.ones(2))
    assert recorder.built == []
    noisyact.set_compile_after(0)
    compiler.compiled_kernel(torch.neg, (torch.ones(2),))(torch.ones(2))
    assert recorder.built == [1] and k.compiled  # the same cached kernel, now compiled


def test_off_the_cpu_kernels_count_calls_not_time(compile_mode, monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(compiler, "_compile", recorder)
    noisyact.set_compile_after(1e6)  # the time budget does not apply off the CPU
    k = compiler._Tiered(torch.neg, (), False, on_cpu=False)
    for _ in range(compiler.COMPILE_AFTER_CALLS):
        k(torch.ones(2))
    assert recorder.built == []
    k(torch.ones(2))
    assert recorder.built == [1]


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_compile_after_refuses_a_bad_budget(bad):
    with pytest.raises(ValueError, match="seconds must be a number >= 0"):
        noisyact.set_compile_after(bad)


def test_compile_after_reads_and_checks_its_environment_variable(monkeypatch):
    monkeypatch.setitem(compiler._state, "compile_after", None)
    monkeypatch.setenv("NOISYACT_COMPILE_AFTER", "0.5")
    assert noisyact.compile_after() == 0.5
    monkeypatch.setitem(compiler._state, "compile_after", None)
    monkeypatch.setenv("NOISYACT_COMPILE_AFTER", "soon")
    with pytest.raises(ValueError, match="NOISYACT_COMPILE_AFTER must be a number"):
        noisyact.compile_after()


FIRST_CALLS = """
import sys, torch, noisyact
act = noisyact.NoisyHardTanh("NAH", num_parameters=16, dim=-1)
act(torch.randn(8, 16) * 3).sum().backward()
m = noisyact.NoisyLSTM(8, 8, num_layers=2, variant="NAH")
y, _ = m(torch.randn(5, 3, 8))
y.square().mean().backward()
assert noisyact.fused_mode() == "compile"
print(sorted(n for n in ("torch._inductor", "torch._dynamo") if n in sys.modules))
"""


def test_first_calls_of_a_new_process_load_no_compiler():
    """The default settings: a noisy activation's and a noisy LSTM's first forward and backward
    run eagerly, without importing Dynamo or Inductor (that costs seconds a process; building a
    ``torch.optim`` optimizer imports Dynamo by itself, so the test uses none)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("NOISYACT_FUSED", "NOISYACT_COMPILE_AFTER")}
    out = subprocess.run([sys.executable, "-c", FIRST_CALLS], env={**env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_loop_calls_its_kernel_compiled_once_the_budget_is_spent(compile_mode, monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(compiler, "_compile", recorder)
    monkeypatch.setitem(compiler._state, "compiled", {})
    noisyact.set_compile_after(1e-12)  # spent by the first eager call
    step = compiler.loop_kernel(torch.neg)
    x = torch.ones(2)
    torch.testing.assert_close(step(x), -x)  # eager
    assert isinstance(step._run, compiler._Tiered) and recorder.built == []
    torch.testing.assert_close(step(x), -x)  # compiled here, then bound directly
    assert recorder.built == [1] and isinstance(step._run, compiler._Eager)


def test_the_experiment_runner_compiles_at_the_first_call_unless_told(monkeypatch):
    """A training run must not switch from eager to compiled code at a time-dependent point
    (the two round differently): the runner compiles at once unless a budget was chosen (in
    Python or with NOISYACT_COMPILE_AFTER), and leaves the caller's setting as it found it."""
    from noisyact.experiments import base, get, run_experiment

    seen = []
    monkeypatch.setattr(base, "_run_experiment",
                        lambda *args: seen.append(noisyact.compile_after()))
    monkeypatch.delenv("NOISYACT_COMPILE_AFTER", raising=False)
    noisyact.set_compile_after(None)
    run_experiment(get("gaussians"), "smoke", progress=False)
    assert seen == [0] and not compiler.compile_after_chosen()
    assert noisyact.compile_after() == 2  # the default again after the run
    noisyact.set_compile_after(5.0)
    run_experiment(get("gaussians"), "smoke", progress=False)
    assert seen == [0, 5.0] and noisyact.compile_after() == 5.0
    noisyact.set_compile_after(None)
    monkeypatch.setenv("NOISYACT_COMPILE_AFTER", "3")
    run_experiment(get("gaussians"), "smoke", progress=False)
    assert seen == [0, 5.0, 3.0] and noisyact.compile_after() == 3.0


def test_set_compile_after_none_forgets_the_choice(monkeypatch):
    monkeypatch.setenv("NOISYACT_COMPILE_AFTER", "0.25")
    noisyact.set_compile_after(7)
    assert noisyact.compile_after() == 7 and compiler.compile_after_chosen()
    noisyact.set_compile_after(None)
    assert noisyact.compile_after() == 0.25
    monkeypatch.delenv("NOISYACT_COMPILE_AFTER")
    noisyact.set_compile_after(None)
    assert noisyact.compile_after() == 2 and not compiler.compile_after_chosen()


def _elementwise(x):
    return torch.sigmoid(x) * 3.0 + x


@pytest.mark.skipif(not _inductor.has_standalone_compile(), reason="inspects the direct call")
def test_a_kernel_first_compiled_on_a_tiny_input_has_a_parallel_loop(compile_mode):
    """Regression: Inductor chose from the traced example's sizes whether a CPU loop is an
    OpenMP parallel loop, so a kernel first compiled on a small input ran serially for every
    later input (and its cache entry served that code to every later process): the activation
    over 4096×4096 took 224 ms instead of 135 ms after a first call on 2×3."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(2, 3)
        kernel = compiler.compiled_kernel(_elementwise, (x,))
        torch.testing.assert_close(kernel(x), _elementwise(x))
        source = Path(inspect.getsourcefile(kernel._compiled._direct)).read_text()
    finally:
        torch.set_num_threads(threads)
    assert "#pragma omp parallel" in source
