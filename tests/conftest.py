"""Fixtures shared by every test: deterministic random inputs, and a guard that no test leaves a
network scope active (trtdsl has no global network; ``net.scope()`` must always be closed)."""

from __future__ import annotations

from typing import Iterator

import os

import pytest
import torch

from trtdsl.ir import network as _network

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One pytest worker per core: torch's own thread pool on top of that makes tiny ops orders of
    # magnitude slower on a 2-core machine.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_check_no_active_network() -> Iterator[None]:
    torch.manual_seed(0)
    assert _network._ACTIVE.get() == [], "a network scope was left active before this test"
    yield
    assert _network._ACTIVE.get() == [], "this test left a `with net.scope():` block open"
