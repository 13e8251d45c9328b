"""Save a running model's hidden states and resume it elsewhere: ``.pt``, ``.safetensors`` and dicts.

A ``TTModel`` finds every neuron layer however deep it sits (here inside an ``nn.Sequential``
and a ``ModuleList`` of ``Sequential`` s; plain Python lists and dicts work too) and saves their states as one flat ``{"path.state": tensor}`` dict:
``model.save_states(path)`` writes ``.pt`` (read back with ``torch.load(weights_only=True)``) or
``.safetensors`` (no pickle at all, with metadata naming each layer's type). ``load_states``
checks every key, shape and dtype before touching the model.

The example runs a model for a while, saves its states both ways, loads them into fresh
copies of the model (same weights, no history) and shows that every copy continues exactly like
the original, while a copy that starts from zero states does not. Random spikes
(``quant_fn="bernoulli"``) are made identical by seeding torch before each continuation.

    python examples/save_load_states.py
    python examples/save_load_states.py --warmup 5 --steps 5 --out /tmp/states
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import tracetorch as tt

DEFAULT_OUT = Path(__file__).parent / "out"


class Net(tt.TTModel):
    """Neuron layers at different depths: the TTModel finds them all."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 32), tt.nn.SLIB(32), nn.Linear(32, 32), tt.nn.RLIB(32))
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(32, 10), tt.nn.DLI(10))])

    def forward(self, x):
        return self.heads[0](self.encoder(x))


def continue_run(model: Net, xs: torch.Tensor, seed: int) -> torch.Tensor:
    """Run ``xs`` ``[T, B, 16]`` from the model's current states, with the Bernoulli draws seeded."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return torch.stack([model(x) for x in xs])


def main(argv: list[str] | None = None) -> dict:
    """Save, load, continue; returns whether each continuation matched, and the files written."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("``", ""),  # the summary, without the markup
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--warmup", type=int, default=20, help="steps run before saving")
    parser.add_argument("--steps", type=int, default=20, help="steps run after loading")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data split and spikes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the state files")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    model = Net()
    xs = torch.rand(args.warmup + args.steps, args.batch_size, 16)
    with torch.no_grad():
        for x in xs[: args.warmup]:
            model(x)

    args.out.mkdir(parents=True, exist_ok=True)
    pt_path = args.out / "states.pt"
    st_path = args.out / "states.safetensors"
    flat = model.save_states(pt_path)  # also returns the flat dict
    model.save_states(st_path)
    print(f"after {args.warmup} steps, {len(flat)} state tensors:")
    for key, value in flat.items():
        print(f"  {key:24s} {list(value.shape)}")
    print(f"wrote {pt_path} ({pt_path.stat().st_size} bytes) and {st_path} ({st_path.stat().st_size} bytes)")

    # copies of the model: same weights, no states yet
    def fresh() -> Net:
        copy = Net()
        copy.load_state_dict(model.state_dict())
        return copy

    from_pt, from_st, from_dict, from_zero = fresh(), fresh(), fresh(), fresh()
    from_pt.load_states(pt_path)
    from_st.load_states(st_path)
    from_dict.load_states(flat)

    rest = xs[args.warmup :]
    reference = continue_run(model, rest, args.seed + 1)
    results = {
        "pt_identical": torch.equal(continue_run(from_pt, rest, args.seed + 1), reference),
        "safetensors_identical": torch.equal(continue_run(from_st, rest, args.seed + 1), reference),
        "dict_identical": torch.equal(continue_run(from_dict, rest, args.seed + 1), reference),
        "zero_states_identical": torch.equal(continue_run(from_zero, rest, args.seed + 1), reference),
    }
    for name in ("pt_identical", "safetensors_identical", "dict_identical"):
        verdict = "identical to the original run (ok)" if results[name] else "DIFFERS from the original run"
        print(f"continuation after loading {name.replace('_identical', '')!r:15} {verdict}")
    # the control: without the saved states the continuation must differ (the states carry the history)
    verdict = "differs, as it should (ok)" if not results["zero_states_identical"] else "is identical: states carried nothing"
    print(f"control: continuation from zero states {verdict}")
    results["ok"] = (
        results["pt_identical"]
        and results["safetensors_identical"]
        and results["dict_identical"]
        and not results["zero_states_identical"]
    )

    # a failed load names what is wrong and leaves the model as it was
    other = nn.Sequential(nn.Linear(16, 8), tt.nn.SLIB(8))
    other(torch.rand(args.batch_size, 16))
    before = other[1].mem.clone()
    try:
        tt.state.load_states(other, pt_path)
    except ValueError as err:
        print("loading into the wrong model is refused:\n  " + str(err).replace("\n", "\n  "))
    results["failed_load_unchanged"] = torch.equal(other[1].mem, before)
    results["files"] = [pt_path, st_path]
    return results


if __name__ == "__main__":
    main()
