"""A custom neuron's traced kernel against its plain loop and against LIB's kernel.

The ALIF of docs/tutorials/custom_layer.md, a ``TTLayer`` subclass with two states (``mem``,
``adapt``), in sequence mode (``tt.nn.run``) at T=100, B=64, N=4096, float32, forward + backward
(``(run(layer, x.clone().requires_grad_()) * w).sum().backward()``, the states zeroed before each
call): its traced kernel (``fast=True``), its plain step loop (``fast=False``), and the built-in
LIB layer's kernel on the same input. Rounds are paired (every variant once per round, in turn);
medians. "Per byte of state" divides each kernel's time by the bytes of state it carries per
neuron (ALIF 8, LIB 4). Also: what the trace cache costs per call (a step looked up) against a
trace, and the first call (trace + build, with an empty kernel cache).

    python benchmarks/custom_steps.py                                # the full size
    python benchmarks/custom_steps.py --quick                        # a small size, a few seconds
    python benchmarks/custom_steps.py --out benchmarks/RESULTS.md    # replace its section there
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tracetorch as tt  # noqa: E402
from tracetorch import functional as F  # noqa: E402
from tracetorch.functional.kernels import custom  # noqa: E402


class ALIF(tt.TTLayer):
    """The tutorial's adaptive LIF (docs/tutorials/custom_layer.md)."""

    def __init__(self, num_neurons, beta=0.9, rho=0.95, threshold=1.0, adapt_gain=0.5, dim=-1):
        super().__init__(num_neurons, dim)
        self.register_decay("beta", beta)
        self.register_decay("rho", rho, rank=0, learnable=False)
        self.register_threshold("threshold", threshold)
        self.register_parameter("adapt_gain", adapt_gain)
        self.register_state("mem", "adapt")

    def step(self, params, state, x):
        mem = params.beta * state.mem + x
        s = F.round_st(F.sigmoid4x(mem - params.threshold - params.adapt_gain * state.adapt))
        adapt = params.rho * state.adapt + (1 - params.rho) * s
        return s, state._replace(mem=mem - s * params.threshold, adapt=adapt)


def train_step(layer, x, w, fast):
    layer.zero_states()
    (tt.nn.run(layer, x.clone().requires_grad_(), fast=fast) * w).sum().backward()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T=20, B=8, N=512, 3 rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", help="a results file whose section '### Custom steps' is replaced (or added)")
    args = parser.parse_args(argv)
    T, B, N = (20, 8, 512) if args.quick else (100, 64, 4096)
    rounds = 3 if args.quick else args.rounds
    torch.manual_seed(0)
    x = torch.randn(T, B, N) + 0.6
    w = torch.randn(T, B, N)

    # the first call, from an empty kernel cache: trace + build
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TRACETORCH_CACHE_DIR"] = tmp
        tt.functional.kernels.clear_cache()
        alif = ALIF(N)
        t0 = time.perf_counter()
        train_step(alif, x, w, True)
        first = time.perf_counter() - t0
        lib = tt.nn.LIB(N, quant_fn="round")
        variants = {
            "ALIF kernel (fast=True)": lambda: train_step(alif, x, w, True),
            "ALIF plain loop (fast=False)": lambda: train_step(alif, x, w, False),
            "LIB kernel (fast=True)": lambda: train_step(lib, x, w, True),
        }
        for fn in variants.values():  # warm up (builds LIB's kernel too)
            fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)

        # the trace cache: a cached lookup against a fresh trace
        alif.zero_states()
        alif._ensure_states(x[0])
        params, state = alif.activated_params(), alif.state
        reps = 200
        t0 = time.perf_counter()
        for _ in range(reps):
            custom._plan(alif.step, params, state, {})
        lookup = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for _ in range(20):
            custom._CACHE.clear()
            custom._plan(alif.step, params, state, {})
        trace = (time.perf_counter() - t0) / 20
        os.environ.pop("TRACETORCH_CACHE_DIR")

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    span = {k: (min(v) * 1e3, max(v) * 1e3) for k, v in times.items()}
    kern, plain, lib_ms = (
        med["ALIF kernel (fast=True)"],
        med["ALIF plain loop (fast=False)"],
        med["LIB kernel (fast=True)"],
    )
    lines = [
        f"### Custom steps: an ALIF TTLayer in sequence mode, forward + backward (T={T}, B={B}, N={N})",
        "",
        f"`python benchmarks/custom_steps.py`: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, float32, {rounds} paired rounds",
        "",
        "| variant | ms (median) | min-max |",
        "|---|---:|---:|",
        *(f"| {k} | {med[k]:.1f} | {span[k][0]:.1f}-{span[k][1]:.1f} |" for k in variants),
        "",
        f"- ALIF plain loop / ALIF kernel: {plain / kern:.2f}x",
        f"- ALIF kernel / LIB kernel: {kern / lib_ms:.2f}x; per byte of state (ALIF 8 B, LIB 4 B): "
        f"{kern / 2 / lib_ms:.2f}x",
        f"- first call (trace + build, empty kernel cache): {first:.2f} s",
        f"- per call: trace cache lookup {lookup * 1e6:.0f} us, a fresh trace {trace * 1e6:.0f} us",
    ]
    print("\n".join(lines))
    if args.out:
        _replace_section(Path(args.out), lines)
    return {"medians_ms": med, "first_s": first, "lookup_us": lookup * 1e6, "trace_us": trace * 1e6}


def _replace_section(path: Path, lines: list[str]) -> None:
    """Put ``lines`` in place of the section starting ``### Custom steps`` of ``path`` (else at its end)."""
    old = path.read_text().splitlines() if path.exists() else []
    start = next((i for i, ln in enumerate(old) if ln.startswith("### Custom steps")), None)
    if start is None:
        new = [*old, "", *lines]
    else:
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("#")), len(old))
        new = [*old[:start], *lines, "", *old[end:]]
    path.write_text("\n".join(new).rstrip() + "\n")


if __name__ == "__main__":
    main()
