"""The 52 neuron layers, generated from the functional specs with traceTorch 0.15's signatures.

Every class is ``Cls(num_neurons, <params...>, dim=-1, <param>_rank=1..., learn_<param>=True...,
spike_fn=sigmoid4x, quant_fn="bernoulli", reset="subtract")`` (no ``spike_fn``/``quant_fn``/``reset``
for the LI family), with the params in the spec's order: alphas, betas, gammas, thresholds, scales,
rec weights, then the A types' ``rho`` and ``adapt_gain``.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .._keywords import keyword_message
from ..functional import kernels
from ..functional import neurons as core
from ..functional.spikes import resolve_quantizer, resolve_spike_fn, sigmoid4x
from .layer import TTLayer

__all__ = ["NeuronLayer", "LAYERS", "defaults", *core.NAMES]

# construction defaults set by tt.nn.defaults(...): a context variable, so threads and tasks keep their own
_DEFAULTS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("tracetorch_defaults", default=None)

_P = inspect.Parameter


def _signature(spec: core.NeuronSpec) -> inspect.Signature:
    params = [_P("self", _P.POSITIONAL_OR_KEYWORD), _P("num_neurons", _P.POSITIONAL_OR_KEYWORD, annotation=int)]
    params += [_P(p.name, _P.POSITIONAL_OR_KEYWORD, default=p.default) for p in spec.params]
    params.append(_P("dim", _P.POSITIONAL_OR_KEYWORD, default=-1, annotation=int))
    params += [_P(f"{p.name}_rank", _P.POSITIONAL_OR_KEYWORD, default=1, annotation=int) for p in spec.params]
    params += [_P(f"learn_{p.name}", _P.POSITIONAL_OR_KEYWORD, default=True, annotation=bool) for p in spec.params]
    if spec.fires:
        params.append(_P("spike_fn", _P.POSITIONAL_OR_KEYWORD, default=sigmoid4x))
        params.append(_P("quant_fn", _P.POSITIONAL_OR_KEYWORD, default="bernoulli"))
        params.append(_P("reset", _P.POSITIONAL_OR_KEYWORD, default="subtract", annotation=str))
    return inspect.Signature(params)


class NeuronLayer(TTLayer):
    """A built-in neuron layer: a :class:`TTLayer` whose step is the functional core's step for ``spec``."""

    spec: core.NeuronSpec
    _signature: inspect.Signature

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        try:
            bound = cls._signature.bind(self, *args, **kwargs)
        except TypeError as err:
            raise TypeError(keyword_message(cls.__name__, cls.__signature__, kwargs, err)) from None
        for key, value in (_DEFAULTS.get() or {}).items():  # tt.nn.defaults(...): only what the call did not say
            if key in cls._signature.parameters and key not in bound.arguments:
                bound.arguments[key] = value
        bound.apply_defaults()
        a = bound.arguments
        super().__init__(a["num_neurons"], a["dim"])
        if self.spec.fires and a["reset"] != "subtract":  # the instance's spec carries its reset mode
            self.spec = core.resolve_reset(self.spec, a["reset"], cls.__name__)
        for p in self.spec.params:
            rank = a[f"{p.name}_rank"]
            if isinstance(rank, bool) or rank not in (0, 1):
                raise ValueError(
                    f"{cls.__name__}: {p.name}_rank must be 0 (one scalar) or 1 (one value per neuron), received {rank!r}"
                )
            self._declare(p, a[p.name], rank, a[f"learn_{p.name}"])
        self._state_names = self.spec.state_names
        for n in self._state_names:
            object.__setattr__(self, n, None)
        if self.spec.fires:
            self.spike_fn = a["spike_fn"]
            self.quant_fn = a["quant_fn"]
        else:
            self.__dict__.update(_spike_fn=sigmoid4x, _quant_fn=None, _quant=None)
        self.__dict__["_tt_built"] = True
        self._prebuild()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("spike_fn", "quant_fn"):  # the properties, even for an nn.Module value
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    @property
    def reset(self) -> str:
        """The reset mode, ``"subtract"`` or ``"zero"`` (static config, fixed at construction)."""
        return self.spec.reset

    @property
    def spike_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Distance to threshold -> firing probability. Assignable: a callable or a name (``"atan"``,
        ``"fast_sigmoid"``, ... see :func:`tracetorch.functional.spikes.resolve_spike_fn`), stored as
        the callable; every path uses it."""
        return self.__dict__["_spike_fn"]

    @spike_fn.setter
    def spike_fn(self, value: Callable[[torch.Tensor], torch.Tensor]) -> None:
        owner = type(self).__name__
        if not self.spec.fires:
            raise ValueError(f"{owner}: a leaky integrator has no firing head, spike_fn does not apply")
        value = resolve_spike_fn(value, owner)
        self._modules.pop("spike_fn", None)
        if isinstance(value, torch.nn.Module):  # its params and buffers move with the layer, as before
            self._modules["spike_fn"] = value
        self.__dict__["_spike_fn"] = value
        self._prebuild()

    @property
    def quant_fn(self) -> Any:
        """``"round"``, ``"bernoulli"``, ``"probabilistic"`` or a callable (``None`` for the LI family).

        Assignable: validated like the constructor's argument (an unknown name is a ``ValueError``)
        and taking effect on every path, per step and in sequence mode.
        """
        return self.__dict__["_quant_fn"]

    @quant_fn.setter
    def quant_fn(self, value: Any) -> None:
        owner = type(self).__name__
        if not self.spec.fires:
            raise ValueError(f"{owner}: a leaky integrator has no firing head, quant_fn does not apply")
        quant = resolve_quantizer(value, owner)
        self.__dict__.update(_quant_fn=value, _quant=quant)
        self._prebuild()

    def _prebuild(self) -> None:
        """Start building this layer's likely kernel (CPU, its params' dtype) in the background
        (``kernels.config.prebuild``); the first call waits for it. Once constructed, and again
        when moved (``.to(...)``) or given another spike or quant function."""
        if not self.__dict__.get("_tt_built") or type(self).step is not NeuronLayer.step:
            return
        raws = [self._raw(p.name) for p in self.spec.params]
        if not raws or any(r.device.type != "cpu" for r in raws):
            return
        dtype = raws[0].dtype
        for r in raws[1:]:
            dtype = torch.promote_types(dtype, r.dtype)
        kernels.prebuild(self.spec, self.spike_fn, self._scan_quant(), dtype)

    def _apply(self, fn: Any, recurse: bool = True) -> NeuronLayer:
        super()._apply(fn, recurse)
        self._prebuild()
        return self

    def step(self, params: Any, state: Any, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The functional core's step for this layer's spec, with its spike and quant functions."""
        return core._generic_step(self.spec, params, state, x, self.spike_fn, self._quant)

    def _scan_quant(self) -> Any:
        """The quantizer as ``scan_spec`` takes it: its name where it has one, else the callable
        (``"round"`` for the LI family, which has none and ignores it)."""
        return self.quant_fn if isinstance(self.quant_fn, str) else self._quant or "round"

    def _layout_params(self, x: torch.Tensor) -> Any:
        """The activated params shaped to broadcast against one step ``x`` in the input layout.

        The step is elementwise, so instead of moving ``dim`` last, ``[N]`` params get a trailing
        1 per dimension after ``dim`` (``[N, 1, 1]`` for ``dim=1`` on ``[B, N, H, W]``).
        """
        params = self.activated_params()
        trailing = x.dim() - 1 - self.dim % x.dim()
        if not trailing:
            return params
        return type(params)(*(p.reshape(*p.shape, *(1,) * trailing) if p.dim() == 1 else p for p in params))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One timestep: input shaped ``[..., num_neurons at dim, ...]`` -> output of the same shape.

        On the CPU the built-in types run one fused kernel call per step where that measured
        faster than the op-by-op step (``tracetorch.functional.kernels.config``); the same
        results, and for the random quantizers the same distribution, drawn as the kernels draw.
        """
        y = self._kernel_step(x) if self._takes_step_kernel(x) else None
        if y is None:
            y = super().forward(x)
        if self.return_mem:
            return y, self.membrane  # type: ignore[return-value]
        return y

    #: ``True``: each call returns ``(output, membrane)``, as snnTorch's ``spk, mem = lif(x)``
    #: (:attr:`membrane`, after this step's reset). Default ``False``: the output alone.
    #: Sequence mode (``tt.nn.run``) then runs the layer step by step and returns both, stacked.
    return_mem: bool = False

    @property
    def membrane(self) -> torch.Tensor | None:
        """The membrane potential now (after the last step's reset), shaped like the input; ``None``
        before the first call. ``mem``; for the dual types ``pos_mem + neg_mem`` (docs/maths.md, "One timestep")."""
        if self.spec.dual:
            pos, neg = self.__dict__.get("pos_mem"), self.__dict__.get("neg_mem")
            return None if pos is None or neg is None else pos + neg
        return self.__dict__.get("mem")

    def _takes_step_kernel(self, x: Any) -> bool:
        if not kernels.config.auto or type(self).step is not NeuronLayer.step:
            return False
        if type(x) is not torch.Tensor or x.device.type != "cpu" or kernels.tracing():
            return False  # under torch.compile the op-by-op step is what inductor fuses (per-call fact)
        return x.numel() >= kernels.config.step_min_elements and not torch._C._are_functorch_transforms_active()

    def _kernel_step(self, x: torch.Tensor) -> torch.Tensor | None:
        """One step through the fused kernel, or ``None`` where it cannot run (the plain step then runs)."""
        x = self._prepare_input(x)
        params = self._layout_params(x)
        state = self.spec.State(*(self.__dict__[n] for n in self._state_names))
        quant = self._scan_quant()
        xs = x.unsqueeze(0)
        if kernels.kernel_reason(self.spec, params, state, xs, self.spike_fn, quant) is not None:
            return None
        spike, quant_name = kernels.spike_tag(self.spike_fn) or "", kernels.quant_tag(self.spec, quant)
        try:
            ys, new = kernels.kernel_scan(self.spec, spike, quant_name, params, state, xs)
        except kernels.BuildError as err:
            kernels.warn_no_compiler(str(err))
            return None
        for n, t in zip(self._state_names, new):
            object.__setattr__(self, n, t)
        return ys[0]

    def _reason_for(self, x: torch.Tensor, state: list[torch.Tensor]) -> str | None:
        if type(self).step is not NeuronLayer.step:  # a subclass with its own step: traced like any custom one
            return super()._reason_for(x, state)
        params = self._layout_params(x)
        return kernels.kernel_reason(
            self.spec, params, self.spec.State(*state), x.unsqueeze(0), self.spike_fn, self._scan_quant()
        )

    def extra_repr(self) -> str:
        out = super().extra_repr()
        if self.spec.fires:
            out += (
                f", spike_fn={getattr(self.spike_fn, '__name__', None) or self.spike_fn!r}, quant_fn={self.quant_fn!r}"
            )
            if self.spec.reset != "subtract":
                out += f", reset={self.spec.reset!r}"
        return out


def _make_layer(spec: core.NeuronSpec) -> type:
    sig = _signature(spec)
    head = {
        "": "leaky integrator (output: the membrane)",
        "B": "binary spikes {0, 1}",
        "T": "ternary spikes {-1, 0, 1}",
        "TS": "ternary spikes scaled per polarity",
    }[spec.firing]
    maths = '"One timestep" and "Adaptation"' if spec.adaptive else '"One timestep"'
    doc = (
        f"{spec.name}: {'dual ' if spec.dual else ''}{'synaptic ' if spec.synaptic else ''}"
        f"{'recurrent ' if spec.recurrent else ''}{'adaptive-threshold ' if spec.adaptive else ''}{head}. "
        "One timestep per call.\n\n"
        f"Maths: docs/maths.md, {maths}; the pure form is ``tracetorch.functional.{spec.name.lower()}_step``.\n\n"
        f"Params (activated, ``layer.<name>``; stored raw as ``raw_<name>``): "
        + ", ".join(f"{p.name} ({p.kind}, default {p.default})" for p in spec.params)
        + f".\nStates (input layout, ``None`` until the first call): {', '.join(spec.state_names)}.\n\n"
        "Args:\n    num_neurons: size of the neuron dimension.\n"
        "    <param>: a float, or a tensor of shape [] or [num_neurons].\n"
        "    dim: the input's neuron dimension (-1 for [B, N], -3 for [B, C, H, W]).\n"
        "    <param>_rank: 0 for one scalar, 1 (default) for one value per neuron; a tensor's own rank wins.\n"
        "    learn_<param>: True (default) for an nn.Parameter, False for a buffer.\n"
        + (
            "    spike_fn: distance to threshold -> firing probability (default sigmoid4x).\n"
            "    quant_fn: 'round', 'bernoulli' (default), 'probabilistic' or a callable.\n"
            "    reset: 'subtract' (default: mem -= spikes*threshold) or 'zero' (hard reset: mem *= 1 - spikes).\n"
            if spec.fires
            else ""
        )
        + "\nShape: input ``[..., num_neurons (at dim), ...]`` -> output of the same shape."
    )

    def __init__(self: NeuronLayer, *args: Any, **kwargs: Any) -> None:
        NeuronLayer.__init__(self, *args, **kwargs)

    __init__.__signature__ = sig  # type: ignore[attr-defined]  # help(), IDEs and the API reference show the real one
    __init__.__qualname__ = f"{spec.name}.__init__"
    __init__.__module__ = "tracetorch.nn"
    cls = type(
        spec.name,
        (NeuronLayer,),
        {
            "__init__": __init__,
            "spec": spec,
            "_signature": sig,
            "__signature__": sig.replace(parameters=list(sig.parameters.values())[1:]),
            "_params_type": spec.Params,
            "_state_type": spec.State,
            "__doc__": doc,
            "__module__": "tracetorch.nn",
        },
    )
    return cls


def _all_keywords() -> list[str]:
    names = {n for cls in LAYERS.values() for n in cls.__signature__.parameters if n != "num_neurons"}
    return sorted(names)


@contextlib.contextmanager
def defaults(**kwargs: Any) -> Iterator[None]:
    """Construction defaults for the built-in layers inside ``with``: ``with tt.nn.defaults(quant_fn="round"): ...``.

    Each keyword is any constructor argument of the 28 layers (``quant_fn``, ``spike_fn``, ``beta``,
    ``learn_beta``, ``dim``, ...); a layer built inside the block takes it where its signature has
    it and the call did not give it (an explicit argument wins). It affects **construction only**:
    layers built before the block, and everything a layer does after it is built, are untouched,
    and leaving the block restores the previous defaults (blocks nest; each thread and task keeps
    its own). ``quant_fn`` and ``spike_fn`` are checked on entry; an unknown keyword is a
    ``TypeError`` that lists the valid ones.
    """
    valid = _all_keywords()
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise TypeError(
            keyword_message(
                "defaults",
                inspect.Signature([inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in valid]),
                kwargs,
                TypeError(),
                show_signature=False,
            )
        )
    if "quant_fn" in kwargs:
        resolve_quantizer(kwargs["quant_fn"], "defaults")
    if "spike_fn" in kwargs:
        resolve_spike_fn(kwargs["spike_fn"], "defaults")
    token = _DEFAULTS.set({**(_DEFAULTS.get() or {}), **kwargs})
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


#: Names other libraries (and textbooks) use for our types, for the error of an unknown name.
ALIASES = {
    "LIF": "LIB",
    "Leaky": "LIB",
    "LIFCell": "LIB",
    "LIFNode": "LIB",
    "IF": "LIB with beta=1.0, learn_beta=False",
    "ALIF": "ALIB",
    "LSNN": "ALIB",
    "AdaptiveLIF": "ALIB",
    "Synaptic": "SLIB",
    "CubaLIF": "SLIB",
    "LIFBoxCell": "LIB",
    "RLeaky": "RLIB",
    "RSynaptic": "SRLIB",
    "LICell": "LI",
    "CubaLI": "SLI",
}


def unknown_type_message(name: object) -> str:
    """The message for an unknown layer name: what it is called here, if we know, and the 52 names."""
    hint = ALIASES.get(name) if isinstance(name, str) else None
    if hint is None and isinstance(name, str):
        hint = next((n for n in core.NAMES if n.lower() == name.lower()), None)
    said = f"; the {name} neuron is {hint} here" if hint else ""
    return f"unknown neuron type {name!r}{said}. The {len(core.NAMES)} types: {', '.join(core.NAMES)} (docs/maths.md, 'Names')"


class LayerTable(dict):
    """``{"LIB": LIB, ...}``, a dict whose unknown keys raise a ``KeyError`` that says what to use."""

    def __missing__(self, key: object) -> type:
        raise KeyError(unknown_type_message(key))


#: ``{"LIB": LIB, ...}``: the 52 layer classes in the maths page's order (docs/maths.md, "Names").
LAYERS: LayerTable = LayerTable((name, _make_layer(spec)) for name, spec in core.SPECS.items())
globals().update(LAYERS)
