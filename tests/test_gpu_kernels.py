"""The Triton kernels (tracetorch.functional.kernels.gpu) against the plain step loop.

Two parts:

* Triton's interpreter (``TRITON_INTERPRET=1``, set per test) runs the generated kernels on CPU
  tensors, called directly through ``gpu.forward`` / ``gpu.backward``; this needs Triton installed,
  no GPU. Outputs, final states and every gradient are compared with the plain loop and autograd:
  float64 to 1e-10, float32 to torch's float32 tolerance, spikes exactly. The random quantizers
  fire on the CPU kernels' draws (:func:`uniform_draws`), so the plain loop given those draws is
  the kernel exactly.
* On a CUDA device, ``scan(..., fast=True)`` on CUDA tensors (the real compiled kernels) against
  ``fast=False`` on the same tensors.

The interpreter cannot call libdevice: there ``atan`` is a formula (see :mod:`.gpu`); on a GPU it is
libdevice's.
"""

import math

import pytest
import torch

triton = pytest.importorskip("triton")

import tracetorch.functional as F  # noqa: E402
from tracetorch.functional.kernels import gpu, ops  # noqa: E402
from tracetorch.functional.kernels.ops import uniform_draws  # noqa: E402

from .test_kernels import TOL, B, N, T, assert_same, make, noisy_quant, run  # noqa: E402

NAMES = list(F.NAMES)
FIRING = [n for n in NAMES if F.SPECS[n].fires]
SOME = ["LI", "LIB", "DSRLITS", "SLIT", "DRLIB"]
SPIKES = [F.spikes.Sigmoid(4.0), F.spikes.FastSigmoid(), F.spikes.Atan(), F.spikes.Triangle(), F.spikes.Erf()]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def interpret(monkeypatch, tmp_path_factory):
    """Triton's interpreter on (it is read when a kernel module is imported; gpu.load keys on it)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("TRACETORCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tt_cache"))
    yield


def gpu_run(name, params, state, xs, w, quant="round", spike_fn=F.sigmoid4x, seed=12345, reset="subtract"):
    """``run`` of test_kernels through gpu.forward / gpu.backward directly: (ys, final, grads)."""
    spec = F.SPECS[name]
    quant = quant if spec.fires else "none"
    kernel = ops.get_kernel(spec.with_reset(reset).key, ops.spike_tag(spike_fn) or "", quant)
    steps, shape = xs.shape[0], xs.shape[1:]
    S = math.prod(shape)
    flat, layout = [], []
    for p in params:
        f, n, inner = ops._param_layout(p.detach(), shape)
        flat.append(f.contiguous())
        layout += [n, inner]
    x2 = xs.detach().reshape(steps, S).contiguous()
    st = [s.detach().reshape(S).contiguous() for s in state]
    seed_t = torch.tensor(seed, dtype=torch.int64)
    ys, final, saved = torch.empty_like(x2), [torch.empty_like(s) for s in st], x2.new_empty(len(st), steps, S)
    gpu.forward(kernel, x2, st, flat, layout, seed_t, ys, final, saved)
    # the loss of test_kernels.run: (ys * w).sum() + sum((k + 1) * s^2)
    gys = w.reshape(steps, S).contiguous()
    gfin = [2.0 * (k + 1) * s for k, s in enumerate(final)]
    gxs, gst, gel = torch.empty_like(x2), [torch.empty_like(s) for s in st], [x2.new_empty(S) for _ in flat]
    gpu.backward(kernel, x2, st, flat, layout, seed_t, saved, gys, gfin, gxs, gst, gel)
    gparams = []
    for k, (p, g) in enumerate(zip(params, gel)):
        n, inner = layout[2 * k], layout[2 * k + 1]
        gparams.append(g.reshape(S // (n * inner), n, inner).sum(dim=(0, 2)).reshape(p.shape))
    grads = (*gparams, *(g.reshape(shape) for g in gst), gxs.reshape(xs.shape))
    return ys.reshape(xs.shape), [f.reshape(shape) for f in final], grads


def test_source_is_generated_from_the_traced_graph():
    kernel = ops.get_kernel("LIB", ops.spike_tag(F.sigmoid4x), "bernoulli")
    src = gpu.triton_source(kernel.traced, kernel.adjoint, kernel.quant, "float32")
    assert "def tt_forward(" in src and "def tt_backward(" in src and "tt_uniform(slo, shi, ctr, 0)" in src
    assert "libdevice" in src and "tl.float32" in src
    src64 = gpu.triton_source(kernel.traced, kernel.adjoint, kernel.quant, "float64", interpret=True)
    assert "tl.float64" in src64 and "libdevice" not in src64
    compile(src, "<tt>", "exec")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rank", [1, 0])
@pytest.mark.parametrize("name", NAMES)
def test_interpreted_kernel_equals_plain_loop_round(interpret, name, rank, dtype):
    """Every type: outputs, final states and gradients wrt params, initial state and inputs."""
    _, params, state, xs, w = make(name, rank, dtype)
    loop = run(name, params, state, xs, w, quant_fn="round", fast=False)
    fused = gpu_run(name, params, state, xs, w, "round")
    assert_same(loop, fused, dtype)
    torch.testing.assert_close(loop[0], fused[0], rtol=0, atol=0)  # every spike the same


@pytest.mark.parametrize("name", ["LIB", "DLIT", "SRLITS", "DSRLITS", "ALIB", "DSALIT", "DSRALITS"])
def test_interpreted_kernel_zero_reset_and_if(interpret, name):
    """The zero reset's Triton kernel (from the same generator), with membrane decays of 1.0 too."""
    _, params, state, xs, w = make(name, 1, torch.float64, seed=2)
    beta = {k: torch.ones_like(v).requires_grad_(True) for k, v in params._asdict().items() if k.endswith("beta")}
    for p in (params, params._replace(**beta)):
        loop = run(name, p, state, xs, w, quant_fn="round", reset="zero", fast=False)
        fused = gpu_run(name, p, state, xs, w, "round", reset="zero")
        assert_same(loop, fused, torch.float64)
        torch.testing.assert_close(loop[0], fused[0], rtol=0, atol=0)


@pytest.mark.parametrize("spike_fn", SPIKES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", ["LIB", "DSRLITS"])
def test_interpreted_kernel_every_builtin_spike_function(interpret, name, spike_fn):
    _, params, state, xs, w = make(name, 1, torch.float64, seed=2)
    loop = run(name, params, state, xs, w, quant_fn="round", spike_fn=spike_fn, fast=False)
    fused = gpu_run(name, params, state, xs, w, "round", spike_fn=spike_fn)
    assert_same(loop, fused, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
@pytest.mark.parametrize("name", SOME[1:])
def test_interpreted_random_quantizers_equal_plain_loop_on_the_same_draws(interpret, name, quant, dtype):
    """The GPU kernels draw as the CPU kernels do: given those draws the plain loop is the kernel,
    forward and backward (so the backward recomputes exactly the forward's spikes)."""
    spec, params, state, xs, w = make(name, 1, dtype, seed=1)
    seed = -987654321012345
    fused = gpu_run(name, params, state, xs, w, quant, seed=seed)
    draws = uniform_draws(seed, T, B * N, 1 if spec.firing == "B" else 2)
    loop = run(name, params, state, xs, w, quant_fn=noisy_quant(quant, draws), fast=False)
    assert torch.equal(loop[0] != 0, fused[0] != 0)  # the same spikes
    # float32: the param gradients sum over time in another order than autograd's (a few ulps of a sum)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-4)
    for a, b in zip([loop[0], *loop[1], *loop[2]], [fused[0], *fused[1], *fused[2]]):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
def test_interpreted_random_quantizers_reproducible_and_same_as_cpu_kernel(interpret, quant):
    name = "DRLIB"
    _, params, state, xs, w = make(name, 1, torch.float64, seed=3)
    a = gpu_run(name, params, state, xs, w, quant, seed=7)
    b = gpu_run(name, params, state, xs, w, quant, seed=7)
    c = gpu_run(name, params, state, xs, w, quant, seed=8)
    assert_same(a, b, torch.float64)
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(0)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    torch.manual_seed(0)
    cpu = run(name, params, state, xs, w, quant_fn=quant, fast=True)  # the C kernel, same seed
    assert_same(cpu, gpu_run(name, params, state, xs, w, quant, seed=seed), torch.float64)


def test_interpreted_bernoulli_fires_at_the_rate_p(interpret):
    spec = F.SPECS["LIB"]
    S = 4000
    prm = spec.Params(beta=torch.tensor(0.5), threshold=torch.tensor(1.0))
    xs = torch.full((1, S), 0.9)
    ys, _, _ = gpu_run("LIB", prm, spec.State(torch.zeros(S)), xs, torch.ones(1, S), "bernoulli", seed=11)
    expect = torch.sigmoid(torch.tensor(4 * (0.9 - 1.0))).item()
    assert abs(ys.mean().item() - expect) < 0.03


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interpreted_half_precision_computes_in_float32(interpret, dtype):
    """float16/bfloat16: computed in float32, the state rounded to the dtype after every step."""
    name = "DSLI"
    _, params, state, xs, w = make(name, 1, torch.float32)
    low = [type(group)(*(t.detach().to(dtype) for t in group)) for group in (params, state)]
    xl, wl = xs.detach().to(dtype), w.to(dtype)
    ys, final, grads = gpu_run(name, low[0], low[1], xl, wl)
    assert ys.dtype == dtype and all(g.dtype == dtype for g in grads)
    # the reference: the plain loop in float32 on the same (rounded) inputs; what differs is the
    # state's rounding to the low dtype after every step
    up = [type(group)(*(t.float().requires_grad_(True) for t in group)) for group in low]
    ref = run(name, up[0], up[1], xl.float().requires_grad_(True), wl.float(), quant_fn="round", fast=False)
    tol = dict(rtol=0.02, atol=0.02) if dtype == torch.float16 else dict(rtol=0.1, atol=0.1)
    torch.testing.assert_close(ys.float(), ref[0], **tol)
    for a, b in zip([*final, *grads], [*ref[1], *ref[2]]):
        torch.testing.assert_close(a.float(), b, **tol)


def test_interpreted_nan_in_nan_out(interpret):
    _, params, state, xs, w = make("LIB", 1, torch.float64)
    xs = xs.detach().clone()
    xs[2, 0, 1] = float("nan")
    loop = run("LIB", params, state, xs.requires_grad_(True), w, quant_fn="round", fast=False)
    fused = gpu_run("LIB", params, state, xs, w, "round")
    assert_same(loop, fused, torch.float64)


def test_interpreted_more_elements_than_a_block(interpret):
    """Several programs, a partial last block, params broadcast along the batch."""
    name = "SLIT"
    _, params, state, xs, w = make(name, 1, torch.float32, shape=(5, 500), steps=3)
    loop = run(name, params, state, xs, w, quant_fn="round", fast=False)
    fused = gpu_run(name, params, state, xs, w, "round")
    assert_same(loop, fused, torch.float32)


def _nvidia_compiler():
    try:
        from triton.backends import backends

        return "nvidia" in backends
    except ImportError:  # pragma: no cover - older Triton
        return False


_PTR = {torch.float32: "*fp32", torch.float64: "*fp64", torch.bfloat16: "*bf16", torch.float16: "*fp16"}


@pytest.mark.skipif(not _nvidia_compiler(), reason="Triton's NVIDIA backend (ptxas) is not installed")
@pytest.mark.parametrize(
    "name, quant, spike_fn, dtype",
    [
        ("LIB", "bernoulli", F.spikes.Sigmoid(4.0), torch.float32),
        ("DSRLITS", "probabilistic", F.spikes.Atan(), torch.float64),
        ("DRLIB", "round", F.spikes.Erf(), torch.bfloat16),
        ("DSLI", "none", F.sigmoid4x, torch.float16),
    ],
)
def test_kernels_compile_for_a_gpu_without_one(tmp_path, monkeypatch, name, quant, spike_fn, dtype):
    """The real compiler (to a cubin for sm_90) accepts the generated kernels; no GPU needed."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRACETORCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    mod = gpu.load(ops.get_kernel(name, ops.spike_tag(spike_fn), quant), dtype)
    for fn, const in ((mod.tt_forward, {"SAVE": True, "BLOCK": 256}), (mod.tt_backward, {"BLOCK": 128})):
        sig = {}
        for a in fn.arg_names:
            if a in const:
                sig[a] = "constexpr"
            elif a in ("T", "S") or a[:1] == "n" or a[:2] == "in":
                sig[a] = "i32"
            else:
                sig[a] = "i64" if a.startswith("seed") else _PTR[dtype]
        src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
        out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "enable_fp_fusion": False})
        assert out.asm["cubin"]
        if dtype == torch.float32 and type(spike_fn) is F.spikes.Sigmoid:  # no libdevice calls here
            assert "fma.rn" not in out.asm["ptx"]  # enable_fp_fusion=False: no contracted multiply-adds


# ---- on a CUDA device: the compiled kernels through scan(..., fast=True) -------------------------


def _to(tree, device):
    return type(tree)(*(t.detach().to(device).requires_grad_(True) for t in tree))


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rank", [1, 0])
@pytest.mark.parametrize("name", NAMES)
def test_cuda_kernel_equals_plain_loop_round(name, rank, dtype):
    _, params, state, xs, w = make(name, rank, dtype)
    dev = torch.device("cuda")
    params, state = _to(params, dev), _to(state, dev)
    xs, w = xs.detach().to(dev).requires_grad_(True), w.to(dev)
    loop = run(name, params, state, xs, w, quant_fn="round", fast=False)
    fused = run(name, params, state, xs, w, quant_fn="round", fast=True)
    # the plain loop on CUDA runs torch's CUDA kernels (their exp may differ from Triton's by ulps)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip([loop[0], *loop[1], *loop[2]], [fused[0], *fused[1], *fused[2]]):
        torch.testing.assert_close(a, b, equal_nan=True, **tol)


@cuda
@pytest.mark.parametrize("quant", ["bernoulli", "probabilistic"])
@pytest.mark.parametrize("name", FIRING)
def test_cuda_random_quantizers_equal_plain_loop_on_the_same_draws(name, quant):
    spec, params, state, xs, w = make(name, 1, torch.float64, seed=1)
    dev = torch.device("cuda")
    params, state = _to(params, dev), _to(state, dev)
    xs, w = xs.detach().to(dev).requires_grad_(True), w.to(dev)
    torch.manual_seed(7)
    fused = run(name, params, state, xs, w, quant_fn=quant, fast=True)
    torch.manual_seed(7)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    draws = uniform_draws(seed, T, B * N, 1 if spec.firing == "B" else 2).to(dev)
    loop = run(name, params, state, xs, w, quant_fn=noisy_quant(quant, draws), fast=False)
    assert_same(loop, fused, torch.float64)


@cuda
@pytest.mark.parametrize("name", SOME)
def test_cuda_bfloat16(name):
    """bfloat16: computed in float32 with the state rounded to bfloat16 per step; the plain loop
    rounds after every op, so they agree to bfloat16's precision (most spikes the same)."""
    _, params, state, xs, w = make(name, 1, torch.float32, shape=(8, 64), steps=20)
    dev = torch.device("cuda")
    lp, ls = _to(params, dev), _to(state, dev)
    lp = type(lp)(*(t.detach().bfloat16().requires_grad_(True) for t in lp))
    ls = type(ls)(*(t.detach().bfloat16().requires_grad_(True) for t in ls))
    xl, wl = xs.detach().to(dev).bfloat16().requires_grad_(True), w.to(dev).bfloat16()
    loop = run(name, lp, ls, xl, wl, quant_fn="round", fast=False)
    fused = run(name, lp, ls, xl, wl, quant_fn="round", fast=True)
    assert fused[0].dtype == torch.bfloat16
    if F.SPECS[name].fires:
        assert (loop[0] == fused[0]).float().mean() > 0.95
    else:
        torch.testing.assert_close(loop[0].float(), fused[0].float(), rtol=0.05, atol=0.05)
    assert all(torch.isfinite(g).all() for g in fused[2])


@cuda
def test_cuda_compile_fullgraph_runs_through_the_kernels():
    spec = F.SPECS["LIB"]
    dev = torch.device("cuda")
    prm = spec.Params(beta=torch.full((16,), 0.9, device=dev), threshold=torch.ones(16, device=dev))
    xs = torch.randn(10, 4, 16, device=dev)
    fn = torch.compile(lambda p, s, x: F.scan(F.get_step("LIB"), p, s, x, quant_fn="round", fast=True), fullgraph=True)
    a = fn(prm, spec.State(torch.zeros(4, 16, device=dev)), xs)
    b = F.scan(F.get_step("LIB"), prm, spec.State(torch.zeros(4, 16, device=dev)), xs, quant_fn="round", fast=False)
    torch.testing.assert_close(a[0], b[0])
