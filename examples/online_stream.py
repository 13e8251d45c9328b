"""Train online on one long stream with e-prop or OTTT: memory constant in the stream's length.

The stream is a generated task: 8 input channels fire at random (Bernoulli per step) with rates set
by one of 3 patterns, and the pattern switches at random times (every 40 to 120 steps). At every
step the network must say which pattern is on: a rate estimate, so the neurons' memory matters.
The network (Linear -> SLIB -> Linear readout) sees the stream one step at a time, batch 1, and
takes an optimizer step after every timestep, the way an on-chip or continual learner would.

A held-out stream measures the accuracy before and after. BPTT over the whole stream would keep every step's graph: the script measures the bytes autograd
saves per step (saved-tensor hooks) and prints what BPTT over the stream would hold against
what the online rule holds (its per-step graph plus its traces), which does not grow with T.

    python examples/online_stream.py                 # 20000 steps, e-prop
    python examples/online_stream.py --rule ottt --steps 5000
"""

from __future__ import annotations

import argparse
import weakref

import torch
from torch import nn

import tracetorch as tt


def make_stream(steps: int, channels: int = 8, patterns: int = 3, seed: int = 0, task_seed: int = 0):
    """``(xs [steps, 1, channels] spikes, labels [steps])``: pattern-coded Bernoulli spikes.

    ``task_seed`` fixes the patterns' rates (the task), ``seed`` the switching times and spikes."""
    rates = 0.05 + 0.5 * torch.rand(patterns, channels, generator=torch.Generator().manual_seed(1000 + task_seed))
    g = torch.Generator().manual_seed(seed)
    labels = torch.empty(steps, dtype=torch.long)
    t = 0
    while t < steps:
        length = int(torch.randint(40, 121, (1,), generator=g))
        labels[t : t + length] = int(torch.randint(0, patterns, (1,), generator=g))
        t += length
    xs = (torch.rand(steps, channels, generator=g) < rates[labels]).float().unsqueeze(1)
    return xs, labels


class SavedBytes:
    """Peak bytes of the tensors autograd holds for backward (saved-tensor hooks)."""

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


@torch.no_grad()
def evaluate(net: nn.Module, xs: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of ``net`` stepped over a held-out stream from zero states (no learning)."""
    for m in net.modules():
        if isinstance(m, tt.TTLayer):
            m.zero_states()
    hits = sum(int(net(x).argmax(-1).item() == y.item()) for x, y in zip(xs, labels))
    for m in net.modules():
        if isinstance(m, tt.TTLayer):
            m.zero_states()
    return hits / len(labels)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--rule", choices=["eprop", "ottt"], default="eprop")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-steps", type=int, default=1000, help="length of the held-out stream")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    xs, labels = make_stream(args.steps, seed=args.seed)
    net = nn.Sequential(nn.Linear(8, args.hidden), tt.nn.SLIB(args.hidden, alpha=0.8, beta=0.95), nn.Linear(args.hidden, 3))
    held_xs, held_labels = make_stream(args.eval_steps, seed=args.seed + 1)
    before = evaluate(net, held_xs, held_labels)
    rule = tt.learn.EProp(net) if args.rule == "eprop" else tt.learn.OTTT(net)
    opt = torch.optim.Adam(net.parameters(), args.lr)
    correct = []
    with SavedBytes() as meter:
        for t in range(args.steps):
            out = rule(xs[t])
            loss = nn.functional.cross_entropy(out, labels[t : t + 1])
            loss.backward()
            opt.step()
            opt.zero_grad()
            correct.append(int(out.argmax(-1).item() == labels[t].item()))
            if not args.quiet and (t + 1) % max(1, args.steps // 10) == 0:
                window = correct[-max(1, args.steps // 10) :]
                print(f"step {t + 1:6d}: accuracy over the last {len(window)} steps {sum(window) / len(window):.3f}")
    online_graph = meter.peak
    traces = rule.blocks[0].traces
    trace_bytes = sum(
        v.numel() * v.element_size()
        for v in (traces.values() if isinstance(traces, dict) else traces)
        if isinstance(v, torch.Tensor)
    )
    # what BPTT over the stream would hold: its saved bytes on a short stretch, per step, times T
    probe = min(200, args.steps)
    with SavedBytes() as meter:
        net[1].zero_states()
        total = sum(nn.functional.cross_entropy(net(xs[t]), labels[t : t + 1]) for t in range(probe))
        peak = meter.peak
        del total
    bptt_bytes = peak / probe * args.steps
    after = evaluate(net, held_xs, held_labels)
    result = {
        "rule": args.rule,
        "steps": args.steps,
        "accuracy_before": before,
        "accuracy_after": after,
        "online_bytes": online_graph + trace_bytes,
        "bptt_bytes": bptt_bytes,
    }
    if not args.quiet:
        print(
            f"{args.rule}: held-out accuracy {before:.3f} before -> {after:.3f} after the stream (chance 1/3); memory: online {result['online_bytes'] / 1e3:.1f} kB (graph of one step + traces), "
            f"BPTT over the {args.steps} steps ~{bptt_bytes / 1e6:.1f} MB"
        )
    return result


if __name__ == "__main__":
    main()
