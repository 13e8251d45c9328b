"""Draw every spike function of ``tracetorch.functional.spikes`` and its derivative.

Writes ``docs/spike_functions.png`` (next to this script, or to the path given as the first
argument). The derivative is taken by autograd, so the picture shows exactly the surrogate
gradient a layer uses. Run: ``python docs/make_spike_plots.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tracetorch.functional.spikes import Atan, Erf, FastSigmoid, Sigmoid, Triangle

FUNCTIONS = {
    "Sigmoid(slope=4) = sigmoid4x": Sigmoid(4.0),
    "FastSigmoid(slope=4)": FastSigmoid(4.0),
    "Atan(alpha=2)": Atan(2.0),
    "Triangle(width=1)": Triangle(1.0),
    "Erf(sigma=0.5)": Erf(0.5),
}


def value_and_derivative(fn, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(v)`` and ``d fn / d v`` elementwise, by autograd."""
    v = v.detach().clone().requires_grad_(True)
    y = fn(v)
    (dy,) = torch.autograd.grad(y.sum(), v)
    return y.detach(), dy


def main(path: Path) -> None:
    v = torch.linspace(-3.0, 3.0, 1201, dtype=torch.float64)
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_value, ax_grad = fig.subplots(1, 2)
    for k, (name, fn) in enumerate(FUNCTIONS.items()):
        y, dy = value_and_derivative(fn, v)
        ax_value.plot(v.numpy(), y.numpy(), color=f"C{k}", label=name)
        ax_grad.plot(v.numpy(), dy.numpy(), color=f"C{k}", label=name)
    ax_value.set_title("spike function: firing probability p = f(v)")
    ax_grad.set_title("derivative f'(v): the surrogate gradient")
    for ax in (ax_value, ax_grad):
        ax.axvline(0.0, color="grey", linewidth=0.6)
        ax.set_xlabel("v = mem - threshold")
        ax.grid(alpha=0.3)
    ax_value.legend(fontsize="small", loc="upper left")
    fig.savefig(path, format="png", dpi=100)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("spike_functions.png"))
