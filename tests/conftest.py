"""Shared test set-up: every test starts from the same random seed, so a run is reproducible
whatever order (or worker) pytest-xdist gives it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


# Layers the tests create start no background kernel builds (most never run a kernel, and a
# build per type and quantizer would compete with the tests for the cores); tests/test_prebuild.py
# turns prebuild back on where it tests it.
from tracetorch.functional import kernels as _kernels  # noqa: E402

_kernels.config.prebuild = False
