"""Inference with ``TTcompile`` (frozen activated params) and, optionally, ``torch.compile``.

A layer stores its constrained params raw (``raw_beta = logit(beta)``, ``raw_threshold =
softplus_inverse(threshold)``) and activates them on every call, which is what training needs.
For inference ``model.TTcompile()`` computes the activated values once and keeps them as
buffers; ``model.TTuncompile()`` goes back (the raw params were never touched). The outputs are
the same, bit for bit.

``torch.compile(model)`` compiles the per-step call with TorchInductor (on CPU it needs a C++
compiler; the first call pays the compile time, here two graphs: the first step, which creates
the lazy states, and every later step).

The model is trained briefly on scikit-learn's 8x8 digits (rate coded, no download), then the
test set is run through the eager model, the TTcompiled model and the torch.compiled one, each
timed (best of ``--repeats``) and compared with the eager outputs.

    python examples/compile_inference.py
    python examples/compile_inference.py --no-torch-compile --epochs 1
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import tracetorch as tt

from digits_data import load_digits_tensors  # examples/digits_data.py


class Net(tt.TTModel):
    """``Linear -> SRLIB -> Linear -> LIB`` readout; deterministic spikes (``quant_fn="round"``)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden),
            tt.nn.SRLIB(hidden, quant_fn="round"),
            nn.Linear(hidden, 10),
            tt.nn.LIB(10, quant_fn="round"),
        )

    def forward(self, x):
        return self.net(x)


def run(model: Net, step, spikes_in: torch.Tensor) -> torch.Tensor:
    """Outputs ``[T, B, 10]`` of ``step`` (the model or its torch.compiled form) from fresh states."""
    model.zero_states()
    with torch.no_grad():
        return torch.stack([step(x) for x in spikes_in])


def timed(model: Net, step, spikes_in: torch.Tensor, repeats: int) -> tuple[torch.Tensor, float]:
    """The outputs and the best wall time of ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = run(model, step, spikes_in)
        best = min(best, time.perf_counter() - start)
    return out, best


def main(argv: list[str] | None = None) -> dict:
    """Train, then compare eager / TTcompile / torch.compile inference; returns equalities and timings."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("``", ""),  # the summary, without the markup
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (0: evaluate the untrained model)")
    parser.add_argument("--timesteps", type=int, default=16, help="timesteps per sample")
    parser.add_argument("--hidden", type=int, default=128, help="hidden neurons")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (the best counts)")
    parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small matmuls: 1 is fastest)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data split and spikes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    x_train, y_train, x_test, y_test = load_digits_tensors(args.seed)
    model = Net(args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x_train), generator=gen).split(64):
            model.zero_states()
            spikes_in = tt.encode.rate(x_train[idx], args.timesteps, generator=gen)
            loss = tt.loss.count_cross_entropy(torch.stack([model(x) for x in spikes_in]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    model.eval()
    test_in = tt.encode.rate(x_test, args.timesteps, generator=gen)  # [T, 360, 64]
    eager_out, eager_s = timed(model, model, test_in, args.repeats)
    print(f"eager:         {eager_s * 1e3:7.1f} ms, test accuracy {tt.loss.accuracy(eager_out, y_test):.4f}")

    model.TTcompile()
    tt_out, tt_s = timed(model, model, test_in, args.repeats)
    tt_equal = torch.equal(tt_out, eager_out)
    print(f"TTcompile:     {tt_s * 1e3:7.1f} ms, outputs identical to eager: {tt_equal}")
    frozen = model.net[1]
    print(
        f"  SRLIB now holds its activated params as buffers: {sorted(set(frozen.param_names) & set(dict(frozen.named_buffers())))}"
    )

    result = {
        "tt_equal": tt_equal,
        "eager_s": eager_s,
        "ttcompile_s": tt_s,
        "accuracy": tt.loss.accuracy(tt_out, y_test),
    }
    if args.torch_compile:
        compiled = torch.compile(model)
        start = time.perf_counter()
        first = run(model, compiled, test_in)
        compile_s = time.perf_counter() - start
        compiled_out, compiled_s = timed(model, compiled, test_in, args.repeats)
        agreement = (compiled_out == eager_out).float().mean().item()
        print(
            f"torch.compile: {compiled_s * 1e3:7.1f} ms (first run, compiling: {compile_s:.1f} s), "
            f"outputs identical to eager: {torch.equal(compiled_out, eager_out)} (agreement {agreement:.4%})"
        )
        result.update(
            compiled_equal=torch.equal(compiled_out, eager_out) and torch.equal(first, compiled_out),
            compiled_agreement=agreement,
            compile_s=compile_s,
            compiled_s=compiled_s,
        )

    model.TTuncompile()  # back to the raw params: trainable again
    back_out = run(model, model, test_in)
    result["uncompiled_equal"] = torch.equal(back_out, eager_out)
    print(f"TTuncompile:   outputs identical to eager again: {result['uncompiled_equal']}")
    return result


if __name__ == "__main__":
    main()
