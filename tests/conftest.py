"""Shared test set-up: every test starts from the same random seed, so a run is reproducible
whatever order (or worker) pytest-xdist gives it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield
