"""torch.func transforms of ``F.scan`` through the fused kernels, against the work without them.

Workloads (issue 16), ``F.scan(F.lib_step, ...)``, quant ``"round"``, float32, T=100, B=16, N=512:

* **grad**: ``torch.func.grad`` of ``scan(...).sum()`` wrt the params, against plain autograd
  through the kernels on the same work (``torch.autograd.grad`` of the same loss, params as
  leaves), and ``torch.func.grad`` with ``fast=False``;
* **vmap**: ``torch.func.vmap`` over a population of P=32 parameter sets (params ``[P, N]`` and
  xs ``[P, T, B, N]`` batched), against one kernel call with the population folded into the batch
  (xs ``[T, P, B, N]``, params ``[P, 1, N]`` broadcast), a Python loop of P kernel calls, and
  ``fast=False``;
* **vmap(grad)**: per-member gradients of the same population, against one folded kernel call
  forward + backward, and ``fast=False``;
* **hessian-vector / gradient penalty** (second derivatives): the gradient of ``|grad_x|^2``
  through the default path against ``fast=False``.

Every variant runs once per round, rounds interleaved after a warm-up; the table gives the median
with min-max and the paired ratio (median over rounds of variant / reference in the same round).
Run ``python benchmarks/transforms.py`` (``--rounds``, ``--threads``, ``--out FILE`` to write the
Markdown table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tracetorch.functional as F  # noqa: E402

SPEC = F.SPECS["LIB"]


def workloads(T: int, B: int, N: int, P: int) -> list[tuple[str, list[tuple[str, Callable[[], object]]]]]:
    g = torch.Generator().manual_seed(0)
    beta = 0.5 + 0.4 * torch.rand(P, N, generator=g)
    threshold = 0.8 + 0.4 * torch.rand(P, N, generator=g)
    pop = SPEC.Params(beta, threshold)
    one = SPEC.Params(beta[0].clone(), threshold[0].clone())
    xs_pop = 1.5 * torch.randn(P, T, B, N, generator=g)
    xs = xs_pop[0].clone()
    xs_folded = xs_pop.transpose(0, 1).contiguous()  # [T, P, B, N]: the population as a batch dim
    folded = SPEC.Params(beta[:, None, :].clone(), threshold[:, None, :].clone())  # [P, 1, N]

    def scan(p, x, fast=None):
        return F.scan(F.lib_step, p, F.init_state(SPEC, x[0]), x, quant_fn="round", fast=fast)[0]

    def loss(p, x, fast=None):
        return scan(p, x, fast).sum()

    def autograd_grad(p, x):
        leaves = SPEC.Params(*(t.detach().requires_grad_(True) for t in p))
        return torch.autograd.grad(loss(leaves, x), list(leaves))

    def penalty(fast):
        x = xs.clone().requires_grad_(True)
        leaves = SPEC.Params(*(t.detach().requires_grad_(True) for t in one))
        (gx,) = torch.autograd.grad(loss(leaves, x, fast), x, create_graph=True)
        return torch.autograd.grad((gx * gx).sum(), list(leaves))

    with torch.no_grad():
        member_loop = lambda: [scan(SPEC.Params(beta[i], threshold[i]), xs_pop[i]) for i in range(P)]  # noqa: E731
    return [
        (
            "grad of a scan wrt the params",
            [
                ("plain autograd through the kernels", lambda: autograd_grad(one, xs)),
                ("torch.func.grad (default: kernels)", lambda: grad(loss)(one, xs)),
                ("torch.func.grad, fast=False", lambda: grad(loss)(one, xs, False)),
            ],
        ),
        (
            f"vmap over {P} members, forward",
            [
                ("one folded kernel call [T, P, B, N]", lambda: scan(folded, xs_folded)),
                ("vmap (default: kernels)", lambda: vmap(scan)(pop, xs_pop)),
                (f"Python loop of {P} kernel calls", member_loop),
                ("vmap, fast=False", lambda: vmap(lambda p, x: scan(p, x, False))(pop, xs_pop)),
            ],
        ),
        (
            f"vmap(grad) over {P} members",
            [
                ("one folded kernel call, fwd + bwd", lambda: autograd_grad(folded, xs_folded)),
                ("vmap(grad) (default: kernels)", lambda: vmap(grad(loss))(pop, xs_pop)),
                ("vmap(grad), fast=False", lambda: vmap(grad(lambda p, x: loss(p, x, False)))(pop, xs_pop)),
            ],
        ),
        (
            "gradient penalty (create_graph=True, then backward)",
            [
                ("fast=False", lambda: penalty(False)),
                ("default (kernels, plain step recomputed)", lambda: penalty(None)),
            ],
        ),
    ]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    ap.add_argument("--out", type=Path, help="write the Markdown tables here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    T, B, N, P, rounds = (100, 16, 512, args.members, args.rounds) if not args.quick else (20, 4, 64, 4, 3)
    lines = [
        f"`F.scan(F.lib_step, ...)`, quant `round`, float32, T={T}, B={B}, N={N}, {args.threads} threads, "
        f"{rounds} rounds (median, min-max; ratio: paired median over rounds against the first row).",
        "",
    ]
    for title, variants in workloads(T, B, N, P):
        for _, fn in variants:  # warm-up: kernel builds, allocator
            fn()
            fn()
        times = {name: [] for name, _ in variants}
        for _ in range(rounds):
            for name, fn in variants:
                times[name].append(timed(fn))
        ref = times[variants[0][0]]
        lines += [f"### {title}", "", "| variant | median ms | min-max ms | ratio |", "|---|---:|---:|---:|"]
        for name, ts in times.items():
            ratio = statistics.median(t / r for t, r in zip(ts, ref))
            lines.append(
                f"| {name} | {1e3 * statistics.median(ts):.1f} | {1e3 * min(ts):.1f}-{1e3 * max(ts):.1f} | {ratio:.2f} |"
            )
        lines.append("")
        print("\n".join(lines[-len(times) - 5 :]), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
