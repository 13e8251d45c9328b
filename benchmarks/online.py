"""Online rules against BPTT: memory of a training step against T, time per step, cosine to BPTT.

    python benchmarks/online.py            # writes benchmarks/online.png, prints the tables
    python benchmarks/online.py --quick    # small sizes, a dry run

Memory is the peak of the bytes autograd holds for backward (saved-tensor hooks) during one
training step on a sequence of T steps (for the online rules, plus their traces), at fixed B, N:
BPTT through the fused kernels (``model.run``), and e-prop / OTTT stepping the same model. Time is
the wall time of that training step divided by T (forward and backward, the gradient in .grad).
"""

from __future__ import annotations

import argparse
import sys
import time
import weakref
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tracetorch as tt  # noqa: E402


class SavedBytes:
    def __init__(self) -> None:
        self.live = self.peak = 0

    def _pack(self, t):
        box = _Box(t)
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._free, n)
        return box

    def _free(self, n):
        self.live -= n

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda box: box.t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


class _Box:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t):
        self.t = t


def model(M: int, N: int) -> tt.TTModel:
    class Net(tt.TTModel):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(M, N), tt.nn.LIB(N, quant_fn="round"), nn.Linear(N, 10))

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    return Net()


def bptt_step(net, xs, target):
    net.zero_states()
    out = net.run(xs)  # the fused kernels where they apply
    loss = ((out - target) ** 2).mean(-1).sum()
    loss.backward()


def online_step(rule, xs, target):
    rule.run(xs, lambda out, t: ((out - target[t]) ** 2).mean(-1).sum())


def trace_bytes(rule) -> int:
    total = 0
    for b in rule.blocks:
        tr = b.traces
        vals = tr.values() if isinstance(tr, dict) else (tr or ())
        for v in vals:
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total


def measure(fn, *args):
    with SavedBytes() as meter:
        t0 = time.perf_counter()
        fn(*args)
        dt = time.perf_counter() - t0
    return meter.peak, dt


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).with_name("online.png")))
    args = ap.parse_args(argv)
    B, M, N = (4, 16, 32) if args.quick else (16, 64, 128)
    Ts = (100, 1000) if args.quick else (100, 1000, 10000)
    T_time = 50 if args.quick else 200
    torch.set_num_threads(2)
    rows = {"bptt": {}, "eprop": {}, "ottt": {}}
    net = model(M, N)
    for T in Ts:
        xs = (torch.rand(T, B, M) < 0.2).float()
        target = torch.randn(T, B, 10)
        rows["bptt"][T] = measure(bptt_step, net, xs, target)[0]
        for key, Rule in (("eprop", tt.learn.EProp), ("ottt", tt.learn.OTTT)):
            if T > 1000:
                continue  # flat at 100 and 1000 (the tests check 10000 for OTTT); 10000 steps take minutes here
            rule = Rule(net.net)
            peak, _ = measure(online_step, rule, xs, target)
            rows[key][T] = peak + trace_bytes(rule)
    times = {}
    xs = (torch.rand(T_time, B, M) < 0.2).float()
    target = torch.randn(T_time, B, 10)
    bptt_step(net, xs, target)  # warm: the kernel build
    times["bptt"] = min(measure(bptt_step, net, xs, target)[1] for _ in range(3)) / T_time
    for key, Rule in (("eprop", tt.learn.EProp), ("ottt", tt.learn.OTTT)):
        rule = Rule(net.net)
        times[key] = min(measure(online_step, rule, xs, target)[1] for _ in range(2)) / T_time
    # cosine to BPTT on one short sequence (the model: one block and a memoryless readout, so e-prop is exact)
    xs = (torch.rand(20, B, M) < 0.2).float()
    target = torch.randn(20, B, 10)
    params = list(net.parameters())
    ref = tt.learn.bptt_reference_grads(net, xs, lambda o, t: ((o - target[t]) ** 2).mean(-1).sum(), params)
    cos = {}
    for key, Rule in (("eprop", tt.learn.EProp), ("ottt", tt.learn.OTTT)):
        for p in params:
            p.grad = None
        Rule(net.net).run(xs, lambda o, t: ((o - target[t]) ** 2).mean(-1).sum())
        g, r = params[0].grad, ref[0]
        cos[key] = float((g * r).sum() / (g.norm() * r.norm()))
    print(f"B={B}, M={M}, N={N}, LIB, 2 threads")
    print("| rule | " + " | ".join(f"T={T}" for T in Ts) + " | time per step | cosine to BPTT (input weights) |")
    print("|---|" + "---|" * len(Ts) + "---|---|")
    for key in rows:
        mem = " | ".join(f"{rows[key][T] / 1e6:.2f} MB" if T in rows[key] else "-" for T in Ts)
        c = "1 (BPTT)" if key == "bptt" else f"{cos[key]:.4f}"
        print(f"| {key} | {mem} | {times[key] * 1e3:.2f} ms | {c} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
        for key in rows:
            Tk = sorted(rows[key])
            a.plot(Tk, [rows[key][T] / 1e6 for T in Tk], "o-", label=key)
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("sequence length T")
        a.set_ylabel("peak saved for backward + traces (MB)")
        a.legend()
        b.bar(list(times), [times[k] * 1e3 for k in times])
        b.set_ylabel("ms per timestep (forward + backward)")
        fig.suptitle(f"online rules vs BPTT through the kernels (LIB, B={B}, M={M}, N={N})")
        fig.tight_layout()
        fig.savefig(args.out, dpi=100)
        print(f"wrote {args.out}")
    except ImportError:
        pass
    return rows, times, cos


if __name__ == "__main__":
    main()
