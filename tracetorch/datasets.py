"""Procedural timing tasks: spike-timing data generated from a seed, nothing downloaded.

Two tasks whose answer lies in *when* spikes come, not how many:

* :func:`randman`: a Randman-style dataset (after Zenke & Vogels 2021, "The remarkable robustness
  of surrogate gradient learning"): each class is a random smooth manifold, each sample a random
  point on it, mapped to one spike per input unit, at a time that encodes the point's coordinate
  along that unit. Spike counts carry no information (every unit spikes once); a classifier must
  read the timing, and the relative timing across units.
* :func:`store_recall`: a store-and-recall memory task (after Bellec et al. 2018, "Long
  short-term memory and learning-to-learn in networks of spiking neurons"): a stream of random
  values, one "store" cue at a random moment and a "recall" cue at the end; the answer is the
  value shown with the store cue, held across a gap of random length.

Both live in the package (not in ``examples/``) so tests, examples, tutorials and users generate
exactly the same data with one import: they need only torch, are a few lines each, and a seed
fixes every draw (a private ``torch.Generator``; the global RNG is never touched).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch

__all__ = ["TimingData", "randman", "store_recall"]


class TimingData(NamedTuple):
    """A timing dataset: ``spikes`` ``[T, S, N]`` (0/1 floats, time first as ``tt.nn.run`` takes
    it), ``labels`` ``[S]`` (int64 class indices), ``num_classes``."""

    spikes: torch.Tensor
    labels: torch.Tensor
    num_classes: int


def _int(owner: str, name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}, received {value!r}")
    return int(value)


def _real(owner: str, name: str, value: Any, low: float, high: float = math.inf, *, closed: bool = True) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low <= value <= high if closed else low < value <= high)
    if not ok:
        where = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g}]"
        raise ValueError(f"{owner}: {name} must be a finite number in {where}, received {value!r}")
    return float(value)


def _balanced_labels(num_classes: int, per_class: int, gen: torch.Generator) -> torch.Tensor:
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return labels[torch.randperm(labels.numel(), generator=gen)]


def randman(
    num_classes: int = 10,
    num_units: int = 20,
    num_steps: int = 50,
    samples_per_class: int = 100,
    manifold_dim: int = 1,
    smoothness: float = 1.0,
    num_frequencies: int = 3,
    jitter: float = 0.0,
    seed: int = 0,
) -> TimingData:
    """Random smooth manifolds mapped to spike times: one spike per unit per sample.

    Class ``c`` owns, for every input unit ``n`` and manifold coordinate ``k``, a random periodic
    function ``g(u) = sum_j j^-smoothness * a_j * sin(2 pi (j f u + phase_j))`` (``j = 1 ..
    num_frequencies``, random amplitudes ``a_j``, frequency ``f`` and phases), rescaled to ``[0, 1]``
    over ``u`` in ``[0, 1]``. A sample of class ``c`` draws a point ``u`` uniformly in
    ``[0, 1]^manifold_dim``; unit ``n`` spikes once, at step
    ``round((num_steps - 1) * mean_k g_{c,n,k}(u_k))`` (plus Gaussian ``jitter``, in steps, clipped
    into the sequence). Larger ``smoothness`` gives straighter manifolds (easier), more frequencies
    and a larger ``manifold_dim`` harder ones.

    Args:
        num_classes: classes (>= 2), as many samples each (``samples_per_class``), shuffled.
        num_units: input units (>= 1).
        num_steps: sequence length ``T`` (>= 2).
        samples_per_class: samples of each class (>= 1).
        manifold_dim: intrinsic dimension of each class's manifold (>= 1).
        smoothness: how fast the higher frequencies fade (>= 0).
        num_frequencies: sine components per function (>= 1).
        jitter: standard deviation of the spike-time noise, in steps (>= 0).
        seed: fixes every draw.

    Returns:
        :class:`TimingData` with ``spikes`` ``[num_steps, num_classes * samples_per_class, num_units]``.
    """
    owner = "randman"
    num_classes = _int(owner, "num_classes", num_classes, 2)
    num_units = _int(owner, "num_units", num_units, 1)
    num_steps = _int(owner, "num_steps", num_steps, 2)
    per_class = _int(owner, "samples_per_class", samples_per_class, 1)
    manifold_dim = _int(owner, "manifold_dim", manifold_dim, 1)
    num_frequencies = _int(owner, "num_frequencies", num_frequencies, 1)
    smoothness = _real(owner, "smoothness", smoothness, 0.0)
    jitter = _real(owner, "jitter", jitter, 0.0)
    seed = _int(owner, "seed", seed, 0)
    gen = torch.Generator().manual_seed(seed)
    shape = (num_classes, num_units, manifold_dim, num_frequencies)
    amplitude = torch.rand(shape, generator=gen, dtype=torch.float64)
    frequency = 0.5 + torch.rand(shape[:3] + (1,), generator=gen, dtype=torch.float64)
    phase = torch.rand(shape, generator=gen, dtype=torch.float64)
    j = torch.arange(1, num_frequencies + 1, dtype=torch.float64)
    weight = amplitude * j**-smoothness

    def g(u: torch.Tensor) -> torch.Tensor:  # u [..., C, 1, K] -> [..., C, N, K]
        return (weight * torch.sin(2 * math.pi * (j * frequency * u.unsqueeze(-1) + phase))).sum(-1)

    # each function's range over u in [0, 1], from a fine grid, to rescale it into [0, 1]
    grid = torch.linspace(0, 1, 513, dtype=torch.float64).reshape(-1, 1, 1, 1).expand(-1, num_classes, 1, manifold_dim)
    values = g(grid)
    low, high = values.amin(0), values.amax(0)
    labels = _balanced_labels(num_classes, per_class, gen)
    S = labels.numel()
    u = torch.rand(S, 1, manifold_dim, generator=gen, dtype=torch.float64)
    own = g(u.unsqueeze(1).expand(S, num_classes, 1, manifold_dim))[torch.arange(S), labels]  # [S, N, K]
    scaled = ((own - low[labels]) / (high[labels] - low[labels]).clamp(min=1e-12)).clamp(0, 1).mean(-1)
    times = scaled * (num_steps - 1)
    if jitter > 0:
        times = times + jitter * torch.randn(times.shape, generator=gen, dtype=torch.float64)
    steps = times.round().clamp(0, num_steps - 1).long()  # [S, N]
    spikes = torch.zeros(num_steps, S, num_units)
    spikes[steps.T, torch.arange(S).unsqueeze(0), torch.arange(num_units).unsqueeze(1)] = 1.0
    return TimingData(spikes, labels, num_classes)


def store_recall(
    num_samples: int = 512,
    num_values: int = 2,
    num_periods: int = 8,
    period: int = 10,
    units_per_group: int = 4,
    rate: float = 0.5,
    noise_rate: float = 0.0,
    seed: int = 0,
) -> TimingData:
    """A store-and-recall memory task: remember the value shown with the store cue until the recall cue.

    A sequence is ``num_periods`` periods of ``period`` steps. In every period one of
    ``num_values`` values is shown (uniformly at random): its group of ``units_per_group`` units
    fires with probability ``rate`` per step. In one period, drawn uniformly from the first
    ``num_periods - 1``, the *store* group fires as well; the last period is the *recall* cue
    (the recall group fires, no value is shown). The label is the value shown in the store period,
    so the gap between the cue and the answer is 1 to ``num_periods - 1`` periods. ``noise_rate``:
    every unit also fires at that rate (distractor spikes).

    Units: ``[value 0 | value 1 | ... | store | recall]``, each a group of ``units_per_group``.
    Labels are balanced (``num_samples`` must be a multiple of ``num_values``).

    Returns:
        :class:`TimingData` with ``spikes`` ``[num_periods * period, num_samples, (num_values + 2) * units_per_group]``.
    """
    owner = "store_recall"
    num_values = _int(owner, "num_values", num_values, 2)
    num_samples = _int(owner, "num_samples", num_samples, num_values)
    if num_samples % num_values:
        raise ValueError(
            f"{owner}: num_samples must be a multiple of num_values={num_values} (balanced labels), "
            f"received {num_samples}"
        )
    num_periods = _int(owner, "num_periods", num_periods, 2)
    period = _int(owner, "period", period, 1)
    group = _int(owner, "units_per_group", units_per_group, 1)
    rate = _real(owner, "rate", rate, 0.0, 1.0, closed=False)
    noise_rate = _real(owner, "noise_rate", noise_rate, 0.0, 1.0)
    seed = _int(owner, "seed", seed, 0)
    gen = torch.Generator().manual_seed(seed)
    S, P = num_samples, num_periods
    labels = _balanced_labels(num_values, S // num_values, gen)
    store_at = torch.randint(0, P - 1, (S,), generator=gen)
    shown = torch.randint(0, num_values, (S, P), generator=gen)
    shown[torch.arange(S), store_at] = labels
    # which group is active in each period: [S, P, num_values + 2]
    active = torch.zeros(S, P, num_values + 2)
    active[:, : P - 1].scatter_(2, shown[:, : P - 1].unsqueeze(-1), 1.0)
    active[torch.arange(S), store_at, num_values] = 1.0
    active[:, P - 1, num_values + 1] = 1.0
    drive = active.repeat_interleave(period, 1).repeat_interleave(group, 2)  # [S, T, N]
    prob = drive * rate + (1 - drive) * noise_rate
    spikes = (torch.rand(prob.shape, generator=gen) < prob).float()
    return TimingData(spikes.transpose(0, 1).contiguous(), labels, num_values)
