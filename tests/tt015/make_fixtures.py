"""Generate reference fixtures from traceTorch 0.15.0 (the "old" package).

traceTorch 0.15 has the same import name (``tracetorch``) as this project, so it must
never be installed into the project's venv. Run this script with a separate venv
outside the repository:

    python3 -m venv /tmp/tt015venv
    /tmp/tt015venv/bin/pip install torch==2.13.0            # CPU wheel
    /tmp/tt015venv/bin/pip install --no-deps tracetorch==0.15.0
    # ``import tracetorch`` (0.15) eagerly imports tracetorch.plot -> numpy, matplotlib:
    /tmp/tt015venv/bin/pip install --no-deps numpy matplotlib contourpy cycler \
        fonttools kiwisolver packaging pillow pyparsing python-dateutil six
    cd /tmp && /tmp/tt015venv/bin/python /work/main/tests/tt015/make_fixtures.py

(run it from a directory where ``import tracetorch`` cannot pick up the repo's own
package, e.g. /tmp; the script checks that it got version 0.15.)

Output: tests/tt015/fixtures.pt, next to this file, loadable with
``torch.load(path, weights_only=True)``. Layout::

    fixtures["_meta"] = {"tracetorch_version", "torch_version", "T", "batch",
                         "num_neurons", "note"}
    fixtures[type_name]["signature"] = [[arg_name, repr(default) or "<required>"], ...]
        # 0.15 __init__ args in order (self excluded); spike_fn default is
        # "sigmoid4x" (tracetorch.functional.sigmoid4x)
    fixtures[type_name]["rank1" | "rank0"] = {
        "kwargs":       {name: float | list[float] | int | str}  # exact ctor kwargs;
                        # list[float] values were passed as torch.tensor(list, float32)
        "inputs":       Tensor [T, B, N]   (fed as inputs[t], dim=-1)
        "outputs":      Tensor [T, B, N]
        "states":       {0.15 state attr name: Tensor [B, N]}  # final values
        "params":       {activated name: Tensor}  # e.g. beta, pos_alpha, threshold, rec_weight
        "state_dict":   {0.15 key (raw_*): Tensor}  # layer.state_dict(), raw values
        "grad_weights": Tensor [T, B, N]   # W
        "input_grad":   Tensor [T, B, N]   # d sum(outputs * W) / d inputs
        "param_grads":  {raw_* name: Tensor}  # d sum(outputs * W) / d raw param
    }
"""
import inspect
import math
import os
import zlib

import torch

import tracetorch
from tracetorch import snn

assert getattr(tracetorch, "__version__", None) in (None, "0.15.0")
assert hasattr(snn, "DSRLITS") and hasattr(snn.TTLayer, "_register_decay"), "not traceTorch 0.15"

TYPES = [
    "LI", "DLI", "SLI", "DSLI",
    "LIB", "DLIB", "SLIB", "RLIB", "DSLIB", "DRLIB", "SRLIB", "DSRLIB",
    "LIT", "DLIT", "SLIT", "RLIT", "DSLIT", "DRLIT", "SRLIT", "DSRLIT",
    "LITS", "DLITS", "SLITS", "RLITS", "DSLITS", "DRLITS", "SRLITS", "DSRLITS",
]
T, B, N = 8, 3, 5

# rank-0 values: non-default, pos/neg copies differ so a swap is caught
RANK0 = {
    "alpha": 0.6, "pos_alpha": 0.65, "neg_alpha": 0.4,
    "beta": 0.8, "pos_beta": 0.85, "neg_beta": 0.7,
    "gamma": 0.75, "pos_gamma": 0.6, "neg_gamma": 0.8,
    "threshold": 0.8, "pos_threshold": 0.9, "neg_threshold": 0.7,
    "rec_weight": 0.3, "pos_rec_weight": 0.25, "neg_rec_weight": -0.35,
    "pos_scale": 1.5, "neg_scale": 0.75,
}
# rank-1 ranges (uniform, rounded to 3 decimals)
RANGES = {"decay": (0.3, 0.95), "threshold": (0.5, 1.5), "rec_weight": (-0.5, 0.5), "scale": (0.5, 2.0)}


def kind(name):
    if name.endswith(("alpha", "beta", "gamma")):
        return "decay"
    if name.endswith("threshold"):
        return "threshold"
    if name.endswith("rec_weight"):
        return "rec_weight"
    if name.endswith("scale"):
        return "scale"
    raise KeyError(name)


def seed_of(*parts):
    return zlib.crc32("/".join(parts).encode())


def signature(cls):
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.default is inspect.Parameter.empty:
            d = "<required>"
        elif callable(p.default):
            d = p.default.__name__
        else:
            d = repr(p.default)
        out.append([p.name, d])
    return out


def param_names(cls):
    sig = [n for n, _ in signature(cls)]
    return [n for n in sig if f"{n}_rank" in sig]


def run(type_name, config):
    cls = getattr(snn, type_name)
    names = param_names(cls)
    g = torch.Generator().manual_seed(seed_of(type_name, config))
    kwargs = {"num_neurons": N}
    ctor = {"num_neurons": N}
    for n in names:
        if config == "rank0":
            kwargs[n] = RANK0[n]
            kwargs[f"{n}_rank"] = 0
            ctor[n] = RANK0[n]
            ctor[f"{n}_rank"] = 0
        else:
            lo, hi = RANGES[kind(n)]
            vals = (lo + (hi - lo) * torch.rand(N, generator=g, dtype=torch.float64))
            vals = [round(float(v), 3) for v in vals]
            kwargs[n] = vals
            ctor[n] = torch.tensor(vals, dtype=torch.float32)
    kwargs["dim"] = -1
    ctor["dim"] = -1
    if "quant_fn" in dict(signature(cls)):
        kwargs["quant_fn"] = "round"
        ctor["quant_fn"] = "round"

    layer = cls(**ctor)
    inputs = (torch.randn(T, B, N, generator=g) * 2.0).requires_grad_(True)
    weights = torch.randn(T, B, N, generator=g)
    outs = [layer(inputs[t]) for t in range(T)]
    outputs = torch.stack(outs)
    loss = (outputs * weights).sum()
    raw = dict(layer.named_parameters())
    grads = torch.autograd.grad(loss, [inputs] + list(raw.values()), allow_unused=True)

    def z(gr, ref):
        return torch.zeros_like(ref).detach() if gr is None else gr.detach().clone()

    return {
        "kwargs": kwargs,
        "inputs": inputs.detach().clone(),
        "outputs": outputs.detach().clone(),
        "states": {s: getattr(layer, s).detach().clone() for s in sorted(layer._state_names)},
        "params": {n: getattr(layer, n).detach().clone() for n in names},
        "state_dict": {k: v.detach().clone() for k, v in layer.state_dict().items()},
        "grad_weights": weights.clone(),
        "input_grad": grads[0].detach().clone(),
        "param_grads": {k: z(gr, raw[k]) for k, gr in zip(raw, grads[1:])},
    }


def main():
    fixtures = {"_meta": {
        "tracetorch_version": "0.15.0",
        "torch_version": str(torch.__version__),
        "T": T, "batch": B, "num_neurons": N,
        "note": "generated by tests/tt015/make_fixtures.py with traceTorch 0.15.0, quant_fn='round', "
                "spike_fn=sigmoid4x, dim=-1; keys starting with '_' are not layer types",
    }}
    for name in TYPES:
        cls = getattr(snn, name)
        entry = {"signature": signature(cls)}
        for config in ("rank1", "rank0"):
            fx = run(name, config)
            entry[config] = fx
            o = fx["outputs"]
            print(f"{name:8s} {config}: +{int((o > 0).sum()):3d} -{int((o < 0).sum()):3d} "
                  f"states={list(fx['states'])} sd={list(fx['state_dict'])}")
        fixtures[name] = entry
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures.pt")
    torch.save(fixtures, path)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
