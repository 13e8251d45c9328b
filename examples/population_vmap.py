"""Train a population of 32 differently initialised SNNs side by side in one vmapped call.

The models' params are stacked with ``torch.func.stack_module_state``; ``tt.nn.functional_run``
runs one member over a whole sequence as a pure function of (params, states, inputs), and ``torch.func.vmap`` runs all
of them at once (``randomness="different"``: each member draws its own Bernoulli spikes). The
same training as a Python loop over the 32 models is timed for comparison.

    python examples/population_vmap.py            # 32 members, digits data, about a minute
    python examples/population_vmap.py --members 4 --epochs 1
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torch.func import stack_module_state, vmap

import tracetorch as tt

from digits_data import load_digits_tensors  # examples/digits_data.py


def make_model(seed: int, hidden: int) -> nn.Module:
    """One member: Linear -> LIB -> Linear -> LI readout; the seed decides its initialisation."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), tt.nn.LIB(hidden), nn.Linear(hidden, 10), tt.nn.LI(10))


def run_member(base: nn.Module, params: dict, spikes_in: torch.Tensor) -> torch.Tensor:
    """Logits of one member over a ``[T, B, 64]`` spike train: the LI membrane summed over time."""
    ys, _ = tt.nn.functional_run(base, params, None, spikes_in)  # [T, B, 10], from zero states
    return ys.mean(0)


def encode(x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Rate coding: ``[B, 64]`` intensities -> ``[T, B, 64]`` Bernoulli spikes."""
    return torch.bernoulli(x.expand(timesteps, *x.shape))


def main(argv: list[str] | None = None) -> dict:
    """Train the population both ways; returns accuracies and the time of each way."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("``", ""),  # the summary, without the markup
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--members", type=int, default=32, help="networks in the population")
    parser.add_argument("--hidden", type=int, default=64, help="hidden neurons")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (0: evaluate the untrained model)")
    parser.add_argument("--timesteps", type=int, default=8, help="timesteps per sample")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data split and spikes")
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_digits_tensors(args.seed)
    models = [make_model(args.seed + i, args.hidden) for i in range(args.members)]
    loop_models = copy.deepcopy(models)

    # --- vmapped: one call trains every member --------------------------------------------
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    opt = torch.optim.Adam(params.values(), lr=3e-3)

    def member_logits(p, b, spikes_in):
        return run_member(base, {**p, **b}, spikes_in)

    batched = vmap(member_logits, in_dims=(0, 0, None), randomness="different")
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x_train), generator=gen).split(args.batch_size):
            spikes_in = encode(x_train[idx], args.timesteps)
            logits = batched(params, buffers, spikes_in)  # [members, B, 10]
            # summing the members' losses keeps their gradients separate: each member owns its params
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y_train[idx].repeat(args.members), reduction="sum")
            opt.zero_grad()
            (loss / len(idx)).backward()
            opt.step()
    vmapped_s = time.perf_counter() - start
    with torch.no_grad():
        logits = batched(params, buffers, encode(x_test, args.timesteps))
        vmapped_acc = (logits.argmax(-1) == y_test).float().mean(-1)

    # --- the same training as a Python loop over the members ------------------------------
    opts = [torch.optim.Adam(m.parameters(), lr=3e-3) for m in loop_models]
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x_train), generator=gen).split(args.batch_size):
            spikes_in = encode(x_train[idx], args.timesteps)
            for m, o in zip(loop_models, opts):
                m_params = dict(m.named_parameters())
                loss = nn.functional.cross_entropy(run_member(m, m_params, spikes_in), y_train[idx])
                o.zero_grad()
                loss.backward()
                o.step()
    loop_s = time.perf_counter() - start
    with torch.no_grad():
        spikes_in = encode(x_test, args.timesteps)
        loop_acc = torch.stack(
            [
                (run_member(m, dict(m.named_parameters()), spikes_in).argmax(-1) == y_test).float().mean()
                for m in loop_models
            ]
        )

    print(f"{args.members} members, {args.epochs} epochs, T={args.timesteps}")
    print(
        f"vmapped: {vmapped_s:6.2f} s, test accuracy mean {vmapped_acc.mean():.3f} (min {vmapped_acc.min():.3f}, max {vmapped_acc.max():.3f})"
    )
    print(
        f"loop:    {loop_s:6.2f} s, test accuracy mean {loop_acc.mean():.3f} (min {loop_acc.min():.3f}, max {loop_acc.max():.3f})"
    )
    print(f"speed-up of one vmapped call over the loop: {loop_s / vmapped_s:.1f}x")
    return {"vmapped_acc": vmapped_acc, "loop_acc": loop_acc, "vmapped_s": vmapped_s, "loop_s": loop_s}


if __name__ == "__main__":
    main()
