"""Test-session settings shared by every test."""
from __future__ import annotations

import os
import random

import pytest

# Each pytest session talks DDS on its own domain and only on this machine, so parallel
# sessions (and other graphs on the machine) never see each other's topics.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

# Two cores: keep torch from oversubscribing them when tests spawn processes.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
