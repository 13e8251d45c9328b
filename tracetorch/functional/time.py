"""Time loops: run a pure step over a ``[T, ...]`` sequence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["scan"]


def scan(
    step: Callable[..., tuple[torch.Tensor, Any]],
    params: Any,
    state: Any,
    xs: torch.Tensor,
    **step_kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Run ``step`` over the leading time dimension of ``xs``.

    Args:
        step: a pure ``step(params, state, x, **step_kwargs) -> (y, state)``.
        params: the step's params pytree.
        state: the initial state pytree (each leaf shaped like ``xs[0]``).
        xs: ``[T, ...]`` inputs.

    Returns:
        ``(ys, final_state)`` with ``ys`` of shape ``[T, ...]``.
    """
    if not isinstance(xs, torch.Tensor) or xs.dim() < 1:
        raise ValueError(f"scan: xs must be a tensor [T, ...] with a leading time dimension, received {_describe(xs)}")
    ys = []
    # unbind, not xs[t]: indexing a tensor that needs grad builds a full-size zero grad per step
    for x in xs.unbind(0):
        y, state = step(params, state, x, **step_kwargs)
        ys.append(y)
    return torch.stack(ys), state


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {list(x.shape)}"
    return type(x).__name__
