"""Delay layers: per-channel axonal delays (:class:`Delay`) and per-synapse delays (:class:`DelayedLinear`).

Both are :class:`~tracetorch.nn.TTLayer` s whose hidden state is a delay line, ``buffer``
``[max_delay, *one step's input shape]`` (the last ``max_delay`` inputs, oldest first), so
``zero_states``, ``detach_states``, ``get_states``/``set_states``, ``save_states``/``load_states``
and ``tt.functional_call`` (populations under ``torch.func.vmap``) treat it like any neuron's
state, and :func:`tracetorch.nn.run` runs each over the whole sequence at once (their
``run_sequence``). The maths is in :mod:`tracetorch.functional.delays`.

The delays are params named ``delay``, stored as ``raw_delay`` (an ``nn.Parameter`` when
learnable, a buffer when not), read as they are: ``layer.delay``; assigning ``layer.delay = ...``
validates the value like the constructor and writes it in place. A learnable delay that training
moves outside ``[0, max_delay]`` is read clamped into it (its gradient stops at the bound).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..functional import delays as D
from ..functional.constraints import identity
from .layer import TTLayer

__all__ = ["Delay", "DelayedLinear", "check_max_delay", "check_delay"]


def check_max_delay(owner: str, max_delay: Any) -> int:
    """``max_delay`` as an int >= 1, or a ``ValueError`` naming ``owner``."""
    if isinstance(max_delay, bool) or not isinstance(max_delay, numbers.Integral) or max_delay < 1:
        raise ValueError(f"{owner}: max_delay must be an int >= 1 (steps), received {max_delay!r}")
    return int(max_delay)


def check_delay(
    owner: str, value: Any, max_delay: int, shapes: list[tuple[int, ...]], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Validate delays and return them as a floating tensor (a copy) of one of ``shapes``.

    A number is broadcast to ``shapes[0]``; a tensor (or a list of numbers) must have one of
    ``shapes``, be real and finite, and lie in ``[0, max_delay]``. Errors name ``owner``, the
    argument, what was expected and what came.
    """
    shown = " or ".join(str(list(s)) for s in shapes)
    if isinstance(value, bool) or isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        raise TypeError(f"{owner}: delay must be a number or a real tensor of shape {shown}, received a bool")
    if isinstance(value, numbers.Real):
        t = torch.full(shapes[0], float(value), dtype=torch.float64)
    elif isinstance(value, (torch.Tensor, list, tuple)):
        try:
            t = torch.as_tensor(value).detach().clone()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"{owner}: delay must be a number or a real tensor of shape {shown}, received {value!r} ({err})"
            ) from None
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{owner}: delay must be real, received a {t.dtype} tensor")
        if t.layout != torch.strided or t.is_meta:
            raise TypeError(f"{owner}: delay must be a dense tensor with data, received layout {t.layout}")
        if tuple(t.shape) not in shapes:
            raise ValueError(f"{owner}: delay must have shape {shown}, received shape {list(t.shape)}")
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
    else:
        raise TypeError(
            f"{owner}: delay must be a number or a real tensor of shape {shown}, received {type(value).__name__}"
        )
    received = f"{float(value):g}" if isinstance(value, numbers.Real) else _shown(t)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{owner}: delay must be finite, received {received}")
    if bool((t < 0).any()) or bool((t > max_delay).any()):
        extent = f" (min {t.min().item():g}, max {t.max().item():g})" if t.numel() > 1 else ""
        raise ValueError(f"{owner}: delay must lie in [0, max_delay={max_delay}] steps, received {received}{extent}")
    return t.to(dtype or (t.dtype if isinstance(value, torch.Tensor) else torch.get_default_dtype()))


def _shown(t: torch.Tensor) -> str:
    return f"{t.reshape(()).item():g}" if t.numel() == 1 else f"a tensor of shape {list(t.shape)}"


class _DelayLine(TTLayer):
    """What both delay layers share: the ``buffer`` state ``[max_delay, *step shape]``, the ``delay`` param."""

    max_delay: int
    learn_delay: bool

    def _init_delay_line(self, max_delay: Any, dim: int) -> None:
        owner = type(self).__name__
        self.max_delay = check_max_delay(owner, max_delay)
        if self.dim >= 0:
            raise ValueError(
                f"{owner}: dim must count from the end (dim < 0, e.g. -1 for [B, N], -3 for [B, C, H, W]), "
                f"received dim={dim}: the buffer state adds a leading dimension"
            )
        self.register_state("buffer")

    def _declare_delay(self, value: torch.Tensor, learnable: bool) -> None:
        if not isinstance(learnable, bool):
            raise TypeError(f"{type(self).__name__}: learn_delay must be a bool, received {learnable!r}")
        self.learn_delay = learnable
        if learnable:
            nn.Module.register_parameter(self, "raw_delay", nn.Parameter(value))
        else:
            self.register_buffer("raw_delay", value)
        self._tt_params["delay"] = identity

    def _delay_shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def _assign_param(self, name: str, value: Any) -> None:
        if name != "delay":
            super()._assign_param(name, value)
            return
        raw = self._raw("delay")
        if isinstance(value, torch.Tensor) and value.dim() > raw.dim():
            raise ValueError(
                f"{type(self).__name__}: delay has shape {list(raw.shape)}; assign a number or a tensor of that "
                f"shape, received shape {list(value.shape)} (the shape is fixed at construction)"
            )
        new = check_delay(type(self).__name__, value, self.max_delay, self._delay_shapes(), raw.dtype)
        with torch.no_grad():
            raw.copy_(new.to(raw.device).expand_as(raw))
        if self._compiled:
            self._buffers["delay"] = raw.detach().clone()

    # ---- the buffer state: [max_delay, *one step's input shape] ---------------------------
    def _ensure_states(self, ref: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        owner = type(self).__name__
        dtype = dtype or ref.dtype
        t = self.__dict__.get("buffer")
        shape = [self.max_delay, *ref.shape]
        if t is None:
            object.__setattr__(self, "buffer", ref.new_zeros(shape, dtype=dtype))
            return
        if list(t.shape) != shape:
            raise ValueError(
                f"{owner}: hidden state 'buffer' has shape {list(t.shape)}, but this input {list(ref.shape)} needs "
                f"[max_delay={self.max_delay}, *input shape] = {shape}; call zero_states() when the batch size changes"
            )
        if t.dtype != dtype:
            raise TypeError(
                f"{owner}: hidden state 'buffer' is {t.dtype}, but this input ({ref.dtype}) computes in {dtype}; "
                "a live state never changes dtype: call zero_states() first, or convert the layer with .to(dtype)"
            )

    def _state_problems(
        self, items: Mapping[str, Any], prefix: str = "", dtype: torch.dtype | None = None
    ) -> list[str]:
        out = super()._state_problems(items, prefix, dtype)
        if out:
            return out
        t = items["buffer"]
        if t.dim() < 2 or t.shape[0] != self.max_delay:
            out.append(
                f"{prefix}buffer: shape {list(t.shape)}, expected [max_delay={self.max_delay}, *one step's input shape]"
            )
        return out

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        dtype = x.dtype
        for t in (*self.parameters(recurse=False), *self.buffers(recurse=False)):
            if t.is_floating_point():
                dtype = torch.promote_types(dtype, t.dtype)
        return dtype

    # ---- the calls -------------------------------------------------------------------------
    def _scan(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ys, new buffer)`` for a prepared ``[T, ...]`` input, in the input layout."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One timestep: ``x`` ``[..., N at dim, ...]`` -> the delayed output, the buffer advanced by one step."""
        x = self._prepare_input(x)
        ys, buffer = self._scan(x.unsqueeze(0))
        object.__setattr__(self, "buffer", buffer)
        return ys[0]

    def run_sequence(self, xs: torch.Tensor) -> torch.Tensor:
        """The sequence hook of :func:`tracetorch.nn.run`: ``xs`` ``[T, ...]`` (already checked and in
        the computing dtype) at once, from the stored buffer; leaves the final buffer. Returns ``ys``."""
        ys, buffer = self._scan(xs)
        self._put_states({"buffer": buffer})
        return ys


class Delay(_DelayLine):
    """Per-channel (axonal) delays: ``y_t = x_{t - delay}`` along ``dim``, zeros before the first step.

    Args:
        num_neurons: number of channels (the size of ``dim``).
        max_delay: the longest delay, in steps (an int >= 1): the buffer holds that many steps.
        delay: an int or float in ``[0, max_delay]``, or a tensor ``[]`` or ``[num_neurons]`` of them.
            Integer delays are exact shifts; a real delay is read by linear interpolation between
            its two neighbouring steps (see :mod:`tracetorch.functional.delays`).
        dim: the channel dimension of the input, counted from the end (-1 for ``[B, N]``, -3 for
            ``[B, C, H, W]``).
        delay_rank: for a number: 0 (one delay for all channels) or 1 (one per channel).
        learn_delay: learnable delays (an ``nn.Parameter``, read by interpolation so the gradient
            reaches it); ``False`` (default): a buffer, read exactly (an integer delay gives the
            input at that step even next to a non-finite one).

    State: ``buffer`` ``[max_delay, *input shape]``. Input and output: the same shape.
    """

    def __init__(
        self,
        num_neurons: int,
        max_delay: int,
        delay: float | torch.Tensor = 0,
        dim: int = -1,
        delay_rank: int = 1,
        learn_delay: bool = False,
    ) -> None:
        super().__init__(num_neurons, dim)
        self._init_delay_line(max_delay, dim)
        owner = type(self).__name__
        if isinstance(delay_rank, bool) or delay_rank not in (0, 1):
            raise ValueError(
                f"{owner}: delay_rank must be 0 (one delay) or 1 (one per channel), received {delay_rank!r}"
            )
        shapes = [(num_neurons,), ()] if delay_rank == 1 else [(), (num_neurons,)]
        self._declare_delay(check_delay(owner, delay, self.max_delay, shapes), learn_delay)

    def _delay_shapes(self) -> list[tuple[int, ...]]:
        raw = self._raw("delay")
        return [tuple(raw.shape), ()]

    def step(self, params: Any, state: Any, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The pure step, channels last: :func:`tracetorch.functional.delay_step`."""
        return D.delay_step(params, state, x, exact=not self.learn_delay)

    def _scan(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.dim
        state = D.DelayState(self.__dict__["buffer"].movedim(dim, -1))
        params = D.DelayParams(*self.activated_params())
        ys, new = D.delay_scan(params, state, xs.movedim(dim, -1), exact=not self.learn_delay)
        return ys.movedim(-1, dim), new.buffer.movedim(-1, dim)

    def extra_repr(self) -> str:
        raw = self._raw("delay")
        shape = "scalar" if raw.dim() == 0 else f"[{raw.shape[0]}]"
        learn = "learnable" if self.learn_delay else "fixed"
        return f"{self.num_neurons}, max_delay={self.max_delay}, dim={self.dim}, delay={shape} {learn}"


class DelayedLinear(_DelayLine):
    """A linear layer whose every weight has its own learnable delay (per-synapse delays).

    ``y_t[o] = bias[o] + sum_i weight[o, i] * x_{t - delay[o, i]}[i]``, zeros before the first
    step, real delays by linear interpolation: the dilated convolution with learnable spacings of
    Hammouamri et al. (2023), with a linear instead of a Gaussian kernel. Over a sequence
    (:func:`tracetorch.nn.run`) it is one convolution over time; per step, the buffer of the last
    ``max_delay`` inputs and one product with the same taps.

    Args:
        in_features: size of the input's last dimension.
        out_features: size of the output's last dimension.
        max_delay: the longest delay, in steps (an int >= 1).
        delay: a number, or a tensor ``[out_features, in_features]`` (or ``[]``), in
            ``[0, max_delay]``; ``None`` (default) draws each uniformly from ``[0, max_delay]``.
        bias: add a learnable bias (``True``), or not (a zero buffer).
        learn_delay: learnable delays (default) or fixed ones (a buffer).

    The weight and bias are initialised as ``nn.Linear``'s. State: ``buffer``
    ``[max_delay, ..., in_features]``. Input ``[..., in_features]``, output ``[..., out_features]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        max_delay: int,
        delay: float | torch.Tensor | None = None,
        bias: bool = True,
        learn_delay: bool = True,
    ) -> None:
        super().__init__(in_features, -1)
        owner = type(self).__name__
        if isinstance(out_features, bool) or not isinstance(out_features, numbers.Integral) or out_features < 1:
            raise ValueError(f"{owner}: out_features must be an int >= 1, received {out_features!r}")
        if not isinstance(bias, bool):
            raise TypeError(f"{owner}: bias must be a bool, received {bias!r}")
        self._init_delay_line(max_delay, -1)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation
        bound = 1 / math.sqrt(self.in_features)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features).uniform_(-bound, bound))
        else:
            self.register_buffer("bias", torch.zeros(self.out_features))
        if delay is None:
            delay = torch.rand(self.out_features, self.in_features) * self.max_delay
        self._declare_delay(check_delay(owner, delay, self.max_delay, self._delay_shapes()), learn_delay)

    def _delay_shapes(self) -> list[tuple[int, ...]]:
        return [(self.out_features, self.in_features), ()]

    def activated_params(self) -> D.DelayedLinearParams:
        """``DelayedLinearParams(weight, delay, bias)``."""
        (delay,) = super().activated_params()
        return D.DelayedLinearParams(self.weight, delay, self.bias)

    def step(self, params: Any, state: Any, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The pure step: :func:`tracetorch.functional.delayed_linear_step`."""
        return D.delayed_linear_step(params, state, x)

    def _scan(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = D.DelayState(self.__dict__["buffer"])
        ys, new = D.delayed_linear_scan(self.activated_params(), state, xs)
        return ys, new.buffer

    def extra_repr(self) -> str:
        learn = "learnable" if self.learn_delay else "fixed"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, max_delay={self.max_delay}, "
            f"delay {learn}, bias={isinstance(self.bias, nn.Parameter)}"
        )
