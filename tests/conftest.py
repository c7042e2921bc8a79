"""Shared fixtures."""
import importlib.util
import shutil

import pytest
import torch

from patnet.layers import cpu_kernels

HAS_NINJA = shutil.which("ninja") is not None or importlib.util.find_spec("ninja") is not None
BUILDABLE = HAS_NINJA and (shutil.which("c++") or shutil.which("g++")) is not None


@pytest.fixture
def one_thread():
    """Run the test on one thread: steadier timing on a shared 2-core machine, and bit-exact CPU results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def kernels():
    """The kernels, built; a machine without a compiler or ninja skips, one with them must build."""
    if not BUILDABLE:
        pytest.skip("no C++ compiler or ninja on this machine")
    assert cpu_kernels.available(), "the C++ CPU kernels failed to build on a machine with a compiler and ninja"
