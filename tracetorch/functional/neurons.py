"""The 52 neuron types as pure step functions, built from one table of specs.

Every type is a :class:`NeuronSpec` ``(dual, synaptic, recurrent, firing, adaptive)`` (plus its
static ``reset`` mode); one generic step chains the stages of the maths page (docs/maths.md)
(synaptic, recurrent, membrane, firing with its reset, adaptation) as the spec says. The spec also
derives the type's name, its param names and defaults, and its state names, and owns one
``NamedTuple`` type for its params and one for its state (created here at import time, so they
pickle and trace).

Conventions for every step ``step(params, state, x) -> (y, new_state)``:

* ``x``: ``[..., N]``, the neuron dimension last; ``y`` and every state field have ``x``'s shape.
* ``params``: the spec's params NamedTuple of *activated* tensors, each ``[]`` or ``[N]``.
* nothing is written in place: new tensors out, inputs untouched. ``y`` may be the very tensor
  of a state field (LI: ``y = mem``; R types: ``prev_output = y``): do not write into it in place
  (the ``nn`` layers hand out a copy).
* the named steps check their arguments' types and shapes (never their data) and raise a clear
  ``TypeError``/``ValueError`` for a wrong params or state type, a complex or integer input, a
  param that does not broadcast to ``x``.
* NaN: a NaN in ``x`` (or in a state) gives NaN in ``y`` and in every state of that neuron, for
  all 52 types and every quantizer (the dual split ``pos``/``neg`` keeps NaN); as every trace
  decays multiplicatively, the NaN stays in the state at every later step, until the state is
  reset (``zero_states()``, a new initial state). Other neurons are unaffected.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import torch

from .._keywords import keywords
from .constraints import INVERSES, _short
from .spikes import Quantizer, SpikeFn, resolve_quantizer, resolve_spike_fn, sigmoid4x

__all__ = [
    "ParamSpec",
    "NeuronSpec",
    "SPECS",
    "NAMES",
    "get_spec",
    "make_step",
    "init_params",
    "init_state",
    "RESETS",
    "ADAPTIVE_NAMES",
]

FIRING_HEADS = ("", "B", "T", "TS")
#: The reset modes of a firing type (docs/maths.md, "Reset modes and integrate-and-fire").
RESETS = ("subtract", "zero")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its name, its kind (``decay`` / ``threshold`` / ``free``) and default value."""

    name: str
    kind: str
    default: float


def _pos(v: torch.Tensor) -> torch.Tensor:
    # SPEC's pos(v): v where v >= 0, else 0. Written as "0 where v < 0" so a NaN (which compares
    # false) stays NaN instead of becoming 0; at v = 0 (and -0.0) the value is v, as before.
    return torch.where(v < 0, 0.0, v)


def _neg(v: torch.Tensor) -> torch.Tensor:
    # SPEC's neg(v): v where v <= 0, else 0; NaN stays NaN (see _pos)
    return torch.where(v > 0, 0.0, v)


def _ema(decay: torch.Tensor, trace: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return decay * trace + (1.0 - decay) * x


@dataclass(frozen=True)
class NeuronSpec:
    """Static description of a neuron type: ``D``/``S``/``R``/``A`` prefixes, firing head, reset mode.

    ``firing`` is ``""`` (LI: output the membrane), ``"B"``, ``"T"`` or ``"TS"``. Recurrence and
    adaptation (``adaptive``: the ``A`` part, an adaptive threshold) need a firing head.
    ``reset`` is ``"subtract"`` (the default) or ``"zero"`` (a hard reset), for firing types only;
    it is not part of the name, and a spec with either reset shares its params and state types.
    Hashable, so it can key caches and sit in static config.
    """

    dual: bool
    synaptic: bool
    recurrent: bool
    firing: str
    adaptive: bool = False
    reset: str = "subtract"

    def __post_init__(self) -> None:
        if self.firing not in FIRING_HEADS:
            raise ValueError(f"NeuronSpec: firing must be one of {FIRING_HEADS}, received {self.firing!r}")
        if self.recurrent and not self.firing:
            raise ValueError("NeuronSpec: a recurrent type needs a firing head (B, T or TS)")
        if self.adaptive and not self.firing:
            raise ValueError("NeuronSpec: an adaptive (A) type needs a firing head (B, T or TS)")
        if self.reset not in RESETS:
            raise ValueError(f"NeuronSpec: reset must be one of {RESETS}, received {self.reset!r}")
        if self.reset != "subtract" and not self.firing:
            raise ValueError("NeuronSpec: a leaky integrator has no firing head, so no reset to choose")

    @property
    def name(self) -> str:
        """The type's name, e.g. ``DSRLITS`` or ``DSRALITS``."""
        return (
            ("D" if self.dual else "")
            + ("S" if self.synaptic else "")
            + ("R" if self.recurrent else "")
            + ("A" if self.adaptive else "")
            + "LI"
            + self.firing
        )

    @property
    def key(self) -> str:
        """The name plus the reset mode where it is not the default (``"LIB"``, ``"LIB:zero"``): what keys kernels."""
        return self.name if self.reset == "subtract" else f"{self.name}:{self.reset}"

    def with_reset(self, reset: str) -> NeuronSpec:
        """This spec with reset mode ``reset`` (``"subtract"`` or ``"zero"``)."""
        if reset == self.reset:
            return self
        return dataclasses.replace(self, reset=reset)

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
        if self.adaptive:
            out += [ParamSpec("rho", "decay", 0.95), ParamSpec("adapt_gain", "threshold", 1.0)]
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
        if self.adaptive:
            out.append("adapt")
        return tuple(out)

    @property
    def Params(self) -> type:
        """The NamedTuple type of this spec's (activated) params (one per name, whatever the reset)."""
        return _named_tuple(f"{self.name}Params", self.param_names)

    @property
    def State(self) -> type:
        """The NamedTuple type of this spec's state (one per name, whatever the reset)."""
        return _named_tuple(f"{self.name}State", self.state_names)

    def step(
        self,
        params: Any,
        state: Any,
        x: torch.Tensor,
        *,
        spike_fn: SpikeFn = sigmoid4x,
        quant_fn: Quantizer = "bernoulli",
    ) -> tuple[torch.Tensor, Any]:
        """One timestep of this type (docs/maths.md, "One timestep"), with this spec's reset. See :func:`make_step`."""
        check_step_args(self, params, state, x, f"{self.name}.step")
        return _generic_step(
            self, params, state, x, resolve_spike_fn(spike_fn, f"{self.name}.step"), resolve_quantizer(quant_fn, self.name)
        )


def resolve_reset(spec: NeuronSpec, reset: Any, where: str) -> NeuronSpec:
    """``spec`` with the reset mode ``reset``, or a ``ValueError`` naming ``where``.

    ``reset`` is ``"subtract"`` or ``"zero"``; the LI family (no firing head) takes only ``"subtract"``.
    """
    if reset == spec.reset:
        return spec
    if not isinstance(reset, str) or reset not in RESETS:
        raise ValueError(f"{where}: reset must be one of {', '.join(map(repr, RESETS))}, received {reset!r}")
    if not spec.fires:
        raise ValueError(f"{where}: a leaky integrator has no firing head, so no reset: reset={reset!r} does not apply")
    return spec.with_reset(reset)


_RECORDS: dict[str, type] = {}


def _named_tuple(name: str, fields: tuple[str, ...]) -> type:
    cls = _RECORDS.get(name)
    if cls is None:
        cls = NamedTuple(name, [(f, torch.Tensor) for f in fields])
        cls.__module__ = __name__
        globals()[name] = cls  # importable by name, so instances pickle
        _RECORDS[name] = cls
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

    # 4. firing head (A: thresholds raised by the adaptation trace) and reset
    if spec.adaptive:
        lift = p.adapt_gain * s.adapt
    if not spec.firing:
        y, reset = mem, None
    elif spec.firing == "B":
        theta = p.threshold + lift if spec.adaptive else p.threshold
        y = quant(spike_fn(mem - theta))
        count = y
        reset = y * theta
    else:
        pos_theta = p.pos_threshold + lift if spec.adaptive else p.pos_threshold
        neg_theta = p.neg_threshold + lift if spec.adaptive else p.neg_threshold
        s_pos = quant(spike_fn(mem - pos_theta))
        s_neg = -quant(spike_fn(-neg_theta - mem))
        count = s_pos - s_neg
        reset = s_pos * pos_theta + s_neg * neg_theta
        y = s_pos + s_neg if spec.firing == "T" else s_pos * p.pos_scale + s_neg * p.neg_scale

    if reset is not None and spec.reset == "zero":  # hard reset: a neuron that fired goes to zero
        keep = 1.0 - count
        if dual:
            pos_mem, neg_mem = pos_mem * keep, neg_mem * keep
        else:
            mem = mem * keep
    elif reset is not None:
        if dual:
            half = 0.5 * reset
            pos_mem, neg_mem = pos_mem - half, neg_mem - half
        else:
            mem = mem - reset
    if dual:
        new["pos_mem"], new["neg_mem"] = pos_mem, neg_mem
    else:
        new["mem"] = mem

    # 5. recurrent bookkeeping
    if spec.recurrent:
        new["prev_output"] = y
    # 6. adaptation trace (A): this step's unscaled spikes, either sign counted
    if spec.adaptive:
        new["adapt"] = _ema(p.rho, s.adapt, count)
    return y, spec.State(**new)


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without changing it (shapes only: traceable)."""
    return len(shape) <= len(target) and all(a == 1 or a == b for a, b in zip(reversed(shape), reversed(target)))


def check_step_args(spec: NeuronSpec, params: Any, state: Any, x: Any, where: str) -> None:
    """Refuse a step call whose arguments cannot be what ``spec`` computes on, with a clear error.

    Checks types, dtypes and shapes only (never the data), so the step stays traceable under
    ``torch.func`` transforms and ``torch.compile``: ``x`` a real floating tensor of rank >= 1,
    ``params`` and ``state`` NamedTuples with the spec's fields, every param broadcasting to ``x``
    (``[]`` or ``[N]``, neuron dimension last) and every state field broadcasting to ``x``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: x must be a tensor [..., N], received {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{where}: x must be a real floating tensor, received dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{where}: x must be [..., N] with the neuron dimension last, received a 0-d tensor")
    for what, tree, fields in (("params", params, spec.param_names), ("state", state, spec.state_names)):
        got = getattr(tree, "_fields", None)
        if got is None or tuple(got) != fields:
            kind = f"{spec.name}{'Params' if what == 'params' else 'State'}"
            shown = list(got) if got is not None else type(tree).__name__
            raise TypeError(f"{where}: {what} must be a {kind} with the fields {list(fields)}, received {shown}")
        for name, t in zip(fields, tree):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{where}: {what}.{name} must be a tensor, received {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{where}: {what}.{name} must be a real floating tensor, received dtype {t.dtype}")
            if not _broadcasts_to(t.shape, x.shape):
                expected = f"[] or [{x.shape[-1]}]" if what == "params" else f"x's shape {list(x.shape)}"
                raise ValueError(
                    f"{where}: {what}.{name} has shape {list(t.shape)}, which does not broadcast to x's shape "
                    f"{list(x.shape)} (neuron dimension last); expected {expected}"
                )


def _build_specs() -> dict[str, NeuronSpec]:
    specs = [NeuronSpec(d, s, False, "") for s in (False, True) for d in (False, True)]
    # the maths page's order: LIx DLIx SLIx RLIx DSLIx DRLIx SRLIx DSRLIx; the 28, then the 24 A types
    eight = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    for adaptive in (False, True):
        for head in ("B", "T", "TS"):
            for d, s, r in eight:
                specs.append(NeuronSpec(bool(d), bool(s), bool(r), head, adaptive))
    return {spec.name: spec for spec in specs}


#: Every neuron type by name, in the maths page's order (docs/maths.md): the 28, then the 24 A types.
SPECS: dict[str, NeuronSpec] = _build_specs()
#: The 52 names in the maths page's order (docs/maths.md).
NAMES: tuple[str, ...] = tuple(SPECS)
#: The 24 adaptive (A) types.
ADAPTIVE_NAMES: tuple[str, ...] = tuple(n for n, spec in SPECS.items() if spec.adaptive)

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


def spec_from_key(key: str) -> NeuronSpec:
    """The spec a :attr:`NeuronSpec.key` names (``"LIB"``, ``"LIB:zero"``)."""
    name, _, reset = key.partition(":")
    return SPECS[name].with_reset(reset or "subtract")


def make_step(spec: NeuronSpec) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The named, documented pure step function of ``spec`` (what ``lib_step`` etc. are)."""
    lower = spec.name.lower()

    def step(
        params: Any,
        state: Any,
        x: torch.Tensor,
        *,
        spike_fn: SpikeFn = sigmoid4x,
        quant_fn: Quantizer = "bernoulli",
        reset: str = "subtract",
    ) -> tuple[torch.Tensor, Any]:
        check_step_args(spec, params, state, x, f"{lower}_step")
        run = resolve_reset(spec, reset, f"{lower}_step")
        return _generic_step(
            run, params, state, x, resolve_spike_fn(spike_fn, f"{lower}_step"), resolve_quantizer(quant_fn, spec.name)
        )

    step.__name__ = step.__qualname__ = f"{lower}_step"
    step.__module__ = "tracetorch.functional"
    firing = {
        "": "y = mem (no firing, no reset); spike_fn and quant_fn are accepted and ignored.",
        "B": "s = quant(spike_fn(mem - threshold)); mem -= s*threshold; y = s.",
        "T": "s+ = quant(spike_fn(mem - pos_threshold)), s- = -quant(spike_fn(-neg_threshold - mem));"
        " mem -= s+*pos_threshold + s-*neg_threshold; y = s+ + s-.",
        "TS": "as T, and y = s+*pos_scale + s-*neg_scale (the reset uses the unscaled spikes).",
    }[spec.firing]
    if spec.adaptive:
        firing += (
            " Adaptive (A): every threshold is raised by adapt_gain*adapt (adapt as after the previous step)"
            " in the firing and the reset; then adapt = rho*adapt + (1-rho)*c, c = s (B) or s+ - s- (T, TS)."
        )
    if spec.fires:
        firing += ' reset="zero" instead multiplies mem by (1 - c) (a hard reset; dual: both halves).'

    step.__doc__ = (
        f'One timestep of a {spec.name} neuron (docs/maths.md, "One timestep"): pure, nothing mutated.\n\n'
        f"Stages: {'dual ' if spec.dual else ''}{'synaptic -> ' if spec.synaptic else ''}"
        f"{'recurrent -> ' if spec.recurrent else ''}membrane -> {spec.firing or 'LI'} output.\n"
        f"Firing: {firing}\n\n"
        f"Args:\n    params: ``{spec.name}Params({', '.join(spec.param_names)})``, activated tensors, each ``[]`` or ``[N]``.\n"
        f"    state: ``{spec.name}State({', '.join(spec.state_names)})``, each shaped like ``x``.\n"
        f"    x: input ``[..., N]``, neuron dimension last.\n"
        f"    spike_fn: distance to threshold -> firing probability (default ``sigmoid4x``), or its name (``\"atan\"``, ...).\n"
        f'    quant_fn: ``"round"``, ``"bernoulli"`` (default), ``"probabilistic"`` or a callable.\n'
        f'    reset: ``"subtract"`` (default) or ``"zero"`` (firing types only).\n\n'
        f"Returns:\n    ``(y, new_state)``: ``y`` shaped like ``x``; a new ``{spec.name}State``."
    )
    return keywords(step)


def _param_error(owner: str, name: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{owner}: {name} must be {what}, received {_shown(value)}")


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else _short(value) if isinstance(value, torch.Tensor) else repr(value)


def _violates(kind: str, t: torch.Tensor) -> str | None:
    """What ``t`` (real floating) fails of its kind's constraint, or ``None``."""
    if not bool(torch.isfinite(t).all()):
        return "finite"
    if kind == "decay" and not bool(((t > 0) & (t < 1)).all()):
        return "a decay in (0, 1)"
    if kind == "fixed_decay" and not bool(((t > 0) & (t <= 1)).all()):
        return "a decay in (0, 1]"
    if kind == "threshold" and not bool((t > 0).all()):
        return "a threshold > 0"
    return None


def has_exact_one(value: Any) -> bool:
    """Whether a param value (float or tensor) holds exactly 1.0 somewhere (an integrate-and-fire decay)."""
    if isinstance(value, torch.Tensor):
        return (
            not value.is_complex() and value.layout == torch.strided and not value.is_meta and bool((value == 1).any())
        )
    return _is_real_number(value) and value == 1


def fixed_decay(pspec: ParamSpec, value: Any, learnable: bool) -> ParamSpec:
    """``pspec`` as kind ``"fixed_decay"`` (in (0, 1], stored as the value) where a decay is fixed and
    given as exactly 1.0 somewhere (docs/maths.md, "Reset modes and integrate-and-fire"); else ``pspec``."""
    if pspec.kind == "decay" and not learnable and has_exact_one(value):
        return dataclasses.replace(pspec, kind="fixed_decay")
    return pspec


def check_stored(owner: str, pspec: ParamSpec, value: Any, stored: torch.Tensor, what: str) -> None:
    """Refuse a param whose value is valid as given but not once stored (``stored``, in its dtype).

    ``what`` says what ``stored`` is, e.g. ``"once stored in torch.float32"``: ``beta=1-1e-9``
    becomes exactly 1.0 in float32 (no leak), ``threshold=1e-60`` becomes 0.
    """
    bad = _violates(pspec.kind, stored)
    if bad is not None:
        raise ValueError(
            f"{owner}: {pspec.name} must be {bad}, received {_shown(value)}, which is {_shown(stored)} {what}; "
            "choose a value representable in that dtype (or store the layer in float64)"
        )


def _is_real_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not isinstance(value, torch.Tensor)


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
    rank and must be ``[]`` or ``[num_neurons]``, real (not complex, not bool). The value is
    checked against its constraint as given and again after the conversion to the dtype it is
    returned in (``dtype``; for a float the default dtype, for a tensor its own floating dtype),
    so a value that rounds out of range (``1 - 1e-9`` to 1.0 in float32) or overflows is refused
    with a message that says so. Errors name ``owner`` and the param.
    """
    name = pspec.name
    if value is None:
        value = pspec.default
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{owner}: {name} must be real, received a complex tensor ({value.dtype})")
        if value.dtype == torch.bool:
            raise TypeError(f"{owner}: {name} must be a float or a real tensor, received a bool tensor")
        if value.layout != torch.strided or value.is_meta:
            raise TypeError(
                f"{owner}: {name} must be a dense tensor with data, received layout {value.layout}"
                f"{' on the meta device' if value.is_meta else ''}"
            )
        t = value.detach().clone()
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != num_neurons):
            raise _param_error(
                owner, name, f"a float or a tensor of shape [] or [{num_neurons}]", f"a tensor of shape {list(t.shape)}"
            )
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        target = dtype or t.dtype
    elif _is_real_number(value):
        if isinstance(rank, bool) or rank not in (0, 1):
            raise _param_error(owner, f"{name}_rank", "0 (one scalar) or 1 (one value per neuron)", rank)
        try:
            as_float = float(value)
        except OverflowError:
            raise _param_error(owner, name, "finite", value) from None
        t = torch.full((num_neurons,) if rank == 1 else (), as_float, dtype=torch.float64)
        target = dtype or torch.get_default_dtype()
    elif isinstance(value, numbers.Complex) and not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be real, received a complex number {value!r}")
    else:
        raise TypeError(f"{owner}: {name} must be a float or a tensor, received {type(value).__name__}")
    bad = _violates(pspec.kind, t)
    if bad is not None:
        err = _param_error(owner, name, bad, value)
        if pspec.kind == "decay" and _violates("fixed_decay", t) is None:  # a decay of exactly 1.0
            err = ValueError(
                f"{err}; a decay of exactly 1.0 (no leak: integrate-and-fire) cannot be learned "
                f"(its logit is infinite): pass learn_{name}=False to keep it fixed at 1.0"
            )
        raise err
    if not target.is_floating_point:
        raise TypeError(f"{owner}: {name}: dtype must be a floating dtype, received {target}")
    stored = t.to(target)
    if stored.dtype != t.dtype:
        check_stored(owner, pspec, value, stored, f"in {target}")
    return stored.to(device=device)


def check_num_neurons(owner: str, num_neurons: Any) -> int:
    """``num_neurons`` as an int >= 1 (any ``numbers.Integral``, e.g. a numpy integer), or a ``ValueError``."""
    if isinstance(num_neurons, bool) or not isinstance(num_neurons, numbers.Integral) or num_neurons < 1:
        raise ValueError(f"{owner}: num_neurons must be an int >= 1, received {num_neurons!r}")
    return int(num_neurons)


@keywords
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
    A decay may be exactly 1.0 here (integrate-and-fire; the functional core has no raw form).

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
        p.name: resolve_param(
            owner,
            fixed_decay(p, values.get(p.name), learnable=False),  # the core takes a decay of 1.0 (IF)
            num_neurons,
            values.get(p.name),
            values.get(f"{p.name}_rank", 1),
            dtype,
            device,
        )
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
