"""Parameter constraints: the activations that bind raw params, their inverses, decay helpers.

Decays live in (0, 1) and are stored raw as ``logit(decay)`` (a fixed decay given as exactly 1.0,
integrate-and-fire, is kind ``"fixed_decay"``: in (0, 1], stored as the value itself); thresholds live in (0, inf) and are
stored raw as ``softplus_inverse(threshold)``. The helpers at the bottom convert between a decay
and the half-life or time constant (in timesteps) it stands for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch
import torch.nn.functional as F

Number = Union[float, int, torch.Tensor]

__all__ = [
    "sigmoid_inverse",
    "softplus_inverse",
    "ACTIVATIONS",
    "INVERSES",
    "halflife_to_decay",
    "decay_to_halflife",
    "timesteps_to_decay",
    "decay_to_timesteps",
]


def _as_tensor(value: Number) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(float(value), dtype=torch.get_default_dtype())


def _check(ok: torch.Tensor | bool, func: str, what: str, value: Number) -> None:
    ok = bool(torch.all(ok)) if isinstance(ok, torch.Tensor) else bool(ok)
    if not ok:
        raise ValueError(f"{func}: expected {what}, received {_short(value)}")


def _short(value: Number) -> str:
    if isinstance(value, torch.Tensor) and value.numel() > 6:
        return f"tensor of shape {list(value.shape)} (min {value.min().item():g}, max {value.max().item():g})"
    if isinstance(value, torch.Tensor):
        return str(value.tolist())
    return repr(value)


def sigmoid_inverse(y: Number) -> torch.Tensor:
    """``logit(y) = log(y) - log(1 - y)`` for ``y`` in (0, 1); same shape as ``y``."""
    t = _as_tensor(y)
    _check((t > 0) & (t < 1), "sigmoid_inverse", "values in (0, 1)", y)
    return torch.log(t) - torch.log1p(-t)


def softplus_inverse(y: Number) -> torch.Tensor:
    """``log(expm1(y))`` for ``y > 0``, written as ``y + log(-expm1(-y))`` so large ``y`` stays finite."""
    t = _as_tensor(y)
    _check(t > 0, "softplus_inverse", "values > 0", y)
    return t + torch.log(-torch.expm1(-t))


def identity(raw: torch.Tensor) -> torch.Tensor:
    """The activation of an unconstrained parameter."""
    return raw


def fixed_decay_inverse(y: Number) -> torch.Tensor:
    """The raw form of a fixed decay in (0, 1] (one that may be exactly 1.0): the value itself."""
    t = _as_tensor(y)
    _check((t > 0) & (t <= 1), "fixed_decay_inverse", "values in (0, 1]", y)
    return t


#: Activation of each kind of parameter: raw -> value (module-level functions, so layers pickle).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "decay": torch.sigmoid,
    "threshold": F.softplus,
    "free": identity,
    "fixed_decay": identity,
}

#: Inverse of each activation: value -> raw (validating the value's range).
INVERSES: dict[str, Callable[[Number], torch.Tensor]] = {
    "decay": sigmoid_inverse,
    "threshold": softplus_inverse,
    "free": _as_tensor,
    "fixed_decay": fixed_decay_inverse,
}


def halflife_to_decay(halflife: Number) -> torch.Tensor:
    """Decay whose trace halves after ``halflife`` steps: ``exp(-ln 2 / halflife)``; ``halflife > 0``."""
    t = _as_tensor(halflife)
    _check(t > 0, "halflife_to_decay", "halflife > 0", halflife)
    return torch.exp(-math.log(2.0) / t)


def decay_to_halflife(decay: Number) -> torch.Tensor:
    """Half-life in steps of a decay in (0, 1): ``-ln 2 / ln decay``."""
    t = _as_tensor(decay)
    _check((t > 0) & (t < 1), "decay_to_halflife", "decay in (0, 1)", decay)
    return -math.log(2.0) / torch.log(t)


def timesteps_to_decay(timesteps: Number) -> torch.Tensor:
    """Decay of an EMA averaging over ``timesteps`` steps: ``1 - 1/timesteps``; ``timesteps > 1``."""
    t = _as_tensor(timesteps)
    _check(t > 1, "timesteps_to_decay", "timesteps > 1", timesteps)
    return 1.0 - 1.0 / t


def decay_to_timesteps(decay: Number) -> torch.Tensor:
    """Time constant in steps of a decay in (0, 1): ``1 / (1 - decay)``."""
    t = _as_tensor(decay)
    _check((t > 0) & (t < 1), "decay_to_timesteps", "decay in (0, 1)", decay)
    return 1.0 / (1.0 - t)
