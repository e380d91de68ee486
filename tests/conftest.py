"""Test setup: run Triton kernels in the interpreter (set before anything imports triton), and seed every test."""

import os
import random
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything(request: pytest.FixtureRequest) -> None:
    """Seed torch, numpy's global state and ``random`` from the test's id: every run of a test draws the same
    numbers, whatever ran before it, and different tests draw different ones."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
