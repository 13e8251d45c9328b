"""The GPU backend: the traced step printed as a Triton kernel, loaded from a generated source file.

One kernel module per ``(type, spike function, quantizer, storage dtype)``, with two Triton
functions, ``tt_forward`` and ``tt_backward``, following :mod:`.cpu`'s C kernel: one program per
block of ``BLOCK`` elements (of the ``S`` elements of one timestep) runs the whole time loop with
the state in registers, the params loaded once per element; the backward runs time in reverse,
recomputing each step's forward from the saved state before it (the initial state at ``t = 0``),
and accumulates the param adjoints per element.

Precision: float16/bfloat16 tensors are computed in float32 (load, upcast, compute, downcast on
store) and float64 in float64. The state is rounded to the storage dtype after every step, as the
plain loop's state tensors are, so the saved states are exactly the states the forward carried and
the backward recomputes the forward's spikes. Kernels launch with ``enable_fp_fusion=False``: no
fused multiply-adds, so every add and multiply rounds as torch's do (``exp``, ``atan`` and ``erf``
are Triton's and libdevice's, within a few ulps of torch's).

Random quantizers: the draws are the CPU kernels' counter-based hash of ``(seed, t*S + i, site)``
(:func:`.ops.uniform_draws`), computed in 32-bit unsigned integers, so the GPU kernels fire on
the same draws as the CPU kernels for the same seed, and the backward recomputes the forward's
draws instead of storing them. The plain loop draws with ``torch.bernoulli``: same distribution,
other samples.

Under Triton's interpreter (``TRITON_INTERPRET=1``, the kernels run on CPU tensors; used by the
tests) ``atan`` cannot call libdevice; a polynomial estimate refined by two Newton steps on
``tan`` stands in (to about an ulp). Everything else is the same source.

The source is written to :func:`.cpu.cache_dir` as ``tt_triton_<hash>.py`` (``triton.jit`` reads
its function's source file) and imported once per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .cache import ForkSafeLock
from .cache import directory as cache_directory
from .codegen import Dialect, backward_lines, forward_lines
from .trace import Adjoint, Traced

__all__ = ["triton_source", "load", "forward", "backward", "interpreting"]

_STORAGE = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64"}
#: elements per program (a power of two); the interpreter runs faster on bigger blocks
BLOCK = {"forward": 256, "backward": 128, "interpret": 1024}
NUM_WARPS = 4

_PRELUDE = """
import triton
import triton.language as tl
{libdevice}


@triton.jit
def tt_mix(h):
    h = h ^ (h >> 16)
    h = h * 0x7FEB352D
    h = h ^ (h >> 15)
    h = h * 0x846CA68B
    return h ^ (h >> 16)


@triton.jit
def tt_uniform(seed_lo, seed_hi, ctr, site_key):
    # the CPU kernels' tt_uniform: a uniform draw in [0, 1) for (seed, counter, site)
    lo = (ctr & 0xFFFFFFFF).to(tl.uint32)
    hi = (ctr >> 32).to(tl.uint32)
    h = tt_mix(lo ^ seed_lo)
    h = tt_mix(h ^ hi ^ site_key)
    h = tt_mix(h + seed_hi)
    return (h >> 8).to(COMPUTE) * 5.9604644775390625e-08


@triton.jit
def tt_rint(p):
    # round half to even (torch.round): adding and removing 2^(mantissa bits) rounds to an integer
    magic = tl.full([], {magic}, COMPUTE)
    a = tl.abs(p)
    r = (a + magic) - magic
    r = tl.where(p < 0, -r, r)
    return tl.where(a < magic, r, p)


@triton.jit
def tt_sigmoid(x):
    one = tl.full([], 1.0, COMPUTE)
    return one / (one + tl.exp(-x))


{atan}


@triton.jit
def tt_tanh(x):
    # the interpreter's tanh: sign(x) * (1 - e) / (1 + e), e = exp(-2|x|)
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def tt_log1p(x):
    # the interpreter's log1p: log(u) corrected by the rounding of u = 1 + x
    u = 1.0 + x
    d = u - 1.0
    return tl.where(d == 0, x, tl.log(u) * (x / tl.where(d == 0, 1.0, d)))


@triton.jit
def tt_pow(x, c):
    # the interpreter's pow: exp(c * log(x)), with the sign of x for odd integer c
    r = tl.exp(c * tl.log(tl.abs(x)))
    odd = (c == tl.floor(c)) & ((c - 2.0 * tl.floor(c / 2.0)) == 1.0)
    even = c == tl.floor(c)
    return tl.where(x < 0, tl.where(odd, -r, tl.where(even, r, x * 0.0 + (1e999 * 0.0))), r)
"""

_ATAN_LIBDEVICE = """@triton.jit
def tt_atan(x):
    return libdevice.atan(x)
"""

# the interpreter has no libdevice: a float32-accurate estimate (Cephes' atanf range reduction and
# polynomial), refined by two Newton steps on tan(y) = x, exact to about an ulp in float64 too
_ATAN_INTERPRET = """@triton.jit
def tt_atan(x):
    a = tl.abs(x)
    big = a > 2.414213562373095
    mid = a > 0.4142135623730950
    z = tl.where(big, -1.0 / tl.where(big, a, 1.0), tl.where(mid, (a - 1.0) / (a + 1.0), a))
    y0 = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
    zz = z * z
    y = y0 + (((8.05374449538e-2 * zz - 1.38776856032e-1) * zz + 1.99777106478e-1) * zz - 3.33329491539e-1) * zz * z + z
    y = y.to(tl.float64)
    a64 = tl.minimum(a.to(tl.float64), 1e30)  # atan(1e30) is pi/2 in float64; keeps inf out of the steps
    for _ in tl.static_range(2):
        c = tl.cos(y)
        y = y - (tl.sin(y) * c - a64 * c * c)
    y = tl.where(x < 0, -y, y).to(COMPUTE)
    return tl.where(x != x, x, y)
"""


def interpreting() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``): the kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _const(value: float) -> str:
    if value != value:
        text = "(1e999 * 0.0)"  # NaN, folded as a constant
    elif value in (float("inf"), float("-inf")):
        text = "-1e999" if value < 0 else "1e999"
    else:
        text = repr(float(value))
    return f"tl.full([], {text}, COMPUTE)"


def _quant(quant: str, p: str, site: int) -> str:
    if quant == "round":
        return f"tt_rint({p})"
    key = (site * 0x9E3779B9) & 0xFFFFFFFF
    one, zero = _const(1.0), _const(0.0)
    fire = f"tl.where({p} != {p}, {p}, tl.where(tt_uniform(slo, shi, ctr, {key}) < {p}, {one}, {zero}))"
    return fire if quant == "bernoulli" else f"({p} * {fire})"


def _dialect(interpret: bool = False, compute: str = "float32") -> Dialect:
    # libdevice where Triton's core has no accurate function; the interpreter (no libdevice) takes
    # formulas accurate to a few ulps (tanh and log1p by their cancellation-free forms)
    lib = not interpret
    sqrt = "tl.sqrt_rn" if compute == "float32" else "tl.sqrt"  # both correctly rounded (sqrt_rn: float32 only)
    return Dialect(
        const=_const,
        select=lambda c, a, b: f"tl.where({c}, {a}, {b})",
        call={
            "sigmoid": lambda a: f"tt_sigmoid({a})",
            "exp": lambda a: f"tl.exp({a})",
            "atan": lambda a: f"tt_atan({a})",
            "erf": lambda a: f"tl.math.erf({a})",
            "abs": lambda a: f"tl.abs({a})",
            "isnan": lambda a: f"({a} != {a})",
            "tanh": lambda a: f"libdevice.tanh({a})" if lib else f"tt_tanh({a})",
            "log": lambda a: f"libdevice.log({a})" if lib else f"tl.log({a})",
            "log1p": lambda a: f"libdevice.log1p({a})" if lib else f"tt_log1p({a})",
            "sqrt": lambda a: f"{sqrt}({a})",
            "rsqrt": lambda a: f"({_const(1.0)} / {sqrt}({a}))",
            "floor": lambda a: f"tl.floor({a})",
            "ceil": lambda a: f"tl.ceil({a})",
            "round": lambda a: f"tt_rint({a})",
            "float": lambda a: f"({a}).to(COMPUTE)",
            "pow": lambda a, c: f"libdevice.pow({a}, {_const(c)})" if lib else f"tt_pow({a}, {_const(c)})",
        },
        quant=_quant,
        declare=lambda name, expr, boolean: f"{name} = {expr}",
        logical={"and": "&", "or": "|", "not": "~"},
    )


def triton_source(tr: Traced, adj: Adjoint, quant: str, storage: str, interpret: bool = False) -> str:
    """The Python source of one Triton kernel module: ``tt_forward`` and ``tt_backward``.

    ``storage`` is the tensors' dtype name (``"float16"``, ``"bfloat16"``, ``"float32"``,
    ``"float64"``); the arithmetic runs in float64 for float64 and in float32 otherwise.
    ``interpret`` swaps libdevice's ``atan`` for a formula the interpreter runs.
    """
    compute = "float64" if storage == "float64" else "float32"
    rounds = storage not in ("float32", "float64")  # state rounded to the storage dtype every step
    d = _dialect(interpret, compute)
    ns, np_ = len(tr.state), len(tr.params)
    head = _PRELUDE.format(
        libdevice="" if interpret else "from triton.language.extra import libdevice",
        compute=compute,
        magic=repr(2.0**52 if compute == "float64" else 2.0**23),
        atan=_ATAN_INTERPRET if interpret else _ATAN_LIBDEVICE,
    )
    st = [f"st{k}" for k in range(ns)]
    fin = [f"fin{k}" for k in range(ns)]
    prm = [f"prm{k}" for k in range(np_)]
    lay = [f"n{k}, in{k}" for k in range(np_)]

    def keep(expr: str) -> str:
        # a loop-carried value: a full block of the compute dtype, rounded as its tensor stores it
        expr = f"({expr} + zero)"
        return f"{expr}.to(xs.dtype.element_ty).to(COMPUTE)" if rounds else expr

    def setup(indent: str) -> list[str]:
        lines = [
            "pid = tl.program_id(0).to(tl.int64)",
            "offs = pid * BLOCK + tl.arange(0, BLOCK)",
            "mask = offs < S",
            "zero = tl.full([BLOCK], 0.0, COMPUTE)",
            "slo = seed_lo.to(tl.uint32)",
            "shi = seed_hi.to(tl.uint32)",
        ]
        for k in range(np_):
            lines.append(f"p{k} = tl.load(prm{k} + (offs // in{k}) % n{k}, mask=mask, other=0).to(COMPUTE)")
        for k in range(ns):
            lines.append(f"i{k} = tl.load(st{k} + offs, mask=mask, other=0).to(COMPUTE)")
        return [indent + ln for ln in lines]

    # no specialization on the sizes, the layout or the seed: one compiled kernel per module and SAVE
    nospec = ["T", "S", "seed_lo", "seed_hi", *(f"{c}{k}" for k in range(np_) for c in ("n", "in"))]
    args = ", ".join(["xs", "ys", *st, *fin, "saved", *prm, *lay, "T", "S", "seed_lo", "seed_hi"])
    fwd = forward_lines(tr, d, quant, lambda kind, k: {"x": "xt", "state": f"s{k}", "param": f"p{k}"}[kind])
    fw = [
        f"@triton.jit(do_not_specialize={nospec!r})",
        f"def tt_forward({args}, SAVE: tl.constexpr, BLOCK: tl.constexpr):",
        *setup("    "),
        *(f"    s{k} = i{k}" for k in range(ns)),
        "    for t in range(T):",
        "        t64 = tl.cast(t, tl.int64)",
        "        ctr = t64 * S + offs",
        "        xt = tl.load(xs + ctr, mask=mask, other=0).to(COMPUTE)",
        *("        " + ln for ln in fwd),
        f"        tl.store(ys + ctr, {keep(f'v{tr.y}')}, mask=mask)",
        *(f"        s{k} = {keep(f'v{n}')}" for k, n in enumerate(tr.new_state)),
        "        if SAVE:",
        *(f"            tl.store(saved + ({k} * T + t64) * S + offs, s{k}, mask=mask)" for k in range(ns)),
        *(f"    tl.store(fin{k} + offs, s{k}, mask=mask)" for k in range(ns)),
    ]
    if not ns:  # pragma: no cover - every type has a state
        fw.insert(fw.index("        if SAVE:") + 1, "            pass")

    seed = lambda e: "gyt" if e[0] == "seed_y" else f"a{e[1]}"  # noqa: E731 (a<k>: the adjoint of state k)
    bl, leaves = backward_lines(tr, adj, d, seed)
    fwd_b = forward_lines(tr, d, quant, lambda kind, k: {"x": "xt", "state": f"o{k}", "param": f"p{k}"}[kind])
    gst = [f"gst{k}" for k in range(ns)]
    gin = [f"gin{k}" for k in range(ns)]
    gprm = [f"gprm{k}" for k in range(np_)]
    bargs = ", ".join(["xs", *st, "saved", *prm, *lay, "T", "S", "seed_lo", "seed_hi", "gys", *gst, "gxs", *gin, *gprm])
    bw = [
        f"@triton.jit(do_not_specialize={nospec!r})",
        f"def tt_backward({bargs}, BLOCK: tl.constexpr):",
        *setup("    "),
        *(f"    a{k} = tl.load(gst{k} + offs, mask=mask, other=0).to(COMPUTE)" for k in range(ns)),
        *(f"    q{k} = zero" for k in range(np_)),
        "    for tt in range(T):",
        "        t64 = tl.cast(T - 1 - tt, tl.int64)",
        "        ctr = t64 * S + offs",
        "        xt = tl.load(xs + ctr, mask=mask, other=0).to(COMPUTE)",
        "        gyt = tl.load(gys + ctr, mask=mask, other=0).to(COMPUTE)",
        "        prev = tl.maximum(t64 - 1, 0)  # saved[k, t - 1]; at t = 0 the initial state i<k>",
        *(
            f"        o{k} = tl.where(t64 > 0, tl.load(saved + ({k} * T + prev) * S + offs, "
            f"mask=mask, other=0).to(COMPUTE), i{k})"
            for k in range(ns)
        ),
        *("        " + ln for ln in fwd_b),
        *("        " + ln for ln in bl),
        f"        tl.store(gxs + ctr, ({leaves['x']} + zero), mask=mask)",
        *(f"        a{k} = ({leaves['state'][k]} + zero)" for k in range(ns)),
        *(f"        q{k} = q{k} + {leaves['param'][k]}" for k in range(np_)),
        *(f"    tl.store(gin{k} + offs, a{k}, mask=mask)" for k in range(ns)),
        *(f"    tl.store(gprm{k} + offs, q{k}, mask=mask)" for k in range(np_)),
    ]
    text = head + "\n\n" + "\n".join(fw) + "\n\n\n" + "\n".join(bw) + "\n"
    return text.replace("COMPUTE", f"tl.{compute}")


# ---- loading ------------------------------------------------------------------------------------

_LOCK = ForkSafeLock()  # released again in a forked child
_LOADED: dict[str, ModuleType] = {}


def _import(source: str) -> ModuleType:
    digest = hashlib.sha256(source.encode()).hexdigest()[:32]
    with _LOCK:
        mod = _LOADED.get(digest)
        if mod is not None:
            return mod
        target = cache_directory() / f"tt_triton_{digest}.py"  # a checked, private directory
        if not target.exists() or target.read_text() != source:
            fd, tmp = tempfile.mkstemp(suffix=".py", prefix=target.stem + ".", dir=target.parent)
            with os.fdopen(fd, "w") as f:
                f.write(source)
            os.replace(tmp, target)
        name = f"tracetorch_triton_{digest}"
        spec = importlib.util.spec_from_file_location(name, Path(target))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _LOADED[digest] = mod
        return mod


def load(kernel: Any, dtype: torch.dtype) -> ModuleType:
    """The imported Triton module of ``kernel`` (an :class:`.ops.Kernel`) for tensors of ``dtype``.

    Cached in memory per kernel, dtype and interpreter mode (thread-safe), on disk by source hash.
    """
    interpret = interpreting()
    key = (_STORAGE[dtype], interpret)
    cache = kernel.__dict__.setdefault("_triton", {})
    mod = cache.get(key)
    if mod is None:
        mod = _import(triton_source(kernel.traced, kernel.adjoint, kernel.quant, key[0], interpret))
        with _LOCK:
            cache[key] = mod
    return mod


def _launch_args(xs: torch.Tensor, layout: list[int], seed: torch.Tensor) -> tuple[list[int], int, int]:
    # the seed's halves, each offset by 2^32 so Triton always types them int64 (one compiled kernel
    # for every seed, where 31-bit values would be int32); the kernel truncates them to uint32
    s = int(seed.item()) & 0xFFFFFFFFFFFFFFFF
    return list(layout), (s & 0xFFFFFFFF) | 1 << 32, (s >> 32) | 1 << 32


def _block(phase: str) -> int:
    return BLOCK["interpret"] if interpreting() else BLOCK[phase]


def _run(fn: Any, grid: tuple[int], device: torch.device, args: list[Any], **meta: Any) -> None:
    if device.type == "cuda":
        with torch.cuda.device(device):
            fn[grid](*args, num_warps=NUM_WARPS, enable_fp_fusion=False, **meta)
    else:
        fn[grid](*args, **meta)


def forward(
    kernel: Any,
    xs: torch.Tensor,
    state: list[torch.Tensor],
    params: list[torch.Tensor],
    layout: list[int],
    seed: torch.Tensor,
    ys: torch.Tensor,
    final: list[torch.Tensor],
    saved: torch.Tensor | None,
) -> None:
    """Run the forward kernel: fill ``ys`` ``[T, S]``, ``final`` (each ``[S]``) and, unless ``None``,
    ``saved`` ``[n_state, T, S]`` (the state after every step). All tensors contiguous, one dtype."""
    T, S = xs.shape
    mod = load(kernel, xs.dtype)
    lay, lo, hi = _launch_args(xs, layout, seed)
    block = _block("forward")
    args = [xs, ys, *state, *final, xs if saved is None else saved, *params, *lay, T, S, lo, hi]
    _run(mod.tt_forward, (triton_cdiv(S, block),), xs.device, args, SAVE=saved is not None, BLOCK=block)


def backward(
    kernel: Any,
    xs: torch.Tensor,
    state: list[torch.Tensor],
    params: list[torch.Tensor],
    layout: list[int],
    seed: torch.Tensor,
    saved: torch.Tensor,
    grad_ys: torch.Tensor,
    grad_final: list[torch.Tensor],
    gxs: torch.Tensor,
    gstate: list[torch.Tensor],
    gparams: list[torch.Tensor],
) -> None:
    """Run the backward kernel: fill ``gxs`` ``[T, S]``, ``gstate`` (each ``[S]``, the gradient of the
    initial state) and ``gparams`` (each ``[S]``, every param's gradient per element)."""
    T, S = xs.shape
    mod = load(kernel, xs.dtype)
    lay, lo, hi = _launch_args(xs, layout, seed)
    block = _block("backward")
    args = [xs, *state, saved, *params, *lay, T, S, lo, hi, grad_ys, *grad_final, gxs, *gstate, *gparams]
    _run(mod.tt_backward, (triton_cdiv(S, block),), xs.device, args, BLOCK=block)


def triton_cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints."""
    return -(-a // b)
