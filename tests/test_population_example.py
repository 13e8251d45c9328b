"""Smoke test of examples/population_vmap.py with tiny settings."""

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.slow
def test_population_example_runs():
    path = Path(__file__).parents[1] / "examples" / "population_vmap.py"
    spec = importlib.util.spec_from_file_location("population_vmap", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--members", "3", "--epochs", "1", "--timesteps", "3", "--hidden", "16"])
    assert result["vmapped_acc"].shape == (3,) and result["loop_acc"].shape == (3,)
    assert ((result["vmapped_acc"] >= 0) & (result["vmapped_acc"] <= 1)).all()
    assert result["vmapped_acc"].mean() > 0.3  # one epoch already learns well above chance (0.1)
