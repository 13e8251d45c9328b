"""The fused kernels (tracetorch.functional.kernels) against the plain step loop.

Tolerances: float64 to 1e-10 absolute and relative (the kernels round every add and multiply as
torch does; only exp/sigmoid may differ by an ulp); float32 outputs and states to torch's default
float32 tolerance (1.3e-6 relative, 1e-5 absolute), float32 gradients to 1e-4 (a param's gradient
sums batch x time terms, in another order than autograd's). Spikes are compared exactly.
"""

import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from torch import nn

import tracetorch as tt
import tracetorch.functional as F
from tracetorch.functional import kernels
from tracetorch.functional.kernels import cpu, ops
from tracetorch.functional.kernels.ops import uniform_draws

NAMES = list(F.NAMES)
FIRING = [n for n in NAMES if F.SPECS[n].fires]
ADAPTIVE = list(F.neurons.ADAPTIVE_NAMES)
B, N, T = 3, 5, 6
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1.3e-6, atol=1e-5)}
GRAD_TOL = {torch.float64: TOL[torch.float64], torch.float32: dict(rtol=1e-4, atol=1e-4)}


def make(name, rank=1, dtype=torch.float64, seed=0, shape=(B, N), steps=T):
    spec = F.SPECS[name]
    g = torch.Generator().manual_seed(seed)
    values = []
    for p in spec.params:
        size = (shape[-1],) if rank else ()
        if p.kind == "decay":
            v = 0.1 + 0.8 * torch.rand(size, generator=g, dtype=dtype)
        elif p.kind == "threshold":
            v = 0.5 + 0.5 * torch.rand(size, generator=g, dtype=dtype)
        else:
            v = (1.0 if "scale" in p.name else 0.5) + 0.5 * torch.randn(size, generator=g, dtype=dtype)
        values.append(v.requires_grad_(True))
    params = spec.Params(*values)
    state = spec.State(
        *(0.5 * torch.randn(shape, generator=g, dtype=dtype).requires_grad_(True) for _ in spec.state_names)
    )
    xs = (1.5 * torch.randn(steps, *shape, generator=g, dtype=dtype)).requires_grad_(True)
    w = torch.randn(steps, *shape, generator=g, dtype=dtype)
    return spec, params, state, xs, w


def run(name, params, state, xs, w, **kw):
    ys, final = F.scan(F.get_step(name), params, state, xs, **kw)
    loss = (ys * w).sum() + sum(((i + 1) * s * s).sum() for i, s in enumerate(final))
    grads = torch.autograd.grad(loss, [*params, *state, xs])
    return ys.detach(), [s.detach() for s in final], grads


def assert_same(a, b, dtype):
    for x, y in zip([a[0], *a[1]], [b[0], *b[1]]):
        torch.testing.assert_close(x, y, equal_nan=True, **TOL[dtype])
    for x, y in zip(a[2], b[2]):
        torch.testing.assert_close(x, y, equal_nan=True, **GRAD_TOL[dtype])


def noisy_quant(quant, draws):
    """A plain-loop quantizer that fires on the kernel's draws ``[T, sites, S]``, call by call."""
    calls = iter(range(10**9))
    sites = draws.shape[1]
    fn = F.bernoulli_from_noise if quant == "bernoulli" else F.probabilistic_from_noise

    def q(p):
        c = next(calls)
        return fn(p, draws[c // sites, c % sites].reshape(p.shape).to(p.dtype))

    return q


@pytest.fixture(params=["function", "op"])
def kernel_path(request):
    """Eager calls through the lean autograd.Function (the default) or through the custom ops."""
    old = ops.EAGER_PATH["mode"]
    ops.EAGER_PATH["mode"] = "auto" if request.param == "function" else "op"
    yield request.param
    ops.EAGER_PATH["mode"] = old


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rank", [1, 0])
@pytest.mark.parametrize("name", NAMES)
def test_kernel_equals_plain_loop_round(name, rank, dtype, kernel_path):
    """Outputs, final states and gradients wrt params, initial state and inputs, every type, both eager paths."""
    _, params, state, xs, w = make(name, rank, dtype)
    loop = run(name, params, state, xs, w, quant_fn="round", fast=False)
    fused = run(name, params, state, xs, w, quant_fn="round", fast=True)
    assert_same(loop, fused, dtype)
    torch.testing.assert_close(loop[0], fused[0], rtol=0, atol=0)  # every spike the same


def _random_quant_cases():
    """Every firing type of the 28 with each quantizer, rank and dtype; the 24 A types (whose
    quantizer calls are those of the same type without A) with each quantizer once, one dtype
    each, so the suite builds half as many kernels for them (every A type and dtype is built and
    checked with "round" above)."""
    cases = [
        (n, q, r, d)
        for n in FIRING
        if not F.SPECS[n].adaptive
        for q in ("bernoulli", "probabilistic")
        for r in (1, 0)
        for d in (torch.float64, torch.float32)
    ]
    cases += [(n, "bernoulli", 1, torch.float64) for n in ADAPTIVE]
    cases += [(n, "probabilistic", 0, torch.float32) for n in ADAPTIVE]
    return cases


@pytest.mark.parametrize("name, quant, rank, dtype", _random_quant_cases())
def test_kernel_random_quantizers_equal_plain_loop_on_the_same_draws(name, quant, rank, dtype):
    """Given the kernel's own uniform draws, the plain loop with the noise quantizers is the kernel."""
    spec, params, state, xs, w = make(name, rank, dtype, seed=1)
    torch.manual_seed(7)
    fused = run(name, params, state, xs, w, quant_fn=quant, fast=True)
    torch.manual_seed(7)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    sites = 1 if spec.firing == "B" else 2
    draws = uniform_draws(seed, T, B * N, sites)
    loop = run(name, params, state, xs, w, quant_fn=noisy_quant(quant, draws), fast=False)
    assert_same(loop, fused, dtype)


@pytest.mark.parametrize("name", FIRING)
def test_kernel_zero_reset_and_if_equal_plain_loop(name):
    """The zero reset (its own kernel, from the same generator) and membrane decays of exactly 1.0
    (integrate-and-fire, a param value the subtract kernel takes as it is), every firing type."""
    spec, params, state, xs, w = make(name, 1, torch.float64, seed=2)
    beta = {k: torch.ones_like(v).requires_grad_(True) for k, v in params._asdict().items() if k.endswith("beta")}
    outs = {}
    for reset, p in (("zero", params), ("zero", params._replace(**beta)), ("subtract", params._replace(**beta))):
        loop = run(name, p, state, xs, w, quant_fn="round", reset=reset, fast=False)
        fused = run(name, p, state, xs, w, quant_fn="round", reset=reset, fast=True)
        assert_same(loop, fused, torch.float64)
        torch.testing.assert_close(loop[0], fused[0], rtol=0, atol=0)
        outs[reset, p is params] = loop
    # the modes differ here (so each kernel was checked on a run where its reset mattered)
    assert not all(torch.equal(a, b) for a, b in zip(outs["zero", False][1], outs["subtract", False][1]))
    kernel = ops.get_kernel(spec.with_reset("zero").key, "Sigmoid:4.0", "round")
    assert kernel.spec == spec.with_reset("zero") and kernel is not ops.get_kernel(spec.key, "Sigmoid:4.0", "round")


#: one type per state count (1, 2, 3, 4, 5, 7 states): the chunk length depends on it
BY_STATE_COUNT = ["LIB", "DLIT", "RLIB", "DSLITS", "DRLIT", "DSRLITS"]


def chunk_lengths(name, dtype):
    K = cpu.chunk_steps(len(F.SPECS[name].state_names), ops._DTYPES[dtype])
    return sorted({1, K - 1, K, K + 1, 2 * K, 3 * K + 1})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", BY_STATE_COUNT)
def test_backward_across_checkpoint_chunks(name, dtype, kernel_path):
    """The backward recomputes each chunk from its checkpoint: every T around the chunk edges."""
    for steps in chunk_lengths(name, dtype):
        _, params, state, xs, w = make(name, 1, dtype, seed=steps, steps=steps)
        loop = run(name, params, state, xs, w, quant_fn="round", fast=False)
        fused = run(name, params, state, xs, w, quant_fn="round", fast=True)
        assert_same(loop, fused, dtype)


@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
def test_backward_across_chunks_recomputes_the_same_draws(quant):
    name, dtype = "DSLITS", torch.float64
    steps = max(chunk_lengths(name, dtype))
    spec, params, state, xs, w = make(name, 1, dtype, seed=2, steps=steps)
    torch.manual_seed(5)
    fused = run(name, params, state, xs, w, quant_fn=quant, fast=True)
    torch.manual_seed(5)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    loop = run(
        name, params, state, xs, w, quant_fn=noisy_quant(quant, uniform_draws(seed, steps, B * N, 2)), fast=False
    )
    assert_same(loop, fused, dtype)


def test_forward_keeps_only_the_checkpoints():
    """What the CPU forward keeps for the backward: ``(T - 1) // K`` states per state variable, not T."""
    spec = F.SPECS["DLIB"]
    _, params, state, xs, _ = make("DLIB", 1, torch.float32, steps=50)
    K = cpu.chunk_steps(2, "float")
    flat = [p.detach().reshape(-1).expand(B, N).reshape(-1).contiguous() for p in params]
    layout = [B * N, 1] * len(flat)
    st = [s.detach().reshape(-1) for s in state]
    seed = torch.zeros((), dtype=torch.int64)
    tag = kernels.spike_tag(F.sigmoid4x)
    _, final, saved = ops.neuron_scan(
        xs.detach().reshape(50, -1), st, flat, spec.name, tag, "round", layout, seed, True
    )
    assert saved.shape == (2, 49 // K, B * N)
    # the checkpoints are the plain loop's states entering steps K, 2K, ...
    states = [spec.State(*state)]
    for t in range(49):
        states.append(F.get_step("DLIB")(params, states[-1], xs[t], quant_fn="round")[1])
    for c in range(49 // K):
        for k in range(2):
            torch.testing.assert_close(saved[k, c], states[(c + 1) * K][k].detach().reshape(-1), **TOL[torch.float32])
    _, _, nothing = ops.neuron_scan(xs.detach().reshape(50, -1), st, flat, spec.name, tag, "round", layout, seed, False)
    assert nothing.shape == (0,)


@pytest.mark.parametrize("real", ["float", "double"])
def test_round_spike_of_sigmoid_is_a_comparison_with_the_edge(real):
    """The kernels spell round(sigmoid(a)) as ``a >= edge``: equal to rounding their own sigmoid for
    every a tried: the floats around the edge, signed zeros, tiny and large values, inf and NaN."""
    import ctypes

    import numpy as np

    lib = ops.get_kernel("LIB", kernels.spike_tag(F.sigmoid4x), "round").lib(real)
    c_real = ctypes.c_float if real == "float" else ctypes.c_double
    for name in ("tt_edge_value", "tt_round_sigmoid_direct", "tt_round_sigmoid_edge"):
        getattr(lib, name).restype = c_real
    lib.tt_round_sigmoid_direct.argtypes = lib.tt_round_sigmoid_edge.argtypes = [c_real]
    np_real, np_bits = (np.float32, np.uint32) if real == "float" else (np.float64, np.uint64)
    edge = np_real(lib.tt_edge_value())
    assert 0 < edge < 1e-6
    around = (np.array([edge], np_real).view(np_bits) + np.arange(-2000, 2001).astype(np_bits)).view(np_real)
    g = np.random.default_rng(0)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-30, -1e-30, 0.5, 1.0, 88.0, -88.0, 1e30, -1e30]
    values = np.concatenate([around, np.array(special, np_real), g.normal(0, 10, 5000).astype(np_real)])
    for a in values:
        direct, fast = lib.tt_round_sigmoid_direct(a), lib.tt_round_sigmoid_edge(a)
        assert (direct == fast) or (direct != direct and fast != fast), (a, direct, fast)


def test_no_grad_keeps_nothing_for_a_backward(monkeypatch, kernel_path):
    """Under no_grad the forward saves no checkpoints, even when the input requires grad."""
    seen = []
    real_forward = ops.scan_forward

    def spy(*args):
        seen.append(args[-1])
        return real_forward(*args)

    monkeypatch.setattr(ops, "scan_forward", spy)
    _, params, state, xs, _ = make("LIB", 1, torch.float32, steps=20)
    with torch.no_grad():
        F.scan(F.lib_step, params, state, xs, quant_fn="round", fast=True)
    F.scan(F.lib_step, params, state, xs, quant_fn="round", fast=True)
    assert seen == [False, True]


def test_random_quantizer_reproducible_with_manual_seed_and_fair():
    _, params, state, xs, w = make("LIB", 1, torch.float32)
    torch.manual_seed(3)
    a = run("LIB", params, state, xs, w, quant_fn="bernoulli", fast=True)
    torch.manual_seed(3)
    b = run("LIB", params, state, xs, w, quant_fn="bernoulli", fast=True)
    assert_same(a, b, torch.float32)
    # the draws are uniform: the firing rate of a constant p matches p
    p = torch.full((4000,), 0.3)
    spec = F.SPECS["LIB"]
    prm = spec.Params(beta=torch.tensor(0.5), threshold=torch.tensor(1.0))
    ys, _ = kernels.kernel_scan(
        spec, kernels.spike_tag(F.sigmoid4x), "bernoulli", prm, spec.State(p * 0), 0 * p[None] + 1.0 - 0.21181
    )  # noqa: E501
    rate = ys.mean().item()
    expect = torch.sigmoid(torch.tensor(4 * (1.0 - 0.21181 - 1.0))).item()
    assert abs(rate - expect) < 0.03


@pytest.mark.parametrize("spike_fn", list(F.SPIKE_FUNCTIONS.values()) + [F.Sigmoid(2.5), F.Erf(0.3)])
def test_kernel_every_builtin_spike_function(spike_fn):
    for name in ("LIT", "DSRLIB"):
        _, params, state, xs, w = make(name)
        loop = run(name, params, state, xs, w, spike_fn=spike_fn, quant_fn="probabilistic", fast=False)
        torch.manual_seed(0)
        # probabilistic with the kernel's draws, so the gradient path through 2p is checked too
        seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
        sites = 1 if name.endswith("B") else 2
        loop = run(
            name,
            params,
            state,
            xs,
            w,
            spike_fn=spike_fn,
            quant_fn=noisy_quant("probabilistic", uniform_draws(seed, T, B * N, sites)),
            fast=False,
        )  # noqa: E501
        torch.manual_seed(0)
        fused = run(name, params, state, xs, w, spike_fn=spike_fn, quant_fn="probabilistic", fast=True)
        assert_same(loop, fused, torch.float64)


@pytest.mark.parametrize("name", ["DSRLITS", "SLIB", "DLI"])
def test_kernel_params_broadcast_along_other_dims(name):
    """[N, 1, 1] params (the layout of dim=-3), scalar params and arbitrary broadcast params."""
    spec = F.SPECS[name]
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 3, 3)  # [B, C, H, W], neurons along C
    for layout in ("channel", "full"):
        vals = []
        for i, p in enumerate(spec.params):
            size = (4, 1, 1) if layout == "channel" else ((3, 1) if i % 2 else (2, 4, 3, 3))
            base = 0.1 + 0.8 * torch.rand(size, generator=g, dtype=torch.float64)
            vals.append((base if p.kind != "free" else base + 0.3).requires_grad_(True))
        params = spec.Params(*vals)
        state = spec.State(
            *(torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_(True) for _ in spec.state_names)
        )  # noqa: E501
        xs = torch.randn(5, *shape, generator=g, dtype=torch.float64).requires_grad_(True)
        w = torch.randn(5, *shape, generator=g, dtype=torch.float64)
        assert_same(
            run(name, params, state, xs, w, quant_fn="round", fast=False),
            run(name, params, state, xs, w, quant_fn="round", fast=True),
            torch.float64,
        )


def test_layers_with_dim_and_batch_sizes_through_kernels():
    """Twenty configurations of one type in one process: dims, ranks, batch sizes 1..N, several T."""
    configs = []
    for dim, shape in ((-1, (7,)), (-1, (3, 7)), (-3, (7, 2, 2)), (-2, (2, 7, 3))):
        for rank in (0, 1):
            for batch in (1, 7):
                configs.append((dim, shape, rank, batch))
    configs = configs[:16] + [(-1, (7,), 1, b) for b in (2, 3, 5, 8)]
    assert len(configs) == 20
    for i, (dim, shape, rank, batch) in enumerate(configs):
        torch.manual_seed(i)
        layer = tt.nn.SRLIT(7, dim=dim, beta_rank=rank, pos_threshold_rank=rank, quant_fn="round")
        layer.raw_rec_weight.data.normal_()
        ref = tt.nn.SRLIT(7, dim=dim, beta_rank=rank, pos_threshold_rank=rank, quant_fn="round")
        ref.load_state_dict(layer.state_dict())
        steps = 2 + i % 4
        xs = torch.randn(steps, batch, *shape, requires_grad=True)
        ys = tt.nn.run(layer, xs, fast=True)
        ys_ref = torch.stack([ref(x) for x in xs.unbind(0)])
        torch.testing.assert_close(ys, ys_ref)
        ys.sum().backward()
        ys_ref.sum().backward()
        for a, b in zip(layer.parameters(), ref.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_double_backward_equals_the_plain_loop(kernel_path):
    """A gradient penalty through the kernels: their backward is differentiated by recomputing the plain step."""

    def penalty(fast):
        _, params, state, xs, w = make("LIB")
        ys, _ = F.scan(F.lib_step, params, state, xs, quant_fn="round", fast=fast)
        (gx,) = torch.autograd.grad((ys * w).sum(), xs, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), [*params, *state, xs], allow_unused=True)

    for a, b in zip(penalty(True), penalty(False)):
        torch.testing.assert_close(a, b, **GRAD_TOL[torch.float64])
    assert penalty(True)[0].abs().sum() > 0


def test_kernel_gradcheck_float64(kernel_path):
    """torch.autograd.gradcheck through the kernel path (LI: smooth; LIB: round has zero-measure kinks)."""
    for name in ("LI", "DSLI"):
        spec, params, state, xs, _ = make(name, steps=3, shape=(2, 3))
        n_params, step = len(params), F.get_step(name)

        def fn(*leaves, spec=spec, n_params=n_params, step=step):
            p = spec.Params(*leaves[:n_params])
            s = spec.State(*leaves[n_params:-1])
            ys, fin = F.scan(step, p, s, leaves[-1], fast=True)
            return ys, *fin

        assert torch.autograd.gradcheck(fn, (*params, *state, xs))


class SeqNet(nn.Module):
    """A whole model in sequence form: [T, B, 6] -> [T, B, 4], each neuron layer one kernel call."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(6, 5), tt.nn.LIB(5, quant_fn="round")
        self.fc2, self.lif2 = nn.Linear(5, 4), tt.nn.DSLIT(4, quant_fn="round")

    def forward(self, xs):
        h = tt.nn.scan_layer(self.lif1, self.fc1(xs), fast=True)
        return tt.nn.scan_layer(self.lif2, self.fc2(h), fast=True)


def test_compile_fullgraph_runs_through_the_kernels():
    torch.manual_seed(0)
    model, ref = SeqNet(), SeqNet()
    ref.load_state_dict(model.state_dict())
    xs = torch.randn(7, 3, 6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for _ in range(2):  # the second call reuses the graph; states carry over in both
        for m in (model, ref):
            m.lif1.detach_states(), m.lif2.detach_states()
        a = compiled(xs)
        a.square().sum().backward()
        b = ref(xs)
        b.square().sum().backward()
        torch.testing.assert_close(a, b)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 1


def test_kernels_from_two_threads_at_once():
    results, errors = {}, []
    _, params, state, xs, w = make("DRLIT", dtype=torch.float32)
    ref = run("DRLIT", params, state, xs, w, quant_fn="round", fast=False)

    def work(k):
        try:
            for _ in range(5):
                results[k] = run("DRLIT", params, state, xs, w, quant_fn="round", fast=True)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    kernels.clear_cache()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(2):
        assert_same(ref, results[k], torch.float32)


def test_vmap_takes_the_kernel_and_forward_mode_the_plain_loop():
    spec, params, state, xs, _ = make("SLIB")
    pure = lambda x: F.scan(F.slib_step, params, state, x, quant_fn="round", fast=True)[0]  # noqa: E731
    batched = torch.func.vmap(pure)(torch.stack([xs, 2 * xs]))
    torch.testing.assert_close(batched[1], F.scan(F.slib_step, params, state, 2 * xs, quant_fn="round", fast=True)[0])
    with pytest.raises(ValueError, match="forward-mode"):
        torch.func.jvp(pure, (xs,), (torch.ones_like(xs),))


def test_what_the_kernels_refuse():
    spec, params, state, xs, _ = make("LIB")
    with pytest.raises(ValueError, match="quantizers"):
        F.scan(F.lib_step, params, state, xs, fast=True, quant_fn=lambda p: p)
    with pytest.raises(ValueError, match="spike functions"):
        F.scan(F.lib_step, params, state, xs, fast=True, spike_fn=lambda v: torch.sigmoid(v))
    with pytest.raises(ValueError, match="dtype"):
        F.scan(F.lib_step, params, spec.State(state.mem.float()), xs, fast=True)
    with pytest.raises(ValueError, match="float32 and float64"):
        h = spec.Params(*(p.detach().bfloat16() for p in params))
        F.scan(F.lib_step, h, spec.State(state.mem.detach().bfloat16()), xs.detach().bfloat16(), fast=True)
    with pytest.raises(TypeError, match="fast must be None, True or False"):
        F.scan(F.lib_step, params, state, xs, fast="no")
    # fast=None takes the plain loop where the kernels do not apply, with the same result
    h = spec.Params(*(p.detach().bfloat16() for p in params))
    ys, _ = F.scan(F.lib_step, h, spec.State(state.mem.detach().bfloat16()), xs.detach().bfloat16(), quant_fn="round")
    assert ys.dtype == torch.bfloat16


def test_nan_in_nan_out_like_the_plain_loop():
    for name in ("LIB", "DSRLITS", "DLI"):
        _, params, state, xs, w = make(name)
        xs = xs.detach().clone()
        xs[2, 0, 1] = float("nan")
        a = F.scan(F.get_step(name), params, state, xs, quant_fn="round", fast=False)
        b = F.scan(F.get_step(name), params, state, xs, quant_fn="round", fast=True)
        torch.testing.assert_close(a[0], b[0], equal_nan=True)
        for x, y in zip(a[1], b[1]):
            torch.testing.assert_close(x, y, equal_nan=True)


def test_no_c_compiler_warns_once_and_runs_the_plain_loop(tmp_path, monkeypatch):
    _, params, state, xs, w = make("LIT")
    ref = run("LIT", params, state, xs, w, quant_fn="round", fast=False)
    monkeypatch.setenv("TRACETORCH_CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("TRACETORCH_CACHE_DIR", str(tmp_path / "cache"))
    kernels.clear_cache()
    try:
        with pytest.warns(RuntimeWarning, match="no C compiler"):
            out = run("LIT", params, state, xs, w, quant_fn="round")
        assert_same(ref, out, torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # only once per process
            run("LIT", params, state, xs, w, quant_fn="round")
        with pytest.raises(ValueError, match="no C compiler"):
            run("LIT", params, state, xs, w, quant_fn="round", fast=True)
    finally:
        monkeypatch.delenv("TRACETORCH_CC")
        kernels.clear_cache()


def test_disk_cache_is_used_by_a_new_process(tmp_path):
    code = (
        "import torch, tracetorch.functional as F, time\n"
        "p = F.init_params('DSRLIB', 4); s = F.init_state('DSRLIB', torch.zeros(2, 4))\n"
        "F.scan(F.dsrlib_step, p, s, torch.randn(3, 2, 4), fast=True)\n"
    )
    env = {**os.environ, "TRACETORCH_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    built = sorted(tmp_path.glob("tt_*"))
    # the forward's library and the backward's, each with its record (size, SHA-256)
    assert sorted(p.suffix for p in built) == [".json", ".json", ".so", ".so"]
    stamp = [b.stat().st_mtime_ns for b in built]
    # two processes at once: both load the same file, nothing is rebuilt, no temporary file is left
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert all(p.wait() == 0 for p in procs)
    assert sorted(tmp_path.glob("tt_*")) == built and [b.stat().st_mtime_ns for b in built] == stamp


def test_build_race_leaves_one_complete_library(tmp_path):
    code = (
        "import torch, tracetorch.functional as F\n"
        "p = F.init_params('SRLITS', 4); s = F.init_state('SRLITS', torch.zeros(2, 4))\n"
        "F.scan(F.srlits_step, p, s, torch.randn(3, 2, 4), fast=True)\n"
    )
    env = {**os.environ, "TRACETORCH_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    assert all(p.wait() == 0 for p in procs)
    assert len(list(tmp_path.glob("tt_*.so"))) == 2 and not list(tmp_path.glob("*.c"))  # forward, backward
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".json", ".so", ".so"]  # no build directory left


def test_tracetorch_fast_0_makes_fast_none_run_the_plain_loop(tmp_path):
    code = (
        "import torch, tracetorch.functional as F\n"
        "from tracetorch.functional import kernels\n"
        "assert kernels.config.auto is False\n"
        "p = F.init_params('LIB', 4); s = F.init_state('LIB', torch.zeros(2, 4))\n"
        "F.scan(F.lib_step, p, s, torch.randn(3, 2, 4))\n"
        "assert kernels.get_kernel.cache_info().currsize == 0\n"
        "F.scan(F.lib_step, p, s, torch.randn(3, 2, 4), fast=True)\n"
        "assert kernels.get_kernel.cache_info().currsize == 1\n"
    )
    env = {**os.environ, "TRACETORCH_FAST": "0", "TRACETORCH_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---- the object API's per-step calls through the one-step kernel ----------------------------------


def _per_step(layer, xs, w):
    layer.zero_states()
    ys = torch.stack([layer(x) for x in xs.unbind(0)])
    final = [getattr(layer, n) for n in layer.state_names]
    loss = (ys * w).sum() + sum(((i + 1) * s * s).sum() for i, s in enumerate(final))
    grads = torch.autograd.grad(loss, [*layer.parameters(), xs])
    return ys.detach(), [s.detach() for s in final], grads


def _count_kernel_calls(monkeypatch):
    calls = []
    real = ops.kernel_scan

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(ops, "kernel_scan", spy)
    monkeypatch.setattr(kernels, "kernel_scan", spy)
    return calls


def _layer_pair(name, dtype, seed=0, **kw):
    spec = F.SPECS[name]
    if spec.fires:
        kw.setdefault("quant_fn", "round")
    torch.manual_seed(seed)
    layer = getattr(tt.nn, name)(N, **kw).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = getattr(tt.nn, name)(N, **kw).to(dtype)
    ref.load_state_dict(layer.state_dict())
    return layer, ref


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_per_step_kernel_equals_the_op_by_op_step(name, dtype, monkeypatch):
    """Per-step calls through the one-step kernel: outputs, states and every gradient, each type."""
    layer, ref = _layer_pair(name, dtype)
    g = torch.Generator().manual_seed(1)
    xs = (1.5 * torch.randn(T, B, N, generator=g, dtype=dtype)).requires_grad_(True)
    w = torch.randn(T, B, N, generator=g, dtype=dtype)
    monkeypatch.setattr(kernels.config, "auto", False)
    plain = _per_step(ref, xs, w)
    monkeypatch.setattr(kernels.config, "auto", True)
    monkeypatch.setattr(kernels.config, "step_min_elements", 0)
    calls = _count_kernel_calls(monkeypatch)
    fused = _per_step(layer, xs, w)
    assert len(calls) == T
    assert_same(plain, fused, dtype)
    torch.testing.assert_close(plain[0], fused[0], rtol=0, atol=0)  # every spike the same


@pytest.mark.parametrize("name", ["DSRLITS", "SLIB"])
def test_per_step_kernel_with_neurons_along_another_dim(name, monkeypatch):
    """``dim=1`` on ``[B, N, L]`` steps, per-neuron params broadcast along the trailing dim."""
    layer, ref = _layer_pair(name, torch.float64, dim=1)
    xs = torch.randn(T, 2, N, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(T, 2, N, 3, dtype=torch.float64)
    monkeypatch.setattr(kernels.config, "auto", False)
    plain = _per_step(ref, xs, w)
    monkeypatch.setattr(kernels.config, "auto", True)
    monkeypatch.setattr(kernels.config, "step_min_elements", 0)
    calls = _count_kernel_calls(monkeypatch)
    assert_same(plain, _per_step(layer, xs, w), torch.float64)
    assert len(calls) == T


def test_per_step_kernel_is_taken_only_where_it_measured_faster(monkeypatch):
    calls = _count_kernel_calls(monkeypatch)
    small, big = tt.nn.LIB(N, quant_fn="round"), tt.nn.LIB(512, quant_fn="round")
    small(torch.randn(B, N))  # 15 elements: the op-by-op step
    assert calls == []
    big(torch.randn(kernels.config.step_min_elements // 512, 512))
    assert len(calls) == 1
    monkeypatch.setattr(kernels.config, "auto", False)  # TRACETORCH_FAST=0 at import
    big(torch.randn(kernels.config.step_min_elements // 512, 512))
    assert len(calls) == 1


def test_per_step_kernel_declines_what_it_cannot_run(monkeypatch):
    """A custom spike function, a subclass's own step and torch.compile take the op-by-op step."""
    monkeypatch.setattr(kernels.config, "step_min_elements", 0)
    calls = _count_kernel_calls(monkeypatch)
    x = torch.randn(B, N)
    tt.nn.LIB(N, spike_fn=lambda v: torch.sigmoid(3 * v), quant_fn="round")(x)
    tt.nn.LIB(N, quant_fn=lambda p: (p > 0.5).to(p.dtype))(x)

    class Mine(tt.nn.LIB):
        def step(self, params, state, x):
            return super().step(params, state, x)

    Mine(N, quant_fn="round")(x)
    compiled = torch.compile(tt.nn.LIB(N, quant_fn="round"), fullgraph=True, backend="eager")
    compiled(x)
    assert calls == []
    tt.nn.LIB(N, quant_fn="round")(x)
    assert len(calls) == 1


def test_per_step_kernel_double_backward_equals_the_plain_step(monkeypatch):
    def penalty(auto):
        monkeypatch.setattr(kernels.config, "step_min_elements", 0)
        monkeypatch.setattr(kernels.config, "auto", auto)
        torch.manual_seed(0)
        layer = tt.nn.LIB(N, quant_fn="round")
        x = torch.randn(B, N, requires_grad=True)
        (gx,) = torch.autograd.grad(layer(x).sum() + layer(x).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), list(layer.parameters()))

    for a, b in zip(penalty(True), penalty(False)):
        torch.testing.assert_close(a, b)
