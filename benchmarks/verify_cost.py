"""The cold-start cost of the kernels' self-check (tracetorch/functional/kernels/verify.py).

For each kernel (type, quantizer, dtype) in a fresh, empty cache: the time to build and load it,
and the time its self-check takes (once per kernel per cache: the result is kept in the library's
record, so a warm start pays neither). Median of ``--rounds`` checks per kernel; one process.

    python benchmarks/verify_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ["TRACETORCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="tt-verify-cost-")

import torch  # noqa: E402

import tracetorch.functional as F  # noqa: E402
from tracetorch.functional.kernels import cpu, ops, verify  # noqa: E402

KERNELS = [("LI", "none"), ("LIB", "round"), ("LIB", "bernoulli"), ("DSRLITS", "round"), ("DSRLITS", "probabilistic")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, compiler: {cpu.compiler().version}, threads 1")
    print(f"{'kernel':<24} {'build+load ms':>14} {'check ms':>9}")
    checks = []
    for name, quant in KERNELS:
        for real, dtype in (("float", torch.float32), ("double", torch.float64)):
            kernel = ops.get_kernel(name, ops.spike_tag(F.sigmoid4x), quant)
            t0 = time.perf_counter()
            fwd, bwd = kernel._built(real, "forward"), kernel._built(real, "backward")
            built = time.perf_counter() - t0
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                ok, _, _ = verify.check(
                    kernel,
                    torch.device("cpu"),
                    dtype,
                    lambda *a, lib=fwd, real=real: ops._cpu_forward(lib, real, *a),
                    lambda *a, lib=bwd, real=real: ops._cpu_backward(lib, real, *a),
                )
                times.append(time.perf_counter() - t0)
                assert ok
            med = statistics.median(times)
            checks.append(med)
            print(f"{name + ' ' + quant + ' ' + real:<24} {built * 1e3:>14.0f} {med * 1e3:>9.1f}")
    print(f"median check: {statistics.median(checks) * 1e3:.1f} ms per kernel")


if __name__ == "__main__":
    main()
