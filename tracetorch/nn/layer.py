"""TTLayer: the base of every neuron layer, built-in or custom.

A layer holds raw params and hidden state, and calls a pure ``step(params, state, x)``. It gives:

* params stored raw as ``raw_<name>`` (an ``nn.Parameter`` when learnable, a buffer when not),
  read activated as ``layer.<name>``; declared with :meth:`TTLayer.register_decay`,
  :meth:`TTLayer.register_threshold` and :meth:`TTLayer.register_parameter`;
* hidden states as plain attributes (``layer.mem``; ``None`` until the first call, lazily
  zero-initialised like the input) and as one NamedTuple, ``layer.state``;
* ``dim`` handling: the input's neuron dimension is moved last for the step and back after;
* ``TTcompile`` / ``TTuncompile``: freeze the activated params into buffers for inference.

A custom layer declares its params and states in ``__init__`` and writes one pure ``step``::

    class ALIF(TTLayer):
        def __init__(self, num_neurons, dim=-1):
            super().__init__(num_neurons, dim)
            self.register_decay("beta", 0.9)
            self.register_decay("rho", 0.95)
            self.register_threshold("threshold", 1.0)
            self.register_state("mem", "adapt")

        def step(self, params, state, x):
            mem = params.beta * state.mem + x
            spikes = round_st(sigmoid4x(mem - params.threshold - state.adapt))
            adapt = params.rho * state.adapt + (1 - params.rho) * spikes
            return spikes, state._replace(mem=mem - spikes * params.threshold, adapt=adapt)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, NamedTuple

import torch
from torch import nn

from ..functional.constraints import ACTIVATIONS, INVERSES, identity
from ..functional.neurons import ParamSpec, check_num_neurons, resolve_param

__all__ = ["TTLayer", "record_type"]


@cache
def record_type(fields: tuple[str, ...], kind: str = "State") -> type:
    """A NamedTuple type with these tensor fields, made once per field tuple (never inside traced code)."""
    return NamedTuple(f"{kind}_" + "_".join(fields), [(f, torch.Tensor) for f in fields])


class TTLayer(nn.Module):
    """Base class of neuron layers: raw params, lazy hidden state, ``dim`` handling, compile.

    Args:
        num_neurons: size of the neuron dimension (an int >= 1).
        dim: which input dimension holds the neurons: -1 for ``[B, N]``, -3 for ``[B, C, H, W]``.

    Subclasses declare params (``register_decay`` / ``register_threshold`` /
    ``register_parameter``) and states (``register_state``) and implement the pure
    ``step(params, state, x) -> (y, new_state)`` with the neuron dimension last.
    """

    #: The step's params type; built-in layers use their spec's NamedTuple.
    _params_type: type | None = None
    _state_type: type | None = None

    def __init__(self, num_neurons: int, dim: int = -1) -> None:
        super().__init__()
        owner = type(self).__name__
        self.num_neurons = check_num_neurons(owner, num_neurons)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"{owner}: dim must be an int, received {type(dim).__name__}")
        self.dim = dim
        self._tt_params: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._state_names: tuple[str, ...] = ()
        self._compiled = False
        self.register_load_state_dict_post_hook(_refresh_compiled)

    # ---- params -------------------------------------------------------------------------
    def register_decay(self, name: str, value: Any = 0.9, rank: int = 1, learnable: bool = True) -> None:
        """Declare a decay in (0, 1): stored as ``raw_<name> = logit(value)``, read through sigmoid."""
        self._declare(ParamSpec(name, "decay", 0.9), value, rank, learnable)

    def register_threshold(self, name: str, value: Any = 1.0, rank: int = 1, learnable: bool = True) -> None:
        """Declare a threshold > 0: stored as ``raw_<name> = softplus_inverse(value)``, read through softplus."""
        self._declare(ParamSpec(name, "threshold", 1.0), value, rank, learnable)

    def register_parameter(self, name: str, param: Any = None, rank: int = 1, learnable: bool = True) -> None:  # type: ignore[override]
        """Declare an unconstrained param ``name`` from a float or tensor (stored as ``raw_<name>``).

        Called with an ``nn.Parameter`` or ``None`` it is ``nn.Module.register_parameter``.
        """
        if param is None or isinstance(param, nn.Parameter):
            super().register_parameter(name, param)
            return
        self._declare(ParamSpec(name, "free", 0.0), param, rank, learnable)

    def _declare(self, pspec: ParamSpec, value: Any, rank: int, learnable: bool, activation=None, inverse=None) -> None:
        owner = type(self).__name__
        if not isinstance(pspec.name, str) or not pspec.name.isidentifier():
            raise ValueError(f"{owner}: a parameter name must be an identifier, received {pspec.name!r}")
        if pspec.name in self._tt_params:
            raise ValueError(f"{owner}: parameter {pspec.name!r} is already declared")
        if not isinstance(learnable, bool):
            raise TypeError(f"{owner}: learn_{pspec.name} must be a bool, received {learnable!r}")
        value = resolve_param(owner, pspec, self.num_neurons, value, rank)
        if inverse is None:
            raw, activation = INVERSES[pspec.kind](value), ACTIVATIONS[pspec.kind]
        else:  # 0.15-style: arbitrary inverse / activation functions
            raw = inverse(value)
        raw = raw.detach().to(torch.get_default_dtype())
        if learnable:
            nn.Module.register_parameter(self, f"raw_{pspec.name}", nn.Parameter(raw))
        else:
            self.register_buffer(f"raw_{pspec.name}", raw)
        self._tt_params[pspec.name] = activation

    def _raw(self, name: str) -> torch.Tensor:
        key = f"raw_{name}"
        raw = self._parameters.get(key)
        return self._buffers[key] if raw is None else raw

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the declared (activated) params, in declaration order."""
        return tuple(self._tt_params)

    def activated_params(self) -> Any:
        """The step's params: a NamedTuple of activated tensors (the frozen ones once compiled)."""
        if self._compiled:
            values = [self._buffers[n] for n in self._tt_params]
        else:
            values = [act(self._raw(n)) for n, act in self._tt_params.items()]
        return self._params_record()(*values)

    def _params_record(self) -> type:
        return self._params_type or record_type(tuple(self._tt_params), "Params")

    def _state_record(self) -> type:
        return self._state_type or record_type(self._state_names, "State")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            params = self.__dict__.get("_tt_params")
            if params is not None and name in params:
                return params[name](self._raw(name))
            raise

    # ---- compile ------------------------------------------------------------------------
    def TTcompile(self) -> None:
        """Freeze the activated params into (non-persistent) buffers; forward skips the activations.

        For inference: while compiled, gradients do not reach the raw params. Idempotent.
        """
        for name, act in self._tt_params.items():
            self._buffers[name] = act(self._raw(name)).detach().clone()
            self._non_persistent_buffers_set.add(name)
        self._compiled = True

    def TTuncompile(self) -> None:
        """Drop the frozen values; the raw params (never touched) are used again. Idempotent."""
        for name in self._tt_params:
            self._buffers.pop(name, None)
            self._non_persistent_buffers_set.discard(name)
        self._compiled = False

    # ---- state --------------------------------------------------------------------------
    def register_state(self, *names: str) -> None:
        """Declare hidden states by name; each is ``None`` until the first call."""
        for name in names:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"{type(self).__name__}: a state name must be an identifier, received {name!r}")
            if name not in self._state_names:
                self._state_names = (*self._state_names, name)
            object.__setattr__(self, name, None)

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the hidden states, in order."""
        return self._state_names

    @property
    def state(self) -> Any:
        """The hidden state as one NamedTuple (input layout), or ``None`` before the first call."""
        values = [self.__dict__.get(n) for n in self._state_names]
        if any(v is None for v in values):
            return None
        return self._state_record()(*values)

    @state.setter
    def state(self, value: Any) -> None:
        owner = type(self).__name__
        if value is None:
            self.zero_states()
            return
        fields = getattr(value, "_fields", None) or (tuple(value) if isinstance(value, dict) else None)
        if fields is None or set(fields) != set(self._state_names):
            raise ValueError(
                f"{owner}: state must have the fields {list(self._state_names)}, received {list(fields or [])}"
            )
        items = value._asdict() if hasattr(value, "_asdict") else value
        shapes = {tuple(t.shape) for t in items.values()}
        if len(shapes) != 1 or not all(isinstance(t, torch.Tensor) for t in items.values()):
            raise ValueError(f"{owner}: state fields must be tensors of one shape, received shapes {sorted(shapes)}")
        for n in self._state_names:
            object.__setattr__(self, n, items[n])

    def zero_states(self) -> None:
        """Forget the hidden state: every state becomes ``None`` and is re-created on the next call."""
        for n in self._state_names:
            object.__setattr__(self, n, None)

    def detach_states(self) -> None:
        """Cut the autograd graph behind the hidden state (values unchanged), e.g. for truncated BPTT."""
        for n in self._state_names:
            t = self.__dict__.get(n)
            if t is not None:
                object.__setattr__(self, n, t.detach())

    def _ensure_states(self, ref: torch.Tensor) -> None:
        """Create zero states like ``ref`` (input layout) where they are ``None``; check the others' shape."""
        for n in self._state_names:
            t = self.__dict__.get(n)
            if t is None:
                object.__setattr__(self, n, torch.zeros_like(ref))
            elif t.shape != ref.shape:
                raise ValueError(
                    f"{type(self).__name__}: hidden state {n!r} has shape {list(t.shape)} but the input has shape "
                    f"{list(ref.shape)}; call zero_states() (model.zero_states()) when the batch size changes"
                )

    # ---- dim ----------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        owner = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{owner}: input must be a tensor, received {type(x).__name__}")
        if x.dim() == 0 or not -x.dim() <= self.dim < x.dim():
            raise ValueError(f"{owner}: dim={self.dim} is out of range for an input of shape {list(x.shape)}")
        if x.shape[self.dim] != self.num_neurons:
            raise ValueError(
                f"{owner}: input size along dim={self.dim} must be num_neurons={self.num_neurons}, "
                f"received {x.shape[self.dim]} (input shape {list(x.shape)})"
            )

    def _to_working_dim(self, t: torch.Tensor) -> torch.Tensor:
        """Move ``dim`` last (a view)."""
        return t if self.dim == -1 else t.movedim(self.dim, -1)

    def _from_working_dim(self, t: torch.Tensor) -> torch.Tensor:
        """Move the last dimension back to ``dim`` (a view)."""
        return t if self.dim == -1 else t.movedim(-1, self.dim)

    # ---- the call -----------------------------------------------------------------------
    def step(self, params: Any, state: Any, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The pure step: ``(params, state, x [..., N]) -> (y, new_state)``. Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement step(params, state, x)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One timestep: input shaped ``[..., num_neurons at dim, ...]`` -> output of the same shape."""
        self._check_input(x)
        self._ensure_states(x)
        to_work = self._to_working_dim
        state = self._state_record()(*(to_work(self.__dict__[n]) for n in self._state_names))
        y, new_state = self.step(self.activated_params(), state, to_work(x))
        for n, t in zip(self._state_names, new_state):
            object.__setattr__(self, n, self._from_working_dim(t))
        return self._from_working_dim(y)

    # ---- module hygiene -----------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for n in self._state_names:
            t = self.__dict__.get(n)
            if t is not None:
                object.__setattr__(self, n, fn(t))
        return self

    def __getstate__(self) -> dict:
        # states may hang on an autograd graph, which neither pickle nor deepcopy can carry
        d = self.__dict__.copy()
        for n in d.get("_state_names", ()):
            if isinstance(d.get(n), torch.Tensor):
                d[n] = d[n].detach()
        return d

    def extra_repr(self) -> str:
        parts = [str(self.num_neurons), f"dim={self.dim}"]
        for name in self._tt_params:
            raw = self._raw(name)
            shape = "scalar" if raw.dim() == 0 else f"[{raw.shape[0]}]"
            parts.append(f"{name}={shape}{'' if isinstance(raw, nn.Parameter) else ' fixed'}")
        if self._compiled:
            parts.append("compiled")
        return ", ".join(parts)

    # ---- traceTorch 0.15 spellings, for ported layers -----------------------------------
    def _register_parameter(self, name, value, rank, learnable, inverse_function=None, activation_function=None):
        """0.15's helper: a param with its own inverse and activation functions (identity by default)."""
        self._declare(
            ParamSpec(name, "free", 0.0),
            value,
            rank,
            learnable,
            activation_function or identity,
            inverse_function or identity,
        )

    def _register_decay(self, name, value, rank, learnable):
        """0.15's spelling of :meth:`register_decay`."""
        self.register_decay(name, value, rank, learnable)

    def _register_threshold(self, name, value, rank, learnable):
        """0.15's spelling of :meth:`register_threshold`."""
        self.register_threshold(name, value, rank, learnable)

    def _initialize_state(self, name):
        """0.15's spelling of :meth:`register_state` for one name."""
        self.register_state(name)

    def _zero_state(self, name):
        """Set one state to ``None`` (0.15)."""
        object.__setattr__(self, name, None)

    def _detach_state(self, name):
        """Detach one state (0.15)."""
        t = self.__dict__.get(name)
        if t is not None:
            object.__setattr__(self, name, t.detach())

    def _ensure_state(self, name, ref):
        """Zero-initialise one state like ``ref`` if it is ``None`` (0.15)."""
        if self.__dict__.get(name) is None:
            object.__setattr__(self, name, torch.zeros_like(ref))


def _refresh_compiled(module: TTLayer, incompatible_keys: Any) -> None:
    """After ``load_state_dict``, recompute the frozen values of a compiled layer from the new raw params."""
    if module._compiled:
        module.TTcompile()
