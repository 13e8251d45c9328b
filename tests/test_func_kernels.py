"""torch.func transforms and second derivatives through the fused kernels, against the plain loop.

Every transform runs with ``fast=True`` (the kernel must run, or a ``ValueError`` says why not)
and is compared with the same transform of ``fast=False``: outputs, final states and every
gradient (params, initial state, inputs). Coverage is sampled: every type (the spec table, so new
rows are covered when they land) on one configuration; every configuration (dtype, param rank,
which of params / state / xs are batched, and where) on a few types; the random quantizers
against the plain loop given the kernel's own draws; Triton's interpreter on a few.
"""

import math

import pytest
import torch
from torch.func import grad, grad_and_value, jacrev, jvp, vjp, vmap
from torch.utils._pytree import tree_leaves

import tracetorch as tt
import tracetorch.functional as F
from tracetorch.functional import kernels
from tracetorch.functional.kernels import ops
from tracetorch.functional.kernels.ops import uniform_draws
from tracetorch.functional.kernels.plain import plain_scan

from .test_kernels import GRAD_TOL, TOL, B, N, T, make, noisy_quant

NAMES = list(F.NAMES)
FIRING = [n for n in NAMES if F.SPECS[n].fires]
SOME = ["LIB", "DSRLITS", "SRLIT"]
P = 3
#: (params, state, xs) in_dims: all batched, each alone, two of three, xs batched at dim 1
IN_DIMS = [(0, 0, 0), (0, None, None), (None, 0, None), (None, None, 0), (0, None, 1), (None, 0, 0)]


@pytest.fixture(params=["folded", "member_wise"])
def strategy(request, monkeypatch):
    """The vmap rule's two ways for batched CPU inputs (ops.VMAP): one folded call, or one per member."""
    monkeypatch.setitem(ops.VMAP, "member_wise", request.param == "member_wise")
    return request.param


def expected(phases, dims_xs, P=P):
    """The kernel calls of a vmapped scan: per member where xs is batched and the rule goes member-wise."""
    if dims_xs is not None and ops.VMAP["member_wise"]:
        return [(ph, B * N) for ph in phases for _ in range(P)]
    return [(ph, P * B * N) for ph in phases]


@pytest.fixture
def calls(monkeypatch):
    """Records every kernel call: ``(phase, elements, seed)``."""
    log = []
    fwd, bwd = ops.scan_forward, ops.scan_backward

    def forward(*a, **kw):
        log.append(("forward", a[0].shape[1], int(a[7])))
        return fwd(*a, **kw)

    def backward(*a, **kw):
        log.append(("backward", a[0].shape[1], int(a[7])))
        return bwd(*a, **kw)

    monkeypatch.setattr(ops, "scan_forward", forward)
    monkeypatch.setattr(ops, "scan_backward", backward)
    return log


def population(name, rank=1, dtype=torch.float64, dims=(0, 0, 0), seed=0):
    """``(params, state, xs, w)`` for ``P`` members, each argument stacked where its in_dim says."""
    members = [make(name, rank, dtype, seed=seed + b) for b in range(P)]
    spec, w = members[0][0], members[0][4]

    def pick(k, d):
        values = [tree_leaves(m[k]) for m in members]
        leaves = values[0] if d is None else [torch.stack(v, d) for v in zip(*values)]
        return [t.detach() for t in leaves]

    params = spec.Params(*pick(1, dims[0]))
    state = spec.State(*pick(2, dims[1]))
    xs = pick(3, dims[2])[0]
    return params, state, xs, w


def loss_fn(name, quant, fast, w):
    step = F.get_step(name)

    def loss(params, state, xs):
        ys, final = F.scan(step, params, state, xs, quant_fn=quant, fast=fast)
        value = (ys * w).sum() + sum(((i + 1) * s * s).sum() for i, s in enumerate(final))
        return value, (ys, tuple(final))

    return loss


def assert_trees_close(a, b, dtype):
    la, lb = tree_leaves(a), tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, equal_nan=True, **GRAD_TOL[dtype])


def both(name, quant, args, dtype, dims=None, randomness="error"):
    """The vmapped (``dims``) or plain ``grad_and_value`` with aux, kernel and plain loop."""
    out = []
    for fast in (True, False):
        f = grad_and_value(loss_fn(name, quant, fast, args[3]), argnums=(0, 1, 2), has_aux=True)
        if dims is not None:
            f = vmap(f, in_dims=dims, randomness=randomness)
        out.append(f(*args[:3]))
    assert_trees_close(out[0], out[1], dtype)
    return out[0]


# ---- every type on one configuration ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_grad_and_vmap_grad_every_type(name, calls):
    """torch.func.grad and vmap(grad) of a scan: outputs, final states and every gradient."""
    args = population(name, dims=(None, None, None))
    both(name, "round", args, torch.float64)
    assert [c[0] for c in calls] == ["forward", "backward"]
    calls.clear()
    args = population(name, dims=(0, 0, 0))
    both(name, "round", args, torch.float64, dims=(0, 0, 0))
    # one folded kernel call for the whole population, forward and backward
    assert [c[:2] for c in calls] == expected(["forward", "backward"], 0)


@pytest.mark.parametrize("name", NAMES)
def test_plain_scan_is_the_kernel(name):
    """The shared reference (kernels.plain.plain_scan) computes what the kernel computes, draws included."""
    spec = F.SPECS[name]
    _, params, state, xs, _ = make(name, 1, torch.float64)
    S = B * N
    flat, layout = [], []
    for p in params:
        f, n, inner = ops._param_layout(p.detach(), xs.shape[1:])
        flat.append(f)
        layout += [n, inner]
    x2, st = xs.detach().reshape(T, S), [s.detach().reshape(S) for s in state]
    for quant in ("round", "bernoulli", "probabilistic") if spec.fires else ("none",):
        spike = ops.spike_tag(F.sigmoid4x)
        seed = torch.tensor(987654321987, dtype=torch.int64)
        ys, final, _ = ops.scan_forward(x2, st, flat, name, spike, quant, layout, seed, False)
        ys2, final2 = plain_scan(name, spike, quant, x2, st, flat, layout, int(seed))
        torch.testing.assert_close(ys, ys2, **TOL[torch.float64])
        for a, b in zip(final, final2):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def penalty(name, quant, fast, dtype=torch.float64, rank=1):
    """A gradient penalty: the first gradients (create_graph) and the penalty's gradients."""
    _, params, state, xs, w = make(name, rank, dtype)
    ys, final = F.scan(F.get_step(name), params, state, xs, quant_fn=quant, fast=fast)
    loss = (ys * w).sum() + sum(((i + 1) * s * s).sum() for i, s in enumerate(final))
    leaves = [*params, *state, xs]
    first = torch.autograd.grad(loss, leaves, create_graph=True)
    pen = sum((g * g).sum() for g in first)
    second = torch.autograd.grad(pen, leaves, allow_unused=True)
    return [g.detach() for g in first], [torch.zeros_like(t) if g is None else g for g, t in zip(second, leaves)]


@pytest.mark.parametrize("name", NAMES)
def test_gradient_penalty_every_type(name, calls):
    """create_graph=True through the default path equals fast=False (the plain step recomputed)."""
    fused = penalty(name, "round", None)
    assert calls[:2] == [("forward", B * N, 0), ("backward", B * N, 0)]
    assert_trees_close(fused, penalty(name, "round", False), torch.float64)


# ---- every configuration on a few types ---------------------------------------------------------


@pytest.mark.parametrize("dims", IN_DIMS)
@pytest.mark.parametrize("rank", [1, 0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", SOME)
def test_vmap_grad_configurations(name, dtype, rank, dims, strategy, calls):
    args = population(name, rank, dtype, dims)
    both(name, "round", args, dtype, dims=dims)
    assert [c[:2] for c in calls] == expected(["forward", "backward"], dims[2])


@pytest.mark.parametrize("dims", [(0, 0, 0), (0, None, None), (None, None, 0)])
@pytest.mark.parametrize("rank", [1, 0])
@pytest.mark.parametrize("name", SOME)
def test_vmap_forward_only(name, rank, dims, calls):
    """vmap without grad: outputs and final states, nothing saved for a backward."""
    params, state, xs, _ = population(name, rank, torch.float32, dims)
    outs = [
        vmap(lambda p, s, x, fast=fast: F.scan(F.get_step(name), p, s, x, quant_fn="round", fast=fast), in_dims=dims)(
            params, state, xs
        )
        for fast in (True, False)
    ]
    assert_trees_close(outs[0], outs[1], torch.float32)
    assert [c[:2] for c in calls] == expected(["forward"], dims[2])


def member_draws(name, quant, seed, S, offset):
    sites = max(1, ops.get_kernel(name, ops.spike_tag(F.sigmoid4x), quant).traced.graph.quant_sites)
    return uniform_draws(seed, T, S, sites)[..., offset : offset + B * N]


@pytest.mark.parametrize("dims", [(0, 0, 0), (0, 0, None)])
@pytest.mark.parametrize("randomness", ["different", "same"])
@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
@pytest.mark.parametrize("name", SOME)
def test_vmap_grad_random_quantizers(name, quant, randomness, dims, strategy, calls):
    """Each member equals the plain loop on the kernel's draws for it. xs batched: one call per
    member on its slice, with its own seed ('different') or the one seed ('same'); xs shared and
    'different': one folded call, member b on the draws of elements b*S...; 'same': one call per
    member on the one seed."""
    params, state, xs, w = population(name, dims=dims)
    torch.manual_seed(5)
    f = grad_and_value(loss_fn(name, quant, True, w), argnums=(0, 1, 2), has_aux=True)
    fused = vmap(f, in_dims=dims, randomness=randomness)(params, state, xs)
    forwards = [c for c in calls if c[0] == "forward"]
    backwards = [c for c in calls if c[0] == "backward"]
    assert [c[1:] for c in forwards] == [c[1:] for c in backwards]  # the backward runs as its forward did
    S = B * N
    if len(forwards) == 1:
        assert randomness == "different" and forwards[0][1] == P * S
        draws = [member_draws(name, quant, forwards[0][2], P * S, b * S) for b in range(P)]
    else:
        assert len(forwards) == P and all(c[1] == S for c in forwards)
        seeds = {c[2] for c in forwards}
        assert len(seeds) == (P if randomness == "different" else 1)
        draws = [member_draws(name, quant, c[2], S, 0) for c in forwards]
    if randomness == "different":
        assert not torch.equal(draws[0], draws[1])
    xs_m = xs.movedim(dims[2], 0) if dims[2] is not None else xs.expand(P, *xs.shape)
    for b in range(P):
        member = [tree_leaves(a) for a in (params, state)]
        p = F.SPECS[name].Params(*(t[b] for t in member[0]))
        s = F.SPECS[name].State(*(t[b] for t in member[1]))
        ref = grad_and_value(loss_fn(name, noisy_quant(quant, draws[b]), False, w), argnums=(0, 1, 2), has_aux=True)
        got = [t[b] for t in tree_leaves(fused)]
        want = tree_leaves(ref(p, s, xs_m[b]))
        assert_trees_close(got, want, torch.float64)


@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
def test_vmap_randomness_error_refuses_random_quantizers(quant):
    params, state, xs, w = population("LIB")
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda p, s, x: F.scan(F.lib_step, p, s, x, quant_fn=quant, fast=True))(params, state, xs)
    # a deterministic quantizer needs no randomness
    vmap(lambda p, s, x: F.scan(F.lib_step, p, s, x, quant_fn="round", fast=True))(params, state, xs)


# ---- compositions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["LIB", "DSRLITS"])
def test_jacrev_and_vjp(name, calls):
    params, state, xs, _ = population(name, dims=(None, None, None))
    outs = []
    for fast in (True, False):

        def f(xs, params, fast=fast):
            return F.scan(F.get_step(name), params, state, xs, quant_fn="round", fast=fast)[0]

        J = jacrev(f, argnums=(0, 1))(xs[:3], params)
        ys, pull = vjp(f, xs, params)
        outs.append((J, ys, pull(torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype).reshape(ys.shape))))
    assert_trees_close(outs[0], outs[1], torch.float64)
    assert {c[0] for c in calls} == {"forward", "backward"}


def test_nested_vmap_and_grad_of_vmap(calls):
    """vmap(vmap(grad)) with params batched outside and xs inside; grad of a vmapped population loss."""
    name = "DSRLITS"
    params, _, _, w = population(name, dims=(0, None, None))
    state = population(name, dims=(None, None, None))[1]
    xs = torch.randn(2, T, B, N, dtype=torch.float64)
    outs = []
    for fast in (True, False):
        g = grad_and_value(loss_fn(name, "round", fast, w), argnums=(0, 2), has_aux=True)
        inner = vmap(g, in_dims=(None, None, 0))
        outs.append(vmap(inner, in_dims=(0, None, None))(params, state, xs))
    assert_trees_close(outs[0], outs[1], torch.float64)
    for phase in ("forward", "backward"):  # the inner vmap folds, the outer runs member by member
        assert sum(c[1] for c in calls if c[0] == phase) == 2 * P * B * N
    calls.clear()
    outs = []
    for fast in (True, False):
        loss = loss_fn(name, "round", fast, w)
        total = lambda p, fast=fast, loss=loss: vmap(lambda q: loss(q, state, xs[0])[0])(p).sum()
        outs.append(grad(total)(params))
    assert_trees_close(outs[0], outs[1], torch.float64)
    assert [c[0] for c in calls] == ["forward", "backward"]


def test_second_derivatives_under_torch_func(calls):
    """grad of grad (a gradient penalty the torch.func way), also vmapped over a population."""
    name = "SRLIT"
    params, state, xs, w = population(name, dims=(0, None, None))
    outs = []
    for fast in (True, False):
        loss = loss_fn(name, "round", fast, w)

        def pen(p, loss=loss):
            g = grad(lambda q: loss(q, state, xs)[0])(p)
            return sum((t * t).sum() for t in g)

        one = F.SPECS[name].Params(*(t[0] for t in params))
        outs.append((grad(pen)(one), vmap(grad(pen))(params)))
    assert_trees_close(outs[0], outs[1], torch.float64)
    assert "forward" in {c[0] for c in calls}


class Runner(torch.nn.Module):
    def __init__(self, layer, fast):
        super().__init__()
        self.layer, self.fast = layer, fast

    def forward(self, xs):
        return tt.nn.run(self.layer, xs, fast=self.fast)


def test_run_of_a_layer_under_functional_call(calls):
    """torch.func.grad and vmap of tt.nn.run (through tt.functional_call) take the kernels too."""
    layer = tt.nn.DLIB(N, quant_fn="round").double()
    xs = torch.randn(P, T, B, N, dtype=torch.float64)
    params = {k: v.detach() for k, v in Runner(layer, None).named_parameters()}
    outs = []
    for fast in (True, False):
        model = Runner(layer, fast)

        def loss(p, x, model=model):
            out, states = tt.functional_call(model, p, None, x)
            return (out**2).sum() + sum((t**2).sum() for t in tree_leaves(states))

        outs.append((grad(loss)(params, xs[0]), vmap(grad(loss), in_dims=(None, 0))(params, xs)))
    assert_trees_close(outs[0], outs[1], torch.float64)
    # grad: one call each way; then vmap(grad) over xs
    assert [c[:2] for c in calls] == [("forward", B * N), ("backward", B * N)] + expected(["forward", "backward"], 0)


# ---- forward mode -------------------------------------------------------------------------------


def test_forward_mode_runs_the_plain_loop_and_says_why(calls):
    """jvp / jacfwd: the plain loop (the LI family; the firing types' quantizers have no forward-mode
    rule, torch.compile refusing an autograd.Function with one), with the reason in kernel_reason."""
    params, state, xs, _ = population("LI", dims=(None, None, None))
    f = lambda x, fast: F.scan(F.li_step, params, state, x, fast=fast)[0]
    v = torch.ones_like(xs)
    a = jvp(lambda x: f(x, None), (xs,), (v,))
    b = jvp(lambda x: f(x, False), (xs,), (v,))
    assert_trees_close(a, b, torch.float64)
    Ja = torch.func.jacfwd(lambda x: f(x, None))(xs[:2])
    assert_trees_close(Ja, torch.func.jacfwd(lambda x: f(x, False))(xs[:2]), torch.float64)
    assert calls == []
    with pytest.raises(ValueError, match="forward-mode"):
        jvp(lambda x: f(x, True), (xs,), (v,))
    reasons = []

    def probe(x):
        reasons.append(kernels.kernel_reason(F.SPECS["LI"], params, state, x, F.sigmoid4x, "round"))
        return x

    jvp(probe, (xs,), (v,))
    assert "forward-mode" in reasons[0]


# ---- Triton in its interpreter ------------------------------------------------------------------


@pytest.fixture
def triton_backend(monkeypatch, tmp_path_factory):
    """The kernel calls routed to the Triton kernels, run by Triton's interpreter on CPU tensors."""
    pytest.importorskip("triton")
    from tracetorch.functional.kernels import gpu

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("TRACETORCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tt_cache"))

    def forward(xs, state, params, kind, spike, quant, layout, seed, save, out=None, threads=None):
        xs, state, params = xs.contiguous(), [s.contiguous() for s in state], [p.contiguous() for p in params]
        T_, S = xs.shape
        ys, final = torch.empty_like(xs), [torch.empty_like(s) for s in state]
        saved = xs.new_empty((len(state), T_, S)) if save else xs.new_empty((0,))
        if out is not None:
            ys, final, saved = out
        gpu.forward(
            ops.get_kernel(kind, spike, quant), xs, state, params, layout, seed, ys, final, saved if save else None
        )
        return ys, final, saved

    def backward(
        xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final, out=None, threads=None
    ):
        c = lambda t: t.contiguous()
        xs, saved, grad_ys = c(xs), c(saved), c(grad_ys)
        state, params, grad_final = [c(s) for s in state], [c(p) for p in params], [c(g) for g in grad_final]
        gxs, gstate = torch.empty_like(xs), [torch.empty_like(s) for s in state]
        gparams = [xs.new_empty(xs.shape[1]) for _ in params]
        if out is not None:
            gxs, gstate, gparams = out
        kernel = ops.get_kernel(kind, spike, quant)
        gpu.backward(kernel, xs, state, params, layout, seed, saved, grad_ys, grad_final, gxs, gstate, gparams)
        return gxs, gstate, gparams

    monkeypatch.setattr(ops, "scan_forward", forward)
    monkeypatch.setattr(ops, "scan_backward", backward)
    # the states after every step, as on CUDA (a vmap rule's member-wise buffers use this)
    monkeypatch.setattr(ops, "_new_saved", lambda xs, n, save: xs.new_empty((n, *xs.shape) if save else (0,)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["LIB", "DSRLITS"])
def test_triton_vmap_grad_and_penalty(name, dtype, triton_backend):
    for member_wise in (False, True):
        ops.VMAP["member_wise"] = member_wise
        try:
            both(name, "round", population(name, 1, dtype, (0, None, 0)), dtype, dims=(0, None, 0))
        finally:
            ops.VMAP["member_wise"] = False
    assert_trees_close(penalty(name, "round", True, dtype), penalty(name, "round", False, dtype), dtype)


@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
def test_triton_random_penalty_on_the_kernels_draws(quant, triton_backend, calls):
    torch.manual_seed(11)
    fused = penalty("LIB", quant, True)
    draws = member_draws("LIB", quant, calls[0][2], B * N, 0)
    assert_trees_close(fused, penalty("LIB", noisy_quant(quant, draws), False), torch.float64)


# ---- random quantizers in second derivatives ----------------------------------------------------


@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
@pytest.mark.parametrize("name", SOME)
def test_gradient_penalty_random_quantizers_on_the_kernels_draws(name, quant, calls):
    """The recomputation reproduces the kernel's draws: the penalty equals the plain loop on them."""
    torch.manual_seed(11)
    fused = penalty(name, quant, True)
    seed = calls[0][2]
    draws = member_draws(name, quant, seed, B * N, 0)
    assert_trees_close(fused, penalty(name, noisy_quant(quant, draws), False), torch.float64)


def test_seed_layout_is_per_call():
    """A folded call's draws are the plain draws of ``P*S`` elements (the reference the tests use)."""
    d = uniform_draws(3, T, P * B * N, 1)
    assert d.shape == (T, 1, P * B * N) and math.isclose(float(d.mean()), 0.5, abs_tol=0.1)
