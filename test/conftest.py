"""Test-session settings shared by every test."""
from __future__ import annotations

import os
import random

import pytest

# Each pytest session talks DDS on its own domain and only on this machine, so parallel
# sessions (and other graphs on the machine) never see each other's topics.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

# Two cores shared by the test process and the node/publisher processes it starts: one
# intra-op thread each, or they spin against each other (a micro forward measured 60x slower
# with two threads per process on a loaded machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the packaging tests run without torch
    pass


@pytest.fixture(scope="session")
def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module whose code under test sets its own count (a Trainer's
    ``threads``), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
