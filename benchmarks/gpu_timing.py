"""Time one LIB layer on CUDA: the Triton kernel path against the plain step loop (forward + backward).

Run by ``benchmarks/device_check.sh``; alone: ``python benchmarks/gpu_timing.py [--rounds 5] [--sizes 4096,65536]``.
Prints, per size, the median wall time of the kernel path and of the plain loop (each timed with
``torch.cuda.synchronize``), the speed-up, and the kernel's memory floor: the bytes the forward and
backward kernels must move at least (read xs, write ys and the saved state; read xs, saved, grad
ys, write grad xs), divided by the device's copy bandwidth measured by a large tensor copy; the
ratio ``time / floor`` says how far from memory-bound the kernel is (1.0 is the floor).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

import tracetorch.functional as F


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_time(fn, rounds: int) -> float:
    fn()  # warm-up (compiles the kernel on the first call)
    _sync()
    times = []
    for _ in range(rounds):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, rounds: int = 5) -> float:
    """Bytes per second of a device-to-device tensor copy (read + write counted)."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    t = _median_time(lambda: b.copy_(a), rounds)
    return 2 * nbytes / t


def main() -> None:
    """Parse the options and print the timing table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sizes", default="4096,65536")
    ap.add_argument("--loop-rounds", type=int, default=3, help="rounds of the (slow) plain loop")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script (the C kernels)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    bw = copy_bandwidth(dev, 1 << 30 if dev.type == "cuda" else 1 << 26)
    print(f"device copy bandwidth: {bw / 1e9:.0f} GB/s")
    spec, step = F.SPECS["LIB"], F.get_step("LIB")
    T, Bn = args.steps, args.batch
    print(f"{'N':>7} {'path':>6} {'fwd+bwd ms':>11} {'x floor':>8} {'fwd ms':>8} {'x floor':>8}")
    for N in (int(n) for n in args.sizes.split(",")):
        beta = torch.full((N,), 0.9, device=dev, requires_grad=True)
        thr = torch.ones(N, device=dev, requires_grad=True)
        xs = torch.randn(T, Bn, N, device=dev, requires_grad=True)
        w = torch.randn(T, Bn, N, device=dev)
        s0 = spec.State(torch.zeros(Bn, N, device=dev, requires_grad=True))
        params = spec.Params(beta=beta, threshold=thr)
        elem = 4 * T * Bn * N  # bytes of one [T, B, N] float32 tensor
        # forward: read xs, write ys (and saved, one state, when training); backward: read xs, saved,
        # grad ys, write grad xs
        floor_fb, floor_f = (3 + 4) * elem / bw, 2 * elem / bw
        for fast, rounds in ((True, args.rounds), (False, args.loop_rounds)):
            tfb = _median_time(functools.partial(_fwd_bwd, step, params, s0, xs, w, fast), rounds)
            tf = _median_time(functools.partial(_fwd, step, params, s0, xs, fast), rounds)
            name = "kernel" if fast else "loop"
            print(f"{N:>7} {name:>6} {tfb * 1e3:>11.2f} {tfb / floor_fb:>8.1f} {tf * 1e3:>8.2f} {tf / floor_f:>8.1f}")
        del beta, thr, xs, w, s0, params
        torch.cuda.empty_cache()


def _fwd_bwd(step, params, s0, xs, w, fast) -> None:
    ys, _ = F.scan(step, params, s0, xs, quant_fn="round", fast=fast)
    torch.autograd.grad((ys * w).sum(), [*params, xs])


def _fwd(step, params, s0, xs, fast) -> None:
    with torch.no_grad():
        F.scan(step, params, s0, xs, quant_fn="round", fast=fast)


if __name__ == "__main__":
    main()
