"""A plainly written reference of the maths page (docs/maths.md), independent of tracetorch's implementation.

It reads the type's name letter by letter and follows the maths page's five stages literally, keeping
states in a dict. Quantizers are written as ``forward + (target - forward).detach()``
straight-through expressions, not as autograd Functions.
"""

import torch


def parse(name):
    prefix, head = name.split("LI")
    return {"dual": "D" in prefix, "syn": "S" in prefix, "rec": "R" in prefix, "adapt": "A" in prefix, "head": head}


def ref_quant(kind, p):
    if kind == "round":
        return p + (torch.round(p) - p).detach()
    if kind == "bernoulli":
        return p + (torch.bernoulli(p) - p).detach()
    if kind == "probabilistic":
        sample = p * torch.bernoulli(p)
        return p * p + (sample - p * p).detach()  # forward p*b, gradient 2p
    if kind == "identity":
        return p
    raise ValueError(kind)


def relu_pos(v):
    return torch.where(v >= 0, v, torch.zeros_like(v))


def relu_neg(v):
    return torch.where(v <= 0, v, torch.zeros_like(v))


def ref_step(name, P, S, x, quant="round", spike=lambda v: torch.sigmoid(4 * v), reset_mode="subtract"):
    """One step of ``name``; ``P`` and ``S`` are dicts; returns ``(y, new_S)``.

    ``reset_mode``: ``"subtract"`` (mem -= spikes times threshold) or ``"zero"`` (a neuron that
    fired has its membrane multiplied by 1 - c, c the unscaled spike count of either sign).
    """
    t = parse(name)
    S = dict(S)
    # 1. synaptic
    if t["syn"] and t["dual"]:
        S["pos_syn"] = P["pos_alpha"] * S["pos_syn"] + (1 - P["pos_alpha"]) * relu_pos(x)
        S["neg_syn"] = P["neg_alpha"] * S["neg_syn"] + (1 - P["neg_alpha"]) * relu_neg(x)
        i = S["pos_syn"] + S["neg_syn"]
    elif t["syn"]:
        S["syn"] = P["alpha"] * S["syn"] + (1 - P["alpha"]) * x
        i = S["syn"]
    else:
        i = x
    # 2. recurrent
    if t["rec"] and t["dual"]:
        prev = S["prev_output"]
        S["pos_rec"] = P["pos_gamma"] * S["pos_rec"] + (1 - P["pos_gamma"]) * relu_pos(prev)
        S["neg_rec"] = P["neg_gamma"] * S["neg_rec"] + (1 - P["neg_gamma"]) * relu_neg(prev)
        rec = S["pos_rec"] + S["neg_rec"]
        d_pos = P["pos_rec_weight"] * relu_pos(rec) + relu_pos(i)
        d_neg = P["neg_rec_weight"] * relu_neg(rec) + relu_neg(i)
    elif t["rec"]:
        S["rec"] = P["gamma"] * S["rec"] + (1 - P["gamma"]) * S["prev_output"]
        d = P["rec_weight"] * S["rec"] + i
    elif t["dual"]:
        d_pos, d_neg = relu_pos(i), relu_neg(i)
    else:
        d = i
    # 3. membrane
    if t["dual"]:
        S["pos_mem"] = P["pos_beta"] * S["pos_mem"] + d_pos
        S["neg_mem"] = P["neg_beta"] * S["neg_mem"] + d_neg
        mem = S["pos_mem"] + S["neg_mem"]
    else:
        S["mem"] = P["beta"] * S["mem"] + d
        mem = S["mem"]
    # 4. output; an A type raises its thresholds by adapt_gain * adapt (adapt from the last step)
    if t["adapt"]:
        raise_by = P["adapt_gain"] * S["adapt"]
    else:
        raise_by = 0.0
    if t["head"] == "":
        y = mem
        reset = None
    elif t["head"] == "B":
        theta = P["threshold"] + raise_by
        s = ref_quant(quant, spike(mem - theta))
        reset = s * theta
        fired = s
        y = s
    else:
        pos_theta = P["pos_threshold"] + raise_by
        neg_theta = P["neg_threshold"] + raise_by
        sp = ref_quant(quant, spike(mem - pos_theta))
        sn = -ref_quant(quant, spike(-neg_theta - mem))
        reset = sp * pos_theta + sn * neg_theta
        fired = sp - sn
        if t["head"] == "T":
            y = sp + sn
        else:
            y = sp * P["pos_scale"] + sn * P["neg_scale"]
    if reset is not None and reset_mode == "zero":
        if t["dual"]:
            S["pos_mem"] = S["pos_mem"] * (1 - fired)
            S["neg_mem"] = S["neg_mem"] * (1 - fired)
        else:
            S["mem"] = S["mem"] * (1 - fired)
    elif reset is not None:
        if t["dual"]:
            S["pos_mem"] = S["pos_mem"] - reset / 2
            S["neg_mem"] = S["neg_mem"] - reset / 2
        else:
            S["mem"] = S["mem"] - reset
    if t["adapt"]:
        S["adapt"] = P["rho"] * S["adapt"] + (1 - P["rho"]) * fired
    # 5. bookkeeping
    if t["rec"]:
        S["prev_output"] = y
    return y, S


def ref_param_names(name):
    """Param names straight from the maths page's table."""
    t = parse(name)

    def both(n):
        return [f"pos_{n}", f"neg_{n}"] if t["dual"] else [n]

    names = []
    if t["syn"]:
        names += both("alpha")
    names += both("beta")
    if t["rec"]:
        names += both("gamma") + both("rec_weight")
    if t["head"] == "B":
        names += ["threshold"]
    if t["head"] in ("T", "TS"):
        names += ["pos_threshold", "neg_threshold"]
    if t["head"] == "TS":
        names += ["pos_scale", "neg_scale"]
    if t["adapt"]:
        names += ["rho", "adapt_gain"]
    return names


def ref_state_names(name):
    """State names straight from the maths page."""
    t = parse(name)

    def both(n):
        return [f"pos_{n}", f"neg_{n}"] if t["dual"] else [n]

    names = []
    if t["syn"]:
        names += both("syn")
    if t["rec"]:
        names += both("rec") + ["prev_output"]
    names += both("mem")
    if t["adapt"]:
        names += ["adapt"]
    return names


def random_params(name, n, rank, generator, dtype=torch.float64):
    """Non-default values in range: decays in (0.3, 0.95), thresholds in (0.4, 1.5), adapt gains in
    (0.2, 1.5), weights in (-0.6, 0.6)."""
    shape = (n,) if rank == 1 else ()
    out = {}
    for p in ref_param_names(name):
        u = torch.rand(shape, generator=generator, dtype=dtype)
        if p.endswith(("alpha", "beta", "gamma", "rho")):
            out[p] = 0.3 + 0.65 * u
        elif p == "adapt_gain":
            out[p] = 0.2 + 1.3 * u
        elif p.endswith("threshold"):
            out[p] = 0.4 + 1.1 * u
        elif p.endswith("rec_weight"):
            out[p] = -0.6 + 1.2 * u
        else:  # scales
            out[p] = 0.5 + 1.5 * u
    return out
