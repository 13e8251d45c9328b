"""Time loops: run a pure step over a ``[T, ...]`` sequence.

:func:`scan` is the one entry point. Any pure step runs as a plain Python loop over time; the 28
built-in steps (``lib_step`` etc.) also have a fast path, ``torch.compile``'d chunks of the same
generic step with a fused backward (:mod:`tracetorch.functional.fast`), picked automatically
where it applies and pays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .neurons import SPECS, NeuronSpec
from .spikes import sigmoid4x

__all__ = ["scan", "builtin_spec"]


def builtin_spec(step: Callable[..., Any]) -> NeuronSpec | None:
    """The spec of a built-in step (``tracetorch.functional.lib_step`` etc.), ``None`` for any other function."""
    name = getattr(step, "__name__", None)
    if not isinstance(name, str) or not name.endswith("_step") or getattr(step, "__module__", None) != __package__:
        return None
    from . import STEPS  # the package's own table; imported here, as the package imports this module

    spec = SPECS.get(name[: -len("_step")].upper())
    return spec if spec is not None and STEPS.get(name) is step else None


def scan(
    step: Callable[..., tuple[torch.Tensor, Any]],
    params: Any,
    state: Any,
    xs: torch.Tensor,
    *,
    fast: bool | None = None,
    chunk: int | None = None,
    **step_kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Run ``step`` over the leading time dimension of ``xs``.

    Args:
        step: a pure ``step(params, state, x, **step_kwargs) -> (y, state)``.
        params: the step's params pytree.
        state: the initial state pytree (each leaf shaped like ``xs[0]``).
        xs: ``[T, ...]`` inputs, ``T >= 1``.
        fast: for the 28 built-in steps only: ``None`` (default) takes the fused, compiled path
            where it applies, the sequence is long enough to pay for compiling and the type has
            come a few times already (see :mod:`tracetorch.functional.fast`), ``True`` insists on it (``ValueError`` if it
            cannot run), ``False`` always runs the plain loop. Any other step runs the plain loop;
            ``fast=True`` with one is refused.
        chunk: steps per compiled function on the fast path (default 10).
        **step_kwargs: passed to every ``step`` call (``spike_fn``, ``quant_fn`` for built-in steps).

    Returns:
        ``(ys, final_state)`` with ``ys`` of shape ``[T, ...]``.
    """
    if fast is not None and not isinstance(fast, bool):
        raise TypeError(f"scan: fast must be None, True or False, received {fast!r}")
    if not isinstance(xs, torch.Tensor) or xs.dim() < 1:
        raise ValueError(f"scan: xs must be a tensor [T, ...] with a leading time dimension, received {_describe(xs)}")
    if xs.shape[0] == 0:
        raise ValueError(f"scan: xs must hold at least one timestep, received shape {list(xs.shape)}")
    spec = builtin_spec(step)
    if spec is not None and (fast or fast is None):
        unknown = sorted(set(step_kwargs) - {"spike_fn", "quant_fn"})
        if unknown:
            raise TypeError(f"scan: {step.__name__} got unexpected keyword argument(s) {unknown}")
        from .fast import scan_spec

        return scan_spec(
            spec,
            params,
            state,
            xs,
            spike_fn=step_kwargs.get("spike_fn", sigmoid4x),
            quant_fn=step_kwargs.get("quant_fn", "bernoulli"),
            fast=fast,
            chunk=chunk,
        )
    if fast:
        raise ValueError(
            f"scan: fast=True needs one of the 28 built-in steps (tracetorch.functional.lib_step, ...), "
            f"received {getattr(step, '__name__', type(step).__name__)}; torch.compile your own loop instead"
        )
    return _loop(step, params, state, xs, step_kwargs)


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
