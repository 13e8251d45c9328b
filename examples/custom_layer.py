"""A custom neuron: an adaptive-threshold LIF (ALIF) written as a ``TTLayer``, trained in a ``TTModel``.

A custom layer declares its params and states in ``__init__`` and writes one pure
``step(params, state, x) -> (y, new_state)`` with the neuron dimension last. ``TTLayer`` does
the rest: raw storage with constraints (``register_decay``: sigmoid, ``register_threshold``:
softplus), per-neuron or scalar params, learnable or fixed, lazy zero states, ``dim``
handling, and the ``TTModel`` services (``zero_states``, ``detach_states``, ``save_states``,
``TTcompile``) and ``tt.monitor``.

The ALIF here: every spike raises the neuron's threshold by ``adapt_gain`` times an adaptation
trace that decays with ``rho``, so a neuron that has just fired is harder to excite::

    mem   = beta * mem + x
    s     = round(spike_fn(mem - threshold - adapt_gain * adapt))
    mem   = mem - s * threshold
    adapt = rho * adapt + (1 - rho) * s

It is trained for a few epochs on scikit-learn's 8x8 digits (rate coded, no download):

    python examples/custom_layer.py
    python examples/custom_layer.py --epochs 1 --hidden 32
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import tracetorch as tt
from tracetorch import functional as F

from digits_data import load_digits_tensors  # examples/digits_data.py


class ALIF(tt.TTLayer):
    """Adaptive-threshold leaky integrate-and-fire: a LIF whose threshold rises after each spike."""

    def __init__(
        self,
        num_neurons: int,
        beta: float = 0.9,
        rho: float = 0.95,
        threshold: float = 1.0,
        adapt_gain: float = 1.0,
        dim: int = -1,
        spike_fn=F.sigmoid4x,
        quant_fn: str = "round",
    ) -> None:
        super().__init__(num_neurons, dim)
        self.register_decay("beta", beta)  # per neuron, learnable: raw_beta = logit(beta)
        self.register_decay("rho", rho, rank=0, learnable=False)  # one fixed scalar (a buffer)
        self.register_threshold("threshold", threshold)  # raw_threshold = softplus_inverse(threshold)
        self.register_parameter("adapt_gain", adapt_gain)  # unconstrained, per neuron
        self.register_state("mem", "adapt")
        self.spike_fn = spike_fn
        self.quant = F.QUANTIZERS[quant_fn]

    def step(self, params, state, x):
        mem = params.beta * state.mem + x
        spikes = self.quant(self.spike_fn(mem - params.threshold - params.adapt_gain * state.adapt))
        adapt = params.rho * state.adapt + (1 - params.rho) * spikes
        return spikes, state._replace(mem=mem - spikes * params.threshold, adapt=adapt)


class Net(tt.TTModel):
    """``Linear -> ALIF -> Linear -> LIB readout``, one timestep per call."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.alif = ALIF(hidden)
        self.fc2 = nn.Linear(hidden, 10)
        self.readout = tt.nn.LIB(10, quant_fn="round")

    def forward(self, x):
        return self.readout(self.fc2(self.alif(self.fc1(x))))


def run(model: Net, spikes_in: torch.Tensor) -> torch.Tensor:
    model.zero_states()
    return torch.stack([model(x) for x in spikes_in])


def main(argv: list[str] | None = None) -> dict:
    """Train the ALIF network; returns ``{"accuracy", "losses", "adapt_rate", "compiled_equal", "state_keys"}``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("``", ""),  # the summary, without the markup
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=5, help="training epochs")
    parser.add_argument("--timesteps", type=int, default=16, help="timesteps per sample")
    parser.add_argument("--hidden", type=int, default=128, help="hidden neurons")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small matmuls: 1 is fastest)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data split and spikes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    model = Net(args.hidden)
    print(model.alif)
    print(
        "params:",
        [name for name, _ in model.alif.named_parameters()],
        "buffers:",
        list(dict(model.alif.named_buffers())),
    )
    print(f"activated: beta {model.alif.beta[0]:.3f} (raw {model.alif.raw_beta[0]:.3f}), rho {model.alif.rho:.3f}")

    x_train, y_train, x_test, y_test = load_digits_tensors(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        total = 0.0
        for idx in torch.randperm(len(x_train), generator=gen).split(args.batch_size):
            out = run(model, tt.encode.rate(x_train[idx], args.timesteps, generator=gen))
            loss = tt.loss.count_cross_entropy(out, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x_train))
        print(f"epoch {epoch + 1}: loss {losses[-1]:.3f}")

    model.eval()
    test_in = tt.encode.rate(x_test, args.timesteps, generator=gen)
    with torch.no_grad(), tt.monitor(model, ["alif"]) as rec:
        out = run(model, test_in)
    accuracy = tt.loss.accuracy(out, y_test)
    adapt = rec.states["alif"]["adapt"]  # [T, B, hidden]
    rate = rec.firing_rates()["alif"].mean().item()
    print(
        f"test accuracy {accuracy:.4f} after {args.epochs} epochs ({time.perf_counter() - start:.1f} s); "
        f"ALIF firing rate {rate:.3f}, mean adaptation at the last step {adapt[-1].mean():.3f}"
    )
    print(f"learned: beta mean {model.alif.beta.mean():.3f}, adapt_gain mean {model.alif.adapt_gain.mean():.3f}")

    # the TTModel services work on the custom layer as on the built-in ones
    state_keys = list(model.save_states())
    print("state keys:", state_keys)
    model.TTcompile()  # frozen activated params: no sigmoid / softplus per step
    with torch.no_grad():
        compiled_equal = torch.equal(run(model, test_in), out)
    model.TTuncompile()
    print(f"TTcompiled model gives the same spikes: {compiled_equal}")
    return {
        "accuracy": accuracy,
        "losses": losses,
        "adapt_rate": rate,
        "compiled_equal": compiled_equal,
        "state_keys": state_keys,
    }


if __name__ == "__main__":
    main()
