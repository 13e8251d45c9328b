"""The kernels as ``torch.library`` custom ops, with fake (meta) kernels and autograd.

Two ops, generic over every neuron type (the type, spike function and quantizer are string
arguments, so one schema serves all 28 and ``torch.compile`` sees one opaque call per layer):

* ``tracetorch::neuron_scan(xs [T, S], state [S]..., params [n_p]..., ...) -> (ys, final state, saved)``
* ``tracetorch::neuron_scan_backward(...) -> (grad xs, grad initial state, grad params per element)``

``saved`` is what the forward keeps for the backward (``[0]`` when no gradient is needed): on the
CPU ``[n_state, C, S]``, the states entering steps ``K, 2K, ...`` (checkpoints; the backward
recomputes the steps between them, see :func:`cpu.chunk_steps`), on CUDA ``[n_state, T, S]``, the
state after every step. The backward op is itself differentiable only into a clear error: a second
derivative through the kernels (a gradient penalty, say) raises and says to use ``fast=False``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import threading
from functools import cache
from typing import Any

import torch

from .. import spikes
from ..neurons import SPECS, NeuronSpec
from . import cpu
from .trace import Traced, adjoint, builtin_spike_kind, trace_step

__all__ = ["neuron_scan", "kernel_scan", "scan_flat", "spike_tag", "Kernel", "get_kernel", "uniform_draws"]

_DTYPES = {torch.float32: "float", torch.float64: "double"}


def spike_tag(spike_fn: Any) -> str | None:
    """A string naming a built-in spike function and its constant (``"Sigmoid:4.0"``), else ``None``."""
    kind = builtin_spike_kind(spike_fn)
    if kind is None:
        return None
    (f,) = dataclasses.fields(spike_fn)
    return f"{kind}:{float(getattr(spike_fn, f.name))!r}"


def _spike_from_tag(tag: str) -> Any:
    kind, value = tag.split(":")
    return getattr(spikes, kind)(float(value))


class Kernel:
    """The traced step of one ``(type, spike function, quantizer)`` and its built C functions per dtype."""

    def __init__(self, kind: str, spike: str, quant: str) -> None:
        self.quant = quant
        if kind.startswith("custom:"):  # a user's step, registered by its graph's hash (see .custom)
            from .custom import registered

            self.spec: NeuronSpec | None = None
            self.traced: Traced = registered(kind)
        else:
            self.spec = SPECS[kind]
            self.traced = trace_step(self.spec, _spike_from_tag(spike))
        self.adjoint = adjoint(self.traced, quant)
        self._libs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def source(self, real: str) -> str:
        """The C source of this kernel for ``real`` (``"float"`` or ``"double"``)."""
        return cpu.c_source(self.traced, self.adjoint, self.quant, real)

    def lib(self, real: str) -> Any:
        """The loaded C library for ``real``, built (or read from the disk cache) on first use."""
        with self._lock:
            lib = self._libs.get(real)
            if lib is None:
                lib = cpu.load(self.source(real))
                ptr, long_, u64, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_uint64, ctypes.c_int
                lib.tt_forward.argtypes = [long_, long_, *[ptr] * 8, u64, int_]
                lib.tt_forward.restype = None
                lib.tt_backward.argtypes = [long_, long_, *[ptr] * 6, u64, *[ptr] * 5, int_]
                lib.tt_backward.restype = None
                self._libs[real] = lib
            return lib


@cache
def get_kernel(kind: str, spike: str, quant: str) -> Kernel:
    """The (cached, thread-safe) kernel of a type, spike tag and quantizer name (``"none"`` for LI)."""
    return Kernel(kind, spike, quant)


def _ptrs(tensors: list[torch.Tensor | None]) -> ctypes.Array:
    return (ctypes.c_void_p * max(1, len(tensors)))(*[0 if t is None else t.data_ptr() for t in tensors])


def _longs(values: list[int]) -> ctypes.Array:
    return (ctypes.c_long * max(1, len(values)))(*values)


def _seed(seed: torch.Tensor) -> int:
    return int(seed.item()) & 0xFFFFFFFFFFFFFFFF


def _mix(h: torch.Tensor) -> torch.Tensor:
    m = 0xFFFFFFFF
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & m
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & m
    return h ^ (h >> 16)


def uniform_draws(seed: int, T: int, S: int, sites: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The CPU kernels' uniform draws ``[T, sites, S]`` for ``seed``, computed with torch ops.

    Draw ``(t, site, i)`` hashes the counter ``t*S + i`` with the seed and the site (the quantizer
    call within the step: 0 for ``s_pos``/``s``, 1 for ``s_neg``); spikes fire where ``draw < p``.
    The plain loop draws with ``torch.bernoulli`` instead: the same distribution, other samples.
    """
    seed &= 0xFFFFFFFFFFFFFFFF
    lo, hi, m = seed & 0xFFFFFFFF, seed >> 32, 0xFFFFFFFF
    ctr = torch.arange(T * S, dtype=torch.int64).reshape(T, 1, S)
    site = torch.arange(sites, dtype=torch.int64).reshape(1, sites, 1)
    h = _mix((ctr & m) ^ lo)
    h = _mix(h ^ (ctr >> 32) ^ ((site * 0x9E3779B9) & m))
    h = _mix((h + hi) & m)
    return (h >> 8).to(dtype) * 2.0**-24


# ---- the two kernels, as plain functions on tensors --------------------------------------------


def _new_saved(xs: torch.Tensor, n_state: int, save: bool) -> torch.Tensor:
    """The forward's buffer for the backward: see the module docstring."""
    if not save:
        return xs.new_empty((0,))
    T, S = xs.shape
    steps = T if xs.device.type == "cuda" else cpu.saved_steps(T, n_state, _DTYPES.get(xs.dtype, "float"))
    return xs.new_empty((n_state, steps, S))


def scan_forward(xs, state, params, kind, spike, quant, layout, seed, save):
    """Forward kernel: see :func:`neuron_scan` (whose body this is)."""
    xs = xs.contiguous()
    state = [s.contiguous() for s in state]
    params = [p.contiguous() for p in params]
    T, S = xs.shape
    ys = torch.empty_like(xs)
    final = [torch.empty_like(s) for s in state]
    saved = _new_saved(xs, len(state), save)
    if xs.device.type == "cuda":
        from . import gpu

        gpu.forward(get_kernel(kind, spike, quant), xs, state, params, layout, seed, ys, final, saved if save else None)
        return ys, final, saved
    real = _DTYPES[xs.dtype]
    lib = get_kernel(kind, spike, quant).lib(real)
    lib.tt_forward(
        T, S, xs.data_ptr(), ys.data_ptr(), _ptrs(state), _ptrs(final), saved.data_ptr() if save else None,
        _ptrs(params), _longs(layout[0::2]), _longs(layout[1::2]), _seed(seed), cpu.threads_for(T, S, real),
    )  # fmt: skip
    return ys, final, saved


def scan_backward(xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final):
    """Backward kernel: see :func:`neuron_scan_backward` (whose body this is)."""
    xs, saved, grad_ys = xs.contiguous(), saved.contiguous(), grad_ys.contiguous()
    state = [s.contiguous() for s in state]
    params = [p.contiguous() for p in params]
    grad_final = [g.contiguous() for g in grad_final]
    T, S = xs.shape
    gxs = torch.empty_like(xs)
    gstate = [torch.empty_like(s) for s in state]
    gparams = [xs.new_empty(S) for _ in params]
    if xs.device.type == "cuda":
        from . import gpu

        gpu.backward(
            get_kernel(kind, spike, quant), xs, state, params, layout, seed, saved, grad_ys, grad_final,
            gxs, gstate, gparams,
        )  # fmt: skip
        return gxs, gstate, gparams
    real = _DTYPES[xs.dtype]
    lib = get_kernel(kind, spike, quant).lib(real)
    lib.tt_backward(
        T, S, xs.data_ptr(), _ptrs(state), saved.data_ptr(), _ptrs(params), _longs(layout[0::2]),
        _longs(layout[1::2]), _seed(seed), grad_ys.data_ptr(), _ptrs(grad_final), gxs.data_ptr(), _ptrs(gstate),
        _ptrs(gparams), cpu.threads_for(T, S, real),
    )  # fmt: skip
    return gxs, gstate, gparams


def _reduce_params(gelem: list[torch.Tensor], layout: list[int], S: int) -> list[torch.Tensor]:
    """Per-element param gradients ``[S]`` summed to each param's flat ``[n]``."""
    out = []
    for k, g in enumerate(gelem):
        n, inner = layout[2 * k], layout[2 * k + 1]
        out.append(g.reshape(S // (n * inner), n, inner).sum(dim=(0, 2)))
    return out


# ---- the ops ------------------------------------------------------------------------------------


@torch.library.custom_op("tracetorch::neuron_scan", mutates_args=())
def neuron_scan(
    xs: torch.Tensor,
    state: list[torch.Tensor],
    params: list[torch.Tensor],
    kind: str,
    spike: str,
    quant: str,
    layout: list[int],
    seed: torch.Tensor,
    save: bool,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Run a neuron type over ``xs`` ``[T, S]`` from ``state`` (each ``[S]``).

    ``params[k]`` is ``[n_k]``, read at element ``i`` as ``params[k][(i // inner_k) % n_k]`` with
    ``layout = [n_0, inner_0, n_1, inner_1, ...]``. ``seed`` (an int64 scalar tensor) keys the
    random quantizers' draws. Returns ``(ys [T, S], final state [S]..., saved)`` (see the module docstring).
    """
    return scan_forward(xs, state, params, kind, spike, quant, layout, seed, save)


@neuron_scan.register_fake
def _(xs, state, params, kind, spike, quant, layout, seed, save):
    return torch.empty_like(xs), [torch.empty_like(s) for s in state], _new_saved(xs, len(state), save)


@torch.library.custom_op("tracetorch::neuron_scan_backward", mutates_args=())
def neuron_scan_backward(
    xs: torch.Tensor,
    state: list[torch.Tensor],
    params: list[torch.Tensor],
    kind: str,
    spike: str,
    quant: str,
    layout: list[int],
    seed: torch.Tensor,
    saved: torch.Tensor,
    grad_ys: torch.Tensor,
    grad_final: list[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The BPTT backward of :func:`neuron_scan`: gradients wrt ``xs``, the initial state, and each
    param *per element* (``[S]`` each; the caller sums them to the param's shape)."""
    return scan_backward(xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final)


@neuron_scan_backward.register_fake
def _(xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final):
    S = xs.shape[1]
    return torch.empty_like(xs), [torch.empty_like(s) for s in state], [xs.new_empty(S) for _ in params]


def _setup(ctx, inputs, output) -> None:
    xs, state, params, kind, spike, quant, layout, seed, save = inputs
    ctx.meta = (kind, spike, quant, list(layout), len(state), len(params))
    ctx.save_for_backward(xs, seed, output[2], *state, *params)


def _backward(ctx, grad_ys, grad_final, _grad_saved):
    kind, spike, quant, layout, ns, np_ = ctx.meta
    xs, seed, saved, *rest = ctx.saved_tensors
    state, params = rest[:ns], rest[ns:]
    if saved.dim() != 3:
        raise RuntimeError(
            "tracetorch kernels: the forward ran without saving its states (no input required grad "
            "then); run it again with gradients enabled"
        )
    grad_ys = torch.zeros_like(xs) if grad_ys is None else grad_ys
    grad_final = [torch.zeros_like(s) if g is None else g for s, g in zip(state, grad_final)]
    gxs, gstate, gelem = neuron_scan_backward(
        xs, list(state), list(params), kind, spike, quant, layout, seed, saved, grad_ys, grad_final
    )
    return gxs, gstate, _reduce_params(gelem, layout, xs.shape[1]), None, None, None, None, None, None


torch.library.register_autograd("tracetorch::neuron_scan", _backward, setup_context=_setup)


class DoubleBackwardError(RuntimeError):
    """A second derivative was asked of the fused kernels, which are first order."""


def _no_double_backward(ctx, *grads):
    raise DoubleBackwardError(
        "tracetorch kernels are first order: a second derivative (double backward, e.g. a gradient "
        "penalty) cannot go through the fused kernel path; pass fast=False to scan/run (for per-step "
        "calls of large layers, set tracetorch.functional.kernels.config.auto = False, or "
        "TRACETORCH_FAST=0 for every path) to run the plain step, which torch's autograd "
        "differentiates to any order"
    )


def _setup_nothing(ctx, inputs, output) -> None:
    return None


torch.library.register_autograd("tracetorch::neuron_scan_backward", _no_double_backward, setup_context=_setup_nothing)


def _pick(t: Any, dim: Any, b: int) -> Any:
    if isinstance(t, (list, tuple)):
        return [_pick(u, d, b) for u, d in zip(t, dim)]
    return t if dim is None or not isinstance(t, torch.Tensor) else t.select(dim, b)


def _vmap_backward(info, in_dims, *args):
    # batched gradients (vmap over the backward, e.g. jacobians or gradcheck's batched check): the
    # members are independent backward passes, run one after the other
    outs = [neuron_scan_backward(*(_pick(a, d, b) for a, d in zip(args, in_dims))) for b in range(info.batch_size)]
    gxs = torch.stack([o[0] for o in outs])
    gstate = [torch.stack([o[1][k] for o in outs]) for k in range(len(outs[0][1]))]
    gparams = [torch.stack([o[2][k] for o in outs]) for k in range(len(outs[0][2]))]
    return (gxs, gstate, gparams), (0, [0] * len(gstate), [0] * len(gparams))


neuron_scan_backward.register_vmap(_vmap_backward)


class _FirstOrder(torch.autograd.Function):
    """Identity on gradients computed by the kernels; differentiating it again raises."""

    @staticmethod
    def forward(ctx, anchor, *grads):
        return grads

    @staticmethod
    def backward(ctx, *grads):
        _no_double_backward(ctx)


class _EagerScan(torch.autograd.Function):
    """The kernels in eager mode: the same C (or Triton) calls as the custom ops, without the
    dispatcher's per-call cost (it matters for the per-step calls of the object API)."""

    @staticmethod
    def forward(ctx, meta, xs, *flat):
        kind, spike, quant, layout, ns, seed, save = meta
        state, params = list(flat[:ns]), list(flat[ns:])
        ys, final, saved = scan_forward(xs, state, params, kind, spike, quant, layout, seed, save)
        ctx.meta = meta
        ctx.save_for_backward(xs, saved, *state, *params)
        return (ys, *final)

    @staticmethod
    def backward(ctx, grad_ys, *grad_final):
        kind, spike, quant, layout, ns, seed, _ = ctx.meta
        xs, saved, *rest = ctx.saved_tensors
        state, params = rest[:ns], rest[ns:]
        grad_ys = torch.zeros_like(xs) if grad_ys is None else grad_ys
        grad_final = [torch.zeros_like(s) if g is None else g for s, g in zip(state, grad_final)]
        with torch.no_grad():
            gxs, gstate, gelem = scan_backward(
                xs, list(state), list(params), kind, spike, quant, layout, seed, saved, grad_ys, grad_final
            )
            grads = (gxs, *gstate, *_reduce_params(gelem, layout, xs.shape[1]))
        if torch.is_grad_enabled():  # create_graph=True: a further backward through these must raise
            grads = _FirstOrder.apply(torch.zeros((), requires_grad=True), *grads)
        return (None, *grads)


#: ``"auto"``: eager calls take :class:`_EagerScan`, traced ones (``torch.compile``) the custom op;
#: ``"op"``: always the custom op (the tests run both).
EAGER_PATH = {"mode": "auto"}


# ---- the Python entry ---------------------------------------------------------------------------


def _param_layout(p: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, int, int]:
    """``p`` (broadcastable to ``shape``) as a flat ``[n]`` read at element ``i`` as ``[(i // inner) % n]``."""
    if p.numel() == 1:
        return p.reshape(1), 1, 1
    padded = (1,) * (len(shape) - p.dim()) + tuple(p.shape)
    big = [d for d, size in enumerate(padded) if size != 1]
    if len(big) == 1:
        d = big[0]
        return p.reshape(padded[d]), padded[d], math.prod(shape[d + 1 :])
    full = p.expand(shape).reshape(-1)
    return full, full.shape[0], 1


def kernel_scan(
    spec: NeuronSpec, spike: str, quant: str, params: Any, state: Any, xs: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Run ``spec`` over ``xs`` ``[T, ...]`` through the fused kernel: ``(ys [T, ...], final state)``.

    ``spike`` is a :func:`spike_tag`; ``quant`` a quantizer name (``"none"`` for the LI family).
    Params broadcast to one step of ``xs``; states have its shape. Random quantizers draw their
    seed from torch's default generator, so ``torch.manual_seed`` reproduces a run.
    """
    ys, final = scan_flat(spec.name, spike, quant, params, state, xs)
    return ys, spec.State(*final)


def scan_flat(
    kind: str, spike: str, quant: str, params: Any, state: Any, xs: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`kernel_scan` for a kernel named by ``kind`` (a type's name or a custom step's
    ``"custom:<hash>"``), with params and states as sequences: ``(ys, [final state leaf, ...])``."""
    T, shape = xs.shape[0], xs.shape[1:]
    S = math.prod(shape)
    flat_params, layout = [], []
    for p in params:
        flat, n, inner = _param_layout(p, shape)
        flat_params.append(flat)
        layout += [n, inner]
    if quant in ("bernoulli", "probabilistic"):
        seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)
    else:
        seed = torch.zeros((), dtype=torch.int64)
    flat_state = [s.reshape(S) for s in state]
    # under no_grad nothing is kept for a backward (autograd.Function's needs_input_grad ignores the mode)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in [*flat_params, *state, xs])
    if EAGER_PATH["mode"] == "auto" and not torch.compiler.is_compiling():
        meta = (kind, spike, quant, layout, len(flat_state), seed, save)
        ys, *final = _EagerScan.apply(meta, xs.reshape(T, S), *flat_state, *flat_params)
    else:
        ys, final, _ = neuron_scan(xs.reshape(T, S), flat_state, flat_params, kind, spike, quant, layout, seed, save)
    return ys.reshape(xs.shape), [f.reshape(shape) for f in final]
