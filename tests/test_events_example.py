"""examples/tonic_events.py: procedurally made events through tonic's Denoise and ToFrame into tt.nn.run."""

import pytest

from .test_examples import load_example


@pytest.mark.slow
def test_tonic_example_learns_the_direction_of_the_dot():
    pytest.importorskip("tonic", reason="needs the optional 'tonic' extra (CI installs it)")
    module = load_example("tonic_events")
    assert module.accuracy > 0.9 and module.xs.shape == (10, 32, 2, 8, 8)
