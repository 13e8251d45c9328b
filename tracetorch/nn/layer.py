"""TTLayer: the base of every neuron layer, built-in or custom.

A layer holds raw params and hidden state, and calls a pure ``step(params, state, x)``. It gives:

* params stored raw as ``raw_<name>`` (an ``nn.Parameter`` when learnable, a buffer when not),
  read activated as ``layer.<name>``; declared with :meth:`TTLayer.register_decay`,
  :meth:`TTLayer.register_threshold` and :meth:`TTLayer.register_parameter`;
* hidden states as plain attributes (``layer.mem``; ``None`` until the first call, lazily
  zero-initialised like the input) and as one NamedTuple, ``layer.state``;
* ``dim`` handling: the input's neuron dimension is moved last for the step and back after;
* ``TTcompile`` / ``TTuncompile``: freeze the activated params into buffers for inference.

Assigning a declared param (``layer.beta = 0.5``, ``layer.threshold = torch.full((N,), 2.0)``)
sets it: the value is validated exactly as the constructor validates it (range, finiteness,
shape, and again once converted to the stored dtype), then written through the inverse into the
existing ``raw_<name>`` in place, under ``no_grad``, so the param keeps its kind (``nn.Parameter``
or buffer), rank, dtype, device and identity (an optimizer holding it keeps working). A tensor
of shape ``[num_neurons]`` is refused for a scalar (rank 0) param: the rank does not change.

dtypes: a layer computes in its own dtype, its params' (the input's, for a layer without params):
a float16 or bfloat16 input into a float32 layer is widened, computed, returned and stored in
float32; a wider input (float64 into a float32 layer) is refused with a ``TypeError`` saying to
convert the input or the whole layer (``.to(dtype)`` converts params and states), never rounded
down silently nor computed in float64 (which the next float32 ``nn.Linear`` would refuse, far from
the cause). The hidden states take the layer's dtype when created, and a live state never changes
dtype: a call that would compute in another (states set by hand in another dtype) is refused
with a ``TypeError`` (call ``zero_states()`` first). Inputs must be real floating tensors
(complex, integer and bool inputs are refused).

No output aliases a state: where a step returns a state tensor itself as the output (the LI
family's ``y = mem``, the recurrent types' ``prev_output = y``), the layer hands out a copy, so an
in-place op downstream (``nn.ReLU(inplace=True)``, ``y.clamp_()``) never rewrites the state.

NaN, the same for all 52 built-in types and every quantizer: a NaN in the input gives NaN in
that neuron's output and in every one of its states (the recurrent traces from the next step on,
as they read the previous output); every trace decays multiplicatively, so the NaN stays in the
state at every later step until ``zero_states()`` (or a new state is set). Other neurons are
never affected.

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

import numbers
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, NamedTuple

import torch
from torch import nn

from ..functional.constraints import ACTIVATIONS, INVERSES, identity
from ..functional.neurons import ParamSpec, check_num_neurons, check_stored, fixed_decay, resolve_param
from ..state.tree import _state_items

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
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
            raise TypeError(f"{owner}: dim must be an int, received {type(dim).__name__}")
        self.dim = int(dim)
        self._tt_params: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._tt_pspecs: dict[str, tuple[ParamSpec, Callable[[Any], torch.Tensor]]] = {}
        self._state_names: tuple[str, ...] = ()
        self._compiled = False
        self.register_load_state_dict_post_hook(_refresh_compiled)

    # ---- params -------------------------------------------------------------------------
    def register_decay(self, name: str, value: Any = 0.9, rank: int = 1, learnable: bool = True) -> None:
        """Declare a decay in (0, 1): stored as ``raw_<name> = logit(value)``, read through sigmoid.

        A fixed decay (``learnable=False``) may be exactly 1.0 (integrate-and-fire): it is then
        stored as the value itself, and stays in (0, 1].
        """
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
        value_in = value
        pspec = fixed_decay(pspec, value, learnable)  # 1.0, fixed: integrate-and-fire, stored as the value
        value = resolve_param(owner, pspec, self.num_neurons, value, rank)
        if inverse is None:  # else 0.15-style: arbitrary inverse / activation functions
            inverse, activation = INVERSES[pspec.kind], ACTIVATIONS[pspec.kind]
        raw = self._stored_raw(pspec, value_in, value, inverse, activation, torch.get_default_dtype())
        if learnable:
            nn.Module.register_parameter(self, f"raw_{pspec.name}", nn.Parameter(raw))
        else:
            self.register_buffer(f"raw_{pspec.name}", raw)
        self._tt_params[pspec.name] = activation
        self._tt_pspecs[pspec.name] = (pspec, inverse)

    def _stored_raw(self, pspec, value_in, value, inverse, activation, dtype) -> torch.Tensor:
        """The raw form of ``value`` in ``dtype``, refused if it no longer satisfies the constraint there."""
        raw = inverse(value).detach()
        stored = raw.to(dtype)
        check_stored(type(self).__name__, pspec, value_in, activation(stored), f"once stored raw in {dtype}")
        return stored

    def _assign_param(self, name: str, value: Any) -> None:
        """``layer.<name> = value``: validate like the constructor, then write the raw form in place."""
        owner = type(self).__name__
        pspec, inverse = self._tt_pspecs[name]
        raw = self._raw(name)
        if isinstance(value, torch.Tensor) and value.dim() == 1 and raw.dim() == 0:
            raise ValueError(
                f"{owner}: {name} is one scalar (rank 0); assign a float or a 0-d tensor, "
                f"received a tensor of shape {list(value.shape)} (the rank is fixed at construction)"
            )
        as_float = not isinstance(value, torch.Tensor)
        new = resolve_param(owner, pspec, self.num_neurons, value, raw.dim(), torch.float64 if as_float else None)
        stored = self._stored_raw(pspec, value, new, inverse, self._tt_params[name], raw.dtype)
        with torch.no_grad():
            raw.copy_(stored.to(raw.device).expand_as(raw))
        if self._compiled:
            self._buffers[name] = self._tt_params[name](raw).detach().clone()

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_tt_params")
        if params is not None and name in params:
            self._assign_param(name, value)
            return
        super().__setattr__(name, value)

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
        """Set every hidden state at once (a NamedTuple or dict of tensors), validated first; ``None`` zeroes."""
        owner = type(self).__name__
        if value is None:
            self.zero_states()
            return
        items = _state_items(value)
        problems = (
            self._state_problems(items)
            if items is not None
            else [f"expected a NamedTuple or dict of tensors, received {type(value).__name__}"]
        )
        if problems:
            raise ValueError(f"{owner}: state not set, the layer is unchanged: " + "; ".join(problems))
        self._put_states(items)

    def _put_states(self, items: Mapping[str, Any]) -> None:
        for n in self._state_names:
            object.__setattr__(self, n, items[n])
        self._bump()

    def _bump(self) -> None:
        # counts every change of the states made from outside a step (sequence mode watches it)
        self.__dict__["_tt_version"] = self.__dict__.get("_tt_version", 0) + 1

    def _state_problems(
        self, items: Mapping[str, Any], prefix: str = "", dtype: torch.dtype | None = None
    ) -> list[str]:
        """Everything wrong with ``items`` as this layer's states (empty if they can be set).

        Checks the field names, that each is a dense strided tensor with data (not meta, sparse,
        quantized or nested), real floating, of rank >= 1 with ``num_neurons`` along ``dim``, all
        fields of one shape and one dtype (``dtype`` if given).
        """
        out: list[str] = []
        names = list(items)
        if set(names) != set(self._state_names):
            return [f"{prefix}fields must be {list(self._state_names)}, received {names}"]
        shapes, dtypes = set(), set()
        for n in self._state_names:
            t, key = items[n], f"{prefix}{n}"
            if not isinstance(t, torch.Tensor):
                out.append(f"{key}: expected a tensor, received {type(t).__name__}")
                continue
            if t.layout != torch.strided or t.is_meta or t.is_quantized or getattr(t, "is_nested", False):
                kind = "meta" if t.is_meta else "quantized" if t.is_quantized else str(t.layout)
                out.append(f"{key}: expected a dense (strided) tensor with data, received a {kind} tensor")
                continue
            if not t.is_floating_point():
                out.append(f"{key}: expected a real floating dtype, received {t.dtype}")
                continue
            if dtype is not None and t.dtype != dtype:
                out.append(f"{key}: dtype {t.dtype}, expected {dtype}")
            if t.dim() == 0 or not -t.dim() <= self.dim < t.dim() or t.shape[self.dim] != self.num_neurons:
                out.append(f"{key}: shape {list(t.shape)}, expected {self.num_neurons} along dim={self.dim}")
            shapes.add(tuple(t.shape))
            dtypes.add(t.dtype)
        if not out and len(shapes) > 1:
            out.append(f"{prefix}fields must share one shape, received shapes {sorted(shapes)}")
        if not out and len(dtypes) > 1:
            out.append(f"{prefix}fields must share one dtype, received {sorted(map(str, dtypes))}")
        return out

    def zero_states(self) -> None:
        """Forget the hidden state: every state becomes ``None`` and is re-created on the next call."""
        for n in self._state_names:
            object.__setattr__(self, n, None)
        self._bump()

    def detach_states(self) -> None:
        """Cut the autograd graph behind the hidden state (values unchanged), e.g. for truncated BPTT."""
        for n in self._state_names:
            t = self.__dict__.get(n)
            if t is not None:
                object.__setattr__(self, n, t.detach())
        self._bump()

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype a call on ``x`` computes in: the layer's own (its params'), the input's if it has none.

        A narrower input (float16 or bfloat16 into a float32 layer) is widened exactly; a wider one
        (float64 into a float32 layer) is refused with a ``TypeError``, as rounding it down would
        lose precision without a word and computing in it would hand the next module (an
        ``nn.Linear`` in float32) a dtype it refuses far from the cause.
        """
        own = None
        for name in self._tt_params:
            d = self._raw(name).dtype
            own = d if own is None else torch.promote_types(own, d)
        if own is None:
            return x.dtype
        if torch.promote_types(x.dtype, own) != own:
            raise TypeError(
                f"{type(self).__name__}: the input is {x.dtype} but the layer is {own}; a layer computes in its "
                f"own dtype and widens narrower inputs (float16, bfloat16 into float32), but does not round a "
                f"wider input down: convert the input (x.to({own})) or the whole layer (layer.to({x.dtype}), "
                "model.to(...)), which converts its params and states"
            )
        return own

    def _ensure_states(self, ref: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        """Create zero states like ``ref`` (input layout, in ``dtype``) where they are ``None``; check the others.

        A live state must have ``ref``'s shape and the dtype the call computes in (``dtype``,
        default ``ref``'s): a live state never changes dtype.
        """
        owner = type(self).__name__
        dtype = dtype or ref.dtype
        live = [(n, self.__dict__.get(n)) for n in self._state_names]
        for n, t in live:
            if t is None:
                continue
            if t.shape != ref.shape:
                hint = (
                    "call zero_states() (model.zero_states()) when the batch size changes (in sequence mode, "
                    "dim 0 of xs is time: time_dim=1 for batch-first [B, T, ...] data)"
                    if t.dim() == ref.dim()
                    else f"the input has rank {ref.dim()}, the state rank {t.dim()}: in sequence mode "
                    "(model.run, tt.nn.run) dim 0 of xs is time, so xs must be [T, <one step's input shape>]"
                )
                raise ValueError(
                    f"{owner}: hidden state {n!r} has shape {list(t.shape)} but the input has shape "
                    f"{list(ref.shape)}; {hint}"
                )
            if t.dtype != dtype:
                raise TypeError(
                    f"{owner}: hidden state {n!r} is {t.dtype}, but this input ({ref.dtype}, params "
                    f"{self._params_dtype()}) computes in {dtype}; a live state never changes dtype: call "
                    "zero_states() first, or convert the whole layer with .to(dtype)"
                )
        for n, t in live:
            if t is None:
                object.__setattr__(self, n, torch.zeros_like(ref, dtype=dtype))

    def _params_dtype(self) -> str:
        dtypes = sorted({str(self._raw(n).dtype) for n in self._tt_params})
        return ", ".join(dtypes) or "none"

    # ---- dim ----------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        owner = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{owner}: input must be a tensor, received {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{owner}: input must be a real floating tensor (float16, bfloat16, float32, float64), "
                f"received dtype {x.dtype}"
            )
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
        x = self._prepare_input(x)
        to_work = self._to_working_dim
        state = self._state_record()(*(to_work(self.__dict__[n]) for n in self._state_names))
        params, xw = self.activated_params(), to_work(x)
        out = self._custom_step_kernel(params, state, xw) if self._takes_custom_kernel(xw) else None
        y, new_state = out if out is not None else self.step(params, state, xw)
        if any(y is t for t in new_state):
            y = y.clone()  # no output aliases a state: an in-place op downstream must not rewrite it
        for n, t in zip(self._state_names, new_state):
            object.__setattr__(self, n, self._from_working_dim(t))
        return self._from_working_dim(y)

    def _takes_custom_kernel(self, x: Any) -> bool:
        """Whether a per-step call tries the step's traced kernel (large CPU inputs, as the built-in types)."""
        from ..functional import kernels

        if not kernels.config.auto or type(x) is not torch.Tensor or x.device.type != "cpu":
            return False
        if kernels.tracing() or torch._C._are_functorch_transforms_active():  # per-call facts only
            return False
        return x.numel() >= kernels.config.step_min_elements

    def _custom_step_kernel(self, params: Any, state: Any, x: torch.Tensor) -> tuple[torch.Tensor, Any] | None:
        """One step through the step's traced kernel, ``(y, new_state)``, or ``None`` (the plain step runs)."""
        from ..functional import kernels

        try:
            out, _ = kernels.custom_scan(self.step, params, state, x.unsqueeze(0), {})
        except kernels.BuildError as err:
            kernels.warn_no_compiler(str(err).splitlines()[0])
            return None
        return None if out is None else (out[0][0], out[1])

    def kernel_reason(self, x: torch.Tensor) -> str | None:
        """Why this layer's time loop would not run through a fused kernel for steps like ``x``, or ``None``.

        ``x`` is one step's input (``[..., num_neurons at dim, ...]``); nothing is changed (a missing
        state is taken as zeros). For a custom layer the reason names the operation of ``step``
        that the kernel tracer cannot read (see :func:`tracetorch.functional.kernels.explain`).
        """

        self._check_input(x)
        x = x.to(self._compute_dtype(x))
        live = [self.__dict__.get(n) for n in self._state_names]
        state = [torch.zeros_like(x) if t is None else t for t in live]
        return self._reason_for(x, state)

    def _reason_for(self, x: torch.Tensor, state: list[torch.Tensor]) -> str | None:
        from ..functional import kernels

        work = self._to_working_dim
        states = self._state_record()(*(work(t) for t in state))
        return kernels.custom_reason(self.step, self.activated_params(), states, work(x).unsqueeze(0))

    def _prepare_input(self, x: torch.Tensor, sequence: bool = False) -> torch.Tensor:
        """Check one step's input (``x``, or ``x[0]`` of a ``[T, ...]`` sequence), create or check the
        states, and return ``x`` in the dtype the call computes in."""
        ref = x[0] if sequence else x
        self._check_input(ref)
        dtype = self._compute_dtype(ref)
        self._ensure_states(ref, dtype)
        return x if x.dtype == dtype else x.to(dtype)

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
        self._bump()

    def _detach_state(self, name):
        """Detach one state (0.15)."""
        t = self.__dict__.get(name)
        if t is not None:
            object.__setattr__(self, name, t.detach())
        self._bump()

    def _ensure_state(self, name, ref):
        """Zero-initialise one state like ``ref`` if it is ``None`` (0.15)."""
        if self.__dict__.get(name) is None:
            object.__setattr__(self, name, torch.zeros_like(ref))


def _refresh_compiled(module: TTLayer, incompatible_keys: Any) -> None:
    """After ``load_state_dict``, recompute the frozen values of a compiled layer from the new raw params."""
    if module._compiled:
        module.TTcompile()
