"""The fast time loop (compiled chunks of the generic step) against the plain step loop.

Every type runs through the fast path's machinery (chunking, the recomputing backward, broadcast
params, noise) with the chunk functions uncompiled, which is cheap; a few types also go through
``torch.compile`` (inductor), marked slow: compiling costs seconds per type.
"""

import pytest
import torch

import tracetorch.functional as F
from tracetorch.functional import fast

NAMES = list(F.NAMES)
FIRING = [n for n in NAMES if not n.endswith("LI")]
B, N, T, CHUNK = 2, 3, 8, 3  # two full chunks and a remainder of two steps


@pytest.fixture
def backend():
    """Set ``fast.config.backend`` for one test."""
    old = fast.config.backend

    def use(name):
        fast.config.backend = name

    yield use
    fast.config.backend = old


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
            v = (1.0 if "scale" in p.name else 0.0) + 0.5 * torch.randn(size, generator=g, dtype=dtype)
        values.append(v.requires_grad_(True))
    params = spec.Params(*values)
    state = spec.State(*(0.5 * torch.randn(shape, generator=g, dtype=dtype) for _ in spec.state_names))
    state = spec.State(*(t.requires_grad_(True) for t in state))
    xs = (1.5 * torch.randn(steps, *shape, generator=g, dtype=dtype)).requires_grad_(True)
    w = torch.randn(steps, *shape, generator=g, dtype=dtype)
    return spec, params, state, xs, w


def run(name, params, state, xs, w, **kw):
    ys, final = F.scan(F.get_step(name), params, state, xs, **kw)
    loss = (ys * w).sum() + sum(((i + 1) * s).sum() for i, s in enumerate(final))
    grads = torch.autograd.grad(loss, [*params, *state, xs])
    return ys.detach(), [s.detach() for s in final], grads


def assert_same(a, b, **tol):
    for x, y in zip([a[0], *a[1], *a[2]], [b[0], *b[1], *b[2]]):
        torch.testing.assert_close(x, y, equal_nan=True, **tol)


@pytest.mark.parametrize("rank", [1, 0])
@pytest.mark.parametrize("name", NAMES)
def test_fast_machinery_equals_loop(name, rank, backend):
    """Outputs, final states and gradients wrt params, initial state and inputs, every type."""
    backend(None)
    _, params, state, xs, w = make(name, rank)
    loop = run(name, params, state, xs, w, quant_fn="round", fast=False)
    quick = run(name, params, state, xs, w, quant_fn="round", fast=True, chunk=CHUNK)
    assert_same(loop, quick)


def _noise(spec, steps, chunk, shape, dtype):
    """The uniform draws of the fast path, in its order: per chunk, ``[len * sites, *shape]``."""
    sites = 1 if spec.firing == "B" else 2
    return torch.cat(
        [torch.rand(((min(t + chunk, steps) - t) * sites, *shape), dtype=dtype) for t in range(0, steps, chunk)]
    )


@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
@pytest.mark.parametrize("name", ["LIB", "DSRLIB", "SRLIT", "DLITS", "DSRLITS"])
def test_random_quantizers_with_the_same_noise(name, quant, backend, monkeypatch):
    """Given the same uniform draws, the fast path equals spikes.py's quantizers in the plain loop."""
    backend(None)
    spec, params, state, xs, w = make(name)
    with torch.no_grad():
        xs[2, 0, 1] = float("nan")  # NaN in, NaN out, on both paths
    torch.manual_seed(7)
    quick = run(name, params, state, xs, w, quant_fn=quant, fast=True, chunk=CHUNK)
    torch.manual_seed(7)
    draws = iter(_noise(spec, T, CHUNK, (B, N), xs.dtype).unbind(0))
    monkeypatch.setattr(torch, "bernoulli", lambda p: (next(draws) < p).to(p.dtype))
    loop = run(name, params, state, xs, w, quant_fn=quant, fast=False)
    assert_same(loop, quick)
    assert torch.isnan(quick[0]).any()  # every type, dual ones too: pos()/neg() keep NaN


def test_bernoulli_is_seeded_and_fires_at_p(backend):
    backend(None)
    spec = F.SPECS["LIB"]
    params = F.init_params("LIB", 4000, threshold=1.0)
    xs = torch.full((20, 1, 4000), 0.0)
    state = spec.State(mem=torch.full((1, 4000), 1.0))  # first step: p = sigmoid(4 * (0.9 - 1))
    torch.manual_seed(3)
    a, _ = F.scan(F.lib_step, params, state, xs, fast=True, chunk=10)
    torch.manual_seed(3)
    b, _ = F.scan(F.lib_step, params, state, xs, fast=True, chunk=10)
    assert torch.equal(a, b)
    p = torch.sigmoid(torch.tensor(4 * (0.9 - 1.0)))
    assert abs(a[0].mean().item() - p.item()) < 0.03


def test_inference_and_dtypes(backend):
    backend(None)
    for dtype in (torch.float32, torch.bfloat16):
        _, params, state, xs, _ = make("DSRLITS", dtype=dtype)
        with torch.no_grad():
            ys, final = F.scan(F.dsrlits_step, params, state, xs, quant_fn="round", fast=True, chunk=CHUNK)
            ys2, final2 = F.scan(F.dsrlits_step, params, state, xs, quant_fn="round", fast=False)
        assert ys.dtype == dtype and all(s.dtype == dtype for s in final)
        torch.testing.assert_close(ys, ys2)
        assert not ys.requires_grad
        _, params, state, xs, w = make("SLIT", dtype=dtype)
        out = run("SLIT", params, state, xs, w, quant_fn="round", fast=True, chunk=CHUNK)
        assert all(g.dtype == dtype for g in out[2])


def test_params_that_broadcast_and_buffers(backend):
    """Params shaped [C, 1, 1] against [B, C, H, W] steps (how a dim=-3 layer runs); params without grad."""
    backend(None)
    spec = F.SPECS["RLIT"]
    g = torch.Generator().manual_seed(0)
    params = spec.Params(*(v.reshape(3, 1, 1) for v in F.init_params("RLIT", 3, dtype=torch.float64, rec_weight=0.3)))
    xs = torch.randn(7, 2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    state = F.init_state(spec, xs[0])
    ys, st = F.scan(F.rlit_step, params, state, xs, quant_fn="round", fast=True, chunk=CHUNK)
    ys2, st2 = F.scan(F.rlit_step, params, state, xs, quant_fn="round", fast=False)
    torch.testing.assert_close(ys, ys2)
    (gx,) = torch.autograd.grad(ys.sum(), xs)
    (gx2,) = torch.autograd.grad(ys2.sum(), xs)
    torch.testing.assert_close(gx, gx2)


def test_short_sequences_and_one_chunk(backend):
    backend(None)
    for steps in (1, 2, 3):
        _, params, state, xs, w = make("DRLIB", steps=steps)
        assert_same(
            run("DRLIB", params, state, xs, w, quant_fn="round", fast=False),
            run("DRLIB", params, state, xs, w, quant_fn="round", fast=True, chunk=CHUNK),
        )


def test_selection_and_refusals(backend):
    backend(None)
    spec, params, state, xs, _ = make("LIB")

    def custom(p, s, x):
        return x, s

    with pytest.raises(ValueError, match="built-in steps"):
        F.scan(custom, params, state, xs, fast=True)
    with pytest.raises(ValueError, match="custom callable"):
        F.scan(F.lib_step, params, state, xs, fast=True, quant_fn=lambda p: p)
    with pytest.raises(ValueError, match="shape of one step"):
        F.scan(F.lib_step, params, spec.State(mem=torch.zeros(N, dtype=xs.dtype)), xs, fast=True)
    with pytest.raises(ValueError, match="dtype"):
        F.scan(F.lib_step, params, spec.State(mem=state.mem.float()), xs, fast=True)
    with pytest.raises(ValueError, match="chunk"):
        F.scan(F.lib_step, params, state, xs, fast=True, chunk=0)
    with pytest.raises(ValueError, match="at least one timestep"):
        F.scan(F.lib_step, params, state, xs[:0])
    with pytest.raises(TypeError, match="unexpected keyword"):
        F.scan(F.lib_step, params, state, xs, quant="round")
    # automatic selection: small sequences, transforms and compile tracing take the plain loop
    before = len(fast.compiled_chunks())
    F.scan(F.lib_step, params, state, xs, quant_fn="round")
    ys = torch.func.vmap(lambda x: F.scan(F.lib_step, params, state, x, quant_fn="round", chunk=2)[0])(xs[None])
    assert ys.shape == (1, *xs.shape)
    with pytest.raises(ValueError, match="torch.func"):
        torch.func.vmap(lambda x: F.scan(F.lib_step, params, state, x, fast=True)[0])(xs[None])
    assert len(fast.compiled_chunks()) == before
    assert fast.fast_reason(spec, params, state, xs) is None


def test_automatic_selection_waits_for_repeated_calls(backend):
    backend(None)
    fast.clear_cache()
    _, params, state, xs, w = make("LIB")
    old = fast.config.min_elements, fast.config.warmup_calls
    fast.config.min_elements, fast.config.warmup_calls = 0, 2
    try:
        ref = run("LIB", params, state, xs, w, quant_fn="round", fast=False)
        for call in range(4):
            out = run("LIB", params, state, xs, w, quant_fn="round", chunk=CHUNK)
            assert_same(out, ref)
            # the first two eligible calls run the plain loop; from the third the fast path (with its cache)
            assert len(fast.compiled_chunks()) == (1 if call >= 2 else 0), call
        assert fast.compiled_chunks()[0]["calls"]["forward"] == 2 * 2  # two calls, two full chunks each
        fast.config.min_elements = xs.numel() + 1  # too small to be eligible: never counted, never fast
        fast.clear_cache()
        for _ in range(4):
            run("LIB", params, state, xs, w, quant_fn="round", chunk=CHUNK)
        assert fast.compiled_chunks() == []
    finally:
        fast.config.min_elements, fast.config.warmup_calls = old
        fast.clear_cache()


def test_first_order_only(backend):
    backend(None)
    _, params, state, xs, w = make("LIB")
    ys, _ = F.scan(F.lib_step, params, state, xs, quant_fn="round", fast=True, chunk=CHUNK)
    (gx,) = torch.autograd.grad((ys * w).sum(), xs, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gx.sum(), xs)


def test_failing_compiler_warns_and_runs_uncompiled(backend):
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    backend(broken)
    _, params, state, xs, w = make("LI")
    with pytest.raises(Exception, match="no compiler here"):
        run("LI", params, state, xs, w, fast=True, chunk=CHUNK)
    fast.clear_cache()
    before = len(fast.compiled_chunks())
    old = fast.config.min_elements, fast.config.warmup_calls
    fast.config.min_elements, fast.config.warmup_calls = 0, 0
    try:
        with pytest.warns(RuntimeWarning, match="running it uncompiled"):
            out = run("LI", params, state, xs, w, chunk=CHUNK)
    finally:
        fast.config.min_elements, fast.config.warmup_calls = old
    assert len(fast.compiled_chunks()) == before + 1
    assert_same(out, run("LI", params, state, xs, w, fast=False))
    fast.clear_cache()


# ---- compiled (inductor): a few types, shared compiled chunks --------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["LIB", "DSRLITS", "SLI"])
def test_compiled_equals_loop(name, backend):
    backend("inductor")
    _, params, state, xs, w = make(name, dtype=torch.float32, steps=5)
    loop = run(name, params, state, xs, w, quant_fn="round", fast=False)
    quick = run(name, params, state, xs, w, quant_fn="round", fast=True, chunk=2)
    assert_same(loop, quick, rtol=1e-4, atol=1e-4)
    # dynamic shapes: another batch and width reuse the compiled chunks
    import torch._dynamo.utils as dynamo_utils

    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    _, params, state, xs, w = make(name, dtype=torch.float32, steps=5, shape=(4, 5))
    assert_same(
        run(name, params, state, xs, w, quant_fn="round", fast=False),
        run(name, params, state, xs, w, quant_fn="round", fast=True, chunk=2),
        rtol=1e-4,
        atol=1e-4,
    )
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow
def test_compiled_bernoulli_with_the_same_noise(backend, monkeypatch):
    backend("inductor")
    spec, params, state, xs, w = make("LIB", dtype=torch.float32, steps=5)
    torch.manual_seed(11)
    quick = run("LIB", params, state, xs, w, quant_fn="bernoulli", fast=True, chunk=2)
    torch.manual_seed(11)
    draws = iter(_noise(spec, 5, 2, (B, N), xs.dtype).unbind(0))
    monkeypatch.setattr(torch, "bernoulli", lambda p: (next(draws) < p).to(p.dtype))
    loop = run("LIB", params, state, xs, w, quant_fn="bernoulli", fast=False)
    assert_same(loop, quick, rtol=1e-4, atol=1e-4)
