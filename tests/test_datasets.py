"""The procedural timing tasks: determinism by seed, shapes, balance, and that each is solvable in principle."""

from __future__ import annotations

import pytest
import torch

from tracetorch.datasets import TimingData, randman, store_recall


def test_randman_shapes_one_spike_per_unit_and_balance():
    data = randman(num_classes=4, num_units=6, num_steps=15, samples_per_class=7, seed=3)
    assert isinstance(data, TimingData) and data.num_classes == 4
    assert data.spikes.shape == (15, 28, 6) and data.spikes.dtype == torch.float32
    assert set(data.spikes.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(data.spikes.sum(0), torch.ones(28, 6))  # the information is in the timing only
    assert data.labels.dtype == torch.int64 and torch.equal(data.labels.bincount(), torch.full((4,), 7))


@pytest.mark.parametrize(
    "make",
    [
        lambda s: randman(num_classes=3, samples_per_class=5, jitter=1.0, seed=s),
        lambda s: store_recall(num_samples=12, seed=s),
    ],
)
def test_same_seed_same_data_other_seed_other_data(make):
    state = torch.get_rng_state()
    a, b, c = make(1), make(1), make(2)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.spikes, c.spikes)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched


def _spike_times(data: TimingData) -> torch.Tensor:
    return data.spikes.argmax(0).float()  # [S, N]: the one spike of each unit


def test_randman_is_solvable_from_spike_times():
    """1-nearest-neighbour on the spike times: far above chance (the manifolds are smooth and apart)."""
    data = randman(num_classes=5, num_units=20, num_steps=50, samples_per_class=80, seed=0)
    times, labels = _spike_times(data), data.labels
    train, test = slice(0, 300), slice(300, 400)
    nearest = torch.cdist(times[test], times[train]).argmin(1)
    accuracy = (labels[train][nearest] == labels[test]).float().mean().item()
    assert accuracy > 0.8  # chance: 0.2
    # but not from spike counts: every sample has the same counts
    assert torch.equal(data.spikes.sum(0).std(0), torch.zeros(20))


def test_store_recall_layout_and_balance():
    data = store_recall(num_samples=40, num_values=2, num_periods=5, period=4, units_per_group=3, rate=0.6, seed=0)
    assert data.spikes.shape == (20, 40, 12) and data.num_classes == 2
    assert torch.equal(data.labels.bincount(), torch.full((2,), 20))
    last = data.spikes[-4:]  # the recall period: only the recall group
    assert last[..., :9].sum() == 0 and last[..., 9:].sum() > 0
    assert data.spikes[:-4, :, 9:].sum() == 0  # no recall cue before it
    # exactly one store period per sample
    store = data.spikes[:-4, :, 6:9].reshape(4, 4, 40, 3).sum((1, 3)) > 0
    assert torch.equal(store.sum(0), torch.ones(40, dtype=torch.long))


def test_store_recall_needs_memory_and_is_solvable():
    """The oracle that reads the value group during the store period is right nearly always; the last
    value shown before the recall tells nothing beyond chance."""
    P, period, group = 6, 5, 4
    data = store_recall(num_samples=400, num_values=2, num_periods=P, period=period, units_per_group=group, seed=1)
    counts = data.spikes.reshape(P, period, 400, 4, group).sum((1, 4))  # [P, S, group]
    store_at = counts[:, :, 2].argmax(0)
    at_store = counts[store_at, torch.arange(400), :2]
    oracle = (at_store.argmax(-1) == data.labels).float().mean().item()
    assert oracle > 0.9
    last_value = counts[P - 2, :, :2].argmax(-1)
    later = store_at < P - 2  # where the store cue was not the last value period
    naive = (last_value[later] == data.labels[later]).float().mean().item()
    assert abs(naive - 0.5) < 0.1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: randman(num_classes=1), r"randman: num_classes must be an int >= 2, received 1"),
        (lambda: randman(num_steps=1), "num_steps must be an int >= 2"),
        (lambda: randman(jitter=-1.0), r"jitter must be a finite number in \[0, inf\], received -1.0"),
        (lambda: randman(seed=-1), "seed must be an int >= 0"),
        (lambda: store_recall(num_samples=7), r"store_recall: num_samples must be a multiple of num_values=2"),
        (lambda: store_recall(rate=0.0), r"rate must be a finite number in \(0, 1\], received 0.0"),
        (lambda: store_recall(num_periods=1), "num_periods must be an int >= 2"),
    ],
)
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
