import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import noisyact
from noisyact import compiler

# at most 2 threads, shared out among pytest-xdist's workers (``-n``) when there are several
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))

#: The mode of the fused path that tests run in: "eager" (default: the same functions without
#: compile latency) or "compile" (every fused kernel compiled by Inductor, as users run them; CI
#: runs the fused and recurrent tests this way too). Tests of the compiled kernels set the mode
#: themselves.
FUSED = os.environ.get("NOISYACT_TEST_FUSED", "eager")
if FUSED not in ("eager", "compile"):
    raise SystemExit(f"NOISYACT_TEST_FUSED must be eager or compile, got {FUSED!r}")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``compiled_run`` compile more kernels of kinds that the default run compiles
    already (each kernel costs 3-7 s to build from an empty cache); they run in the compiled run
    only, which CI makes after the default one."""
    if FUSED == "compile":
        return
    skip = pytest.mark.skip(reason="compiled run only (NOISYACT_TEST_FUSED=compile, as in CI)")
    for item in items:
        if "compiled_run" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fused_mode_of_the_run():
    """Each test starts in the mode :data:`FUSED` and leaves the global state as it found it."""
    old, old_source = noisyact.fused_mode(), noisyact.noise_source()
    old_budget = {k: compiler._state[k] for k in ("compile_after", "compile_after_chosen")}
    noisyact.set_fused_mode(FUSED)
    # a test that runs the compiled path means it from the first call (tests of the tiered
    # compilation set their own budget)
    noisyact.set_compile_after(0)
    yield
    noisyact.set_fused_mode(old)
    noisyact.set_noise_source(old_source)
    compiler._state.update(old_budget)


@pytest.fixture(params=["off", FUSED])
def path(request):
    """Run a test on the reference path and on the fused path (in the run's mode)."""
    noisyact.set_fused_mode(request.param)
    return request.param

