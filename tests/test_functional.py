"""The functional core against the plain reference of docs/maths.md (tests/reference.py)."""

import pytest
import torch

import tracetorch.functional as F
from tests.reference import random_params, ref_param_names, ref_state_names, ref_step

NAMES = list(F.NAMES)
FIRING = [n for n in NAMES if not n.endswith("LI")]
N = 5


def make_case(name, rank, shape=(2, 3), steps=4, seed=0, dtype=torch.float64, state_scale=0.5, spiky_prev=True):
    g = torch.Generator().manual_seed(seed)
    P = random_params(name, N, rank, g, dtype)
    S = {s: state_scale * torch.randn(*shape, N, generator=g, dtype=dtype) for s in ref_state_names(name)}
    if "prev_output" in S and spiky_prev:  # a previous output is a spike value
        S["prev_output"] = torch.randint(-1, 2, (*shape, N), generator=g).to(dtype)
    xs = 2.0 * torch.randn(steps, *shape, N, generator=g, dtype=dtype)
    return P, S, xs


def run_ours(name, P, S, xs, quant):
    spec = F.SPECS[name]
    step = F.get_step(name)
    params, state = spec.Params(**P), spec.State(**S)
    ys = []
    for x in xs:
        y, state = step(params, state, x, quant_fn=quant)
        ys.append(y)
    return torch.stack(ys), state._asdict()


def run_ref(name, P, S, xs, quant):
    ys = []
    for x in xs:
        y, S = ref_step(name, P, S, x, quant)
        ys.append(y)
    return torch.stack(ys), S


def test_table_names_and_fields():
    assert len(NAMES) == 52 and len(set(NAMES)) == 52
    eight = ("", "D", "S", "R", "DS", "DR", "SR", "DSR")
    expected = ["LI", "DLI", "SLI", "DSLI"] + [p + "LI" + h for h in ("B", "T", "TS") for p in eight]
    expected += [p + "ALI" + h for h in ("B", "T", "TS") for p in eight]  # the A part, prefix order D S R A
    assert NAMES == expected
    assert list(F.neurons.ADAPTIVE_NAMES) == expected[28:]
    for name in NAMES:
        spec = F.SPECS[name]
        assert spec.name == name
        assert sorted(spec.param_names) == sorted(ref_param_names(name))
        assert sorted(spec.state_names) == sorted(ref_state_names(name))
        assert spec.Params._fields == spec.param_names and spec.State._fields == spec.state_names
        assert F.get_step(name).__name__ == f"{name.lower()}_step"
        assert getattr(F, f"{name.lower()}_step") is F.get_step(name)


def test_defaults_follow_spec():
    defaults = {
        "alpha": 0.5,
        "beta": 0.9,
        "gamma": 0.9,
        "threshold": 1.0,
        "rec_weight": 0.0,
        "scale": 1.0,
        "rho": 0.95,
        "adapt_gain": 1.0,
    }
    for name in NAMES:
        params = F.init_params(name, 3)
        for field, value in params._asdict().items():
            key = next(k for k in defaults if field.endswith(k))
            assert torch.equal(value, torch.full((3,), defaults[key]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("steps", [1, 6])
def test_forward_and_grads_match_reference(name, rank, steps):
    quant = "round"
    P, S, xs = make_case(name, rank, steps=steps)
    leaves = [*P.values(), *S.values(), xs]
    for t in leaves:
        t.requires_grad_(True)
    ys, fs = run_ours(name, P, S, xs, quant)
    rys, rfs = run_ref(name, P, S, xs, quant)
    torch.testing.assert_close(ys, rys, rtol=0, atol=1e-12)
    assert fs.keys() == rfs.keys()
    for k in fs:
        torch.testing.assert_close(fs[k], rfs[k], rtol=0, atol=1e-12)
    w = torch.randn_like(ys)
    loss = (ys * w).sum() + sum((v * 0.3).sum() for v in fs.values())
    rloss = (rys * w).sum() + sum((v * 0.3).sum() for v in rfs.values())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    rgrads = torch.autograd.grad(rloss, leaves, allow_unused=True)
    for g, rg in zip(grads, rgrads):
        assert (g is None) == (rg is None)
        if g is not None:
            torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", FIRING)
@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
def test_random_quantizers_match_reference(name, quant):
    P, S, xs = make_case(name, 1, steps=5, dtype=torch.float32)
    xs.requires_grad_(True)
    torch.manual_seed(7)
    ys, fs = run_ours(name, P, S, xs, quant)
    torch.manual_seed(7)
    rys, rfs = run_ref(name, P, S, xs, quant)
    torch.testing.assert_close(ys, rys)
    for k in fs:
        torch.testing.assert_close(fs[k], rfs[k])
    (g,) = torch.autograd.grad(ys.sum(), xs)
    (rg,) = torch.autograd.grad(rys.sum(), xs)
    torch.testing.assert_close(g, rg)


@pytest.mark.parametrize("shape", [(), (4,), (2, 3), (2, 1, 3)])
def test_leading_dims(shape):
    for name in ("DSRLITS", "SLI"):
        P, S, xs = make_case(name, 1, shape=shape, steps=3)
        ys, fs = run_ours(name, P, S, xs, "round")
        rys, rfs = run_ref(name, P, S, xs, "round")
        torch.testing.assert_close(ys, rys)
        assert ys.shape == (3, *shape, N)


def test_hand_computed_trajectories():
    # LIB: beta 0.5, threshold 1: mem 0.8 -> no spike; then 0.4 + 0.8 = 1.2 -> spike, reset to 0.2
    p = F.init_params("LIB", 1, beta=0.5, threshold=1.0)
    s = F.init_state("LIB", torch.zeros(1))
    y, s = F.lib_step(p, s, torch.tensor([0.8]), quant_fn="round")
    assert y.item() == 0 and s.mem.item() == pytest.approx(0.8)
    y, s = F.lib_step(p, s, torch.tensor([0.8]), quant_fn="round")
    assert y.item() == 1 and s.mem.item() == pytest.approx(0.2)
    # DLIB: the reset is split in halves between pos_mem and neg_mem
    p = F.init_params("DLIB", 1, pos_beta=0.5, neg_beta=0.5, threshold=1.0)
    s = F.init_state("DLIB", torch.zeros(1))
    y, s = F.dlib_step(p, s, torch.tensor([1.5]), quant_fn="round")
    assert y.item() == 1 and s.pos_mem.item() == pytest.approx(1.0) and s.neg_mem.item() == pytest.approx(-0.5)
    # LIT: a negative membrane past -neg_threshold fires -1 and is pushed back up
    p = F.init_params("LIT", 1, beta=0.5, pos_threshold=1.0, neg_threshold=0.5)
    s = F.init_state("LIT", torch.zeros(1))
    y, s = F.lit_step(p, s, torch.tensor([-0.9]), quant_fn="round")
    assert y.item() == -1 and s.mem.item() == pytest.approx(-0.4)
    # LITS: the output is scaled, the reset is not
    p = F.init_params("LITS", 1, beta=0.5, neg_scale=3.0, neg_threshold=0.5)
    s = F.init_state("LITS", torch.zeros(1))
    y, s = F.lits_step(p, s, torch.tensor([-0.9]), quant_fn="round")
    assert y.item() == -3 and s.mem.item() == pytest.approx(-0.4)
    # SLI: the synaptic trace carries over (traceTorch 0.15's bug would read x instead)
    p = F.init_params("SLIB", 1, alpha=0.5, beta=0.5, threshold=10.0)
    s = F.init_state("SLIB", torch.zeros(1))
    _, s = F.slib_step(p, s, torch.tensor([1.0]), quant_fn="round")
    _, s = F.slib_step(p, s, torch.tensor([0.0]), quant_fn="round")
    assert s.syn.item() == pytest.approx(0.25) and s.mem.item() == pytest.approx(0.5 * 0.5 + 0.25)
    # RLIB: the previous spike drives the next step through rec_weight
    p = F.init_params("RLIB", 1, beta=0.5, gamma=0.5, rec_weight=2.0, threshold=1.0)
    s = F.init_state("RLIB", torch.zeros(1))
    y, s = F.rlib_step(p, s, torch.tensor([1.2]), quant_fn="round")
    assert y.item() == 1 and s.prev_output.item() == 1
    y, s = F.rlib_step(p, s, torch.tensor([0.0]), quant_fn="round")
    # rec = 0.5*0 + 0.5*1 = 0.5; mem = 0.5*0.2 + 2*0.5 = 1.1 -> spike, reset to 0.1
    assert s.rec.item() == pytest.approx(0.5) and y.item() == 1 and s.mem.item() == pytest.approx(0.1)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    """Smooth path: LI types as they are, firing types with an identity (smooth) quantizer."""
    spec = F.SPECS[name]
    # a smooth previous output: pos()/neg() have a kink at exactly 0, where finite differences disagree
    P, S, xs = make_case(name, 1, shape=(2,), steps=3, spiky_prev=False)
    pn, sn = list(P), list(S)

    def fn(*leaves):
        params = spec.Params(**dict(zip(pn, leaves[: len(pn)])))
        state = spec.State(**dict(zip(sn, leaves[len(pn) : len(pn) + len(sn)])))
        ys, state = F.scan(F.get_step(name), params, state, leaves[-1], quant_fn=lambda p: p, fast=False)
        return (ys, *state)

    leaves = tuple(t.clone().requires_grad_(True) for t in (*P.values(), *S.values(), xs))
    assert torch.autograd.gradcheck(fn, leaves, check_batched_grad=True)


@pytest.mark.parametrize("name", ["LI", "DSLI"])
def test_gradgradcheck_li(name):
    spec = F.SPECS[name]
    P, S, xs = make_case(name, 1, shape=(2,), steps=2)

    def fn(x, *pv):
        ys, _ = F.scan(F.get_step(name), spec.Params(*pv), spec.State(**S), x, fast=False)
        return ys

    leaves = (xs.requires_grad_(True), *(v.requires_grad_(True) for v in P.values()))
    assert torch.autograd.gradgradcheck(fn, leaves)


def test_quantizers_forward_and_backward():
    p = torch.tensor([0.1, 0.49, 0.51, 0.9], requires_grad=True)
    y = F.round_st(p)
    assert y.tolist() == [0, 0, 1, 1]
    (g,) = torch.autograd.grad((y * torch.arange(4.0)).sum(), p)
    assert g.tolist() == [0, 1, 2, 3]
    torch.manual_seed(0)
    y = F.probabilistic_st(p)
    assert set((y / p.detach()).round().tolist()) <= {0.0, 1.0}
    (g,) = torch.autograd.grad(y.sum(), p)
    torch.testing.assert_close(g, 2 * p.detach())
    torch.manual_seed(0)
    y = F.bernoulli_st(p)
    (g,) = torch.autograd.grad(y.sum(), p)
    assert set(y.tolist()) <= {0.0, 1.0} and g.tolist() == [1, 1, 1, 1]
    noise = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert F.bernoulli_from_noise(p, noise).tolist() == [0, 0, 1, 1]


def test_bernoulli_frequency_and_seed():
    p = torch.full((20000,), 0.3)
    torch.manual_seed(1)
    a = F.bernoulli_st(p)
    torch.manual_seed(1)
    b = F.bernoulli_st(p)
    assert torch.equal(a, b)
    assert abs(a.mean().item() - 0.3) < 0.02


def test_unknown_quantizer_and_bad_type():
    p = F.init_params("LIB", 2)
    s = F.init_state("LIB", torch.zeros(2))
    with pytest.raises(ValueError, match=r"LIB.*'round'.*'stochastic'"):
        F.lib_step(p, s, torch.zeros(2), quant_fn="stochastic")
    with pytest.raises(TypeError, match="quant_fn"):
        F.lib_step(p, s, torch.zeros(2), quant_fn=3)
    y, _ = F.lib_step(p, s, torch.full((2,), 5.0), quant_fn=lambda q: q * 0 + 7)
    assert y.tolist() == [7, 7]


@pytest.mark.parametrize("fn", list(F.SPIKE_FUNCTIONS.values()), ids=list(F.SPIKE_FUNCTIONS))
def test_spike_functions(fn):
    v = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    p = fn(v)
    assert ((p >= 0) & (p <= 1)).all()
    assert p[30].item() == pytest.approx(0.5)
    assert (p[1:] >= p[:-1]).all()  # monotone
    (g,) = torch.autograd.grad(p.sum(), v)
    assert (g >= 0).all() and g[30] > 0
    assert hash(fn) == hash(type(fn)(*fn.__dict__.values()))  # static config: hashable by value


def test_constraints():
    x = torch.tensor([1e-6, 0.3, 0.9, 1 - 1e-6], dtype=torch.float64)
    torch.testing.assert_close(torch.sigmoid(F.sigmoid_inverse(x)), x)
    big = torch.tensor([1e-4, 1.0, 30.0, 500.0], dtype=torch.float64)
    raw = F.softplus_inverse(big)
    assert torch.isfinite(raw).all()
    torch.testing.assert_close(torch.nn.functional.softplus(raw), big)
    assert F.softplus_inverse(torch.tensor(500.0)).item() == pytest.approx(500.0)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sigmoid_inverse"):
            F.sigmoid_inverse(bad)
    with pytest.raises(ValueError, match="softplus_inverse"):
        F.softplus_inverse(torch.tensor([1.0, 0.0]))
    assert F.halflife_to_decay(1.0).item() == pytest.approx(0.5)
    assert F.decay_to_halflife(0.5).item() == pytest.approx(1.0)
    assert F.timesteps_to_decay(10).item() == pytest.approx(0.9)
    assert F.decay_to_timesteps(0.9).item() == pytest.approx(10.0)
    for d in (0.2, 0.77, 0.999):
        assert F.halflife_to_decay(F.decay_to_halflife(d)).item() == pytest.approx(d)
        assert F.timesteps_to_decay(F.decay_to_timesteps(d)).item() == pytest.approx(d)
    for f, bad in [
        (F.halflife_to_decay, 0.0),
        (F.decay_to_halflife, 1.0),
        (F.timesteps_to_decay, 1.0),
        (F.decay_to_timesteps, 0.0),
    ]:
        with pytest.raises(ValueError, match=f.__name__):
            f(bad)


def test_init_params_and_errors():
    p = F.init_params("SRLIB", 4, alpha=0.2, beta=torch.tensor(0.7), threshold_rank=0, rec_weight=torch.arange(4.0))
    assert p.alpha.shape == (4,) and p.beta.shape == () and p.threshold.shape == ()
    assert torch.equal(p.rec_weight, torch.arange(4.0))
    assert F.init_params("LIB", 2, dtype=torch.float64).beta.dtype == torch.float64
    bad = [
        (dict(beta=1.5), ValueError, r"init_params\(LIB\): beta must be a decay in \(0, 1\), received 1.5"),
        (dict(beta=torch.tensor([1.0, 1.2, 0.5, 0.5])), ValueError, r"beta must be a decay in \(0, 1\]"),
        (dict(beta=0.0), ValueError, "beta"),
        (dict(threshold=0.0), ValueError, "threshold must be a threshold > 0"),
        (dict(threshold=float("nan")), ValueError, "finite"),
        (dict(beta=torch.full((3,), 0.5)), ValueError, r"shape \[\] or \[4\].*\[3\]"),
        (dict(beta_rank=2), ValueError, "beta_rank"),
        (dict(gamma=0.5), TypeError, "unknown argument"),
        (dict(beta="high"), TypeError, "beta must be a float or a tensor"),
    ]
    for kwargs, exc, match in bad:
        with pytest.raises(exc, match=match):
            F.init_params("LIB", 4, **kwargs)
    # the functional core has no raw form: a decay of exactly 1.0 (integrate-and-fire) is taken as it is
    assert torch.equal(F.init_params("ALIB", 2, beta=1.0, rho=1.0).beta, torch.ones(2))
    with pytest.raises(ValueError, match="num_neurons"):
        F.init_params("LIB", 0)
    with pytest.raises(ValueError, match="unknown neuron type 'LIF'"):
        F.init_params("LIF", 3)
    x = torch.randn(2, 3)
    s = F.init_state("DSRLIT", x)
    assert s._fields == F.SPECS["DSRLIT"].state_names and all(torch.equal(t, torch.zeros(2, 3)) for t in s)


@pytest.mark.parametrize("name", NAMES)
def test_step_does_not_mutate_inputs(name):
    P, S, xs = make_case(name, 1, steps=1, dtype=torch.float32)
    spec = F.SPECS[name]
    params, state, x = spec.Params(**P), spec.State(**S), xs[0]
    before = [(t._version, t.clone()) for t in (*params, *state, x)]
    F.get_step(name)(params, state, x, quant_fn="bernoulli")
    for (version, copy), t in zip(before, (*params, *state, x)):
        assert t._version == version and torch.equal(t, copy)


def test_scan_equals_loop_and_validates():
    P, S, xs = make_case("DSRLIB", 1, steps=7)
    spec = F.SPECS["DSRLIB"]
    ys, st = F.scan(F.dsrlib_step, spec.Params(**P), spec.State(**S), xs, quant_fn="round")
    rys, rst = run_ours("DSRLIB", P, S, xs, "round")
    torch.testing.assert_close(ys, rys)
    for k in rst:
        torch.testing.assert_close(getattr(st, k), rst[k])
    with pytest.raises(ValueError, match="scan: xs"):
        F.scan(F.dsrlib_step, spec.Params(**P), spec.State(**S), 3.0)


@pytest.mark.parametrize("fn", list(F.SPIKE_FUNCTIONS.values()), ids=list(F.SPIKE_FUNCTIONS))
def test_surrogate_gradient_is_the_spike_function_derivative(fn):
    v = torch.linspace(-2, 2, 41, dtype=torch.float64, requires_grad=True)
    (straight_through,) = torch.autograd.grad(F.round_st(fn(v)).sum(), v)
    (smooth,) = torch.autograd.grad(fn(v).sum(), v)
    torch.testing.assert_close(straight_through, smooth)


def test_readme_lists_every_type():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in NAMES:
        assert f"`{name}`" in readme or f" {name} " in readme or f"`{name} " in readme or f" {name}`" in readme, name


# ---- reset modes and integrate-and-fire (docs/maths.md, "Reset modes and integrate-and-fire") ----

RESET_CASES = ["zero", "if", "if_zero"]  # hard reset; membrane decay(s) exactly 1.0 (subtract); both


def _reset_case(name, case, **kw):
    """A case with the membrane decays at exactly 1.0 for the IF cases, and the reset mode."""
    P, S, xs = make_case(name, 1, **kw)
    if case.startswith("if"):
        for k in ("beta", "pos_beta", "neg_beta"):
            if k in P:
                P[k] = torch.ones_like(P[k])
    return P, S, xs, ("zero" if case.endswith("zero") else "subtract")


@pytest.mark.parametrize("case", RESET_CASES)
@pytest.mark.parametrize("name", FIRING)
def test_reset_modes_and_if_match_reference(name, case):
    """Every firing type, forward and every gradient, against the reference's own reading of the section."""
    P, S, xs, reset = _reset_case(name, case, steps=5)
    leaves = [*P.values(), *S.values(), xs]
    for t in leaves:
        t.requires_grad_(True)
    spec, step = F.SPECS[name], F.get_step(name)
    params, state = spec.Params(**P), spec.State(**S)
    ys = []
    for x in xs:
        y, state = step(params, state, x, quant_fn="round", reset=reset)
        ys.append(y)
    ys, fs = torch.stack(ys), state._asdict()
    rS, rys = dict(S), []
    for x in xs:
        y, rS = ref_step(name, P, rS, x, "round", reset_mode=reset)
        rys.append(y)
    rys = torch.stack(rys)
    torch.testing.assert_close(ys, rys, rtol=0, atol=1e-12)
    for k in fs:
        torch.testing.assert_close(fs[k], rS[k], rtol=0, atol=1e-12)
    assert ys.abs().sum() > 0  # it fired, so the reset ran
    w = torch.randn_like(ys)
    loss = (ys * w).sum() + sum((v * 0.3).sum() for v in fs.values())
    rloss = (rys * w).sum() + sum((rS[k] * 0.3).sum() for k in fs)
    for g, rg in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(rloss, leaves)):
        torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["LIB", "DLIT", "SRLITS", "DSRLITS", "ALIB", "DALIT", "SRALITS", "DSRALITS"])
def test_gradcheck_float64_zero_reset_and_if(name):
    """The zero reset with an identity (smooth) quantizer and a decay of exactly 1.0, by finite differences."""
    spec = F.SPECS[name]
    P, S, xs, reset = _reset_case(name, "if_zero", shape=(2,), steps=3, spiky_prev=False)
    pn, sn = list(P), list(S)

    def fn(*leaves):
        params = spec.Params(**dict(zip(pn, leaves[: len(pn)])))
        state = spec.State(**dict(zip(sn, leaves[len(pn) : len(pn) + len(sn)])))
        ys, state = F.scan(F.get_step(name), params, state, leaves[-1], quant_fn=lambda p: p, reset=reset, fast=False)
        return (ys, *state)

    leaves = tuple(t.clone().requires_grad_(True) for t in (*P.values(), *S.values(), xs))
    assert torch.autograd.gradcheck(fn, leaves, check_batched_grad=True)


def test_zero_reset_and_adaptation_by_hand():
    # LIB, beta 0.5, threshold 1, round: 0.8 -> mem 0.8; 0.8 -> 1.2 fires: subtract leaves 0.2, zero leaves 0
    p = F.init_params("LIB", 1, beta=0.5)
    for reset, after in (("subtract", 0.2), ("zero", 0.0)):
        s = F.init_state("LIB", torch.zeros(1))
        for _ in range(2):
            y, s = F.lib_step(p, s, torch.tensor([0.8]), quant_fn="round", reset=reset)
        assert y.item() == 1 and s.mem.item() == pytest.approx(after)
    # IF: beta exactly 1, nothing leaks: 0.3 per step fires on the 4th step (1.2), subtract leaves 0.2
    p = F.init_params("LIB", 1, beta=1.0)
    s = F.init_state("LIB", torch.zeros(1))
    ys = []
    for _ in range(4):
        y, s = F.lib_step(p, s, torch.tensor([0.3]), quant_fn="round")
        ys.append(y.item())
    assert ys == [0, 0, 0, 1] and s.mem.item() == pytest.approx(0.2)
    # ALIB, beta 0.5, threshold 1, rho 0.5, gain 1: step 1 x=1.5 fires (theta 1), mem 0.5, adapt 0.5;
    # step 2 x=1.0: mem 1.25 < theta 1.5, no spike, adapt 0.25; step 3 x=1.0: mem 1.625 > 1.25 fires,
    # mem drops by theta: 0.375
    p = F.init_params("ALIB", 1, beta=0.5, rho=0.5)
    s = F.init_state("ALIB", torch.zeros(1))
    out = []
    for x in (1.5, 1.0, 1.0):
        y, s = F.alib_step(p, s, torch.tensor([x]), quant_fn="round")
        out.append((y.item(), s.mem.item(), s.adapt.item()))
    assert out == [(1.0, 0.5, 0.5), (0.0, 1.25, 0.25), (1.0, pytest.approx(0.375), pytest.approx(0.625))]
    # ALIT: a negative spike counts in the trace too (s_pos - s_neg = 1), raising both thresholds
    p = F.init_params("ALIT", 1, beta=0.5, rho=0.5)
    s = F.init_state("ALIT", torch.zeros(1))
    y, s = F.alit_step(p, s, torch.tensor([-1.5]), quant_fn="round")
    assert y.item() == -1 and s.adapt.item() == 0.5 and s.mem.item() == pytest.approx(-0.5)


def test_reset_argument_is_checked():
    p, s, x = F.init_params("LIB", 2), F.init_state("LIB", torch.zeros(2)), torch.zeros(2)
    with pytest.raises(ValueError, match=r"lib_step: reset must be one of 'subtract', 'zero', received 'hard'"):
        F.lib_step(p, s, x, reset="hard")
    with pytest.raises(ValueError, match="li_step: a leaky integrator has no firing head"):
        F.li_step(F.init_params("LI", 2), F.init_state("LI", x), x, reset="zero")
    with pytest.raises(ValueError, match=r"scan\(lib_step\): reset must be one of"):
        F.scan(F.lib_step, p, s, torch.zeros(3, 2), reset=None)
    spec = F.SPECS["ALIB"].with_reset("zero")
    assert spec.name == "ALIB" and spec.key == "ALIB:zero" and spec.Params is F.SPECS["ALIB"].Params
    with pytest.raises(ValueError, match="adaptive"):
        F.NeuronSpec(False, False, False, "", adaptive=True)
