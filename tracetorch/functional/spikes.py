"""Spike functions and straight-through quantizers.

A *spike function* maps the distance to a threshold, ``v = mem - threshold``, to a firing
probability in [0, 1]; it is smooth, so it is also the surrogate whose derivative trains the
network. A *quantizer* turns that probability into the emitted value with a straight-through
gradient (docs/maths.md, "Spike and quantization functions").

Spike functions are frozen dataclasses: hashable and comparable, so they can sit in static
config and ``torch.compile`` guards on them by value.

The quantizers are ``torch.autograd.Function`` s with ``setup_context`` and
``generate_vmap_rule = True``, so they work under ``torch.func.vmap``, ``torch.func.grad`` and
``torch.compile``. ``"bernoulli"`` and ``"probabilistic"`` draw from torch's random generator:
under ``torch.func.vmap`` pass ``randomness="different"`` (independent draws per member); vmap's
default ``"error"`` refuses them, and torch cannot draw ``"same"`` randomness from a batched
probability. For draws shared across members, or a reproducible, fully pure step, pass uniform
noise yourself: ``quant_fn=lambda p: bernoulli_from_noise(p, noise)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import torch

__all__ = [
    "Sigmoid",
    "FastSigmoid",
    "Atan",
    "Triangle",
    "Erf",
    "sigmoid4x",
    "SPIKE_FUNCTIONS",
    "resolve_spike_fn",
    "round_st",
    "bernoulli_st",
    "probabilistic_st",
    "bernoulli_from_noise",
    "probabilistic_from_noise",
    "QUANTIZERS",
    "resolve_quantizer",
    "Quantizer",
    "SpikeFn",
]


@dataclass(frozen=True)
class Sigmoid:
    """``sigmoid(slope * v)``; derivative ``slope * p * (1 - p)``. ``Sigmoid(4.0)`` is the default."""

    slope: float = 4.0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.slope * v)


@dataclass(frozen=True)
class FastSigmoid:
    """``0.5 + 0.5 * slope*v / (1 + |slope*v|)``, the SuperSpike shape; derivative ``0.5*slope / (1 + |slope*v|)^2``."""

    slope: float = 4.0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        sv = self.slope * v
        return 0.5 + 0.5 * sv / (1.0 + sv.abs())


@dataclass(frozen=True)
class Atan:
    """``0.5 + atan(pi/2 * alpha * v) / pi``; derivative ``alpha / 2 / (1 + (pi/2 * alpha * v)^2)``."""

    alpha: float = 2.0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 + torch.atan(0.5 * math.pi * self.alpha * v) / math.pi


@dataclass(frozen=True)
class Triangle:
    """The spike function whose derivative is a triangle: ``max(0, 1 - |v|/width) / width``.

    With ``u = clamp(v / width, -1, 1)`` the value is ``0.5 + u - u*|u|/2``: exactly 0 below
    ``-width``, exactly 1 above ``width``, so gradients vanish far from threshold.
    """

    width: float = 1.0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        u = torch.clamp(v / self.width, -1.0, 1.0)
        return 0.5 + u - 0.5 * u * u.abs()


@dataclass(frozen=True)
class Erf:
    """Gaussian CDF ``0.5 * (1 + erf(v / (sigma*sqrt 2)))``; derivative a Gaussian of width ``sigma``."""

    sigma: float = 0.5

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.erf(v / (self.sigma * math.sqrt(2.0))))


#: The default spike function of every firing layer: ``sigmoid(4 v)``.
sigmoid4x = Sigmoid(4.0)

#: The spike-function family by name.
SPIKE_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid4x": sigmoid4x,
    "sigmoid": Sigmoid(),
    "fast_sigmoid": FastSigmoid(),
    "atan": Atan(),
    "triangle": Triangle(),
    "erf": Erf(),
}


SpikeFn = Union[str, Callable[[torch.Tensor], torch.Tensor]]


def resolve_spike_fn(spike_fn: SpikeFn, owner: str = "spike_fn") -> Callable[[torch.Tensor], torch.Tensor]:
    """A spike function given by name (a key of :data:`SPIKE_FUNCTIONS`: ``"sigmoid"``,
    ``"fast_sigmoid"``, ``"atan"``, ``"triangle"``, ``"erf"``, ``"sigmoid4x"``, each with its default
    slope) or as a callable, as the callable; an unknown name is a ``ValueError`` listing the names."""
    if isinstance(spike_fn, str):
        try:
            return SPIKE_FUNCTIONS[spike_fn]
        except KeyError:
            raise ValueError(
                f"{owner}: spike_fn must be one of {sorted(SPIKE_FUNCTIONS)} (each with its default slope; "
                f"tracetorch.functional.Atan(alpha=...) etc. for another) or a callable, received {spike_fn!r}"
            ) from None
    if callable(spike_fn):
        return spike_fn
    raise TypeError(
        f"{owner}: spike_fn must be a name ({', '.join(sorted(SPIKE_FUNCTIONS))}) or a callable, "
        f"received {type(spike_fn).__name__}"
    )


class _RoundST(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(p: torch.Tensor) -> torch.Tensor:
        return torch.round(p)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _bernoulli(p: torch.Tensor) -> torch.Tensor:
    # NaN in, NaN out, as with round: torch.bernoulli itself refuses a NaN probability
    return torch.where(torch.isnan(p), p, torch.bernoulli(p.clamp(0.0, 1.0).nan_to_num(0.0)))


class _BernoulliST(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(p: torch.Tensor) -> torch.Tensor:
        return _bernoulli(p)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _ProbabilisticST(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(p: torch.Tensor) -> torch.Tensor:
        return p * _bernoulli(p)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (p,) = inputs
        ctx.save_for_backward(p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (p,) = ctx.saved_tensors
        return grad * 2.0 * p


def _fire_below(p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    # fires where noise < p: probability clamp(p, 0, 1) for uniform noise, as torch.bernoulli; NaN stays NaN
    return torch.where(torch.isnan(p), p, (noise < p).to(p.dtype))


class _NoiseBernoulliST(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _fire_below(p, noise)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _NoiseProbabilisticST(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return p * _fire_below(p, noise)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (p,) = ctx.saved_tensors
        return grad * 2.0 * p, None


def round_st(p: torch.Tensor) -> torch.Tensor:
    """Forward ``round(p)``, backward identity. Deterministic: a Heaviside step at ``p = 0.5``."""
    return _RoundST.apply(p)


def bernoulli_st(p: torch.Tensor) -> torch.Tensor:
    """Forward a Bernoulli sample with probability ``p`` (torch's generator), backward identity."""
    return _BernoulliST.apply(p)


def probabilistic_st(p: torch.Tensor) -> torch.Tensor:
    """Forward ``p * bernoulli(p)``, backward ``grad * 2p`` (the derivative of ``p * p``)."""
    return _ProbabilisticST.apply(p)


def bernoulli_from_noise(p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward ``noise < p`` for uniform ``noise`` shaped like ``p``, backward identity wrt ``p``.

    The pure, reproducible form of ``bernoulli_st``: the caller owns the randomness.
    """
    return _NoiseBernoulliST.apply(p, noise)


def probabilistic_from_noise(p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward ``p * (noise < p)`` for uniform ``noise`` shaped like ``p``, backward ``grad * 2p``.

    The pure, reproducible form of ``probabilistic_st``.
    """
    return _NoiseProbabilisticST.apply(p, noise)


#: The named quantizers (docs/maths.md, "Spike and quantization functions").
QUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "round": round_st,
    "bernoulli": bernoulli_st,
    "probabilistic": probabilistic_st,
}

Quantizer = Union[str, Callable[[torch.Tensor], torch.Tensor]]


def resolve_quantizer(quant_fn: Quantizer, owner: str = "quant_fn") -> Callable[[torch.Tensor], torch.Tensor]:
    """Turn a quantizer name or callable into the callable; unknown names raise ``ValueError``."""
    if isinstance(quant_fn, str):
        try:
            return QUANTIZERS[quant_fn]
        except KeyError:
            raise ValueError(
                f"{owner}: quant_fn must be one of {sorted(QUANTIZERS)} or a callable, received {quant_fn!r}"
            ) from None
    if callable(quant_fn):
        return quant_fn
    raise TypeError(f"{owner}: quant_fn must be a string or a callable, received {type(quant_fn).__name__}")
