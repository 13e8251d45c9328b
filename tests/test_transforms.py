"""The pure steps under torch.func.vmap, torch.func.grad, torch.compile and checkpoint."""

import pytest
import torch
from torch.func import grad, vmap

import tracetorch.functional as F
from tests.reference import random_params, ref_state_names

NAMES = list(F.NAMES)
FIRING = [n for n in NAMES if not n.endswith("LI")]
N, B, POP = 4, 3, 5


def population(name, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    members = [random_params(name, N, 1, g, dtype) for _ in range(POP)]
    stacked = {k: torch.stack([m[k] for m in members]) for k in members[0]}
    state = {s: torch.randn(POP, B, N, generator=g, dtype=dtype) for s in ref_state_names(name)}
    x = 2 * torch.randn(POP, B, N, generator=g, dtype=dtype)
    return members, stacked, state, x


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_population_equals_loop(name):
    spec, step = F.SPECS[name], F.get_step(name)
    members, stacked, state, x = population(name)
    ys, st = vmap(lambda p, s, x: step(p, s, x, quant_fn="round"))(spec.Params(**stacked), spec.State(**state), x)
    for i, m in enumerate(members):
        y, s = step(spec.Params(**m), spec.State(**{k: v[i] for k, v in state.items()}), x[i], quant_fn="round")
        torch.testing.assert_close(ys[i], y)
        for k in spec.state_names:
            torch.testing.assert_close(getattr(st, k)[i], getattr(s, k))


@pytest.mark.parametrize("name", FIRING)
def test_vmap_bernoulli_randomness(name):
    spec, step = F.SPECS[name], F.get_step(name)
    _, stacked, state, x = population(name)
    args = (spec.Params(**stacked), spec.State(**state), x)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(step)(*args)  # vmap's default randomness="error" refuses a random quantizer
    torch.manual_seed(0)
    y, _ = vmap(step, randomness="different")(*args)
    torch.manual_seed(0)
    y2, _ = vmap(step, randomness="different")(*args)
    assert torch.equal(y, y2)
    if not name.endswith("TS"):
        assert set(y.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_vmap_randomness_modes_and_shared_noise():
    spec = F.SPECS["LIB"]
    params = spec.Params(beta=torch.full((POP, 1000), 0.9), threshold=torch.full((POP, 1000), 1.0))
    state = spec.State(mem=torch.zeros(POP, 1000))
    x = torch.full((POP, 1000), 1.0)  # p = sigmoid(0) = 0.5 for every member
    diff, _ = vmap(F.lib_step, randomness="different")(params, state, x)
    assert not torch.equal(diff[0], diff[1])
    torch.manual_seed(3)
    a, _ = vmap(F.lib_step, randomness="different")(params, state, x)
    torch.manual_seed(3)
    b, _ = vmap(F.lib_step, randomness="different")(params, state, x)
    assert torch.equal(a, b)  # seeded: reproducible
    # torch cannot draw "same" randomness from a batched probability: documented, and refused loudly
    with pytest.raises(RuntimeError, match="same randomness"):
        vmap(F.lib_step, randomness="same")(params, state, x)
    # shared draws the pure way: noise passed in, not batched
    noise = torch.rand(1000)
    shared = lambda q: F.bernoulli_from_noise(q, noise)
    same, _ = vmap(lambda p, s, x: F.lib_step(p, s, x, quant_fn=shared))(params, state, x)
    assert all(torch.equal(same[0], same[i]) for i in range(POP))
    assert torch.equal(same[0], (noise < 0.5).float())


def test_vmap_over_batch_equals_batched_call():
    spec = F.SPECS["DSRLITS"]
    params = F.init_params(spec, N, pos_rec_weight=0.3)
    x = torch.randn(6, N)
    state = F.init_state(spec, x)
    yb, sb = vmap(lambda s, x: F.dsrlits_step(params, s, x, quant_fn="round"))(state, x)
    y, s = F.dsrlits_step(params, state, x, quant_fn="round")
    torch.testing.assert_close(yb, y)
    torch.testing.assert_close(tuple(sb), tuple(s))


@pytest.mark.parametrize("name", ["LI", "LIB", "SRLIT", "DSRLITS"])
def test_grad_through_10_step_scan(name):
    spec, step = F.SPECS[name], F.get_step(name)
    g = torch.Generator().manual_seed(1)
    params = spec.Params(**random_params(name, N, 1, g, torch.float64))
    xs = torch.randn(10, B, N, generator=g, dtype=torch.float64)

    def loss(params, xs):
        ys, _ = F.scan(step, params, F.init_state(spec, xs[0]), xs, quant_fn="round")
        return (ys * torch.linspace(-1, 1, N, dtype=xs.dtype)).sum()

    gp, gx = grad(loss, argnums=(0, 1))(params, xs)
    p2 = spec.Params(*(t.clone().requires_grad_(True) for t in params))
    x2 = xs.clone().requires_grad_(True)
    ref = torch.autograd.grad(loss(p2, x2), [*p2, x2])
    for a, b in zip([*gp, gx], ref):
        torch.testing.assert_close(a, b)
    assert all(torch.isfinite(t).all() for t in gp)


def test_per_member_grads_with_vmap_grad():
    spec = F.SPECS["LIB"]
    _, stacked, _, _ = population("LIB")
    xs = torch.randn(8, B, N)

    def loss(p):
        ys, _ = F.scan(F.lib_step, p, F.init_state(spec, xs[0]), xs, quant_fn="round")
        return ys.sum() + (p.beta * 0).sum()

    per_member = vmap(grad(loss))(spec.Params(**stacked))
    for i in range(POP):
        one = grad(loss)(spec.Params(**{k: v[i] for k, v in stacked.items()}))
        torch.testing.assert_close(per_member.beta[i], one.beta)
        torch.testing.assert_close(per_member.threshold[i], one.threshold)


def test_checkpoint_equals_plain():
    from torch.utils.checkpoint import checkpoint

    spec = F.SPECS["SRLIB"]
    params = spec.Params(*(t.requires_grad_(True) for t in F.init_params(spec, N, rec_weight=0.5)))
    xs = torch.randn(6, B, N, requires_grad=True)

    def chunk(params, state, xs):
        return F.scan(F.srlib_step, params, state, xs, quant_fn="round")

    state = F.init_state(spec, xs[0])
    ys, _ = checkpoint(chunk, params, state, xs, use_reentrant=False)
    ys2, _ = chunk(params, state, xs)
    g1 = torch.autograd.grad(ys.sum(), [*params, xs])
    g2 = torch.autograd.grad(ys2.sum(), [*params, xs])
    torch.testing.assert_close(ys, ys2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DSLI", "SRLIB", "DRLIT", "DSRLITS"])
def test_compile_fullgraph_equals_eager(name):
    torch._dynamo.reset()
    spec, step = F.SPECS[name], F.get_step(name)
    g = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(B, N, generator=g)
    state = spec.State(**{s: torch.randn(B, N, generator=g) for s in spec.state_names})

    def fn(params, state, x):
        return step(params, state, x, quant_fn="round")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for seed in (0, 1):  # new param values: same graph, no recompile
        params = spec.Params(**random_params(name, N, 1, torch.Generator().manual_seed(seed), torch.float32))
        y, s = compiled(params, state, x)
        ye, se = fn(params, state, x)
        torch.testing.assert_close(y, ye)
        torch.testing.assert_close(tuple(s), tuple(se))


@pytest.mark.slow
def test_compile_inductor_no_recompile_across_param_values():
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    spec = F.SPECS["LIB"]
    compiled = torch.compile(lambda p, s, x: F.lib_step(p, s, x, quant_fn="round"), fullgraph=True)
    x = torch.randn(B, N)
    for beta in (0.5, 0.7, 0.9):
        params = F.init_params(spec, N, beta=beta)
        y, s = compiled(params, F.init_state(spec, x), x)
        ye, se = F.lib_step(params, F.init_state(spec, x), x, quant_fn="round")
        torch.testing.assert_close(y, ye)
        torch.testing.assert_close(s.mem, se.mem)
    assert counters["stats"]["unique_graphs"] == 1
