"""Time loops: run a pure step over a ``[T, ...]`` sequence.

:func:`scan` is the one entry point. Any pure step runs as a plain Python loop over time; the 52
built-in steps (``lib_step`` etc.) run through the fused kernels of
:mod:`tracetorch.functional.kernels` where they apply: one call for the whole sequence, forward
and BPTT backward, generated from the same step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from .._keywords import keywords
from .neurons import SPECS, NeuronSpec, _generic_step, check_step_args, resolve_reset
from .spikes import Quantizer, SpikeFn, resolve_quantizer, resolve_spike_fn, sigmoid4x

__all__ = ["scan", "scan_spec", "builtin_spec", "check_fast"]


def builtin_spec(step: Callable[..., Any]) -> NeuronSpec | None:
    """The spec of a built-in step (``tracetorch.functional.lib_step`` etc.), ``None`` for any other function."""
    name = getattr(step, "__name__", None)
    if not isinstance(name, str) or not name.endswith("_step") or getattr(step, "__module__", None) != __package__:
        return None
    from . import STEPS  # the package's own table; imported here, as the package imports this module

    spec = SPECS.get(name[: -len("_step")].upper())
    return spec if spec is not None and STEPS.get(name) is step else None


def check_fast(owner: str, fast: Any) -> bool | None:
    """``fast`` if it is ``None``, ``True`` or ``False``; a ``TypeError`` naming ``owner`` otherwise."""
    if fast is None or isinstance(fast, bool):
        return fast
    raise TypeError(f"{owner}: fast must be None, True or False, received {fast!r}")


def _check_chunk(owner: str, chunk: Any) -> None:
    if chunk is None:
        return
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"{owner}: chunk must be None or an int >= 1, received {chunk!r}")
    warnings.warn(
        f"{owner}: chunk= has no effect: the fused kernels run the whole sequence in one call "
        "(the argument stays for compatibility and will be removed)",
        FutureWarning,
        stacklevel=3,
    )


@keywords
def scan(
    step: Callable[..., tuple[torch.Tensor, Any]],
    params: Any,
    state: Any,
    xs: torch.Tensor,
    *,
    fast: bool | None = None,
    chunk: int | None = None,
    time_dim: int = 0,
    **step_kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Run ``step`` over the time dimension of ``xs``: time-first ``[T, ...]`` (``time_dim=1`` for ``[B, T, ...]``).

    Args:
        step: a pure ``step(params, state, x, **step_kwargs) -> (y, state)``.
        params: the step's params pytree.
        state: the initial state pytree (each leaf shaped like ``xs[0]``).
        xs: ``[T, ...]`` inputs, ``T >= 1``.
        fast: ``None`` (default) runs a fused kernel where one applies (see
            :mod:`tracetorch.functional.kernels`) and the plain loop elsewhere, ``True`` insists on
            the kernel (``ValueError`` saying why it cannot run), ``False`` always runs the plain
            loop (so does ``TRACETORCH_FAST=0`` for ``None``). The 52 built-in steps have their
            kernels; any other pure elementwise step is traced into one
            (:func:`tracetorch.functional.kernels.explain` says why a step is not).
        chunk: accepted for compatibility; it has no effect (a ``FutureWarning`` says so).
        time_dim: ``0`` (default): ``xs`` is ``[T, ...]``; ``1``: batch-first ``[B, T, ...]``, read
            through a transposed view (the fused kernels copy it once, as ``.contiguous()``), and
            ``ys`` comes back ``[B, T, ...]`` (a view). The state is one step's shape either way.
        **step_kwargs: passed to every ``step`` call (``spike_fn``, ``quant_fn``, ``reset`` for built-in steps).

    Returns:
        ``(ys, final_state)`` with ``ys`` of shape ``[T, ...]``.
    """
    fast = check_fast("scan", fast)
    if not isinstance(xs, torch.Tensor) or xs.dim() < 1:
        raise ValueError(f"scan: xs must be a tensor [T, ...] with a leading time dimension, received {_describe(xs)}")
    if isinstance(time_dim, bool) or time_dim not in (0, 1):
        raise ValueError(f"scan: time_dim must be 0 (xs [T, ...]) or 1 (batch-first [B, T, ...]), received {time_dim!r}")
    if time_dim == 1:
        if xs.dim() < 2:
            raise ValueError(f"scan: time_dim=1 needs xs of at least 2 dims [B, T, ...], received {_describe(xs)}")
        ys, final = scan(step, params, state, xs.transpose(0, 1), fast=fast, chunk=chunk, **step_kwargs)
        return ys.transpose(0, 1), final
    if xs.shape[0] == 0:
        raise ValueError(f"scan: xs must hold at least one timestep, received shape {list(xs.shape)}")
    _check_chunk("scan", chunk)
    spec = builtin_spec(step)
    if spec is not None and fast is not False:
        unknown = sorted(set(step_kwargs) - {"spike_fn", "quant_fn", "reset"})
        if unknown:
            raise TypeError(
                f"scan: unknown keyword argument(s) {unknown}; valid keywords: fast, chunk, time_dim (scan's own) and "
                f"spike_fn, quant_fn, reset (passed to {step.__name__})"
            )
        return scan_spec(
            resolve_reset(spec, step_kwargs.get("reset", "subtract"), f"scan({step.__name__})"),
            params,
            state,
            xs,
            spike_fn=step_kwargs.get("spike_fn", sigmoid4x),
            quant_fn=step_kwargs.get("quant_fn", "bernoulli"),
            fast=fast,
        )
    if fast is not False and (fast or kernels_auto()):
        out = _custom_kernel("scan", step, params, state, xs, step_kwargs, fast)
        if out is not None:
            return out
    return _loop(step, params, state, xs, step_kwargs)


def scan_spec(
    spec: NeuronSpec,
    params: Any,
    state: Any,
    xs: torch.Tensor,
    *,
    spike_fn: SpikeFn = sigmoid4x,
    quant_fn: Quantizer = "bernoulli",
    fast: bool | None = None,
) -> tuple[torch.Tensor, Any]:
    """Run the built-in type ``spec`` (with its reset mode) over ``xs`` ``[T, ..., N]``: ``(ys [T, ..., N], final state)``.

    ``fast`` as in :func:`scan`. Params may be ``[]``, ``[N]`` or any shape that broadcasts to one
    step of ``xs``. The kernel path's random quantizers draw from a seed taken from torch's
    generator: the same distribution as the plain loop, not the same draws.
    """
    from . import kernels

    check_step_args(spec, params, state, xs[0], f"scan({spec.name.lower()}_step)")
    spike_fn = resolve_spike_fn(spike_fn, f"scan({spec.name.lower()}_step)")
    quant = resolve_quantizer(quant_fn, spec.name)
    if fast is not False and (fast or kernels.config.auto):
        reason = kernels.kernel_reason(spec, params, state, xs, spike_fn, quant_fn)
        if reason is None:
            try:
                return kernels.kernel_scan(
                    spec, kernels.spike_tag(spike_fn) or "", kernels.quant_tag(spec, quant_fn), params, state, xs
                )
            except kernels.BuildError as err:  # no C compiler, or it failed: loud, and the plain loop
                if fast:
                    raise ValueError(f"scan: fast=True cannot run here: {err}") from err
                kernels.warn_no_compiler(str(err))
        elif fast:
            raise ValueError(f"scan: fast=True cannot run here: {reason}")
    ys = []
    for x in xs.unbind(0):
        y, state = _generic_step(spec, params, state, x, spike_fn, quant)
        ys.append(y)
    return torch.stack(ys), state


def kernels_auto() -> bool:
    """``tracetorch.functional.kernels.config.auto``: whether ``fast=None`` takes the kernels."""
    from . import kernels

    return kernels.config.auto


def _custom_kernel(
    owner: str,
    step: Callable[..., Any],
    params: Any,
    state: Any,
    xs: torch.Tensor,
    kwargs: dict[str, Any],
    fast: bool | None,
) -> tuple[torch.Tensor, Any] | None:
    """A custom step through its traced kernel: ``(ys, final_state)``, or ``None`` for the plain loop.

    ``fast=True`` turns "the plain loop" into a ``ValueError`` that says why.
    """
    from . import kernels

    try:
        out, reason = kernels.custom_scan(step, params, state, xs, kwargs)
    except kernels.BuildError as err:
        if fast:
            raise ValueError(f"{owner}: fast=True cannot run here: {err}") from err
        kernels.warn_no_compiler(str(err).splitlines()[0])
        return None
    if out is None and fast:
        name = getattr(step, "__qualname__", None) or type(step).__name__
        raise ValueError(f"{owner}: fast=True cannot run {name} through a kernel: {reason}")
    return out


def _loop(step: Callable[..., Any], params: Any, state: Any, xs: torch.Tensor, kwargs: dict[str, Any]):
    ys = []
    # unbind, not xs[t]: indexing a tensor that needs grad builds a full-size zero grad per step
    for x in xs.unbind(0):
        y, state = step(params, state, x, **kwargs)
        ys.append(y)
    return torch.stack(ys), state


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {list(x.shape)}"
    return type(x).__name__
