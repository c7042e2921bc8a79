"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test on one thread: steadier timing on a shared 2-core machine, and bit-exact CPU results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
