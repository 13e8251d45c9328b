"""The functional core: explicit state threading with pure steps, ``scan``, ``vmap`` and ``grad``.

No ``nn.Module`` holds a neuron here. A neuron type is a pure function
``step(params, state, x) -> (y, new_state)`` (``tt.functional.lib_step`` etc.), with the
init/apply contract::

    params = F.init_params("LIB", n, beta=0.9)    # activated values: decays in (0,1), thresholds > 0
    state = F.init_state("LIB", x0)               # zeros shaped like the input
    y, state = F.lib_step(params, state, x)       # one timestep
    ys, state = F.scan(step, params, state, xs)   # a whole [T, ...] sequence

The example shows, on a layer of LIB neurons driven through a weight matrix by rate-coded input:

1. a hand-written loop over time, and the same with ``F.scan`` (identical spikes);
2. a *population* of neuron groups with different thresholds run as one call with
   ``torch.func.vmap`` over stacked params (``randomness="different"``: each member draws its
   own Bernoulli spikes), and checked against a Python loop with the deterministic quantizer;
3. ``torch.func.grad`` of a firing-rate loss with respect to the raw (unconstrained) params,
   and ``vmap(grad(...))`` training every member of the population to its own target rate.

    python examples/functional_step.py
    python examples/functional_step.py --population 4 --steps 20
"""

from __future__ import annotations

import argparse
import time

import optree
import torch
from torch.func import grad, vmap

import tracetorch as tt
from tracetorch import functional as F


def layer_step(p, state, x, quant_fn="round"):
    """A whole layer as one pure step: ``p = (W, neuron_params)``; input ``[B, n_in]`` -> spikes ``[B, n]``."""
    weight, neuron = p
    return F.lib_step(neuron, state, x @ weight, quant_fn=quant_fn)


def activate(raw):
    """Raw, unconstrained params -> the step's activated params (sigmoid for decays, softplus for thresholds)."""
    weight, raw_beta, raw_threshold = raw
    neuron = F.SPECS["LIB"].Params(beta=torch.sigmoid(raw_beta), threshold=torch.nn.functional.softplus(raw_threshold))
    return weight, neuron


def main(argv: list[str] | None = None) -> dict:
    """Run the four parts; returns what the smoke test checks."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("``", ""),  # the summary, without the markup
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--timesteps", type=int, default=50, help="timesteps per sample")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per batch")
    parser.add_argument("--inputs", type=int, default=20, help="input features")
    parser.add_argument("--neurons", type=int, default=32, help="neurons in the layer")
    parser.add_argument("--population", type=int, default=8, help="members of the vmapped population")
    parser.add_argument("--steps", type=int, default=25, help="gradient steps towards the target rates")
    parser.add_argument("--lr", type=float, default=20.0, help="plain gradient descent step size")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small matmuls: 1 is fastest)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data split and spikes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    T, B, n_in, n, K = args.timesteps, args.batch_size, args.inputs, args.neurons, args.population

    xs = tt.encode.rate(0.5 * torch.rand(B, n_in, generator=gen), T, generator=gen)  # [T, B, n_in]
    weight = torch.randn(n_in, n, generator=gen) / n_in**0.5
    params = F.init_params("LIB", n, beta=0.9, threshold=1.0)
    state0 = F.init_state("LIB", torch.zeros(B, n))

    # --- 1. explicit state threading, then the same with scan --------------------------------
    state, ys = state0, []
    for x in xs:
        y, state = F.lib_step(params, state, x @ weight, quant_fn="round")
        ys.append(y)
    ys_loop, mem_loop = torch.stack(ys), state.mem
    ys_scan, state_scan = F.scan(layer_step, (weight, params), state0, xs)
    loop_equals_scan = torch.equal(ys_loop, ys_scan) and torch.equal(mem_loop, state_scan.mem)
    print(f"1. loop vs scan over {T} steps: identical = {loop_equals_scan}, mean rate {ys_loop.mean():.3f}")

    # --- 2. a population: K groups with thresholds from 0.5 to 2, one vmapped call ----------
    thresholds = torch.linspace(0.5, 2.0, K)
    members = [F.init_params("LIB", n, beta=0.9, threshold=float(th)) for th in thresholds]
    stacked = optree.tree_map(lambda *leaves: torch.stack(leaves), *members)  # fields [K, n]

    def member_rates(neuron, quant_fn):
        ys, _ = F.scan(layer_step, (weight, neuron), state0, xs, quant_fn=quant_fn)
        return ys.mean(dim=(0, 1))  # [n]: each neuron's firing rate

    start = time.perf_counter()
    rates = vmap(lambda p: member_rates(p, "bernoulli"), randomness="different")(stacked)  # [K, n]
    vmap_s = time.perf_counter() - start
    rates_round = vmap(lambda p: member_rates(p, "round"))(stacked)
    loop_round = torch.stack([member_rates(p, "round") for p in members])
    vmap_equals_loop = torch.allclose(rates_round, loop_round)
    print(
        f"2. population of {K} (vmap, bernoulli spikes, {vmap_s * 1e3:.0f} ms); vmap == loop (round): {vmap_equals_loop}"
    )
    for th, r in zip(thresholds.tolist(), rates.mean(1).tolist()):
        print(f"   threshold {th:4.2f}: mean rate {r:.3f}")

    # --- 3. gradients through time with torch.func.grad --------------------------------------
    # Train the raw params (weights, logit(beta), softplus_inverse(threshold)) so the layer fires at
    # a target rate; the raw form keeps every update inside the constraints.
    def rate_loss(raw, target):
        ys, _ = F.scan(layer_step, activate(raw), state0, xs)
        return (ys.mean() - target) ** 2

    raw = (weight, F.sigmoid_inverse(params.beta), F.softplus_inverse(params.threshold))
    g = grad(rate_loss)(raw, torch.tensor(0.2))
    print("3. grad of (rate - 0.2)^2 w.r.t. (W, raw beta, raw threshold): norms", [f"{t.norm():.2e}" for t in g])

    # every member of a population gets its own target rate; vmap(grad) trains them all at once
    targets = torch.linspace(0.05, 0.4, K)
    raw_pop = optree.tree_map(lambda t: t.expand(K, *t.shape).clone(), raw)
    per_member_grad = vmap(grad(rate_loss))
    before = vmap(rate_loss)(raw_pop, targets).sqrt()
    for _ in range(args.steps):
        grads = per_member_grad(raw_pop, targets)
        raw_pop = optree.tree_map(lambda p, d: p - args.lr * d, raw_pop, grads)
    after = vmap(rate_loss)(raw_pop, targets).sqrt()
    final_rates = vmap(lambda r: F.scan(layer_step, activate(r), state0, xs)[0].mean())(raw_pop)
    print(f"   {K} members trained to their own target rate in {args.steps} vmapped grad steps:")
    for t, r, b in zip(targets.tolist(), final_rates.tolist(), before.tolist()):
        print(f"   target {t:.3f}: rate {r:.3f} (error before {b:.3f})")
    return {
        "loop_equals_scan": loop_equals_scan,
        "vmap_equals_loop": vmap_equals_loop,
        "rates": rates,
        "thresholds": thresholds,
        "error_before": before,
        "error_after": after,
        "final_rates": final_rates,
        "targets": targets,
    }


if __name__ == "__main__":
    main()
