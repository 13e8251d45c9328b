"""Delays: pure functions that shift signals in time, per channel or per synapse.

A delay line keeps the last ``max_delay`` inputs as its state, ``DelayState(buffer)`` with
``buffer`` ``[max_delay, ..., N]``, oldest first (``buffer[-1]`` is the previous step's input).
Reading it at delay ``d`` gives ``y_t = x_{t-d}``, and zeros before the first step (the buffer
starts at zero). A real ``d`` is read by linear interpolation between its two neighbouring steps:
with ``k = floor(d)`` (``max_delay - 1`` at ``d = max_delay``) and ``f = d - k``,

    y_t = (1 - f) * x_{t-k} + f * x_{t-k-1}

so an integer ``d`` is an exact shift, and ``dy/dd = x_{t-k-1} - x_{t-k}`` makes the delay
learnable (at an integer ``d`` that is the slope towards the next longer delay). Delays are read
clamped into ``[0, max_delay]``; the layers refuse values outside it.

The sequence form is the one engine: ``*_scan`` runs a whole ``[T, ...]`` sequence at once (a
gather along time for :func:`delay_scan`, one convolution over time for
:func:`delayed_linear_scan`), and the per-step functions are the same computation with ``T = 1``.
The buffer is kept in time order rather than as a ring with a write pointer: a pure step cannot
write into its input, so a ring buffer's step would copy the buffer as well, and an ordered
buffer needs no pointer in the state (a saved state reads the same at whatever step it was saved).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._keywords import keywords

__all__ = [
    "DelayParams",
    "DelayState",
    "DelayedLinearParams",
    "init_delay_state",
    "delay_step",
    "delay_scan",
    "delay_kernel",
    "delayed_linear_step",
    "delayed_linear_scan",
]


class DelayParams(NamedTuple):
    """Params of a per-channel delay: ``delay`` ``[]`` or ``[N]``, real, in ``[0, max_delay]``."""

    delay: torch.Tensor


class DelayState(NamedTuple):
    """A delay line's state: ``buffer`` ``[max_delay, ..., N]``, the last ``max_delay`` inputs, oldest first."""

    buffer: torch.Tensor


class DelayedLinearParams(NamedTuple):
    """Params of a delayed linear map: ``weight`` ``[out, in]``, ``delay`` ``[out, in]`` (or ``[]``), ``bias`` ``[out]``."""

    weight: torch.Tensor
    delay: torch.Tensor
    bias: torch.Tensor


def init_delay_state(x: torch.Tensor, max_delay: int) -> DelayState:
    """The zero state of a delay line of ``max_delay`` steps for inputs shaped like ``x``: ``[max_delay, *x.shape]``."""
    return DelayState(x.new_zeros((max_delay, *x.shape)))


def _split(delay: torch.Tensor, max_delay: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, f)``: the lower neighbouring step (long) and the fraction towards the next, of ``delay`` clamped to ``[0, D]``."""
    d = delay.clamp(0, max_delay)
    k = d.detach().floor().clamp(max=max_delay - 1)
    return k.long(), d - k


def _history(state: DelayState, xs: torch.Tensor, owner: str) -> tuple[torch.Tensor, int]:
    buffer = state.buffer
    if buffer.dim() != xs.dim() or buffer.shape[1:] != xs.shape[1:] or buffer.shape[0] < 1:
        raise ValueError(
            f"{owner}: the state's buffer must be [max_delay >= 1, *one step's shape] = [D, "
            f"{', '.join(map(str, xs.shape[1:]))}], received {list(buffer.shape)}"
        )
    return torch.cat([buffer, xs.to(buffer.dtype) if xs.dtype != buffer.dtype else xs]), buffer.shape[0]


@keywords
def delay_scan(
    params: DelayParams, state: DelayState, xs: torch.Tensor, *, exact: bool = False
) -> tuple[torch.Tensor, DelayState]:
    """Delay every channel of a sequence: ``ys[t] = xs[t - delay]`` (interpolated for a real delay).

    Args:
        params: ``DelayParams(delay)``, ``delay`` ``[]`` or ``[N]`` (read clamped into ``[0, max_delay]``).
        state: ``DelayState(buffer)``, ``buffer`` ``[max_delay, ..., N]``: the inputs before ``xs[0]``.
        xs: ``[T, ..., N]``, channels last.
        exact: read an integer delay as the plain input at that step, even next to a non-finite
            one (``0 * inf`` would be NaN), at the price of no gradient w.r.t. an integer delay.
            For fixed delays; learnable ones use ``exact=False``.

    Returns:
        ``(ys [T, ..., N], DelayState(buffer))``: the new buffer holds the last ``max_delay``
        inputs of ``buffer`` followed by ``xs``.
    """
    full, D = _history(state, xs, "delay_scan")
    T = xs.shape[0]
    k, f = _split(params.delay, D)
    ones = [1] * (full.dim() - 1)
    # for step t the lower neighbour sits at D + t - k in the history
    at = torch.arange(T, device=full.device).reshape(T, *ones) + D - k.reshape(*ones[:-1], -1)
    at = at.expand(T, *full.shape[1:])
    a, b = full.gather(0, at), full.gather(0, at - 1)
    mixed = (1 - f) * a + f * b
    ys = torch.where(f == 0, a, mixed) if exact else mixed
    return ys, DelayState(full[T:].clone())


@keywords
def delay_step(
    params: DelayParams, state: DelayState, x: torch.Tensor, *, exact: bool = False
) -> tuple[torch.Tensor, DelayState]:
    """One step of :func:`delay_scan`: ``x`` ``[..., N]`` -> ``(y [..., N], new state)``, ``y = x_{t-delay}``."""
    ys, state = delay_scan(params, state, x.unsqueeze(0), exact=exact)
    return ys[0], state


def delay_kernel(weight: torch.Tensor, delay: torch.Tensor, max_delay: int) -> torch.Tensor:
    """The taps of a delayed linear map: ``[out, in, max_delay + 1]``, tap ``j`` the weight at delay ``j``.

    Each synapse's weight is split between the two taps next to its delay, ``(1 - f)`` at
    ``k = floor(delay)`` and ``f`` at ``k + 1``: the linear-interpolation kernel of a dilated
    convolution with learnable spacings (Khalfaoui-Hassani et al.; Hammouamri et al. 2023 use a
    Gaussian of shrinking width instead).
    """
    k, f = _split(delay, max_delay)
    k, f = k.expand_as(weight), f.expand_as(weight)
    taps = torch.arange(max_delay + 1, device=weight.device)
    lo = (taps == k.unsqueeze(-1)).to(weight.dtype)
    hi = (taps == k.unsqueeze(-1) + 1).to(weight.dtype)
    f = f.unsqueeze(-1).to(weight.dtype)
    return weight.unsqueeze(-1) * (lo * (1 - f) + hi * f)


def delayed_linear_scan(
    params: DelayedLinearParams, state: DelayState, xs: torch.Tensor
) -> tuple[torch.Tensor, DelayState]:
    """A linear map whose every weight has its own delay, over a sequence, as one convolution over time.

    ``ys[t, ..., o] = bias[o] + sum_i weight[o, i] * xs[t - delay[o, i], ..., i]`` (interpolated
    for real delays, zeros before the first step).

    Args:
        params: ``DelayedLinearParams(weight [out, in], delay [out, in] or [], bias [out])``.
        state: ``DelayState(buffer)``, ``buffer`` ``[max_delay, ..., in]``: the inputs before ``xs[0]``.
        xs: ``[T, ..., in]``.

    Returns:
        ``(ys [T, ..., out], DelayState(buffer))``, the buffer as in :func:`delay_scan`.
    """
    full, D = _history(state, xs, "delayed_linear_scan")
    T, lead, n_in = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
    kernel = delay_kernel(params.weight, params.delay, D).to(full.dtype)
    seq = full.reshape(D + T, -1, n_in).permute(1, 2, 0)  # [B, in, D + T]
    # conv1d correlates: output t reads seq[t + j] = x_{t + j - D}, so tap j holds delay D - j
    y = F.conv1d(seq, kernel.flip(-1), params.bias.to(full.dtype))  # [B, out, T]
    ys = y.permute(2, 0, 1).reshape(T, *lead, -1)
    return ys, DelayState(full[T:].clone())


def delayed_linear_step(
    params: DelayedLinearParams, state: DelayState, x: torch.Tensor
) -> tuple[torch.Tensor, DelayState]:
    """One step of :func:`delayed_linear_scan`: ``x`` ``[..., in]`` -> ``(y [..., out], new state)``."""
    ys, state = delayed_linear_scan(params, state, x.unsqueeze(0))
    return ys[0], state
