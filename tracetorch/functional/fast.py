"""The fast time loop of the built-in neuron steps: compiled chunks of the one generic step.

:func:`scan_spec` runs a neuron type over a ``[T, ...]`` sequence. Its fast path cuts time into
chunks of ``chunk`` steps (default 10) and runs each chunk as one ``torch.compile``'d function
whose body is the plain loop over :func:`~tracetorch.functional.neurons._generic_step` (the very
code every other path runs, so no neuron maths is written twice). Inductor fuses the chunk into
one kernel: it reads the inputs and the state once and writes the outputs and the final state
once, instead of one pass over memory per elementwise op per step.

Training goes through one ``torch.autograd.Function`` over the whole sequence:

* forward: the compiled chunks under ``no_grad``; it saves only the inputs, the state at the start
  of each chunk and, for the random quantizers, the noise drawn;
* backward: one compiled function per chunk, in reverse order, that recomputes the chunk's forward
  from its start state and applies ``torch.func.vjp`` to it, fused into one kernel. Each param's
  gradient is taken with respect to the param broadcast to the state's shape (so the kernel stays
  elementwise) and summed back to the param's shape once, at the end.

Compiled functions are cached per ``(spec, spike_fn, quantizer, chunk length, backend)``, each
under its own code object (so the keys never share, nor exhaust, one ``torch._dynamo`` cache), and
compiled with dynamic shapes: a new batch size or layer width does not recompile. Dtype, device
and param ranks (``[]`` vs ``[N]``) are guarded and compile once each. A remainder of
``T % chunk`` steps runs the same chunk function uncompiled.

Random quantizers: ``"bernoulli"`` and ``"probabilistic"`` draw their uniform noise up front with
``torch.rand`` (torch's default generator, so ``torch.manual_seed`` makes a run reproducible) and
fire where ``noise < p``: the same distribution as ``torch.bernoulli(p)``, not the same draws as
the plain loop. The backward replays the saved noise, so gradients follow the spikes that fired.
NaN probabilities give NaN outputs, as in the plain loop.

Limits: the fast path is first order (its backward is not itself differentiable: use
``fast=False`` for double backward) and stays out of the way under ``torch.func`` transforms and
inside ``torch.compile`` (the plain loop runs there, which an outer compile fuses anyway).
"""

from __future__ import annotations

import os
import threading
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .neurons import NeuronSpec, _generic_step
from .spikes import (
    QUANTIZERS,
    Quantizer,
    bernoulli_from_noise,
    probabilistic_from_noise,
    resolve_quantizer,
    round_st,
    sigmoid4x,
)

__all__ = ["FastConfig", "config", "scan_spec", "fast_reason", "compiled_chunks", "clear_cache"]


@dataclass
class FastConfig:
    """Settings of the fast path (module-level: ``tracetorch.functional.fast.config``).

    Attributes:
        auto: let ``fast=None`` pick the fast path where it applies (env ``TRACETORCH_FAST=0``
            turns it off).
        chunk: default chunk length (steps per compiled function).
        min_elements: ``fast=None`` picks the fast path only from this many neuron-steps
            (``xs.numel()``) on, where a run is long enough to pay for the first call's compile.
        warmup_calls: ``fast=None`` picks the fast path for a (type, spike_fn, quantizer, chunk)
            only after this many eligible calls of it ran the plain loop, so a one-off call
            (an evaluation, a plot) never waits seconds for a compile that would save milliseconds,
            while a training loop switches after a few batches.
        backend: the ``torch.compile`` backend (``"inductor"``); ``None`` runs the chunk functions
            uncompiled (same results, for debugging and cheap tests).
    """

    auto: bool = os.environ.get("TRACETORCH_FAST", "1") != "0"
    chunk: int = 10
    min_elements: int = 1 << 20
    warmup_calls: int = 3
    backend: str | Callable | None = "inductor"


#: The fast path's settings.
config = FastConfig()

_NAMES_OF_QUANTIZERS = {id(fn): name for name, fn in QUANTIZERS.items()}
_RANDOM = ("bernoulli", "probabilistic")


# the noise-driven forms of the random quantizers: same values and gradients, given the noise
_NOISE_QUANT = {"bernoulli": bernoulli_from_noise, "probabilistic": probabilistic_from_noise}


def _sites(spec: NeuronSpec, quant: str | None) -> int:
    """Quantizer calls per step that need noise: 0, 1 (binary) or 2 (ternary)."""
    if quant not in _RANDOM or not spec.firing:
        return 0
    return 1 if spec.firing == "B" else 2


# ---- the chunk functions -----------------------------------------------------------------------


def _chunk_functions(spec: NeuronSpec, spike_fn: Callable, quant: str | None) -> tuple[Callable, Callable]:
    """The forward and backward of one chunk, built on ``_generic_step`` (nothing else computes a step)."""
    noisy = _sites(spec, quant) > 0
    plain_quant = QUANTIZERS[quant] if quant in QUANTIZERS else round_st
    noise_quant = _NOISE_QUANT.get(quant)

    def forward(params: Any, state: Any, xs: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        ys = []
        draws = iter(noise.unbind(0)) if noisy else None
        for x in xs.unbind(0):
            if noisy:
                y, state = _generic_step(spec, params, state, x, spike_fn, lambda p: noise_quant(p, next(draws)))
            else:
                y, state = _generic_step(spec, params, state, x, spike_fn, plain_quant)
            ys.append(y)
        return torch.stack(ys), state

    def backward(
        params: Any,
        state: Any,
        xs: torch.Tensor,
        noise: torch.Tensor | None,
        gys: torch.Tensor,
        gstate: Any,
        gparams: tuple[torch.Tensor, ...],
    ) -> tuple[tuple[torch.Tensor, ...], Any, torch.Tensor]:
        _, vjp_fn = torch.func.vjp(lambda p, s, x: forward(p, s, x, noise), params, state, xs)
        gp, gs, gx = vjp_fn((gys, gstate))
        return tuple(a + b for a, b in zip(gparams, gp)), gs, gx

    return forward, backward


def _renamed(fn: Callable, name: str) -> Callable:
    """``fn`` under a code object of its own, so ``torch._dynamo`` gives it its own cache."""
    code = fn.__code__.replace(co_name=name, co_qualname=name) if hasattr(fn.__code__, "co_qualname") else None
    code = code or fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


@dataclass(frozen=True)
class _Key:
    spec: NeuronSpec
    spike_fn: Callable
    quant: str | None
    chunk: int
    backend: str | Callable | None


class _Engine:
    """The compiled chunk functions of one key, and their uncompiled originals (for remainders)."""

    def __init__(self, key: _Key, serial: int) -> None:
        self.key = key
        self.sites = _sites(key.spec, key.quant)
        self.forward, self.backward = _chunk_functions(key.spec, key.spike_fn, key.quant)
        self.calls = {"forward": 0, "backward": 0}
        self.broken: str | None = None
        if key.backend is None:
            self.compiled_forward, self.compiled_backward = self.forward, self.backward
        else:
            tag = f"{key.spec.name}_{key.quant or 'li'}_{key.chunk}_{serial}"
            opts = {"dynamic": True, "fullgraph": True, "backend": key.backend}
            self.compiled_forward = torch.compile(_renamed(self.forward, f"tt_fast_forward_{tag}"), **opts)
            self.compiled_backward = torch.compile(_renamed(self.backward, f"tt_fast_backward_{tag}"), **opts)

    def run(self, which: str, strict: bool, *args: Any) -> Any:
        """Call the compiled ``which`` function; uncompiled after a failed compile unless ``strict``."""
        plain = self.forward if which == "forward" else self.backward
        if self.broken is not None:
            return plain(*args)
        fn = self.compiled_forward if which == "forward" else self.compiled_backward
        try:
            out = fn(*args)
        except Exception as err:  # a compiler missing or failing: a loud switch to the uncompiled chunks
            if strict or self.calls[which]:
                raise
            self.broken = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            warnings.warn(
                f"tracetorch fast scan: compiling the {self.key.spec.name} chunk failed ({self.broken}); "
                "running it uncompiled from now on (pass fast=False to use the plain loop)",
                RuntimeWarning,
                stacklevel=4,
            )
            return plain(*args)
        self.calls[which] += 1
        return out


_ENGINES: dict[_Key, _Engine] = {}
_ELIGIBLE_CALLS: dict[_Key, int] = {}  # fast=None calls that could have taken the fast path, per key
_LOCK = threading.Lock()


def _warmed_up(key: _Key) -> bool:
    """Count one eligible ``fast=None`` call of ``key``; whether it is past ``config.warmup_calls``."""
    with _LOCK:
        calls = _ELIGIBLE_CALLS[key] = _ELIGIBLE_CALLS.get(key, 0) + 1
    return calls > config.warmup_calls


def _engine(key: _Key) -> _Engine:
    with _LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            eng = _ENGINES[key] = _Engine(key, len(_ENGINES))
        return eng


def compiled_chunks() -> list[dict[str, Any]]:
    """What the fast path has built so far: one entry per cached key, with its call counts."""
    return [
        {
            "type": k.spec.name,
            "quant": k.quant,
            "spike_fn": k.spike_fn,
            "chunk": k.chunk,
            "backend": k.backend,
            "calls": dict(e.calls),
            "broken": e.broken,
        }
        for k, e in _ENGINES.items()
    ]


def clear_cache() -> None:
    """Forget every cached chunk function and warm-up count (the next call compiles again)."""
    with _LOCK:
        _ENGINES.clear()
        _ELIGIBLE_CALLS.clear()


# ---- the sequence Function ---------------------------------------------------------------------


def _bounds(T: int, chunk: int) -> list[tuple[int, int]]:
    return [(t, min(t + chunk, T)) for t in range(0, T, chunk)]


def _time_static(t: torch.Tensor | None) -> torch.Tensor | None:
    # detached: no `_base` for dynamo to guard on (a view's base differs from call to call); the time
    # dim is unrolled (static), and marking it keeps duck sizing from tying B (or N) to it
    if t is not None:
        t = t.detach()
        torch._dynamo.mark_static(t, 0)
    return t


def _detached(tree: Any) -> Any:
    # compiled functions guard on requires_grad: hand them detached tensors, always alike
    return type(tree)(*(t.detach() for t in tree))


def _draw(eng: _Engine, xs: torch.Tensor) -> torch.Tensor | None:
    if not eng.sites:
        return None
    return torch.rand((xs.shape[0] * eng.sites, *xs.shape[1:]), dtype=xs.dtype, device=xs.device)


def _forward_chunks(eng: _Engine, strict: bool, params: Any, state: Any, xs: torch.Tensor, keep: bool):
    """Run every chunk forward (no autograd); with ``keep``, also the start states and noises."""
    bounds = _bounds(xs.shape[0], eng.key.chunk)
    ys = None if len(bounds) == 1 else torch.empty_like(xs)
    starts, noises = [], []
    for t0, t1 in bounds:
        x = _time_static(xs[t0:t1])
        noise = _time_static(_draw(eng, x))
        if keep:
            starts.append(state)
            noises.append(noise)
        if t1 - t0 == eng.key.chunk:
            y, state = eng.run("forward", strict, params, state, x, noise)
        else:
            y, state = eng.forward(params, state, x, noise)
        if ys is None:
            ys = y
        else:
            ys[t0:t1].copy_(y)  # right after the chunk, while it is still in cache (a final cat reads it cold)
    return ys, state, starts, noises


class _FastScan(torch.autograd.Function):
    """``(params..., state..., xs) -> (ys, state...)`` over the whole sequence, chunk by chunk."""

    @staticmethod
    def forward(ctx, eng: _Engine, strict: bool, n_params: int, n_state: int, *tensors: torch.Tensor):
        spec = eng.key.spec
        params = _detached(spec.Params(*tensors[:n_params]))
        state = _detached(spec.State(*tensors[n_params : n_params + n_state]))
        xs = tensors[-1].detach()
        ys, final, starts, noises = _forward_chunks(eng, strict, params, state, xs, keep=True)
        ctx.eng, ctx.strict, ctx.n_params, ctx.n_state, ctx.n_chunks = eng, strict, n_params, n_state, len(starts)
        ctx.has_noise = noises[0] is not None
        flat_starts = [t for s in starts for t in s]
        ctx.save_for_backward(xs, *params, *flat_starts, *(noises if ctx.has_noise else ()))
        return (ys, *final)

    @staticmethod
    @once_differentiable
    def backward(ctx, gys: torch.Tensor, *gfinal: torch.Tensor):
        eng, n_p, n_s, n_c = ctx.eng, ctx.n_params, ctx.n_state, ctx.n_chunks
        spec = eng.key.spec
        saved = [t if t is None else t.detach() for t in ctx.saved_tensors]
        xs, params = saved[0], saved[1 : 1 + n_p]
        flat_starts = saved[1 + n_p : 1 + n_p + n_c * n_s]
        noises = saved[1 + n_p + n_c * n_s :] if ctx.has_noise else (None,) * n_c
        shape = xs.shape[1:]
        expanded = spec.Params(*(p.expand(shape).detach() for p in params))
        gparams = tuple(torch.zeros(shape, dtype=p.dtype, device=p.device) for p in params)
        gys = gys.contiguous()
        gstate = spec.State(*(g.contiguous() for g in gfinal))
        bounds = _bounds(xs.shape[0], eng.key.chunk)
        gxs = None if len(bounds) == 1 else torch.empty_like(xs)
        for c, (t0, t1) in reversed(list(enumerate(bounds))):
            start = spec.State(*flat_starts[c * n_s : (c + 1) * n_s])
            x, gy = _time_static(xs[t0:t1]), _time_static(gys[t0:t1])
            args = (expanded, start, x, _time_static(noises[c]), gy, gstate, gparams)
            if t1 - t0 == eng.key.chunk:
                gparams, gstate, gx = eng.run("backward", ctx.strict, *args)
            else:
                gparams, gstate, gx = eng.backward(*args)
            if gxs is None:
                gxs = gx
            else:
                gxs[t0:t1].copy_(gx)
        gp = [g.sum_to_size(p.shape) if need else None for g, p, need in zip(gparams, params, ctx.needs_input_grad[4:])]
        gs = [g if need else None for g, need in zip(gstate, ctx.needs_input_grad[4 + n_p :])]
        return (None, None, None, None, *gp, *gs, gxs if ctx.needs_input_grad[-1] else None)


# ---- selection and entry point -----------------------------------------------------------------


def _quant_name(quant_fn: Quantizer) -> str | None:
    if isinstance(quant_fn, str):
        return quant_fn if quant_fn in QUANTIZERS else None
    return _NAMES_OF_QUANTIZERS.get(id(quant_fn))


def _plain(t: Any) -> bool:
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def fast_reason(
    spec: NeuronSpec,
    params: Any,
    state: Any,
    xs: torch.Tensor,
    spike_fn: Callable = sigmoid4x,
    quant_fn: Quantizer = "bernoulli",
) -> str | None:
    """Why the fast path cannot run this call (a sentence), or ``None`` when it can.

    ``xs`` is ``[T, ...]``; ``params`` and ``state`` are the spec's NamedTuples.
    """
    if spec.fires and _quant_name(quant_fn) is None:
        return "it handles the quantizers 'round', 'bernoulli' and 'probabilistic', not a custom callable"
    try:
        hash(spike_fn)
    except TypeError:
        return "spike_fn must be hashable (it keys the cache of compiled chunks)"
    if torch.compiler.is_compiling():
        return "it does not run inside torch.compile (the plain loop is compiled there)"
    if torch._C._are_functorch_transforms_active():
        return "it does not run under torch.func transforms (vmap, grad, ...)"
    tensors = [*params, *state, xs]
    if not all(isinstance(t, torch.Tensor) and _plain(t) for t in tensors):
        return "params, state and xs must be plain tensors"
    if not xs.is_floating_point() or xs.dim() < 2:
        return "xs must be a floating tensor [T, ..., N]"
    if xs.device.type not in ("cpu", "cuda"):
        return f"device {xs.device.type!r} is not supported"
    if any(t.dtype != xs.dtype or t.device != xs.device for t in tensors):
        return "params, state and xs must share one dtype and device"
    shape = xs.shape[1:]
    if any(t.shape != shape for t in state):
        return "every state field must have the shape of one step of xs"
    try:
        if any(torch.broadcast_shapes(p.shape, shape) != shape for p in params):
            return "params must broadcast to one step of xs"
    except RuntimeError:
        return "params must broadcast to one step of xs"
    return None


def scan_spec(
    spec: NeuronSpec,
    params: Any,
    state: Any,
    xs: torch.Tensor,
    *,
    spike_fn: Callable[[torch.Tensor], torch.Tensor] = sigmoid4x,
    quant_fn: Quantizer = "bernoulli",
    fast: bool | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, Any]:
    """Run the built-in type ``spec`` over ``xs`` ``[T, ..., N]``: ``(ys [T, ..., N], final state)``.

    ``fast=None`` takes the fast path where it applies (:func:`fast_reason` is ``None``, automatic
    selection is on, ``xs.numel() >= config.min_elements`` and ``T >= chunk``) from the
    ``config.warmup_calls + 1``-th such call on, ``True`` insists on it (a ``ValueError`` says why it
    cannot), ``False`` runs the plain loop. ``chunk`` is the number of
    steps per compiled function (default ``config.chunk``). Params may be ``[]`` or ``[N]``, or any
    shape that broadcasts to one step of ``xs``.
    """
    quant = resolve_quantizer(quant_fn, spec.name)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"scan: chunk must be an int >= 1, received {chunk!r}")
    use = False
    if fast or fast is None:
        reason = fast_reason(spec, params, state, xs, spike_fn, quant_fn)
        if fast and reason is not None:
            raise ValueError(f"scan: fast=True cannot run here: {reason}")
        if reason is None:
            key = _Key(
                spec, spike_fn, _quant_name(quant_fn) if spec.fires else None, chunk or config.chunk, config.backend
            )
            eligible = config.auto and xs.numel() >= config.min_elements and xs.shape[0] >= key.chunk
            use = bool(fast) or (eligible and _warmed_up(key))
    if not use:
        ys = []
        for x in xs.unbind(0):
            y, state = _generic_step(spec, params, state, x, spike_fn, quant)
            ys.append(y)
        return torch.stack(ys), state
    eng = _engine(key)
    strict = bool(fast)
    xs = xs.contiguous()
    state = spec.State(*(t.contiguous() for t in state))
    params = spec.Params(*params)
    tensors = (*params, *state, xs)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        ys, *final = _FastScan.apply(eng, strict, len(params), len(state), *tensors)
        return ys, spec.State(*final)
    with torch.no_grad():
        ys, final, _, _ = _forward_chunks(eng, strict, _detached(params), _detached(state), xs.detach(), keep=False)
    return ys, final
