"""Spike encoders: turn real-valued data into spike trains ``[num_steps, *x.shape]``.

Every encoder is a pure function of its arguments (randomness comes from an explicit
``generator`` or an explicit ``noise`` tensor), keeps the input's dtype and device, adds the time
dimension first, and works under ``torch.func.vmap``:

* :func:`rate`: Bernoulli spikes, one independent draw per step, probability ``clamp(gain*x, 0, 1)``.
* :func:`latency`: one spike per input, earlier for stronger inputs.
* :func:`delta`: +1/-1 events where a ``[T, ...]`` signal moved by more than a threshold.
* :func:`population`: Gaussian receptive fields, ``[*x.shape] -> [*x.shape, num_neurons]``.

The spike trains are samples, not functions to train through: :func:`rate`, :func:`latency` and
:func:`delta` carry no gradient to their input. :func:`population` is smooth and differentiable.
"""

from __future__ import annotations

import math

import torch

from ._keywords import keywords

__all__ = ["rate", "latency", "delta", "population"]


def _check_tensor(fn: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor, received {type(x).__name__}")
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _check_steps(fn: str, num_steps: object) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"{fn}: num_steps must be an int >= 1, received {num_steps!r}")
    return num_steps


def _check_number(fn: str, name: str, value: object, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and not value > 0):
        raise ValueError(f"{fn}: {name} must be a finite number{' > 0' if positive else ''}, received {value!r}")
    return float(value)


@keywords
def rate(
    x: torch.Tensor,
    num_steps: int,
    *,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rate (Bernoulli) coding: at every step each input fires with probability ``clamp(gain * x, 0, 1)``.

    ``spikes[t] = (u[t] < clamp(gain * x, 0, 1))`` with ``u[t]`` uniform in [0, 1): the draws of
    different steps and different inputs are independent, so the expected spike count of an input
    is ``num_steps * clamp(gain * x, 0, 1)``. An input of 0 (or less) never fires, 1 (or more)
    fires at every step; NaN never fires.

    Args:
        x: intensities of any shape ``[*S]``, typically in [0, 1]; an integer or bool tensor is
            read as the default float dtype.
        num_steps: ``T``, the number of timesteps (an int >= 1).
        gain: multiplies ``x`` before the clamp.
        generator: the ``torch.Generator`` to draw ``u`` from (seeded: reproducible); default
            torch's global generator. Ignored when ``noise`` is given.
        noise: ``u`` itself, uniform in [0, 1), shape ``[T, *S]``. With it the encoder is a pure,
            deterministic function, vmappable without a ``randomness`` flag.

    Returns:
        Spikes in {0, 1}, shape ``[T, *S]``, dtype of ``x``. Not differentiable wrt ``x``.

    Under ``torch.func.vmap`` without ``noise``, pass ``randomness="different"`` (independent
    draws per member) or ``"same"`` (one draw shared by all members); vmap's default refuses
    random draws.
    """
    x = _check_tensor("rate", "x", x)
    num_steps = _check_steps("rate", num_steps)
    if isinstance(gain, bool) or not isinstance(gain, (int, float)):
        raise TypeError(f"rate: gain must be a number, received {type(gain).__name__}")
    p = torch.clamp(gain * x.detach(), 0.0, 1.0)
    shape = (num_steps, *x.shape)
    if noise is None:
        noise = torch.rand(shape, dtype=x.dtype, device=x.device, generator=generator)
    else:
        noise = _check_tensor("rate", "noise", noise)
        if tuple(noise.shape) != shape:
            raise ValueError(
                f"rate: noise must have shape [num_steps, *x.shape] = {list(shape)}, received {list(noise.shape)}"
            )
    return (noise.detach() < p).to(x.dtype)


@keywords
def latency(
    x: torch.Tensor,
    num_steps: int,
    *,
    normalize: bool = True,
    linear: bool = True,
    tau: float = 1.0,
    threshold: float = 0.01,
) -> torch.Tensor:
    """Latency (time-to-first-spike) coding: every input spikes once, earlier the stronger it is.

    ``x`` is clamped to [0, 1]; an input below ``threshold`` (or NaN) never spikes. The spike time,
    in steps, is rounded to the nearest step (``torch.round``: halves to even):

    * ``linear=True``: ``t = (1 - x) * (num_steps - 1)`` when ``normalize`` (``x = 1`` at step 0,
      ``x = 0``, were it above ``threshold``, at the last step), ``t = tau * (1 - x)`` otherwise (``tau`` steps per unit of
      intensity).
    * ``linear=False`` (logarithmic): a threshold that decays as ``exp(-t / tau)`` from 1 meets
      the input at ``t = tau * ln(1 / x)``. Strong inputs are spread out, weak ones crowded near
      the end. With ``normalize`` the scale is set by the window instead:
      ``t = (num_steps - 1) * ln(x) / ln(threshold)``, so ``x = 1`` spikes at step 0 and
      ``x = threshold`` at the last step (``tau`` is then unused).

    Without ``normalize``, spike times later than ``num_steps - 1`` fall outside the window: those
    inputs do not spike.

    Args:
        x: intensities of any shape ``[*S]``.
        num_steps: ``T``, the number of timesteps (an int >= 1).
        normalize: fit the spike times to the window (see above).
        linear: linear (default) or logarithmic spike times.
        tau: the time scale in steps when ``normalize`` is False (> 0).
        threshold: inputs below it never spike; in [0, 1) (in (0, 1) for the normalized
            logarithmic code).

    Returns:
        Spikes in {0, 1}, shape ``[T, *S]``, dtype of ``x``; at most one spike per input.
        Not differentiable wrt ``x``.
    """
    x = _check_tensor("latency", "x", x)
    num_steps = _check_steps("latency", num_steps)
    tau = _check_number("latency", "tau", tau, positive=True)
    log_normalized = normalize and not linear
    ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if not ok or not ((0.0 < threshold) if log_normalized else (0.0 <= threshold)) or not threshold < 1.0:
        interval = "(0, 1) for the normalized logarithmic code" if log_normalized else "[0, 1)"
        raise ValueError(f"latency: threshold must be a number in {interval}, received {threshold!r}")
    threshold = float(threshold)
    x = x.detach().clamp(0.0, 1.0)
    fires = x >= threshold  # False for NaN
    safe = torch.where(fires, x, torch.ones_like(x))
    if linear:
        t = (1.0 - safe) * ((num_steps - 1) if normalize else tau)
    elif normalize:
        t = (num_steps - 1) * torch.log(safe) / math.log(threshold)
    else:
        t = -tau * torch.log(safe)
    t = torch.round(t)
    fires = fires & (t <= num_steps - 1)
    steps = torch.arange(num_steps, device=x.device, dtype=x.dtype).view(num_steps, *([1] * x.dim()))
    return ((steps == t) & fires).to(x.dtype)


@keywords
def delta(signal: torch.Tensor, threshold: float | torch.Tensor = 0.1, *, off_spikes: bool = True) -> torch.Tensor:
    """Delta (send-on-change) coding of a ``[T, ...]`` signal.

    A reference level starts at ``signal[0]``. At every step the signal is compared with it: if
    ``signal[t] - ref > threshold`` an ON event (+1) is emitted, if ``signal[t] - ref < -threshold``
    an OFF event (-1); either way the reference moves to ``signal[t]``. Otherwise 0 and the
    reference stays. So a slow drift is reported once it has accumulated to more than
    ``threshold`` since the last event, not lost because no single step exceeded it; step 0 never
    fires.

    Args:
        signal: ``[T, ...]``, time first.
        threshold: the change that triggers an event (> 0): a number or a tensor broadcastable
            against ``signal[0]`` (e.g. one threshold per channel).
        off_spikes: when False, decreases emit nothing (output in {0, 1}) but still move the
            reference, so a fall and a rise back report the rise.

    Returns:
        Events in {-1, 0, 1} (``{0, 1}`` without ``off_spikes``), same shape and dtype as ``signal``.
        Not differentiable wrt ``signal``.
    """
    signal = _check_tensor("delta", "signal", signal)
    if signal.dim() < 1:
        raise ValueError("delta: signal must have a leading time dimension [T, ...], received a 0-d tensor")
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.detach()
    else:
        threshold = _check_number("delta", "threshold", threshold, positive=True)
    signal = signal.detach()
    steps = signal.unbind(0)
    ref = steps[0]
    out = [torch.zeros_like(ref)]
    for s in steps[1:]:
        change = s - ref
        on = change > threshold
        off = change < -threshold
        event = on.to(s.dtype) - off.to(s.dtype) if off_spikes else on.to(s.dtype)
        out.append(event)
        ref = torch.where(on | off, s, ref)
    return torch.stack(out)


@keywords
def population(
    x: torch.Tensor,
    num_neurons: int,
    *,
    low: float = 0.0,
    high: float = 1.0,
    sigma: float | None = None,
) -> torch.Tensor:
    """Population coding with Gaussian receptive fields: each value excites a bump of neurons.

    ``out[..., j] = exp(-(x - c_j)^2 / (2 sigma^2))`` with centres ``c_j`` evenly spaced from
    ``low`` to ``high`` (``torch.linspace(low, high, num_neurons)``). The default ``sigma`` is the
    spacing of the centres, ``(high - low) / (num_neurons - 1)`` (``high - low`` for one neuron),
    so neighbouring fields overlap at ``exp(-1/2) ~ 0.61``. Values outside ``[low, high]`` are not
    clamped: they still excite the nearest fields, weakly.

    The activations are in [0, 1]: use them as input currents, or as probabilities for
    :func:`rate` (``rate(population(x, 10), T)``). Smooth: differentiable wrt ``x``.

    Args:
        x: values of any shape ``[*S]``.
        num_neurons: ``M``, fields per value (an int >= 1).
        low, high: the first and last centre (``low < high``).
        sigma: the width of each field (> 0), default the centre spacing.

    Returns:
        ``[*S, M]`` activations, dtype of ``x``.
    """
    x = _check_tensor("population", "x", x)
    if isinstance(num_neurons, bool) or not isinstance(num_neurons, int) or num_neurons < 1:
        raise ValueError(f"population: num_neurons must be an int >= 1, received {num_neurons!r}")
    low = _check_number("population", "low", low)
    high = _check_number("population", "high", high)
    if not low < high:
        raise ValueError(f"population: low must be below high, received low={low!r}, high={high!r}")
    if sigma is None:
        sigma = (high - low) / max(num_neurons - 1, 1)
    else:
        sigma = _check_number("population", "sigma", sigma, positive=True)
    centres = torch.linspace(low, high, num_neurons, dtype=x.dtype, device=x.device)
    return torch.exp(-0.5 * ((x.unsqueeze(-1) - centres) / sigma) ** 2)
