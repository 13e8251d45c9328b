"""Losses and metrics for spiking classifiers.

Shapes follow the time-first convention of the whole library:

* ``spikes`` / ``mem``: ``[T, B, C]``: T timesteps, a batch of B, C output neurons (one per class),
  e.g. ``torch.stack([model(x[t]) for t in range(T)])``;
* ``targets``: ``[B]`` integer class indices in ``[0, C)``.

Every loss is a differentiable function of the spikes (or membranes), so gradients reach the
network through the layers' surrogate gradients; each returns a scalar (mean over the batch).
A wrong shape or dtype raises a ``ValueError``/``TypeError`` naming the function, the argument,
what was expected and what came.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._keywords import keywords

__all__ = [
    "count_cross_entropy",
    "membrane_cross_entropy",
    "rate_mse",
    "first_spike_time",
    "first_spike_time_loss",
    "firing_rate_regularizer",
    "firing_rate_upper_bound",
    "accuracy",
]

_REDUCTIONS = ("mean", "max", "last")
_KINDS = ("l2", "l1")


def _shape(x: object) -> str:
    return str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_float_tensor(fn: str, name: str, x: object, dims: tuple[int, ...], layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor {layout}, received {type(x).__name__}")
    if x.dim() not in dims:
        raise ValueError(f"{fn}: {name} must be {layout}, received shape {_shape(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, received dtype {x.dtype}")
    return x


def _check_targets(fn: str, targets: object, batch: int, ref: str) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{fn}: targets must be a tensor [B] of class indices, received {type(targets).__name__}")
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"{fn}: targets must hold integer class indices, received dtype {targets.dtype}")
    if targets.dim() != 1 or targets.shape[0] != batch:
        raise ValueError(f"{fn}: targets must be [B] with B={batch} (from {ref}), received shape {_shape(targets)}")
    return targets


def _check_number(fn: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{fn}: {name} must be a finite number, received {value!r}")
    return float(value)


def count_cross_entropy(spikes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on spike counts: ``cross_entropy(spikes.sum(0), targets)``.

    The count of each output neuron over the window is its logit: the loss pushes the target
    neuron to fire more and the others to fire less.

    Args:
        spikes: ``[T, B, C]`` output spikes.
        targets: ``[B]`` class indices.

    Returns:
        A scalar, the mean over the batch.
    """
    spikes = _check_float_tensor("count_cross_entropy", "spikes", spikes, (3,), "[T, B, C]")
    targets = _check_targets("count_cross_entropy", targets, spikes.shape[1], f"spikes {_shape(spikes)}")
    return F.cross_entropy(spikes.sum(0), targets)


@keywords
def membrane_cross_entropy(mem: torch.Tensor, targets: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Cross-entropy on membrane potentials (e.g. of a non-firing ``LI`` readout layer).

    The logits are the membranes reduced over time: ``"mean"`` (``mem.mean(0)``), ``"max"``
    (``mem.amax(0)``: each class's peak; the gradient reaches only the peak step) or ``"last"``
    (``mem[-1]``).

    Args:
        mem: ``[T, B, C]`` membrane potentials.
        targets: ``[B]`` class indices.
        reduce: ``"mean"``, ``"max"`` or ``"last"``.

    Returns:
        A scalar, the mean over the batch.
    """
    fn = "membrane_cross_entropy"
    mem = _check_float_tensor(fn, "mem", mem, (3,), "[T, B, C]")
    targets = _check_targets(fn, targets, mem.shape[1], f"mem {_shape(mem)}")
    if reduce == "mean":
        logits = mem.mean(0)
    elif reduce == "max":
        logits = mem.amax(0)
    elif reduce == "last":
        logits = mem[-1]
    else:
        raise ValueError(f"{fn}: reduce must be one of {list(_REDUCTIONS)}, received {reduce!r}")
    return F.cross_entropy(logits, targets)


@keywords
def rate_mse(spikes: torch.Tensor, targets: torch.Tensor, on_rate: float = 0.8, off_rate: float = 0.2) -> torch.Tensor:
    """Mean squared error between firing rates and target rates.

    The rate of each output neuron is ``spikes.mean(0)``; the target neuron should fire at
    ``on_rate`` (fraction of steps), every other one at ``off_rate``. Asking for rates inside
    (0, 1) rather than exactly 1 and 0 leaves room: saturated or silent neurons still get a
    gradient, and the network is not pushed to its extremes.

    Args:
        spikes: ``[T, B, C]`` output spikes.
        targets: ``[B]`` class indices.
        on_rate: target rate of the correct class.
        off_rate: target rate of the other classes.

    Returns:
        A scalar: ``mean over B and C of (rate - target_rate)^2``.
    """
    fn = "rate_mse"
    spikes = _check_float_tensor(fn, "spikes", spikes, (3,), "[T, B, C]")
    targets = _check_targets(fn, targets, spikes.shape[1], f"spikes {_shape(spikes)}")
    on_rate = _check_number(fn, "on_rate", on_rate)
    off_rate = _check_number(fn, "off_rate", off_rate)
    onehot = F.one_hot(targets, spikes.shape[2]).to(spikes.dtype)
    wanted = off_rate + (on_rate - off_rate) * onehot
    return F.mse_loss(spikes.mean(0), wanted)


def first_spike_time(spikes: torch.Tensor) -> torch.Tensor:
    """The (soft) time of each neuron's first spike: ``sum_t prod_{k <= t} (1 - s_k)``.

    Read ``s_k`` in [0, 1] as the probability that the neuron fires at step ``k``: then
    ``prod_{k <= t} (1 - s_k)`` is the probability that it is still silent after step ``t``, and
    their sum over ``t`` is the expected index of the first spike (``T`` when it never fires).
    For binary spikes it is exact: a first spike at step ``t0`` gives ``t0``, no spike gives ``T``.
    It is differentiable in every ``s_k``; with binary spikes the gradient reaches the steps up
    to and including the first spike (``d tau / d s_j = -(t0 - j)`` before it): firing earlier
    lowers the time.

    Args:
        spikes: ``[T, ...]`` spikes in [0, 1], time first.

    Returns:
        ``[...]``: the first-spike time of each neuron, in steps, in ``[0, T]``.
    """
    spikes = _check_float_tensor("first_spike_time", "spikes", spikes, tuple(range(1, 64)), "[T, ...]")
    return torch.cumprod(1.0 - spikes, dim=0).sum(0)


def first_spike_time_loss(spikes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Time-to-first-spike classification: the target neuron should fire first.

    Cross-entropy on the negated soft first-spike times of :func:`first_spike_time`:
    ``cross_entropy(-tau, targets)`` with ``tau[b, c] = sum_t prod_{k <= t} (1 - spikes[k, b, c])``.
    The earlier a neuron fires, the larger its logit; a neuron that never fires has ``tau = T``.
    The gradient flows through the spikes (and, behind them, through the layers' surrogate
    gradients): it pulls the target neuron's first spike earlier and pushes the others' later.
    Only the first spike of each neuron matters, so the loss rewards fast, sparse answers.

    Args:
        spikes: ``[T, B, C]`` output spikes in [0, 1].
        targets: ``[B]`` class indices.

    Returns:
        A scalar, the mean over the batch.
    """
    fn = "first_spike_time_loss"
    spikes = _check_float_tensor(fn, "spikes", spikes, (3,), "[T, B, C]")
    targets = _check_targets(fn, targets, spikes.shape[1], f"spikes {_shape(spikes)}")
    return F.cross_entropy(-first_spike_time(spikes), targets)


def _rates(fn: str, spikes: torch.Tensor, kind: str) -> torch.Tensor:
    spikes = _check_float_tensor(fn, "spikes", spikes, tuple(range(3, 64)), "[T, B, ...] (time, batch, neurons)")
    if kind not in _KINDS:
        raise ValueError(f"{fn}: kind must be one of {list(_KINDS)}, received {kind!r}")
    # |s| with the gradient of s at 0 (torch's abs has gradient 0 there, which would leave a
    # silent neuron, all exact zeros, without any gradient to wake it)
    return torch.where(spikes < 0, -spikes, spikes).mean(dim=(0, 1))


def _penalty(excess: torch.Tensor, kind: str) -> torch.Tensor:
    return (excess**2 if kind == "l2" else excess.abs()).mean()


@keywords
def firing_rate_regularizer(spikes: torch.Tensor, target_rate: float = 0.1, kind: str = "l2") -> torch.Tensor:
    """Keep every neuron near a target firing rate.

    The rate of a neuron is its mean ``|spike|`` over time and batch (``|.|`` so ternary spikes
    count both polarities; its gradient at 0 is taken as +1, so silent neurons still get one); the penalty is the mean over neurons of ``(rate - target_rate)^2``
    (``kind="l2"``) or ``|rate - target_rate|`` (``"l1"``). Add it, weighted, to the task loss:
    it wakes silent neurons and calms saturated ones. See :func:`firing_rate_upper_bound` for a
    penalty on too much activity only.

    Args:
        spikes: ``[T, B, ...]`` spikes of one layer (the trailing dims are the neurons).
        target_rate: the wanted rate, as a fraction of steps.
        kind: ``"l2"`` or ``"l1"``.

    Returns:
        A scalar.
    """
    fn = "firing_rate_regularizer"
    rates = _rates(fn, spikes, kind)
    return _penalty(rates - _check_number(fn, "target_rate", target_rate), kind)


@keywords
def firing_rate_upper_bound(spikes: torch.Tensor, max_rate: float = 0.2, kind: str = "l2") -> torch.Tensor:
    """Penalise neurons that fire more than ``max_rate``; quieter ones cost nothing.

    As :func:`firing_rate_regularizer` with the excess ``relu(rate - max_rate)`` in place of the
    distance to a target: the mean over neurons of ``relu(rate - max_rate)^2`` (``"l2"``) or
    ``relu(rate - max_rate)`` (``"l1"``). Use it to keep activity sparse (energy, or hardware
    limits) without forcing any neuron to fire.

    Args:
        spikes: ``[T, B, ...]`` spikes of one layer (the trailing dims are the neurons).
        max_rate: the highest rate that goes unpenalised, as a fraction of steps.
        kind: ``"l2"`` or ``"l1"``.

    Returns:
        A scalar, 0 when no neuron exceeds ``max_rate``.
    """
    fn = "firing_rate_upper_bound"
    rates = _rates(fn, spikes, kind)
    return _penalty(torch.relu(rates - _check_number(fn, "max_rate", max_rate)), kind)


@torch.no_grad()
def accuracy(spikes_or_counts: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of the batch whose most active output neuron is the target class.

    Args:
        spikes_or_counts: ``[T, B, C]`` spikes (summed over time first) or ``[B, C]`` counts,
            rates, or any scores. Ties go to the lowest class index (``argmax``).
        targets: ``[B]`` class indices.

    Returns:
        A Python float in [0, 1].
    """
    fn = "accuracy"
    x = spikes_or_counts
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: spikes_or_counts must be a tensor [T, B, C] or [B, C], received {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"{fn}: spikes_or_counts must be [T, B, C] or [B, C], received shape {_shape(x)}")
    scores = x.sum(0) if x.dim() == 3 else x
    targets = _check_targets(fn, targets, scores.shape[0], f"spikes_or_counts {_shape(x)}")
    if scores.shape[0] == 0:
        raise ValueError(f"{fn}: the batch is empty (spikes_or_counts shape {_shape(x)})")
    return (scores.argmax(-1) == targets.to(scores.device)).float().mean().item()
