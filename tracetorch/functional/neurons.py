"""The 28 neuron types as pure step functions, built from one table of specs.

Every type is a :class:`NeuronSpec` ``(dual, synaptic, recurrent, firing)``; one generic step
chains the stages of the maths page (docs/maths.md) (synaptic, recurrent, membrane, firing) as the spec says. The spec also
derives the type's name, its param names and defaults, and its state names, and owns one
``NamedTuple`` type for its params and one for its state (created here at import time, so they
pickle and trace).

Conventions for every step ``step(params, state, x) -> (y, new_state)``:

* ``x``: ``[..., N]``, the neuron dimension last; ``y`` and every state field have ``x``'s shape.
* ``params``: the spec's params NamedTuple of *activated* tensors, each ``[]`` or ``[N]``.
* nothing is written in place: new tensors out, inputs untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import torch

from .constraints import INVERSES, _short
from .spikes import Quantizer, resolve_quantizer, sigmoid4x

__all__ = [
    "ParamSpec",
    "NeuronSpec",
    "SPECS",
    "NAMES",
    "get_spec",
    "make_step",
    "init_params",
    "init_state",
]

FIRING_HEADS = ("", "B", "T", "TS")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its name, its kind (``decay`` / ``threshold`` / ``free``) and default value."""

    name: str
    kind: str
    default: float


def _pos(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 0, v, 0.0)


def _neg(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v <= 0, v, 0.0)


def _ema(decay: torch.Tensor, trace: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return decay * trace + (1.0 - decay) * x


@dataclass(frozen=True)
class NeuronSpec:
    """Static description of a neuron type: ``D``/``S``/``R`` prefixes and firing head.

    ``firing`` is ``""`` (LI: output the membrane), ``"B"``, ``"T"`` or ``"TS"``. Recurrence
    needs a firing head. Hashable, so it can key caches and sit in static config.
    """

    dual: bool
    synaptic: bool
    recurrent: bool
    firing: str

    def __post_init__(self) -> None:
        if self.firing not in FIRING_HEADS:
            raise ValueError(f"NeuronSpec: firing must be one of {FIRING_HEADS}, received {self.firing!r}")
        if self.recurrent and not self.firing:
            raise ValueError("NeuronSpec: a recurrent type needs a firing head (B, T or TS)")

    @property
    def name(self) -> str:
        """The type's name, e.g. ``DSRLITS``."""
        return (
            ("D" if self.dual else "")
            + ("S" if self.synaptic else "")
            + ("R" if self.recurrent else "")
            + "LI"
            + self.firing
        )

    @property
    def fires(self) -> bool:
        """Whether the type has a firing head (and so takes ``spike_fn`` / ``quant_fn``)."""
        return bool(self.firing)

    def _pair(self, name: str) -> tuple[str, ...]:
        return (f"pos_{name}", f"neg_{name}") if self.dual else (name,)

    @cached_property
    def params(self) -> tuple[ParamSpec, ...]:
        """The type's parameters in traceTorch 0.15's constructor order."""
        out: list[ParamSpec] = []
        if self.synaptic:
            out += [ParamSpec(n, "decay", 0.5) for n in self._pair("alpha")]
        out += [ParamSpec(n, "decay", 0.9) for n in self._pair("beta")]
        if self.recurrent:
            out += [ParamSpec(n, "decay", 0.9) for n in self._pair("gamma")]
        if self.firing == "B":
            out.append(ParamSpec("threshold", "threshold", 1.0))
        elif self.firing in ("T", "TS"):
            out += [ParamSpec("pos_threshold", "threshold", 1.0), ParamSpec("neg_threshold", "threshold", 1.0)]
        if self.firing == "TS":
            out += [ParamSpec("pos_scale", "free", 1.0), ParamSpec("neg_scale", "free", 1.0)]
        if self.recurrent:
            out += [ParamSpec(n, "free", 0.0) for n in self._pair("rec_weight")]
        return tuple(out)

    @cached_property
    def param_names(self) -> tuple[str, ...]:
        """Names of the params, in order."""
        return tuple(p.name for p in self.params)

    @cached_property
    def state_names(self) -> tuple[str, ...]:
        """Names of the hidden states, in order."""
        out: list[str] = []
        if self.synaptic:
            out += self._pair("syn")
        if self.recurrent:
            out += [*self._pair("rec"), "prev_output"]
        out += self._pair("mem")
        return tuple(out)

    @cached_property
    def Params(self) -> type:
        """The NamedTuple type of this spec's (activated) params."""
        return _named_tuple(f"{self.name}Params", self.param_names)

    @cached_property
    def State(self) -> type:
        """The NamedTuple type of this spec's state."""
        return _named_tuple(f"{self.name}State", self.state_names)

    def step(
        self,
        params: Any,
        state: Any,
        x: torch.Tensor,
        *,
        spike_fn: Callable[[torch.Tensor], torch.Tensor] = sigmoid4x,
        quant_fn: Quantizer = "bernoulli",
    ) -> tuple[torch.Tensor, Any]:
        """One timestep of this type (docs/maths.md, "One timestep"). See :func:`make_step`."""
        return _generic_step(self, params, state, x, spike_fn, resolve_quantizer(quant_fn, self.name))


def _named_tuple(name: str, fields: tuple[str, ...]) -> type:
    cls = NamedTuple(name, [(f, torch.Tensor) for f in fields])
    cls.__module__ = __name__
    globals()[name] = cls  # importable by name, so instances pickle
    return cls


def _generic_step(spec: NeuronSpec, p: Any, s: Any, x: torch.Tensor, spike_fn, quant) -> tuple[torch.Tensor, Any]:
    new: dict[str, torch.Tensor] = {}
    dual = spec.dual

    # 1. synaptic stage
    if spec.synaptic:
        if dual:
            new["pos_syn"] = _ema(p.pos_alpha, s.pos_syn, _pos(x))
            new["neg_syn"] = _ema(p.neg_alpha, s.neg_syn, _neg(x))
            i = new["pos_syn"] + new["neg_syn"]
        else:
            new["syn"] = _ema(p.alpha, s.syn, x)
            i = new["syn"]
    else:
        i = x

    # 2. recurrent stage -> membrane drive
    if spec.recurrent:
        prev = s.prev_output
        if dual:
            new["pos_rec"] = _ema(p.pos_gamma, s.pos_rec, _pos(prev))
            new["neg_rec"] = _ema(p.neg_gamma, s.neg_rec, _neg(prev))
            rec = new["pos_rec"] + new["neg_rec"]
            d_pos = p.pos_rec_weight * _pos(rec) + _pos(i)
            d_neg = p.neg_rec_weight * _neg(rec) + _neg(i)
        else:
            new["rec"] = _ema(p.gamma, s.rec, prev)
            d = p.rec_weight * new["rec"] + i
    elif dual:
        d_pos, d_neg = _pos(i), _neg(i)
    else:
        d = i

    # 3. membrane
    if dual:
        pos_mem = p.pos_beta * s.pos_mem + d_pos
        neg_mem = p.neg_beta * s.neg_mem + d_neg
        mem = pos_mem + neg_mem
    else:
        mem = p.beta * s.mem + d

    # 4. firing head and reset by subtraction
    if not spec.firing:
        y, reset = mem, None
    elif spec.firing == "B":
        y = quant(spike_fn(mem - p.threshold))
        reset = y * p.threshold
    else:
        s_pos = quant(spike_fn(mem - p.pos_threshold))
        s_neg = -quant(spike_fn(-p.neg_threshold - mem))
        reset = s_pos * p.pos_threshold + s_neg * p.neg_threshold
        y = s_pos + s_neg if spec.firing == "T" else s_pos * p.pos_scale + s_neg * p.neg_scale

    if dual:
        if reset is not None:
            half = 0.5 * reset
            pos_mem, neg_mem = pos_mem - half, neg_mem - half
        new["pos_mem"], new["neg_mem"] = pos_mem, neg_mem
    else:
        new["mem"] = mem if reset is None else mem - reset

    # 5. recurrent bookkeeping
    if spec.recurrent:
        new["prev_output"] = y
    return y, spec.State(**new)


def _build_specs() -> dict[str, NeuronSpec]:
    specs = [NeuronSpec(d, s, False, "") for s in (False, True) for d in (False, True)]
    for head in ("B", "T", "TS"):
        # the maths page's order: LIx DLIx SLIx RLIx DSLIx DRLIx SRLIx DSRLIx
        for d, s, r in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]:
            specs.append(NeuronSpec(bool(d), bool(s), bool(r), head))
    return {spec.name: spec for spec in specs}


#: Every neuron type by name, in the maths page's order (docs/maths.md).
SPECS: dict[str, NeuronSpec] = _build_specs()
#: The 28 names in the maths page's order (docs/maths.md).
NAMES: tuple[str, ...] = tuple(SPECS)

for _spec in SPECS.values():  # create the NamedTuple types at import time, never in traced code
    _ = (_spec.Params, _spec.State)


def get_spec(name_or_spec: str | NeuronSpec) -> NeuronSpec:
    """The spec of a type given by name (case-sensitive, e.g. ``"SRLIB"``) or a spec itself."""
    if isinstance(name_or_spec, NeuronSpec):
        return name_or_spec
    try:
        return SPECS[name_or_spec]
    except (KeyError, TypeError):
        raise ValueError(f"unknown neuron type {name_or_spec!r}; expected one of {', '.join(NAMES)}") from None


def make_step(spec: NeuronSpec) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The named, documented pure step function of ``spec`` (what ``lib_step`` etc. are)."""
    lower = spec.name.lower()

    def step(
        params: Any,
        state: Any,
        x: torch.Tensor,
        *,
        spike_fn: Callable[[torch.Tensor], torch.Tensor] = sigmoid4x,
        quant_fn: Quantizer = "bernoulli",
    ) -> tuple[torch.Tensor, Any]:
        return _generic_step(spec, params, state, x, spike_fn, resolve_quantizer(quant_fn, spec.name))

    step.__name__ = step.__qualname__ = f"{lower}_step"
    step.__module__ = "tracetorch.functional"
    firing = {
        "": "y = mem (no firing, no reset); spike_fn and quant_fn are accepted and ignored.",
        "B": "s = quant(spike_fn(mem - threshold)); mem -= s*threshold; y = s.",
        "T": "s+ = quant(spike_fn(mem - pos_threshold)), s- = -quant(spike_fn(-neg_threshold - mem));"
        " mem -= s+*pos_threshold + s-*neg_threshold; y = s+ + s-.",
        "TS": "as T, and y = s+*pos_scale + s-*neg_scale (the reset uses the unscaled spikes).",
    }[spec.firing]
    step.__doc__ = (
        f'One timestep of a {spec.name} neuron (docs/maths.md, "One timestep"): pure, nothing mutated.\n\n'
        f"Stages: {'dual ' if spec.dual else ''}{'synaptic -> ' if spec.synaptic else ''}"
        f"{'recurrent -> ' if spec.recurrent else ''}membrane -> {spec.firing or 'LI'} output.\n"
        f"Firing: {firing}\n\n"
        f"Args:\n    params: ``{spec.name}Params({', '.join(spec.param_names)})``, activated tensors, each ``[]`` or ``[N]``.\n"
        f"    state: ``{spec.name}State({', '.join(spec.state_names)})``, each shaped like ``x``.\n"
        f"    x: input ``[..., N]``, neuron dimension last.\n"
        f"    spike_fn: distance to threshold -> firing probability (default ``sigmoid4x``).\n"
        f'    quant_fn: ``"round"``, ``"bernoulli"`` (default), ``"probabilistic"`` or a callable.\n\n'
        f"Returns:\n    ``(y, new_state)``: ``y`` shaped like ``x``; a new ``{spec.name}State``."
    )
    return step


def _param_error(owner: str, name: str, what: str, value: Any) -> ValueError:
    shown = value if isinstance(value, str) else _short(value) if isinstance(value, torch.Tensor) else repr(value)
    return ValueError(f"{owner}: {name} must be {what}, received {shown}")


def resolve_param(
    owner: str,
    pspec: ParamSpec,
    num_neurons: int,
    value: Any = None,
    rank: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Validate one param value (float or tensor) and return its activated tensor ``[]`` or ``[N]``.

    A float is broadcast to ``rank`` (0: ``[]``, 1: ``[num_neurons]``); a tensor keeps its own
    rank and must be ``[]`` or ``[num_neurons]``. Range errors name ``owner`` and the param.
    """
    name = pspec.name
    if value is None:
        value = pspec.default
    if isinstance(value, torch.Tensor):
        t = value.detach().clone()
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != num_neurons):
            raise _param_error(
                owner, name, f"a float or a tensor of shape [] or [{num_neurons}]", f"a tensor of shape {list(t.shape)}"
            )
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
    elif isinstance(value, (float, int)) and not isinstance(value, bool):
        if rank not in (0, 1) or isinstance(rank, bool):
            raise _param_error(owner, f"{name}_rank", "0 (one scalar) or 1 (one value per neuron)", rank)
        t = torch.full((num_neurons,) if rank == 1 else (), float(value), dtype=torch.get_default_dtype())
    else:
        raise TypeError(f"{owner}: {name} must be a float or a tensor, received {type(value).__name__}")
    if not bool(torch.isfinite(t).all()):
        raise _param_error(owner, name, "finite", value)
    if pspec.kind == "decay" and not bool(((t > 0) & (t < 1)).all()):
        raise _param_error(owner, name, "a decay in (0, 1)", value)
    if pspec.kind == "threshold" and not bool((t > 0).all()):
        raise _param_error(owner, name, "a threshold > 0", value)
    return t.to(dtype=dtype or t.dtype, device=device)


def check_num_neurons(owner: str, num_neurons: Any) -> int:
    """``num_neurons`` as an int >= 1, or a ``ValueError`` naming ``owner``."""
    if isinstance(num_neurons, bool) or not isinstance(num_neurons, int) or num_neurons < 1:
        raise ValueError(f"{owner}: num_neurons must be an int >= 1, received {num_neurons!r}")
    return num_neurons


def init_params(
    name_or_spec: str | NeuronSpec,
    num_neurons: int,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    **values: Any,
) -> Any:
    """Activated params of a type: the defaults of docs/maths.md, "Parameters", overridden by ``values``.

    ``values`` holds, per param ``p``: ``p=`` a float or a tensor ``[]``/``[num_neurons]`` and
    ``p_rank=`` 0 or 1 (default 1, used for floats). Returns the spec's Params NamedTuple.

    >>> p = init_params("LIB", 4, beta=0.8, threshold_rank=0)
    >>> p.beta.shape, p.threshold.shape
    (torch.Size([4]), torch.Size([]))
    """
    spec = get_spec(name_or_spec)
    owner = f"init_params({spec.name})"
    check_num_neurons(owner, num_neurons)
    known = set(spec.param_names) | {f"{n}_rank" for n in spec.param_names}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"{owner}: unknown argument(s) {unknown}; {spec.name} takes {sorted(known)}")
    out = {
        p.name: resolve_param(owner, p, num_neurons, values.get(p.name), values.get(f"{p.name}_rank", 1), dtype, device)
        for p in spec.params
    }
    return spec.Params(**out)


def init_state(name_or_spec: str | NeuronSpec, x: torch.Tensor) -> Any:
    """Zero state of a type for input ``x`` (``[..., N]``): every field ``zeros_like(x)``."""
    spec = get_spec(name_or_spec)
    return spec.State(**{n: torch.zeros_like(x) for n in spec.state_names})


def raw_from_value(pspec: ParamSpec, value: torch.Tensor) -> torch.Tensor:
    """The raw (stored) form of an activated value: logit for decays, softplus inverse for thresholds."""
    return INVERSES[pspec.kind](value)
