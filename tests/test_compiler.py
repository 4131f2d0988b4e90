"""noisyact.compiler: kernels compiled once per signature, symbolic sizes, eager fallback."""

import warnings

import pytest
import torch

import noisyact
from noisyact import compiler


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

    monkeypatch.setattr(compiler, "_Standalone", broken)
    monkeypatch.setattr(compiler, "_Dynamo", broken)
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
    monkeypatch.setattr(compiler, "_has_standalone_compile", lambda: False)
    monkeypatch.setitem(compiler._state, "compiled", {})
    args = (torch.randn(3, 4), torch.randn(1, 4), None)
    k = compiler.compiled_kernel(_kernel, args, (2.0,))
    assert isinstance(k._compiled, compiler._Dynamo)
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
