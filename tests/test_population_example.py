"""Smoke test of examples/population_vmap.py with tiny settings."""

import pytest

from .test_examples import load_example


@pytest.mark.slow
def test_population_example_runs():
    module = load_example("population_vmap")
    result = module.main(["--members", "3", "--epochs", "1", "--timesteps", "3", "--hidden", "16"])
    assert result["vmapped_acc"].shape == (3,) and result["loop_acc"].shape == (3,)
    assert ((result["vmapped_acc"] >= 0) & (result["vmapped_acc"] <= 1)).all()
    assert result["vmapped_acc"].mean() > 0.3  # one epoch already learns well above chance (0.1)
