"""The kernels as ``torch.library`` custom ops, with fake (meta) kernels and autograd.

Two ops, generic over every neuron type (the type, spike function and quantizer are string
arguments, so one schema serves every type and ``torch.compile`` sees one opaque call per layer):

* ``tracetorch::neuron_scan(xs [T, S], state [S]..., params [n_p]..., ...) -> (ys, final state, saved)``
* ``tracetorch::neuron_scan_backward(...) -> (grad xs, grad initial state, grad params per element)``

``saved`` is what the forward keeps for the backward (``[0]`` when no gradient is needed): on the
CPU ``[n_state, C, S]``, the states entering steps ``K, 2K, ...`` (checkpoints; the backward
recomputes the steps between them, see :func:`cpu.chunk_steps`), on CUDA ``[n_state, T, S]``, the
state after every step.

Transforms: both kernels have a ``torch.func.vmap`` rule (:func:`_vmap_scan`) that folds the
vmapped dimension into the kernel's elements (batched params read per member through the layout;
member by member on request, :data:`VMAP`), so ``vmap``, ``grad``, ``vjp``,
``jacrev`` and their compositions run the kernels. The backward op is differentiable: its derivative recomputes the plain step
(:func:`.plain.plain_scan`, with the kernels' own draws) with autograd, so second derivatives
(a gradient penalty) are exact.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import math
import os
import threading
from functools import cache
from typing import Any

import torch

from .. import spikes
from ..neurons import NeuronSpec, spec_from_key
from . import cpu
from .context import tracing
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
            self.spec = spec_from_key(kind)
            self.traced = trace_step(self.spec, _spike_from_tag(spike))
        self.adjoint = adjoint(self.traced, quant)
        self._libs: dict[tuple[str, str], Any] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._lock = cpu.cache.ForkSafeLock()  # released again in a forked child

    def source(self, real: str, part: str = "both") -> str:
        """The C source of this kernel for ``real`` (``"float"`` or ``"double"``): both functions,
        or one of them (``part="forward"`` / ``"backward"``, the two libraries it is built as)."""
        return cpu.c_source(self.traced, self.adjoint, self.quant, real, part)

    def prebuild(self, real: str) -> None:
        """Start building (or reading from the disk cache) both libraries for ``real`` in background
        threads, the forward and the backward at the same time; returns at once. The first call
        that needs one waits for it (:meth:`lib`), so a run never switches from the plain loop to
        the kernel halfway; a failed build raises there, as a build in the calling thread would."""
        with self._lock:
            for part in _PARTS:
                key = (real, part)
                if key not in self._libs and not _live(self._pending.get(key)):
                    self._pending[key] = _in_background(self._load, real, part)

    def lib(self, real: str, part: str = "forward") -> Any:
        """The loaded C library of ``part`` (``tt_forward`` or ``tt_backward``) for ``real``,
        built (or read from the disk cache) on first use, both parts at once."""
        key = (real, part)
        lib = self._libs.get(key)  # the common case, without the lock (a dict read is atomic)
        if lib is not None:
            return lib
        while True:
            with self._lock:
                lib = self._libs.get(key)
                pending = self._pending.get(key)
            if lib is not None:
                return lib
            if _live(pending):
                break
            self.prebuild(real)
        try:
            lib = pending.result()
        except BaseException:
            with self._lock:  # a failed build is tried again by the next call, as before
                if self._pending.get(key) is pending:
                    del self._pending[key]
            raise
        with self._lock:
            self._libs[key] = lib
            self._pending.pop(key, None)
        return lib

    def _load(self, real: str, part: str) -> Any:
        lib = cpu.load(self.source(real, part))
        ptr, long_, u64, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_uint64, ctypes.c_int
        if part == "forward":
            lib.tt_forward.argtypes = [long_, long_, *[ptr] * 8, u64, int_]
            lib.tt_forward.restype = None
        else:
            lib.tt_backward.argtypes = [long_, long_, *[ptr] * 6, u64, *[ptr] * 5, int_]
            lib.tt_backward.restype = None
        return lib


_PARTS = ("forward", "backward")


class _Pending(concurrent.futures.Future):
    """A build running in a background thread of this process (see :func:`_in_background`)."""

    pid = 0


def _live(pending: _Pending | None) -> bool:
    # a child made by os.fork has none of its parent's threads: a build pending there never ends here
    return pending is not None and pending.pid == os.getpid()


def _in_background(fn: Any, *args: Any) -> _Pending:
    """Run ``fn(*args)`` in a new thread; its result (or exception) in the returned future.

    A plain non-daemon thread that ends with its build (no pool that would keep threads alive
    for a later ``fork``); the interpreter waits for it at exit, so no half-built file is left.
    """
    fut = _Pending()
    fut.pid = os.getpid()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as err:  # handed to whoever waits for the library
            fut.set_exception(err)

    threading.Thread(target=work, name="tracetorch-kernel-build").start()
    return fut


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


def scan_forward(xs, state, params, kind, spike, quant, layout, seed, save, out=None, threads=None):
    """Forward kernel: see :func:`neuron_scan` (whose body this is). ``out``: contiguous
    ``(ys, final, saved)`` to write into (a vmap rule's slices of the population's outputs);
    ``threads``: the CPU threads (default: by this call's size)."""
    xs = xs.contiguous()
    state = [s.contiguous() for s in state]
    params = [p.contiguous() for p in params]
    T, S = xs.shape
    if out is None:
        ys, final, saved = torch.empty_like(xs), [torch.empty_like(s) for s in state], _new_saved(xs, len(state), save)
    else:
        ys, final, saved = out
    if xs.device.type == "cuda":
        from . import gpu

        gpu.forward(get_kernel(kind, spike, quant), xs, state, params, layout, seed, ys, final, saved if save else None)
        return ys, final, saved
    real = _DTYPES[xs.dtype]
    kernel = get_kernel(kind, spike, quant)
    lib = kernel.lib(real)
    if save:  # the backward's library too, before anything runs: a failed build falls back whole
        kernel.lib(real, "backward")
    lib.tt_forward(
        T, S, xs.data_ptr(), ys.data_ptr(), _ptrs(state), _ptrs(final), saved.data_ptr() if save else None,
        _ptrs(params), _longs(layout[0::2]), _longs(layout[1::2]), _seed(seed), threads or cpu.threads_for(T, S, real),
    )  # fmt: skip
    return ys, final, saved


def scan_backward(
    xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final, out=None, threads=None
):
    """Backward kernel: see :func:`neuron_scan_backward` (whose body this is); ``out``
    ``(gxs, gstate, gparams)`` and ``threads`` as for :func:`scan_forward`."""
    xs, saved, grad_ys = xs.contiguous(), saved.contiguous(), grad_ys.contiguous()
    state = [s.contiguous() for s in state]
    params = [p.contiguous() for p in params]
    grad_final = [g.contiguous() for g in grad_final]
    T, S = xs.shape
    if out is None:
        gxs, gstate, gparams = (
            torch.empty_like(xs),
            [torch.empty_like(s) for s in state],
            [xs.new_empty(S) for _ in params],
        )
    else:
        gxs, gstate, gparams = out
    if xs.device.type == "cuda":
        from . import gpu

        gpu.backward(
            get_kernel(kind, spike, quant), xs, state, params, layout, seed, saved, grad_ys, grad_final,
            gxs, gstate, gparams,
        )  # fmt: skip
        return gxs, gstate, gparams
    real = _DTYPES[xs.dtype]
    lib = get_kernel(kind, spike, quant).lib(real, "backward")
    lib.tt_backward(
        T, S, xs.data_ptr(), _ptrs(state), saved.data_ptr(), _ptrs(params), _longs(layout[0::2]),
        _longs(layout[1::2]), _seed(seed), grad_ys.data_ptr(), _ptrs(grad_final), gxs.data_ptr(), _ptrs(gstate),
        _ptrs(gparams), threads or cpu.threads_for(T, S, real),
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
    """Deprecated and no longer raised: second derivatives run through the kernels (their
    backward is differentiated by recomputing the plain step). Kept so imports keep working;
    it will be removed."""


_RANDOM = ("bernoulli", "probabilistic")


def _setup_backward(ctx, inputs, output) -> None:
    xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final = inputs
    ctx.meta = (kind, spike, quant, list(layout), len(state), len(params))
    ctx.save_for_backward(xs, seed, grad_ys, *state, *params, *grad_final)


def _second_order(meta, xs, seed, grad_ys, state, params, grad_final, g_gxs, g_gstate, g_gelem):
    """The vjp of the backward op (the BPTT vjp of the scan at ``(grad_ys, grad_final)``) at
    ``(g_gxs, g_gstate, g_gelem)``: ``(d xs, d state, d params, d grad_ys, d grad_final)``.

    It recomputes the first vjp through the plain step with autograd (:mod:`.plain`, on the
    kernels' own draws for the random quantizers, so it is the same function) and differentiates
    it; under ``create_graph`` the result is differentiable again, to any order.
    """
    from .plain import expand_params, plain_scan_elements

    kind, spike, quant, layout = meta[:4]
    S, seed_ = xs.shape[1], _seed(seed)

    def first(xs, state, params, grad_ys, grad_final):
        elem = expand_params(params, list(layout), S)
        if not _transformed():
            ys, final = plain_scan_elements(kind, spike, quant, xs, state, elem, seed_)
            g = torch.autograd.grad(
                [ys, *final], [xs, *state, *elem], [grad_ys, *grad_final], create_graph=True, allow_unused=True
            )
            return g[0], list(g[1 : 1 + len(state)]), list(g[1 + len(state) :])

        def scan(xs, state, elem):
            return plain_scan_elements(kind, spike, quant, xs, state, elem, seed_)

        _, pull = torch.func.vjp(scan, xs, state, elem)
        return pull((grad_ys, grad_final))

    zeros = lambda gs, ts: [torch.zeros_like(t) if g is None else g for g, t in zip(gs, ts)]  # noqa: E731
    state, params, grad_final = list(state), list(params), list(grad_final)
    elem_like = [xs.new_empty(S)] * len(params)
    cot = (zeros([g_gxs], [xs])[0], zeros(g_gstate, state), zeros(g_gelem, elem_like))
    if not _transformed():  # torch's autograd straight (torch.func.vjp costs more per op)
        return _second_order_autograd(first, (xs, state, params, grad_ys, grad_final), cot)
    _, pull = torch.func.vjp(first, xs, state, params, grad_ys, grad_final)
    gxs, gstate, gparams, g_grad_ys, g_grad_final = pull(cot)
    return gxs, list(gstate), list(gparams), g_grad_ys, list(g_grad_final)


def _second_order_autograd(first, inputs, cot):
    """``torch.func.vjp(first, *inputs)[1](cot)`` with torch's autograd, differentiable again under
    ``create_graph``."""
    create = torch.is_grad_enabled()
    xs, state, params, grad_ys, grad_final = inputs
    with torch.enable_grad():

        def leaf(t):
            return t if create and t.requires_grad else t.detach().requires_grad_(True)

        xs_, grad_ys_ = leaf(xs), leaf(grad_ys)
        state_, params_, grad_final_ = (
            [leaf(t) for t in state],
            [leaf(t) for t in params],
            [leaf(t) for t in grad_final],
        )
        gxs, gstate, gelem = first(xs_, state_, params_, grad_ys_, grad_final_)
        outs, cots = [], []
        for f, c in zip([gxs, *gstate, *gelem], [cot[0], *cot[1], *cot[2]]):
            if f is not None and f.requires_grad:
                outs.append(f)
                cots.append(c)
        flat = [xs_, *state_, *params_, grad_ys_, *grad_final_]
        grads = (
            torch.autograd.grad(outs, flat, cots, create_graph=create, allow_unused=True)
            if outs
            else [None] * len(flat)
        )
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, flat)]
    ns, np_ = len(state), len(params)
    return grads[0], grads[1 : 1 + ns], grads[1 + ns : 1 + ns + np_], grads[1 + ns + np_], grads[2 + ns + np_ :]


def _double_backward(ctx, g_gxs, g_gstate, g_gelem):
    ns, np_ = ctx.meta[4], ctx.meta[5]
    xs, seed, grad_ys, *rest = ctx.saved_tensors
    state, params, grad_final = rest[:ns], rest[ns : ns + np_], rest[ns + np_ :]
    gxs, gstate, gparams, g_grad_ys, g_grad_final = _second_order(
        ctx.meta, xs, seed, grad_ys, state, params, grad_final, g_gxs, g_gstate, g_gelem
    )
    return gxs, gstate, gparams, None, None, None, None, None, None, g_grad_ys, g_grad_final


torch.library.register_autograd("tracetorch::neuron_scan_backward", _double_backward, setup_context=_setup_backward)


# ---- vmap: the members folded into the kernel's elements ----------------------------------------


def _fold(t: torch.Tensor, d: int | None, P: int) -> torch.Tensor:
    """``t`` (logical ``[..., S]``, batched at physical dim ``d`` or unbatched) as ``[..., P*S]``,
    member ``b`` at elements ``b*S ... b*S + S - 1``."""
    t = t.unsqueeze(-2).expand(*t.shape[:-1], P, t.shape[-1]) if d is None else t.movedim(d, -2)
    return t.reshape(*t.shape[:-2], P * t.shape[-1])


def _fold_params(params, dims, layout, P: int, S: int):
    """Per-member flat params (each ``[n]`` read through ``(n, inner)``) and the layout reading
    them over ``P*S`` folded elements: unbatched params keep theirs (element ``b*S + j`` reads as
    ``j`` does, since ``n * inner`` divides ``S``); a batched one becomes ``[P*n]`` when it spans
    the whole step, ``[P]`` read per member when scalar, else per element ``[P*S]``."""
    flat, lay = [], []
    for k, (p, d) in enumerate(zip(params, dims)):
        n, inner = layout[2 * k], layout[2 * k + 1]
        if d is None:
            flat.append(p)
            lay += [n, inner]
            continue
        p = p.movedim(d, 0)
        if n * inner == S:
            flat.append(p.reshape(P * n))
            lay += [P * n, inner]
        elif n == 1:
            flat.append(p.reshape(P))
            lay += [P, S]
        else:
            flat.append(p.reshape(P, 1, n, 1).expand(P, S // (n * inner), n, inner).reshape(P * S))
            lay += [P * S, 1]
    return flat, lay


def _unfold(t: torch.Tensor, P: int) -> torch.Tensor:
    return t.reshape(*t.shape[:-1], P, t.shape[-1] // P)


def _loop_members(op, info, in_dims, args):
    """The members one call after another, stacked at dim 0 (``randomness="same"``: every member
    draws with the one seed, so each gets the same draws, as torch's "same" means)."""
    outs = [op(*(_pick(a, d, b) for a, d in zip(args, in_dims))) for b in range(info.batch_size)]
    stacked = tuple(
        [torch.stack([o[i][k] for o in outs]) for k in range(len(first))]
        if isinstance(first, (list, tuple))
        else torch.stack([o[i] for o in outs])
        for i, first in enumerate(outs[0])
    )
    dims = tuple([0] * len(x) if isinstance(x, list) else 0 for x in stacked)
    return stacked, dims


#: ``member_wise``: the vmap rule runs batched CPU inputs member by member on their slices, no copy
#: (``False``, the default: folded, one call). Measured on 2 shared cores, T=100, B=16, N=512,
#: 32 members, medians of 5 paired rounds: vmap forward 1176 ms member by member / 941 folded,
#: vmap(grad) 3616 / 2742 (the copies of folding cost less than 32 calls' thread start-ups).
VMAP = {"member_wise": False}


def _direct(args) -> bool:
    """Whether a vmap rule may call the kernels straight on these tensors: nothing below it to
    record (no further transform, no autograd)."""
    grad_on = torch.is_grad_enabled()
    for a in args:
        for t in a if isinstance(a, list) else [a]:
            if isinstance(t, torch.Tensor) and (_wrapped(t) or (grad_on and t.requires_grad)):
                return False
    return True


def _wrapped(t: torch.Tensor) -> bool:
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def _sel(t: torch.Tensor, d: int | None, b: int) -> torch.Tensor:
    return t if d is None else t.select(d, b)


def _members_forward(P, in_dims, xs, state, params, kind, spike, quant, layout, seed, save):
    """The members one kernel call each, on their own slices (no copy of a batched ``xs`` at dim
    0) and writing into slices of the population's outputs; member ``b`` draws with its own seed
    (``randomness="different"``) or the one seed (``"same"``)."""
    x0 = _sel(xs, in_dims[0], 0)
    T, S = x0.shape
    ys, final = xs.new_empty((P, T, S)), [xs.new_empty((P, S)) for _ in state]
    saved = xs.new_empty((P, *_new_saved(x0, len(state), save).shape)) if save else xs.new_empty((0,))
    threads = cpu.threads_for(T, P * S, _DTYPES[xs.dtype])
    for b in range(P):
        scan_forward(
            _sel(xs, in_dims[0], b), [_sel(t, d, b) for t, d in zip(state, in_dims[1])],
            [_sel(t, d, b) for t, d in zip(params, in_dims[2])], kind, spike, quant, layout, _sel(seed, in_dims[7], b),
            save, out=(ys[b], [f[b] for f in final], saved[b] if save else None), threads=threads,
        )  # fmt: skip
    return (ys, final, saved), (0, [0] * len(state), 0 if save else None)


def _members_backward(P, in_dims, args):
    """The backward of :func:`_members_forward`, member by member into slices of the gradients."""
    xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final = args
    x0 = _sel(xs, in_dims[0], 0)
    T, S = x0.shape
    gxs, gstate = xs.new_empty((P, T, S)), [xs.new_empty((P, S)) for _ in state]
    gelem = [xs.new_empty((P, S)) for _ in params]
    threads = cpu.threads_for(T, P * S, _DTYPES[xs.dtype])
    for b in range(P):
        scan_backward(
            _sel(xs, in_dims[0], b), [_sel(t, d, b) for t, d in zip(state, in_dims[1])],
            [_sel(t, d, b) for t, d in zip(params, in_dims[2])], kind, spike, quant, layout, _sel(seed, in_dims[7], b),
            _sel(saved, in_dims[8], b), _sel(grad_ys, in_dims[9], b),
            [_sel(t, d, b) for t, d in zip(grad_final, in_dims[10])],
            out=(gxs[b], [g[b] for g in gstate], [g[b] for g in gelem]), threads=threads,
        )  # fmt: skip
    return (gxs, gstate, gelem), (0, [0] * len(state), [0] * len(params))


def _vmap_scan(info, in_dims, xs, state, params, kind, spike, quant, layout, seed, save, call=None):
    """The forward's vmap rule: one call with the members folded into the elements; member by
    member through ``call`` for a random quantizer with one seed (``randomness="same"``); member
    by member on the slices of ``xs`` (:func:`_members_forward`) where :data:`VMAP` asks and it can."""
    call = call or neuron_scan
    args = (xs, state, params, kind, spike, quant, layout, seed, save)
    if VMAP["member_wise"] and in_dims[0] == 0 and xs.device.type == "cpu" and _direct(args):
        return _members_forward(info.batch_size, in_dims, *args)
    if quant in _RANDOM and in_dims[7] is None:
        if info.randomness == "error":  # (torch refuses the seed's draw before this; kept as a guard)
            raise RuntimeError("vmap: the random quantizer needs randomness='different' or 'same'")
        return _loop_members(call, info, in_dims, args)
    P = info.batch_size
    seed = seed if in_dims[7] is None else seed.select(in_dims[7], 0)
    fx = _fold(xs, in_dims[0], P)
    fstate = [_fold(s, d, P) for s, d in zip(state, in_dims[1])]
    fparams, flay = _fold_params(params, in_dims[2], layout, P, fx.shape[1] // P)
    ys, final, saved = call(fx, fstate, fparams, kind, spike, quant, flay, seed, save)
    out_saved, saved_dim = (_unfold(saved, P), 2) if saved.dim() == 3 else (saved, None)
    return (_unfold(ys, P), [_unfold(f, P) for f in final], out_saved), (1, [0] * len(final), saved_dim)


def _vmap_backward(info, in_dims, *args, call=None):
    """The backward's vmap rule, the way its forward ran: saved batched at dim 0 (the forward ran
    member by member): member by member; else folded as the forward was (or, for a random
    quantizer with one seed, member by member through ``call``)."""
    call = call or neuron_scan_backward
    xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final = args
    if in_dims[8] == 0:
        if xs.device.type == "cpu" and _direct(args):
            return _members_backward(info.batch_size, in_dims, args)
        return _loop_members(call, info, in_dims, args)
    if quant in _RANDOM and in_dims[7] is None:
        return _loop_members(call, info, in_dims, args)
    P = info.batch_size
    seed = seed if in_dims[7] is None else seed.select(in_dims[7], 0)
    fx = _fold(xs, in_dims[0], P)
    S = fx.shape[1] // P
    fparams, flay = _fold_params(params, in_dims[2], layout, P, S)
    gxs, gstate, gelem = call(
        fx, [_fold(s, d, P) for s, d in zip(state, in_dims[1])], fparams, kind, spike, quant, flay, seed,
        _fold(saved, in_dims[8], P), _fold(grad_ys, in_dims[9], P),
        [_fold(g, d, P) for g, d in zip(grad_final, in_dims[10])],
    )  # fmt: skip
    return (_unfold(gxs, P), [_unfold(g, P) for g in gstate], [_unfold(g, P) for g in gelem]), (
        1,
        [0] * len(gstate),
        [0] * len(gelem),
    )


def _pick(t: Any, dim: Any, b: int) -> Any:
    if isinstance(t, (list, tuple)) and isinstance(dim, (list, tuple)):
        return [_pick(u, d, b) for u, d in zip(t, dim)]
    return t if dim is None or not isinstance(t, torch.Tensor) else t.select(dim, b)


neuron_scan.register_vmap(_vmap_scan)
neuron_scan_backward.register_vmap(_vmap_backward)


def _transformed() -> bool:
    return torch._C._are_functorch_transforms_active()


def _grad_transformed() -> bool:
    """Whether a ``torch.func`` reverse-mode transform is active (a tensor's ``requires_grad`` does
    not show one from inside an inner ``vmap``)."""
    if not _transformed():
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() == TransformType.Grad for i in retrieve_all_functorch_interpreters())


class _Scan(torch.autograd.Function):
    """The kernels as an ``autograd.Function``: the same C (or Triton) calls as the custom ops,
    without the dispatcher's per-call cost (it matters for the per-step calls of the object API),
    and the path ``torch.func`` transforms take: ``setup_context`` for ``grad``/``vjp``/``jacrev``,
    a ``vmap`` rule folding the members into the kernel's elements (:func:`_vmap_scan`).

    ``forward(meta, xs [T, S], seed, *state [S], *params [n_k]) -> (ys, saved, *final)`` with
    ``meta = (kind, spike, quant, layout, n_state, save)``.
    """

    @staticmethod
    def forward(meta, xs, seed, *flat):
        kind, spike, quant, layout, ns, save = meta
        ys, final, saved = scan_forward(xs, list(flat[:ns]), list(flat[ns:]), kind, spike, quant, layout, seed, save)
        return (ys, saved, *final)

    @staticmethod
    def setup_context(ctx, inputs, output):
        meta, xs, seed, *flat = inputs
        ctx.meta = meta
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(xs, seed, output[1], *flat)

    @staticmethod
    def backward(ctx, grad_ys, _grad_saved, *grad_final):
        kind, spike, quant, layout, ns, _ = ctx.meta
        xs, seed, saved, *flat = ctx.saved_tensors
        state, params = list(flat[:ns]), list(flat[ns:])
        if saved.dim() != 3:
            raise RuntimeError(
                "tracetorch kernels: the forward ran without saving its states (no input required grad "
                "then); run it again with gradients enabled"
            )
        grad_ys = torch.zeros_like(xs) if grad_ys is None else grad_ys
        grad_final = [torch.zeros_like(s) if g is None else g for s, g in zip(state, grad_final)]
        args = (xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final)
        if torch.is_grad_enabled() or _transformed():
            # create_graph=True or torch.func: the differentiable, vmappable backward
            gxs, gstate, gelem = _backward_call(*args)
        else:
            gxs, gstate, gelem = scan_backward(*args)
        return (None, gxs, None, *gstate, *_reduce_params(gelem, layout, xs.shape[1]))

    @staticmethod
    def vmap(info, in_dims, meta, xs, seed, *flat):
        kind, spike, quant, layout, ns, save = meta
        dims = (
            in_dims[1],
            list(in_dims[3 : 3 + ns]),
            list(in_dims[3 + ns :]),
            None,
            None,
            None,
            None,
            in_dims[2],
            None,
        )
        args = (xs, list(flat[:ns]), list(flat[ns:]), kind, spike, quant, layout, seed, save)
        (ys, final, saved), (yd, fd, sd) = _vmap_scan(info, dims, *args, call=_scan_call)
        return (ys, saved, *final), (yd, sd, *fd)


class _ScanBackward(torch.autograd.Function):
    """The backward kernel as an ``autograd.Function``, differentiable (:func:`_second_order`)
    and vmappable (:func:`_vmap_backward`).

    ``forward(meta, xs, seed, saved, grad_ys, *state, *params, *grad_final) -> (gxs, *gstate, *gelem)``
    with ``meta = (kind, spike, quant, layout, n_state, n_params)``.
    """

    @staticmethod
    def forward(meta, xs, seed, saved, grad_ys, *flat):
        kind, spike, quant, layout, ns, np_ = meta
        state, params, grad_final = list(flat[:ns]), list(flat[ns : ns + np_]), list(flat[ns + np_ :])
        gxs, gstate, gelem = scan_backward(
            xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final
        )
        return (gxs, *gstate, *gelem)

    @staticmethod
    def setup_context(ctx, inputs, output):
        meta, xs, seed, saved, grad_ys, *flat = inputs
        ctx.meta = meta
        ctx.save_for_backward(xs, seed, grad_ys, *flat)

    @staticmethod
    def backward(ctx, g_gxs, *g_rest):
        meta = ctx.meta
        ns, np_ = meta[4], meta[5]
        xs, seed, grad_ys, *flat = ctx.saved_tensors
        state, params, grad_final = flat[:ns], flat[ns : ns + np_], flat[ns + np_ :]
        gxs, gstate, gparams, g_grad_ys, g_grad_final = _second_order(
            meta, xs, seed, grad_ys, state, params, grad_final, g_gxs, g_rest[:ns], g_rest[ns:]
        )
        return (None, gxs, None, None, g_grad_ys, *gstate, *gparams, *g_grad_final)

    @staticmethod
    def vmap(info, in_dims, meta, xs, seed, saved, grad_ys, *flat):
        kind, spike, quant, layout, ns, np_ = meta
        dims = (
            in_dims[1], list(in_dims[5 : 5 + ns]), list(in_dims[5 + ns : 5 + ns + np_]), None, None, None, None,
            in_dims[2], in_dims[3], in_dims[4], list(in_dims[5 + ns + np_ :]),
        )  # fmt: skip
        state, params, grad_final = list(flat[:ns]), list(flat[ns : ns + np_]), list(flat[ns + np_ :])
        args = (xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final)
        (gxs, gstate, gelem), (xd, sd, pd) = _vmap_backward(info, dims, *args, call=_backward_call)
        return (gxs, *gstate, *gelem), (xd, *sd, *pd)


def _scan_call(xs, state, params, kind, spike, quant, layout, seed, save):
    ys, saved, *final = _Scan.apply((kind, spike, quant, tuple(layout), len(state), save), xs, seed, *state, *params)
    return ys, list(final), saved


def _backward_call(xs, state, params, kind, spike, quant, layout, seed, saved, grad_ys, grad_final):
    ns = len(state)
    meta = (kind, spike, quant, tuple(layout), ns, len(params))
    out = _ScanBackward.apply(meta, xs, seed, saved, grad_ys, *state, *params, *grad_final)
    return out[0], list(out[1 : 1 + ns]), list(out[1 + ns :])


#: ``"auto"``: eager calls and ``torch.func`` transforms take :class:`_Scan`, traced ones
#: (``torch.compile``) the custom op; ``"op"``: the custom op wherever no ``torch.func`` transform
#: is active (the tests run both).
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
    ys, final = scan_flat(spec.key, spike, quant, params, state, xs)
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
    # under vmap a batched tensor does not show that the tensor it wraps requires grad (a population
    # of stacked params trained with .backward()): any active transform keeps what a backward needs
    save = torch.is_grad_enabled() and (_transformed() or any(t.requires_grad for t in [*flat_params, *state, xs]))
    if _transformed() or (EAGER_PATH["mode"] == "auto" and not tracing()):  # per-call facts only
        meta = (kind, spike, quant, tuple(layout), len(flat_state), save)
        ys, _, *final = _Scan.apply(meta, xs.reshape(T, S), seed, *flat_state, *flat_params)
    else:
        ys, final, _ = neuron_scan(xs.reshape(T, S), flat_state, flat_params, kind, spike, quant, layout, seed, save)
    return ys.reshape(xs.shape), [f.reshape(shape) for f in final]
