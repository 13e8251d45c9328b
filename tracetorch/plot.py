"""Quick plots of spiking activity: raster, membrane traces, firing-rate histograms.

matplotlib is optional: it is imported when a function is called (``pip install matplotlib``).
Figures are made with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, not through
``pyplot``: no display is needed, no global figure list grows, nothing has to be closed. Each
function returns its ``Figure`` (a notebook shows it when it is the cell's value) and writes a
PNG when given ``path``. To draw into a figure of your own (e.g. one made with ``pyplot`` to
call ``plt.show()``), pass ``ax``: the function draws there and returns ``ax.figure``.

Tensors may live on any device and may require grad: they are detached and copied to the CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._keywords import keywords

__all__ = ["raster", "membrane", "rate_histogram"]

#: Neurons drawn by :func:`membrane` when ``neurons`` is not given.
MAX_TRACES = 8


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "tracetorch.plot needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'tracetorch[examples]')"
        ) from err
    return matplotlib, Figure, FigureCanvasAgg


def _new_axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """``(figure, axes)``: the given axes and their figure, or a fresh Agg figure with one axes."""
    _, Figure, FigureCanvasAgg = _matplotlib()
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Any, path: str | os.PathLike | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)


def _as_2d(fn: str, name: str, x: Any, layout: str = "[T, N] or [T, B, N]") -> torch.Tensor:
    """``[T, N]`` float CPU tensor from ``[T, N]`` or ``[T, B, ...]`` (first batch element, rest flattened)."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{fn}: {name} must be a tensor {layout}, received {type(x).__name__}") from None
    if x.dim() < 2:
        raise ValueError(f"{fn}: {name} must be {layout}, received shape {list(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if x.dim() >= 3:
        if x.shape[1] == 0:
            raise ValueError(f"{fn}: {name} has an empty batch dimension, shape {list(x.shape)}")
        x = x[:, 0].reshape(x.shape[0], -1)
    return x


@keywords
def raster(
    spikes: torch.Tensor,
    *,
    ax: Any = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Any:
    """Raster plot: a mark at (step, neuron) for every non-zero output.

    Args:
        spikes: ``[T, N]``, or ``[T, B, N]`` (the first batch element is drawn; more trailing
            dims, e.g. ``[T, B, C, H, W]``, are flattened into neurons). Positive values are drawn
            as dark ticks, negative ones (ternary OFF spikes) as red ticks.
        ax: matplotlib axes to draw into; default a new figure.
        path: write the figure there as PNG (parent folders are created).
        title: axes title.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    s = _as_2d("raster", "spikes", spikes)
    fig, ax = _new_axes(ax, (8.0, 4.0))
    num_steps, num_neurons = s.shape
    for sign, color, label in ((1, "black", "+1"), (-1, "tab:red", "-1")):
        t, n = torch.nonzero(s * sign > 0, as_tuple=True)
        if len(t):
            ax.scatter(t.numpy(), n.numpy(), marker="|", s=30, linewidths=1.0, color=color, label=label)
    if (s < 0).any():
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlim(-0.5, num_steps - 0.5)
    ax.set_ylim(-0.5, num_neurons - 0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("neuron")
    if title is not None:
        ax.set_title(title)
    _save(fig, path)
    return fig


def _threshold_values(thresholds: Any, num_neurons: int, name: str = "thresholds") -> torch.Tensor | None:
    if thresholds is None:
        return None
    if isinstance(thresholds, bool):
        raise TypeError(f"membrane: {name} must be a number or a tensor [] / [N], received bool")
    t = torch.as_tensor(thresholds).detach().to("cpu", torch.float64)
    if t.numel() == 1:
        return t.reshape(1).expand(num_neurons)
    if t.dim() != 1 or t.shape[0] != num_neurons:
        raise ValueError(
            f"membrane: {name} must be a number or a tensor [N] with N={num_neurons}, received shape {list(t.shape)}"
        )
    return t


def _layer_thresholds(layer: Any) -> tuple[Any, Any]:
    """``(positive, negative)`` thresholds of a neuron layer: B types have one, T/TS two, LI none."""
    names = set(getattr(layer, "param_names", ()))
    if "threshold" in names:
        return layer.threshold, None
    if "pos_threshold" in names:
        return layer.pos_threshold, layer.neg_threshold
    return None, None


@keywords
def membrane(
    traces: torch.Tensor,
    *,
    thresholds: Any = None,
    neg_thresholds: float | torch.Tensor | None = None,
    ax: Any = None,
    path: str | os.PathLike | None = None,
    neurons: list[int] | None = None,
    title: str | None = None,
) -> Any:
    """Membrane potential over time for a few neurons, with their thresholds as dashed lines.

    Draw the membrane *before* the reset (``rec.membranes`` of :func:`tracetorch.monitor`): a
    firing neuron's trace then reaches its threshold at each spike. The states recorded after a
    call (``rec.states[path]["mem"]``) are already reset and stay below it.

    Args:
        traces: ``[T, N]``, or ``[T, B, N]`` (first batch element; more trailing dims are
            flattened into neurons).
        thresholds: a number (one threshold for all), ``[N]`` (e.g. ``layer.threshold``), or a
            neuron layer itself, whose thresholds are read: ``threshold`` for the B types,
            ``pos_threshold`` and ``-neg_threshold`` for the ternary (T, TS) ones, none for LI.
            ``None``: no lines.
        neg_thresholds: a number or ``[N]``: also draw a line at minus this value (the negative
            threshold of a ternary type), when ``thresholds`` is not a layer.
        ax: matplotlib axes to draw into; default a new figure.
        path: write the figure there as PNG (parent folders are created).
        neurons: indices of the neurons to draw; default the first :data:`MAX_TRACES`.
        title: axes title.

    When every drawn neuron has the same threshold, one black dashed line shows it; otherwise
    each neuron gets a dashed line in its colour. The y range covers the traces and the lines,
    and the legend sits outside the axes, on the right.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    v = _as_2d("membrane", "traces", traces)
    num_steps, num_neurons = v.shape
    if isinstance(thresholds, torch.nn.Module):
        if neg_thresholds is not None:
            raise TypeError("membrane: give neg_thresholds only with numeric thresholds, not with a layer")
        thresholds, neg_thresholds = _layer_thresholds(thresholds)
    pos_th = _threshold_values(thresholds, num_neurons)
    neg_th = _threshold_values(neg_thresholds, num_neurons, "neg_thresholds")
    if neurons is None:
        neurons = list(range(min(num_neurons, MAX_TRACES)))
    else:
        neurons = [int(i) for i in neurons]
        bad = [i for i in neurons if not 0 <= i < num_neurons]
        if bad:
            raise ValueError(f"membrane: neurons must be indices in [0, {num_neurons}), received {bad}")
    fig, ax = _new_axes(ax, (9.0, 4.0))
    steps = range(num_steps)
    levels: list[float] = [float(v[:, i].min()) for i in neurons] + [float(v[:, i].max()) for i in neurons]
    for k, i in enumerate(neurons):
        ax.plot(steps, v[:, i].numpy(), color=f"C{k % 10}", linewidth=1.2, label=f"neuron {i}")
    for th, sign, label in ((pos_th, 1.0, "threshold"), (neg_th, -1.0, "-neg_threshold")):
        if th is None or not neurons:
            continue
        values = [sign * float(th[i]) for i in neurons]
        levels += values
        if max(values) - min(values) <= 1e-6 * max(1.0, abs(values[0])):
            ax.axhline(values[0], color="black", linestyle="--", linewidth=1.0, alpha=0.8, label=label)
        else:
            for k, value in enumerate(values):
                ax.axhline(value, color=f"C{k % 10}", linestyle="--", linewidth=0.9, alpha=0.8)
    finite = [x for x in levels if math.isfinite(x)]
    if finite:
        low, high = min(finite), max(finite)
        pad = 0.08 * (high - low) if high > low else 0.5
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("step")
    ax.set_ylabel("membrane")
    if neurons:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0)
    if title is not None:
        ax.set_title(title)
    _save(fig, path)
    return fig


@keywords
def rate_histogram(
    rates: Mapping[str, torch.Tensor],
    *,
    path: str | os.PathLike | None = None,
    bins: int = 20,
) -> Any:
    """Histogram of per-neuron firing rates, one panel per layer.

    Args:
        rates: ``{layer name: rates}``, each a tensor of any shape (flattened: one value per
            neuron), e.g. ``rec.firing_rates()`` of :func:`tracetorch.monitor`.
        path: write the figure there as PNG (parent folders are created).
        bins: histogram bins.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    if not isinstance(rates, Mapping):
        raise TypeError(f"rate_histogram: rates must be a dict {{name: tensor}}, received {type(rates).__name__}")
    if not rates:
        raise ValueError("rate_histogram: rates is empty; nothing to plot")
    values = {}
    for name, r in rates.items():
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"rate_histogram: rates[{name!r}] must be a tensor, received {type(r).__name__}")
        values[str(name)] = r.detach().to("cpu", torch.float64).flatten()
    _, Figure, FigureCanvasAgg = _matplotlib()
    n = len(values)
    fig = Figure(figsize=(4.0 * min(n, 3), 3.0 * ((n + 2) // 3)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots((n + 2) // 3, min(n, 3), squeeze=False).flatten()
    for ax, (name, r) in zip(axes, values.items()):
        finite = r[torch.isfinite(r)]
        ax.hist(finite.numpy(), bins=bins, color="tab:blue", edgecolor="white")
        ax.set_title(
            f"{name or '(model)'}: mean rate {finite.mean().item():.3f}" if len(finite) else (name or "(model)")
        )
        ax.set_xlabel("firing rate")
        ax.set_ylabel("neurons")
    for ax in axes[n:]:
        ax.set_visible(False)
    _save(fig, path)
    return fig
