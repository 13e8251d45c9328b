"""Kernels traced from users' own steps (tracetorch.functional.kernels.custom) against their plain loop.

Every case runs the same step twice, through its traced kernel (``fast=True``) and as the plain
step loop (``fast=False``), and compares outputs, final states and the gradients wrt every param,
the initial state and the inputs, at test_kernels' tolerances. The Triton kernels of the same
steps run in Triton's interpreter (``TRITON_INTERPRET=1``) against the plain loop as well.
"""

import math
from typing import NamedTuple

import optree
import pytest
import torch
import torch.nn.functional as nnf

import tracetorch as tt
import tracetorch.functional as F
from tracetorch.functional import kernels
from tracetorch.functional.kernels import cpu, custom, ops

from .test_kernels import GRAD_TOL, TOL

B, N, T = 3, 5, 6


class P(NamedTuple):
    beta: torch.Tensor
    th: torch.Tensor


class S(NamedTuple):
    mem: torch.Tensor
    aux: torch.Tensor


def make(dtype=torch.float64, seed=0, rank=1):
    g = torch.Generator().manual_seed(seed)
    size = (N,) if rank else ()
    params = P(
        (0.2 + 0.7 * torch.rand(size, generator=g, dtype=dtype)).requires_grad_(),
        (0.5 + torch.rand(size, generator=g, dtype=dtype)).requires_grad_(),
    )
    state = S(*(0.5 * torch.randn(B, N, generator=g, dtype=dtype).requires_grad_() for _ in range(2)))
    xs = (1.5 * torch.randn(T, B, N, generator=g, dtype=dtype)).requires_grad_()
    w = torch.randn(T, B, N, generator=g, dtype=dtype)
    return params, state, xs, w


def leaves(tree):
    return [t for t in optree.tree_leaves(tree, namespace="tracetorch") if isinstance(t, torch.Tensor)]


def run(step, params, state, xs, w, **kw):
    ys, final = F.scan(step, params, state, xs, **kw)
    loss = (ys * w).sum() + sum(((i + 1) * s * s).sum() for i, s in enumerate(leaves(final)))
    inputs = [t for t in [*leaves(params), *leaves(state), xs] if t.requires_grad]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return ys.detach(), [s.detach() for s in leaves(final)], grads


def assert_same(a, b, dtype):
    for x, y in zip([a[0], *a[1]], [b[0], *b[1]], strict=True):
        torch.testing.assert_close(x, y, equal_nan=True, **TOL[dtype])
    for x, y in zip(a[2], b[2], strict=True):
        if x is None or y is None:
            assert x is None and y is None or (x if y is None else y).abs().max() == 0
            continue
        torch.testing.assert_close(x, y, equal_nan=True, **GRAD_TOL[dtype])


# ---- one step per op: each new operation in a membrane update -----------------------------------

OPS = {
    "tanh": lambda m, x, p: torch.tanh(m + x) + (0.5 * x).tanh(),
    "log": lambda m, x, p: torch.log(1.5 + torch.sigmoid(m) + x * x) + (x * x + 0.3).log(),
    "log1p": lambda m, x, p: torch.log1p(x * x + m.abs()),
    "sqrt": lambda m, x, p: torch.sqrt(x * x + 0.1 + m * m),
    "rsqrt": lambda m, x, p: torch.rsqrt(x * x + 0.5) * m,
    "pow": lambda m, x, p: (
        (0.5 * m.tanh()) ** 3 + 0.1 * (x * x + 0.1) ** 1.5 + torch.pow(x.tanh(), 2) + (x * x + 1) ** -0.5
    ),
    "relu": lambda m, x, p: torch.relu(m + x) + nnf.relu(x - p.th) + (m - x).relu(),
    "max_min": lambda m, x, p: torch.maximum(m, x) + torch.minimum(m, p.th) + torch.max(x, p.beta),
    "sign": lambda m, x, p: m + torch.sign(x) * 0.1 + (m - 0.2).sign() * 0.05,
    "floor_ceil_round": lambda m, x, p: m + torch.floor(x) * 0.1 + torch.ceil(m) * 0.05 + torch.round(2 * x) * 0.01,
    "softplus": lambda m, x, p: nnf.softplus(m) + nnf.softplus(x, beta=2.0, threshold=1.0),
    "logsigmoid": lambda m, x, p: nnf.logsigmoid(m + x) + 1.0,
    "clamp_tensor": lambda m, x, p: torch.clamp(m + x, min=-p.th, max=p.th) + m.clamp(min=x) + x.clamp(max=p.beta),
    "clamp_const": lambda m, x, p: torch.clamp(m + x, min=-1.0) + m.clamp(-0.5, 0.5) + torch.clip(x, max=0.3),
    "where_mixed": lambda m, x, p: torch.where(x > 0, m, 0.5) + torch.where(m < x, 1.0, x) + x.where(m > 0, p.th),
    "bool_logic": lambda m, x, p: m + ((x > 0) & (m < 0.5)).to(m.dtype) * 0.3 - (x < -1).to(x.dtype) + (~(m > x)) * m,
    "exp_abs_div": lambda m, x, p: m / (1.0 + torch.exp(-x.abs())) - x.square() * 0.1 + x.reciprocal().clamp(-2, 2),
}


def op_step(f):
    def step(params, state, x):
        mem = params.beta * state.mem + (1 - params.beta) * f(state.mem, x, params)
        aux = 0.5 * state.aux + mem
        return torch.tanh(mem) * params.th, S(mem, aux)

    return step


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op", list(OPS))
def test_each_op_equals_plain_loop(op, dtype):
    params, state, xs, w = make(dtype)
    step = op_step(OPS[op])
    assert kernels.explain(step, params, state, xs[0]) is None
    assert_same(run(step, params, state, xs, w, fast=True), run(step, params, state, xs, w, fast=False), dtype)


def test_float64_gradcheck_of_a_traced_step():
    params, state, xs, _ = make(torch.float64)
    step = op_step(OPS["softplus"])

    def f(beta, th, mem, aux, x):
        ys, fin = F.scan(step, P(beta, th), S(mem, aux), x, fast=True)
        return ys, fin.mem, fin.aux

    torch.autograd.gradcheck(f, (*params, *state, xs[:3]))


# ---- the steps named in the issue ----------------------------------------------------------------


def tanh_clamp_step(params, state, x):
    """A functional step with a tanh and a clamp, params and state in dicts."""
    mem = torch.clamp(params["beta"] * state["mem"] + torch.tanh(x), -params["th"], params["th"])
    y = F.round_st(torch.sigmoid(4.0 * (mem - 0.5 * params["th"])))
    return y, {"mem": mem - y * 0.5 * params["th"]}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_functional_step_with_tanh_and_clamp(dtype):
    p, s, xs, w = make(dtype)
    params, state = {"th": p.th, "beta": p.beta}, {"mem": s.mem}
    assert_same(
        run(tanh_clamp_step, params, state, xs, w, fast=True),
        run(tanh_clamp_step, params, state, xs, w, fast=False),
        dtype,
    )


class FastSigmoidSpike(torch.autograd.Function):
    """A surrogate spike: Heaviside forward, SuperSpike derivative backward (the modern form)."""

    @staticmethod
    def forward(v, slope=10.0):
        return torch.heaviside(v, torch.zeros_like(v))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.slope = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad / (ctx.slope * v.abs() + 1.0) ** 2, None


class BoxSpike(torch.autograd.Function):
    """A surrogate spike in the old form: ``forward(ctx, v)`` saves, the backward is a box."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * (v.abs() < 0.5).float()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spike", [FastSigmoidSpike, BoxSpike])
def test_custom_autograd_function_surrogate(spike, dtype):
    def step(params, state, x):
        mem = params.beta * state.mem + x
        s = spike.apply(mem - params.th)
        return s, S(mem - s * params.th, 0.9 * state.aux + s)

    params, state, xs, w = make(dtype)
    fused = run(step, params, state, xs, w, fast=True)
    plain = run(step, params, state, xs, w, fast=False)
    assert_same(fused, plain, dtype)
    assert fused[0].sum() > 0 and fused[2][0].abs().sum() > 0  # it spiked and the surrogate gave gradients


def test_gradient_penalty_through_a_custom_step():
    step = op_step(OPS["softplus"])
    params, state, xs, w = make()

    def penalty(fast):
        ys, _ = F.scan(step, params, state, xs, fast=fast)
        (gx,) = torch.autograd.grad((ys * w).sum(), xs, create_graph=True)
        return torch.autograd.grad((gx**2).sum(), [*params, state.mem, xs])

    fused, plain = penalty(True), penalty(False)
    assert fused[0].abs().sum() > 0
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_plain_callable_surrogate_follows_the_op_rules():
    def spike_fn(v):  # no autograd.Function: its gradient is the ops' own
        return 0.5 + 0.5 * torch.tanh(3.0 * v)

    def step(params, state, x):
        mem = params.beta * state.mem + x
        s = F.round_st(spike_fn(mem - params.th))
        return s, S(mem - s * params.th, state.aux)

    params, state, xs, w = make()
    assert_same(run(step, params, state, xs, w, fast=True), run(step, params, state, xs, w, fast=False), torch.float64)


def test_tuple_state_and_float_params():
    def step(params, state, x):
        mem, trace = state
        mem = params["decay"] * mem + x
        s = F.round_st(torch.sigmoid(params["slope"] * (mem - 1.0)))
        return s, (mem - s, trace * 0.5 + s)

    p, s, xs, w = make()
    params = {"decay": p.beta, "slope": 4.0}
    state = (s.mem, s.aux)
    assert_same(run(step, params, state, xs, w, fast=True), run(step, params, state, xs, w, fast=False), torch.float64)


def test_random_quantizer_in_a_custom_step():
    def step(params, state, x):
        mem = params.beta * state.mem + x
        s = F.bernoulli_st(torch.sigmoid(mem - params.th))
        return s, S(mem - s * params.th, state.aux + s)

    params, state, xs, _ = make(torch.float32)
    xs = xs.detach()[:1].expand(40, B, N).contiguous()
    torch.manual_seed(1)
    ys, _ = F.scan(step, params, state, xs, fast=True)
    torch.manual_seed(1)
    again, _ = F.scan(step, params, state, xs, fast=True)
    assert torch.equal(ys, again)  # seeded from torch's generator
    assert set(ys.unique().tolist()) <= {0.0, 1.0} and 0 < ys.mean() < 1


# ---- TTLayer subclasses ---------------------------------------------------------------------------


class ALIF(tt.TTLayer):
    """The tutorial's adaptive LIF (docs/tutorials/custom_layer.md)."""

    def __init__(self, num_neurons, beta=0.9, rho=0.95, threshold=1.0, adapt_gain=0.5, dim=-1):
        super().__init__(num_neurons, dim)
        self.register_decay("beta", beta)
        self.register_decay("rho", rho, rank=0, learnable=False)
        self.register_threshold("threshold", threshold)
        self.register_parameter("adapt_gain", adapt_gain)
        self.register_state("mem", "adapt")

    def step(self, params, state, x):
        mem = params.beta * state.mem + x
        s = F.round_st(F.sigmoid4x(mem - params.threshold - params.adapt_gain * state.adapt))
        adapt = params.rho * state.adapt + (1 - params.rho) * s
        return s, state._replace(mem=mem - s * params.threshold, adapt=adapt)


def layer_run(layer, xs, fast, per_step=False):
    layer.zero_states()
    xs = xs.detach().requires_grad_()
    ys = torch.stack([layer(x) for x in xs]) if per_step else tt.nn.run(layer, xs, fast=fast)
    loss = (ys * torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype).reshape(ys.shape)).sum() + (layer.mem**2).sum()
    grads = torch.autograd.grad(loss, [xs, *layer.parameters()])
    return ys.detach(), [layer.mem.detach(), layer.adapt.detach()], grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [-1, 1])
def test_alif_layer_sequence_mode(dim, dtype):
    layer = ALIF(N, dim=dim).to(dtype)
    with torch.no_grad():
        layer.raw_beta.uniform_(-1, 2)
        layer.raw_adapt_gain.uniform_(0, 1)
    shape = (T, B, N, 2) if dim == 1 else (T, B, N)
    xs = 1.5 * torch.randn(shape, dtype=dtype) + 0.5
    fused = layer_run(layer, xs, fast=True)
    plain = layer_run(layer, xs, fast=False)
    assert fused[0].sum() > 0
    assert_same(fused, plain, dtype)


def test_alif_layer_per_step_kernel(monkeypatch):
    layer = ALIF(N).double()
    xs = 1.5 * torch.randn(T, B, N, dtype=torch.float64) + 0.5
    plain = layer_run(layer, xs, fast=False, per_step=True)
    calls = []
    real = custom.custom_scan
    monkeypatch.setattr(kernels, "custom_scan", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(kernels.config, "step_min_elements", 1)
    fused = layer_run(layer, xs, fast=None, per_step=True)
    assert len(calls) == T
    assert_same(fused, plain, torch.float64)


def test_layer_kernel_reason_and_fast_true():
    class Mixing(ALIF):
        def step(self, params, state, x):
            y, new = super().step(params, state, x)
            return y, new._replace(adapt=new.adapt + y.mean(-1, keepdim=True))

    x = torch.randn(B, N)
    assert ALIF(N).kernel_reason(x) is None
    assert kernels.explain(ALIF(N), x) is None
    layer = Mixing(N)
    reason = layer.kernel_reason(x)
    assert "mean is a reduction" in reason and "test_custom_kernels.py" in reason
    assert kernels.explain(layer, x) == reason
    with pytest.raises(ValueError, match=r"run\(Mixing\): fast=True cannot run .*mean is a reduction"):
        tt.nn.run(layer, torch.randn(T, B, N), fast=True)
    assert layer.state is None  # a failed run leaves the state as it was
    ys = tt.nn.run(layer, torch.randn(T, B, N))  # the default: the plain loop
    assert ys.shape == (T, B, N)
    assert tt.nn.LIB(N).kernel_reason(x) is None
    assert "not Custom" in tt.nn.LIB(N, spike_fn=type("Custom", (), {"__call__": lambda s, v: v})()).kernel_reason(x)


# ---- what stops a step, and says so ----------------------------------------------------------------

W = torch.randn(N, N)
SCALE = torch.randn(N)


def _matmul(p, s, x):
    return x, S(s.mem @ W, s.aux)


def _sum(p, s, x):
    return x, S(s.mem + x.sum(-1, keepdim=True), s.aux)


def _index(p, s, x):
    return x, S(s.mem + x[..., :1], s.aux)


def _branch(p, s, x):
    return (x if x > 0 else -x), s


def _captured(p, s, x):
    return x, S(s.mem * SCALE, s.aux)


def _shape(p, s, x):
    return x, S(s.mem + x.shape[-1], s.aux)


def _random(p, s, x):
    return x, S(s.mem + torch.rand_like(x), s.aux)


def _heaviside(p, s, x):
    return torch.heaviside(s.mem + x, torch.tensor(0.0)), s


def _unknown(p, s, x):
    return x, S(torch.special.bessel_j0(s.mem), s.aux)


def _no_pair(p, s, x):
    return x


REASONS = {
    _matmul: "a matmul: it mixes neurons",
    _sum: "sum is a reduction",
    _index: "indexing",
    _branch: "branches on a tensor value",
    _captured: "captured from outside the step",
    _shape: "reads the tensor's shape",
    _random: "rand_like draws random numbers",
    _heaviside: "a gradient reaches heaviside",
    _unknown: "special_bessel_j0 is not an elementwise operation",
    _no_pair: "must return (y, new_state)",
}


@pytest.mark.parametrize("step", list(REASONS), ids=[f.__name__ for f in REASONS])
def test_non_elementwise_steps_get_their_reason(step):
    params, state, xs, _ = make(torch.float32)
    reason = kernels.explain(step, params, state, xs[0])
    assert reason is not None and REASONS[step] in reason, reason
    assert kernels.kernel_reason(step, params, state, xs) == reason
    with pytest.raises(ValueError, match="scan: fast=True cannot run"):
        F.scan(step, params, state, xs, fast=True)
    if step not in (_branch, _no_pair):
        a = F.scan(step, params, state, xs)  # the default runs the plain loop: the same as fast=False
        b = F.scan(step, params, state, xs, fast=False)
        torch.testing.assert_close(a[0], b[0])


def test_reason_names_the_line():
    params, state, xs, _ = make()
    reason = kernels.explain(_sum, params, state, xs[0])
    assert "test_custom_kernels.py" in reason and "x.sum(-1, keepdim=True)" in reason


def test_a_step_computing_in_another_dtype_is_refused():
    def step(p, s, x):
        return x, S(s.mem + (x > 0).float(), s.aux + (x < 0) * 0.5)

    params, state, xs, w = make(torch.float64)
    assert "computes some values in torch.float32" in kernels.explain(step, params, state, xs[0])
    params, state, xs, w = make(torch.float32)
    assert kernels.explain(step, params, state, xs[0]) is None
    assert_same(run(step, params, state, xs, w, fast=True), run(step, params, state, xs, w, fast=False), torch.float32)


def test_tensor_reasons():
    params, state, xs, _ = make()
    assert "share one dtype" in kernels.explain(op_step(OPS["tanh"]), params, state, xs[0].float())
    assert "no state" in kernels.explain(lambda p, s, x: (x, s), params, (), xs[0])
    bad = S(state.mem[:1], state.aux)
    assert "shape of one step" in kernels.explain(op_step(OPS["tanh"]), params, bad, xs[0])


# ---- keyed by what it computes; the trace cache ---------------------------------------------------


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACETORCH_CACHE_DIR", str(tmp_path))
    kernels.clear_cache()
    builds = []
    real = cpu._build
    monkeypatch.setattr(cpu, "_build", lambda *a, **k: builds.append(1) or real(*a, **k))
    yield builds
    kernels.clear_cache()


def closure_step(threshold):
    def step(params, state, x):
        mem = params.beta * state.mem + x
        s = F.round_st(torch.sigmoid(4.0 * (mem - threshold)))
        return s, S(mem - s * threshold, state.aux)

    return step


def test_a_rebuilt_closure_builds_no_new_kernel(fresh_cache):
    params, state, xs, _ = make(torch.float32)
    outs = [F.scan(closure_step(1.0), params, state, xs, fast=True)[0]]
    built = len(fresh_cache)
    assert built >= 1
    outs += [F.scan(closure_step(1.0), params, state, xs, fast=True)[0] for _ in range(2)]
    assert len(fresh_cache) == built  # three closures, one graph, one kernel
    F.scan(closure_step(0.5), params, state, xs, fast=True)  # another constant computes another thing
    assert len(fresh_cache) == 2 * built
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_repeated_calls_do_not_retrace():
    params, state, xs, _ = make()
    step = op_step(OPS["tanh"])
    F.scan(step, params, state, xs)
    before = dict(custom.trace_stats)
    for _ in range(3):
        F.scan(step, params, state, xs)
    assert custom.trace_stats["traced"] == before["traced"]
    assert custom.trace_stats["cached"] == before["cached"] + 3


def test_a_change_the_step_reads_traces_again():
    class Scaled(ALIF):
        def __init__(self, n):
            super().__init__(n)
            self.gain = 1.0

        def step(self, params, state, x):
            return super().step(params, state, self.gain * x)

    layer = Scaled(N).double()
    xs = torch.randn(T, B, N, dtype=torch.float64) + 0.5
    first = tt.nn.run(layer, xs, fast=True)
    layer.zero_states()
    layer.gain = 3.0  # an attribute the step reads: the cached trace no longer holds
    fused = tt.nn.run(layer, xs, fast=True)
    layer.zero_states()
    plain = tt.nn.run(layer, xs, fast=False)
    torch.testing.assert_close(fused, plain)
    assert not torch.equal(first, fused)

    scale = torch.tensor(2.0)

    def step(p, s, x):
        return x * scale, S(s.mem + x * scale, s.aux)

    params, state, xs, _ = make()
    a = F.scan(step, params, state, xs, fast=True)[0]
    scale.mul_(3.0)  # a captured one-element tensor changed in place
    b = F.scan(step, params, state, xs, fast=True)[0]
    torch.testing.assert_close(b, 3.0 * a)


# ---- the Triton kernels of custom steps, in Triton's interpreter ---------------------------------


@pytest.fixture
def interpret(monkeypatch, tmp_path_factory):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("TRACETORCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tt_cache"))
    yield


def triton_run(step, params, state, xs, w):
    """``run`` above through gpu.forward / gpu.backward of the step's traced kernel."""
    from tracetorch.functional.kernels import gpu

    plan = custom._plan(step, params, state, {})
    assert not isinstance(plan, str), plan
    kernel = ops.get_kernel(plan.kind, "", plan.quant)
    shape = xs.shape[1:]
    S_ = math.prod(shape)
    flat, layout = [], []
    for p in leaves(params):
        f, n, inner = ops._param_layout(p.detach(), shape)
        flat.append(f.contiguous())
        layout += [n, inner]
    x2 = xs.detach().reshape(T, S_).contiguous()
    st = [s.detach().reshape(S_).contiguous() for s in leaves(state)]
    seed = torch.tensor(7, dtype=torch.int64)
    ys, final, saved = torch.empty_like(x2), [torch.empty_like(s) for s in st], x2.new_empty(len(st), T, S_)
    gpu.forward(kernel, x2, st, flat, layout, seed, ys, final, saved)
    gys = w.reshape(T, S_).contiguous()
    gfin = [2.0 * (k + 1) * s for k, s in enumerate(final)]
    gxs, gst, gel = torch.empty_like(x2), [torch.empty_like(s) for s in st], [x2.new_empty(S_) for _ in flat]
    gpu.backward(kernel, x2, st, flat, layout, seed, saved, gys, gfin, gxs, gst, gel)
    gparams = []
    for k, (p, g) in enumerate(zip(leaves(params), gel)):
        n, inner = layout[2 * k], layout[2 * k + 1]
        gparams.append(g.reshape(S_ // (n * inner), n, inner).sum(dim=(0, 2)).reshape(p.shape))
    grads = (*gparams, *(g.reshape(shape) for g in gst), gxs.reshape(xs.shape))
    return ys.reshape(xs.shape), [f.reshape(shape) for f in final], grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op", list(OPS))
def test_triton_interpreter_each_op(op, dtype, interpret):
    params, state, xs, w = make(dtype)
    step = op_step(OPS[op])
    tol = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4)}[dtype]
    got, want = triton_run(step, params, state, xs, w), run(step, params, state, xs, w, fast=False)
    want_grads = [torch.zeros_like(a) if b is None else b for a, b in zip(got[2], want[2])]  # unused: zero
    for a, b in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want_grads], strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_triton_interpreter_surrogate_and_alif(interpret):
    for spike in (FastSigmoidSpike, BoxSpike):

        def step(params, state, x, spike=spike):
            mem = params.beta * state.mem + x
            s = spike.apply(mem - params.th)
            return s, S(mem - s * params.th, 0.9 * state.aux + s)

        params, state, xs, w = make()
        got, want = triton_run(step, params, state, xs, w), run(step, params, state, xs, w, fast=False)
        for a, b in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want[2]], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
