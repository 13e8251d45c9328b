"""Cold start, paired: fresh processes with empty kernel caches train the W1 small MLP for 6 iterations.

Each round runs every variant once, in turn, each in a fresh process with its own empty
``TRACETORCH_CACHE_DIR``: tracetorch with prebuild (the default), with ``TRACETORCH_PREBUILD=0``,
optionally another checkout of tracetorch (``--before PATH``, e.g. an older commit unpacked with
``git archive``), and SpikingJelly. The workload is bench.py's cold-start one (784-512-512-10, two
LIF layers, T=50, B=64, Adam). Printed per run and as medians: the process's wall time, its CPU
time, the time from the model's creation to the end (imports done) and the first iteration, then
the paired median ratio of each variant to SpikingJelly.

    python benchmarks/cold_start.py --rounds 7 [--before /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKLOAD = """
import sys, time
t0 = time.perf_counter()
import torch
from torch import nn
import torch.nn.functional as Fn
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
T, B, H = 50, 64, 512
xs = (torch.rand(T, B, 784) < 0.2).float()
labels = torch.randint(0, 10, (B,))
if sys.argv[1] == "tracetorch":
    import tracetorch as tt
    t1 = time.perf_counter()
    model = nn.Sequential(nn.Linear(784, H), tt.nn.LIB(H, quant_fn="round"), nn.Linear(H, H),
                          tt.nn.LIB(H, quant_fn="round"), nn.Linear(H, 10))
    def forward():
        for layer in (model[1], model[3]):
            layer.zero_states()
        return tt.nn.run(model, xs).sum(0)
else:
    from spikingjelly.activation_based import functional, layer, neuron
    t1 = time.perf_counter()
    model = nn.Sequential(layer.Linear(784, H), neuron.LIFNode(tau=10.0, decay_input=False, v_reset=None,
                          step_mode="m"), layer.Linear(H, H), neuron.LIFNode(tau=10.0, decay_input=False,
                          v_reset=None, step_mode="m"), layer.Linear(H, 10))
    functional.set_step_mode(model, "m")
    def forward():
        functional.reset_net(model)
        return model(xs).sum(0)
opt = torch.optim.Adam(model.parameters(), 1e-3)
its = []
for _ in range(6):
    a = time.perf_counter()
    opt.zero_grad()
    Fn.cross_entropy(forward(), labels).backward()
    opt.step()
    its.append(time.perf_counter() - a)
print(time.perf_counter() - t1, its[0])
"""


def run_once(lib: str, root: str, extra: dict[str, str], threads: int) -> dict[str, float] | None:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TRACETORCH_CACHE_DIR": cache, "PYTHONPATH": root, **extra}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", WORKLOAD, lib, str(threads)], capture_output=True, text=True, env=env
        )
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode:
            print(lib, "failed:", out.stderr[-1000:], flush=True)
            return None
        train, first = map(float, out.stdout.split()[-2:])
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return {"wall": wall, "cpu": cpu, "train6": train, "first": first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--before", default=None, help="another tracetorch checkout to compare (its root folder)")
    args = p.parse_args()
    variants = {
        "tracetorch (prebuild, default)": ("tracetorch", str(ROOT), {"TRACETORCH_PREBUILD": "1"}),
        "tracetorch (TRACETORCH_PREBUILD=0)": ("tracetorch", str(ROOT), {"TRACETORCH_PREBUILD": "0"}),
        "SpikingJelly": ("spikingjelly", str(ROOT), {}),
    }
    if args.before:
        variants = {"tracetorch before": ("tracetorch", args.before, {}), **variants}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, (lib, root, extra) in variants.items():
            rec = run_once(lib, root, extra, args.threads)
            if rec is not None:
                runs[name].append(rec)
                print(r, name, json.dumps({k: round(v, 3) for k, v in rec.items()}), f"load {os.getloadavg()[0]:.1f}",
                      flush=True)  # fmt: skip
    print("\n| variant | wall s | CPU s | model created to end s | first iteration s | wall / SJ (paired) | "
          "created to end / SJ (paired) |\n|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    sj = runs["SpikingJelly"]
    for name, recs in runs.items():
        med = {k: statistics.median([x[k] for x in recs]) for k in ("wall", "cpu", "train6", "first")}
        n = min(len(recs), len(sj))
        ratio = {k: statistics.median([recs[i][k] / sj[i][k] for i in range(n)]) for k in ("wall", "train6")}
        print(f"| {name} | {med['wall']:.2f} | {med['cpu']:.2f} | {med['train6']:.2f} | {med['first']:.2f} | "
              f"{ratio['wall']:.2f} | {ratio['train6']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
