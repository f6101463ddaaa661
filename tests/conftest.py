"""Test-wide setup: run Triton kernels in the interpreter without CUDA, skip `gpu` tests there, seed per test.

The environment variables must be set before torch (which loads numpy) and triton are imported, and pytest
imports this file before any test module, so they are set at the top, before `import torch`.
"""

from __future__ import annotations

import os
import zlib

# The interpreter's tl.dot is np.matmul on tiny tiles; multi-threaded OpenBLAS on those, on a shared 2-core
# machine, is ~1000x slower than one thread. Only numpy in this process is affected.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402  (after the environment above; torch does not import triton)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Kernels then run on CPU tensors through Triton's interpreter (slow: tests keep shapes small).
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed(request) -> int:
    """Seeds torch from the test id: each test draws its own inputs, and a failure reproduces exactly."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    return seed


@pytest.fixture
def seed(_seed) -> int:
    """The seed this test runs under (for tests that build their own torch.Generator)."""
    return _seed
