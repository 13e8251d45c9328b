"""Draw one trajectory per neuron family and per prefix, for the introduction page.

Writes ``docs/neuron_families.png`` (LI, B, T, TS: the membrane before the reset, the thresholds
and the output) and ``docs/neuron_prefixes.png`` (what S, R and D change), next to this script or
into the folder given as the first argument. Every trace is recorded with ``tt.monitor`` from
the library's own layers, with the deterministic ``"round"`` quantizer, so the pictures show
exactly what the layers compute. Run: ``python docs/make_neuron_plots.py``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import tracetorch as tt

T = 60
DPI = 72


def drive() -> torch.Tensor:
    """``[T, 1, 1]``: a slow wave with a few sharp pulses, the same input for every panel."""
    t = torch.arange(T, dtype=torch.float32)
    x = 0.35 * torch.sin(2 * math.pi * t / 30) + 0.1
    x[[8, 9, 40, 41]] += 0.8
    return x.view(T, 1, 1)


def record(layer: tt.TTLayer, xs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``layer`` step by step on ``xs``; its pre-reset membrane, output and states, each ``[T]``."""
    with tt.monitor(layer) as rec:
        for x in xs:
            layer(x)
    out = {"membrane": rec.membranes[""].flatten(), "output": rec.outputs[""].flatten()}
    out.update({name: v.flatten() for name, v in rec.states[""].items()})
    return out


def families(path: Path) -> None:
    xs = drive()
    layers = {
        "LI: the output is the membrane": tt.nn.LI(1, beta=0.8),
        "LIB (binary, the LIF neuron)": tt.nn.LIB(1, beta=0.8, threshold=1.0, quant_fn="round"),
        "LIT (ternary)": tt.nn.LIT(1, beta=0.8, pos_threshold=1.0, neg_threshold=0.6, quant_fn="round"),
        "LITS (ternary, scaled)": tt.nn.LITS(
            1, beta=0.8, pos_threshold=1.0, neg_threshold=0.6, pos_scale=1.5, neg_scale=0.5, quant_fn="round"
        ),
    }
    fig = Figure(figsize=(10.0, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).flatten()
    steps = range(T)
    for ax, (title, layer) in zip(axes, layers.items()):
        r = record(layer, xs)
        ax.plot(steps, xs.flatten().numpy(), color="0.6", linewidth=1.0, label="input x")
        ax.plot(steps, r["membrane"].numpy(), color="C0", linewidth=1.4, label="membrane (before reset)")
        names = set(layer.param_names)
        if "threshold" in names:
            ax.axhline(float(layer.threshold.detach()), color="black", linestyle="--", linewidth=0.9, label="threshold")
        if "pos_threshold" in names:
            ax.axhline(float(layer.pos_threshold.detach()), color="black", linestyle="--", linewidth=0.9, label="+pos_threshold")
            ax.axhline(-float(layer.neg_threshold.detach()), color="C3", linestyle="--", linewidth=0.9, label="-neg_threshold")
        if layer.spec.fires:
            y = r["output"]
            fired = y != 0
            ax.stem(
                [s for s, f in zip(steps, fired) if f],
                y[fired].numpy(),
                linefmt="C1-",
                markerfmt="C1o",
                basefmt=" ",
                label="output y",
            )
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower left")
    for ax in axes[2:]:
        ax.set_xlabel("step")
    fig.savefig(path, format="png", dpi=DPI)


def prefixes(path: Path) -> None:
    xs = drive()
    fig = Figure(figsize=(10.0, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_s, ax_r, ax_d = fig.subplots(1, 3, sharex=True)
    steps = range(T)
    # S: the synaptic trace smooths the input before the membrane
    ax_s.plot(steps, xs.flatten().numpy(), color="0.6", linewidth=1.0, label="input x")
    ax_s.plot(steps, record(tt.nn.SLI(1, alpha=0.7, beta=0.8), xs)["syn"].numpy(), color="C2", label="SLI syn")
    ax_s.set_title("S: syn = EMA of x (alpha=0.7)", fontsize="medium")
    # R: the layer's own spikes, smoothed into rec, feed back through rec_weight
    for k, w in enumerate((0.0, 0.6)):
        r = record(tt.nn.RLIB(1, beta=0.8, gamma=0.7, rec_weight=w, quant_fn="round"), xs)
        ax_r.plot(steps, r["membrane"].numpy(), color=f"C{k}", label=f"RLIB rec_weight={w}")
    ax_r.axhline(1.0, color="black", linestyle="--", linewidth=0.9, label="threshold")
    ax_r.set_title("R: own spikes fed back", fontsize="medium")
    # D: the membrane kept as a positive and a negative half with their own decays
    signed = xs - 0.15
    r = record(tt.nn.DLIB(1, pos_beta=0.9, neg_beta=0.5, quant_fn="round"), signed)
    ax_d.plot(steps, r["pos_mem"].numpy(), color="C0", label="pos_mem (pos_beta=0.9)")
    ax_d.plot(steps, r["neg_mem"].numpy(), color="C3", label="neg_mem (neg_beta=0.5)")
    ax_d.plot(steps, r["membrane"].numpy(), color="black", linewidth=0.8, label="mem before reset")
    ax_d.set_title("D: two halves, two decays", fontsize="medium")
    for ax in (ax_s, ax_r, ax_d):
        ax.grid(alpha=0.3)
        ax.set_xlabel("step")
        ax.legend(fontsize="x-small", loc="lower left")
    fig.savefig(path, format="png", dpi=DPI)


def main(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "neuron_families.png", folder / "neuron_prefixes.png"]
    families(paths[0])
    prefixes(paths[1])
    return paths


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
