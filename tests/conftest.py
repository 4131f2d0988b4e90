import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import noisyact

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _fused_eager_by_default():
    """Tests run the fused kernels eagerly (same functions, no compile latency).

    Tests of the compiled kernels set the mode themselves.
    """
    old, old_source = noisyact.fused_mode(), noisyact.noise_source()
    noisyact.set_fused_mode("eager")
    yield
    noisyact.set_fused_mode(old)
    noisyact.set_noise_source(old_source)


@pytest.fixture(params=["off", "eager"])
def path(request):
    """Run a test on the reference path and on the fused path."""
    noisyact.set_fused_mode(request.param)
    return request.param
