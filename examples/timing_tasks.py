"""Timing tasks: LIB, an adaptive LIB (ALIB) and LIB with learned per-synapse delays, same budget.

Two procedurally generated tasks (``tracetorch.datasets``, nothing downloaded):

* ``randman``: classify random smooth manifolds from spike *times* (one spike per input unit);
* ``store_recall``: report the value shown with a store cue, after a gap of random length.

Each model is ``input -> (Linear | DelayedLinear) -> hidden neurons -> Linear -> LI readout``,
run over the whole sequence in one call (``tt.nn.run``), trained with Adam for the same number
of epochs and hidden size; the test accuracy's mean and spread over seeds are printed, with the
training time. The delays give the first layer a learnable delay per synapse (``tt.nn.DelayedLinear``),
the adaptive neurons a spike-triggered threshold trace with a slow decay (``tt.nn.ALIB``).

    python examples/timing_tasks.py                  # both tasks, 3 models, seed 0 (~1-2 min on 2 cores)
    python examples/timing_tasks.py --seeds 0 1 2    # what benchmarks/RESULTS.md records
    python examples/timing_tasks.py --smoke          # a few seconds: what the tests run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import tracetorch as tt
from tracetorch.datasets import randman, store_recall

MODELS = ("LIB", "ALIB", "LIB+delays")


class Net(tt.TTModel):
    """``first -> hidden neurons -> Linear -> LI``; ``forward`` is a chain, so ``run`` goes layer by layer."""

    def __init__(self, kind: str, n_in: int, hidden: int, n_out: int, max_delay: int, rho: float, delay_init: str):
        super().__init__()
        if kind == "LIB+delays":
            first: nn.Module = tt.nn.DelayedLinear(
                n_in, hidden, max_delay, delay=None if delay_init == "uniform" else 0.0
            )
        else:
            first = nn.Linear(n_in, hidden)
        if kind == "ALIB":
            neurons: nn.Module = tt.nn.ALIB(hidden, beta=0.9, rho=rho, adapt_gain=1.0, quant_fn="round")
        else:
            neurons = tt.nn.LIB(hidden, beta=0.9, quant_fn="round")
        self.net = nn.Sequential(first, neurons, nn.Linear(hidden, n_out), tt.nn.LI(n_out, beta=0.9))

    def forward(self, x):
        return self.net(x)


def readout(task: str, ys: torch.Tensor, period: int) -> torch.Tensor:
    """Logits from the readout membranes ``[T, B, C]``: the maximum over time (randman), the mean
    over the recall period (store_recall)."""
    return ys.amax(0) if task == "randman" else ys[-period:].mean(0)


def make_task(task: str, seed: int, smoke: bool, pad: int):
    """``(train, test, period, classes)``: the dataset drawn with ``seed``, split 80/20; randman gets
    ``pad`` silent steps at the end."""
    if task == "randman":
        data = randman(
            num_classes=5 if smoke else 10,
            num_units=20,
            num_steps=20 if smoke else 30,
            samples_per_class=20 if smoke else 60,
            smoothness=1.0,
            num_frequencies=3,
            seed=seed,
        )
        period = 1
    else:
        period = 5
        data = store_recall(
            num_samples=64 if smoke else 500, num_periods=4 if smoke else 6, period=period, rate=0.3, seed=seed
        )
    spikes = data.spikes
    if task == "randman":  # silent steps after the last spike, for every model: delayed spikes still arrive
        spikes = torch.cat([spikes, spikes.new_zeros(pad, *spikes.shape[1:])])
    cut = spikes.shape[1] * 4 // 5
    train = (spikes[:, :cut], data.labels[:cut])
    test = (spikes[:, cut:], data.labels[cut:])
    return train, test, period, data.num_classes


def train_one(task: str, kind: str, seed: int, args) -> dict:
    (x_train, y_train), (x_test, y_test), period, classes = make_task(task, seed, args.smoke, args.max_delay)
    torch.manual_seed(seed)
    model = Net(
        kind,
        x_train.shape[-1],
        args.hidden,
        classes,
        max_delay=args.max_delay,
        rho=args.rho,
        delay_init=args.delay_init,
    )
    delays = [p for n, p in model.named_parameters() if n.endswith("raw_delay")]
    others = [p for n, p in model.named_parameters() if not n.endswith("raw_delay")]
    groups = [{"params": others}] + ([{"params": delays, "lr": args.delay_lr}] if delays else [])
    opt = torch.optim.Adam(groups, lr=args.lr)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        order = torch.randperm(x_train.shape[1])
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            model.zero_states()
            logits = readout(task, tt.nn.run(model, x_train[:, idx]), period)
            loss = nn.functional.cross_entropy(logits, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            clamp_delays(model)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    model.zero_states()
    with torch.no_grad():
        accuracy = (readout(task, tt.nn.run(model, x_test), period).argmax(-1) == y_test).float().mean().item()
    params = sum(p.numel() for p in model.parameters())
    return {"accuracy": accuracy, "seconds": seconds, "cpu_seconds": cpu_seconds, "params": params}


def clamp_delays(model: nn.Module) -> None:
    """Keep learned delays inside ``[0, max_delay]`` after each optimizer step (the layers read them clamped anyway)."""
    for _, layer in model.tt_layers():
        if isinstance(layer, tt.nn.DelayedLinear):
            with torch.no_grad():
                layer.raw_delay.clamp_(0, layer.max_delay)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["randman", "store_recall", "both"], default="both")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="benchmarks/RESULTS.md: 0 1 2")
    parser.add_argument("--epochs", type=int, default=None, help="default: 10")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--max-delay", type=int, default=15, help="longest learned delay, in steps")
    parser.add_argument("--delay-init", choices=["zero", "uniform"], default="zero", help="initial delays")
    parser.add_argument("--delay-lr", type=float, default=0.1, help="Adam's step for the delays (in steps)")
    parser.add_argument("--rho", type=float, default=0.98, help="the adaptation trace's decay (ALIB)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny data and 2 epochs: a few seconds")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--results", default=None, help="write the table into this Markdown file's '## Timing tasks' section"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = ["randman", "store_recall"] if args.task == "both" else [args.task]
    results: dict = {}
    for task in tasks:
        epochs = args.epochs if args.epochs is not None else (2 if args.smoke else 10)
        run_args = argparse.Namespace(**{**vars(args), "epochs": epochs})
        results[task] = {}
        for kind in args.models:
            runs = [train_one(task, kind, seed, run_args) for seed in args.seeds]
            accs = [r["accuracy"] for r in runs]
            entry = {
                "accuracies": accs,
                "mean": statistics.fmean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "seconds": statistics.fmean(r["seconds"] for r in runs),
                "cpu_seconds": statistics.fmean(r["cpu_seconds"] for r in runs),
                "params": runs[0]["params"],
                "epochs": epochs,
            }
            results[task][kind] = entry
            if not args.quiet:
                print(
                    f"{task:12s} {kind:10s} test accuracy {100 * entry['mean']:5.1f} +- {100 * entry['std']:4.1f} % "
                    f"(seeds {args.seeds}), {entry['seconds']:5.1f} s ({entry['cpu_seconds']:5.1f} s CPU) per run, "
                    f"{entry['params']} params, {epochs} epochs"
                )
    if args.results:
        write_results(args.results, results, argv)
    return results


HEADING = "## Timing tasks"


def write_results(path: str, results: dict, argv: list[str] | None) -> None:
    """Put the table into ``path``'s section ``## Timing tasks``: rows of this run replace the rows of the
    same task and model, other rows stay (so models can be run separately); appended if absent."""
    import platform
    import sys
    from pathlib import Path

    file = Path(path)
    text = file.read_text() if file.exists() else ""
    at = text.find("\n" + HEADING + "\n")
    head, section = (text, "") if at < 0 else (text[: at + 1], text[at + 1 :])
    rows = {
        tuple(c.strip() for c in line.split("|")[1:3]): line for line in section.splitlines() if line.startswith("| ")
    }
    rows.pop(("task", "model"), None)
    for task, models in results.items():
        for kind, e in models.items():
            seeds = " ".join(f"{100 * a:.1f}" for a in e["accuracies"])
            rows[(task, kind)] = (
                f"| {task} | {kind} | {100 * e['mean']:.1f} +- {100 * e['std']:.1f} | {seeds} | "
                f"{e['seconds']:.1f} ({e['cpu_seconds']:.1f}) | {e['params']} | {e['epochs']} |"
            )
    command = "python examples/timing_tasks.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        HEADING,
        "",
        f"Last written by `{command}` (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}). Test accuracy over the seeds (mean +- sample standard deviation, then each "
        "seed's), the training time per run (wall clock, and the process's CPU time, which a shared machine "
        "distorts less) and the number of learnable parameters.",
        "",
        "| task | model | test accuracy % | per seed % | s per run (CPU s) | params | epochs |",
        "|---|---|---:|---|---:|---:|---:|",
        *(rows[k] for k in sorted(rows, key=lambda k: (k[0], MODELS.index(k[1]) if k[1] in MODELS else 99))),
    ]
    file.write_text(head.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
