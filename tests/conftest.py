"""Test setup: run Triton kernels in the interpreter (set before anything imports triton)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
