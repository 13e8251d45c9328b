"""Cross-check tests/tt015/fixtures.pt against a plain re-implementation of docs/maths.md.

Runs with any torch (no tracetorch import):  python tests/tt015/check_spec_reference.py
Every type must match docs/maths.md exactly, except SLIB, SRLIB, SRLIT, SRLITS, which match only
when 0.15's synaptic bug is emulated (syn = alpha*x + (1-alpha)*x, i.e. the stored syn
is never read). Exits 1 on any unexpected result. Not a pytest module on purpose.
"""

import os
import sys

import torch

BUGGY = {"SLIB", "SRLIB", "SRLIT", "SRLITS"}


def pos(v):
    return torch.where(v >= 0, v, 0.0)


def neg(v):
    return torch.where(v <= 0, v, 0.0)


def quant(p):  # round with straight-through gradient
    return p + (torch.round(p) - p).detach()


def spike(v):  # sigmoid4x
    return torch.sigmoid(4 * v)


def step(name, P, S, x, bug):
    core = name.lstrip("DSR")
    pre = name[: len(name) - len(core)]
    D, Sy, R = "D" in pre, "S" in pre, "R" in pre
    if Sy:
        if D:
            S["pos_syn"] = P["pos_alpha"] * S["pos_syn"] + (1 - P["pos_alpha"]) * pos(x)
            S["neg_syn"] = P["neg_alpha"] * S["neg_syn"] + (1 - P["neg_alpha"]) * neg(x)
            i = S["pos_syn"] + S["neg_syn"]
        else:
            S["syn"] = P["alpha"] * (x if bug else S["syn"]) + (1 - P["alpha"]) * x
            i = S["syn"]
    else:
        i = x
    if R:
        po = S["prev_output"]
        if D:
            S["pos_rec"] = P["pos_gamma"] * S["pos_rec"] + (1 - P["pos_gamma"]) * pos(po)
            S["neg_rec"] = P["neg_gamma"] * S["neg_rec"] + (1 - P["neg_gamma"]) * neg(po)
            rec = S["pos_rec"] + S["neg_rec"]
            dp = P["pos_rec_weight"] * pos(rec) + pos(i)
            dn = P["neg_rec_weight"] * neg(rec) + neg(i)
        else:
            S["rec"] = P["gamma"] * S["rec"] + (1 - P["gamma"]) * po
            d = P["rec_weight"] * S["rec"] + i
    elif D:
        dp, dn = pos(i), neg(i)
    else:
        d = i
    if D:
        pm = P["pos_beta"] * S["pos_mem"] + dp
        nm = P["neg_beta"] * S["neg_mem"] + dn
        mem = pm + nm
    else:
        mem = P["beta"] * S["mem"] + d
    if core == "LI":
        y, reset = mem, 0.0
    elif core == "LIB":
        s = quant(spike(mem - P["threshold"]))
        y, reset = s, s * P["threshold"]
    else:
        sp = quant(spike(mem - P["pos_threshold"]))
        sn = -quant(spike(-P["neg_threshold"] - mem))
        reset = sp * P["pos_threshold"] + sn * P["neg_threshold"]
        y = sp + sn if core == "LIT" else sp * P["pos_scale"] + sn * P["neg_scale"]
    if D:
        S["pos_mem"], S["neg_mem"] = pm - reset / 2, nm - reset / 2
    else:
        S["mem"] = mem - reset
    if R:
        S["prev_output"] = y
    return y


def matches(name, fx, bug):
    P = dict(fx["params"])
    S = {k: torch.zeros_like(v) for k, v in fx["states"].items()}
    xs = fx["inputs"].clone().requires_grad_(True)
    ys = torch.stack([step(name, P, S, xs[t], bug) for t in range(xs.shape[0])])
    (g,) = torch.autograd.grad((ys * fx["grad_weights"]).sum(), xs)
    return (
        torch.allclose(ys, fx["outputs"], atol=1e-5)
        and all(torch.allclose(S[k], fx["states"][k], atol=1e-5) for k in S)
        and torch.allclose(g, fx["input_grad"], atol=1e-4)
    )


def main():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures.pt")
    fixtures = torch.load(path, weights_only=True)
    bad = 0
    for name, entry in fixtures.items():
        if name.startswith("_"):
            continue
        for cfg in ("rank1", "rank0"):
            spec_ok = matches(name, entry[cfg], bug=False)
            bug_ok = matches(name, entry[cfg], bug=True)
            expected = (not spec_ok and bug_ok) if name in BUGGY else spec_ok
            bad += not expected
            print(f"{name:8s} {cfg}: spec={spec_ok} bug-emulated={bug_ok} {'ok' if expected else 'UNEXPECTED'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
