"""NIR interchange: export tracetorch models to the Neuromorphic Intermediate Representation and back.

`NIR <https://neuroir.org>`_ (the ``nir`` package, ``pip install tracetorch[nir]``) describes a
spiking network as a graph of continuous-time nodes. This module maps parameters only; the
neuron maths stays in :mod:`tracetorch.functional`. ``nir`` is imported lazily, inside the
functions, so ``import tracetorch.nir`` works without it.

* :func:`export` ``(model, sample_input, dt=1.0) -> nir.NIRGraph``: a model that runs as a
  chain of ``Linear``, ``Conv1d``, ``Conv2d``, ``Flatten`` and the neuron types below.
* :func:`import_` ``(graph, dt=None, reset=None) -> NIRModel``: the same node types back, as an
  ``nn.Sequential`` that is also a :class:`~tracetorch.nn.TTModel`.

Time constants and decays
-------------------------
NIR's neurons are ODEs. Consumers that step them in discrete time (snnTorch, Norse, this
module) use forward Euler with a step ``dt``. For ``tau * dv/dt = (v_leak - v) + r * I``::

    v[t] = v[t-1] + dt/tau * (v_leak - v[t-1] + r * I[t])
         = beta * v[t-1] + (1 - beta) * (v_leak + r * I[t]),      beta = 1 - dt/tau

and for the synaptic current of ``CubaLI``/``CubaLIF``, ``tau_syn * dI/dt = -I + w_in * S``::

    I[t] = alpha * I[t-1] + (1 - alpha) * w_in * S[t],            alpha = 1 - dt/tau_syn

(the membrane sees the current of the same step, as in snnTorch's ``Synaptic`` and Norse's own
``CubaLIF`` import). tracetorch's ``mem = beta*mem + x`` and ``syn = alpha*syn + (1-alpha)*x``
(docs/maths.md) are exactly these with::

    tau = dt / (1 - beta)     r = tau / dt = 1 / (1 - beta)     v_leak = 0
    tau_syn = dt / (1 - alpha)     w_in = 1

so the NIR voltage *is* ``mem``. Back: ``beta = 1 - dt/tau``, ``alpha = 1 - dt/tau_syn``, which
must lie in (0, 1), so ``tau > dt``. A foreign node with input gain ``k = r*dt/tau`` (times
``w_in`` for the Cuba nodes) ``!= 1`` has ``v = k * mem``: for firing nodes the threshold is
divided by ``k`` (``v > v_th`` iff ``mem > v_th/k``, ``k > 0``); for ``LI``/``CubaLI``, whose
output is the voltage, ``k`` is folded into the weights and bias of the preceding
``Affine``/``Linear``/``Conv``. All of this is computed in float64; exported neuron parameters
are float64 arrays, so export -> import gives back the same float32 values.

Spikes and reset
----------------
With ``quant_fn="round"`` a ``B`` layer fires when ``round(spike_fn(mem - threshold)) = 1``. Every
built-in spike function is increasing and equals 0.5 at 0, and ``round(0.5) = 0``, so this is
NIR's ``z = 1 if v > v_threshold``. The one place the two can differ: ``spike_fn(v)`` rounds to
exactly 0.5 (no spike) for ``0 < v < ~3e-8 / spike_fn'(0)`` in float32 (``v < 3e-8`` for the
default ``sigmoid4x``), which float32's spacing allows only for thresholds below about 0.5.
Surrogate gradients are not part of NIR: import gives ``sigmoid4x``.

NIR's ``LIF``/``CubaLIF``/``IF`` reset ``v`` to ``v_reset``; a tracetorch layer resets by
subtraction (``reset="subtract"``, ``mem -= threshold``) or to zero (``reset="zero"``, NIR's
``v_reset = 0`` read literally); the export writes the layer's mode as ``reset_method`` and the
import follows it (or the ``reset=`` argument, ``"subtract"`` or ``"zero"``, for nodes without it).
The text below describes the subtraction. In continuous time the two agree for ``v_reset = 0`` (the voltage never
overshoots the threshold), which is why NIR's maintainers leave the discrete reset to the
simulator; in discrete time they differ whenever the membrane overshoots. So:

* :func:`export` writes ``v_reset = 0`` and ``metadata = {"reset_method": "subtract"}`` on each
  ``LIF``/``CubaLIF`` node. Consumers that reset to ``v_reset`` (snnTorch's importer; Norse's for
  ``LIF`` nodes) differ from tracetorch after the first overshooting spike; Norse's importer
  reproduces ``CubaLIF`` exactly with ``reset_method=norse.torch.functional.reset.reset_subtract``.
* :func:`import_` accepts a ``LIF``/``CubaLIF`` node only if it says ``reset_method="subtract"``
  in its metadata, or if the caller asserts it with ``reset="subtract"`` (graphs from snnTorch's
  ``Leaky``/``Synaptic`` with ``reset_mechanism="subtract"`` and ``reset_delay=False``, or from
  Norse's ``LIFBoxCell`` with ``reset_subtract``); otherwise it raises.

What maps
---------
======================  ==========================================================
tracetorch              NIR
======================  ==========================================================
``nn.Linear``           ``Affine`` (``Linear`` without bias)
``nn.Conv1d/Conv2d``    ``Conv1d``/``Conv2d`` (zero padding)
``nn.Flatten``          ``Flatten`` (dims counted without the batch dim)
``LI``                  ``LI``
``SLI``                 ``CubaLI``
``LIB`` (round)         ``LIF`` (the layer's reset, see above)
``SLIB`` (round)        ``CubaLIF`` (the layer's reset, see above)
``LIB``, beta 1 fixed   ``IF`` (``r = 1/dt``; back: threshold / (dt*r))
``LI``, beta 1 fixed    ``I`` (``r = 1/dt``; back: the gain dt*r folded as for LI)
``nn.AvgPool2d``        ``AvgPool2d``; with ``divisor_override=1``: ``SumPool2d``
``Scale``               ``Scale`` (:class:`Scale`, this module)
``Threshold``           ``Threshold`` (:class:`Threshold`, this module)
``Delay``               ``Delay`` (``delay`` in time units: steps times ``dt``)
======================  ==========================================================

A ``Delay`` node's ``delay`` has the node's shape; its values may vary along one axis (the
channels), and ``delay / dt`` must lie in ``[0, 1e6]`` steps. Import gives a fixed
``tt.nn.Delay`` with ``max_delay = ceil(max(delay / dt))`` (at least 1), each ``delay / dt``
within ``1e-6`` (relative) of an integer taken as that integer (``3e-4 / 1e-4`` is
``2.9999999999999996`` in float64, ``3.0000001`` from a float32 array), others kept fractional (read by linear interpolation, which NIR leaves
open). ``DelayedLinear`` (a delay per synapse) has no NIR node and is refused.

Everything else is refused with a ``ValueError`` naming the layer and the reason: the adaptive
(``A``), dual (``D``), recurrent (``R``) and ternary (``T``/``TS``) types, a stochastic or custom quantizer, an
unknown spike function, grouped convolutions (NIR's type check reads their input channels wrongly);
``nn.MaxPool2d`` (NIR has no max pooling); on import ``v_leak != 0``, ``v_reset != 0``, branching or
recurrent graphs. Rank-0 params are broadcast to every neuron (NIR params have the node's full
shape); they come back as per-neuron values, learnable, in torch's default dtype.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._keywords import keywords
from .functional.constraints import ACTIVATIONS, INVERSES
from .functional.neurons import RESETS
from .functional.spikes import Atan, Erf, FastSigmoid, Sigmoid, Triangle, round_st, sigmoid4x
from .nn.delays import Delay, DelayedLinear
from .nn.layer import TTLayer
from .nn.model import TTModel
from .nn.neurons import LAYERS, NeuronLayer
from .nn.walk import named_layers

if TYPE_CHECKING:  # pragma: no cover
    import nir as nir_pkg
    import numpy as np

__all__ = ["export", "import_", "NIRModel", "Scale", "Threshold", "RESET_KEY", "SUPPORTED"]

#: Node metadata key saying how a discrete-time simulator must reset ``LIF``/``CubaLIF`` nodes.
RESET_KEY = "reset_method"

#: The neuron types that map exactly, and their NIR node types.
SUPPORTED = {"LI": "LI", "SLI": "CubaLI", "LIB": "LIF", "SLIB": "CubaLIF"}

_SUPPORTED_MODULES = (
    "Linear, Conv1d, Conv2d, Flatten, AvgPool2d, Identity, Dropout (eval), Delay, tracetorch.nir.Scale, "
    "tracetorch.nir.Threshold and the neuron types LI, SLI, LIB, SLIB (with beta = 1.0 fixed: I, IF)"
)


class NIRModel(nn.Sequential, TTModel):
    """What :func:`import_` returns: an ``nn.Sequential`` with :class:`~tracetorch.nn.TTModel`'s state methods.

    Call it once per timestep like any tracetorch model; ``zero_states()`` between sequences.
    """


class Scale(nn.Module):
    """NIR's ``Scale`` node: ``y = scale * x``, elementwise.

    Args:
        scale: a tensor of the per-sample shape (or one that broadcasts to it), kept as a buffer.

    Shape: input ``[batch, *scale.shape]`` -> output of the same shape.
    """

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``scale * x``."""
        return x * self.scale


class Threshold(nn.Module):
    """NIR's ``Threshold`` node: ``z = 1`` where ``x > threshold``, else ``0`` (a Heaviside step).

    The forward is exactly that step; the backward is the ``sigmoid4x`` surrogate's derivative
    (straight-through), so a model with one still trains.

    Args:
        threshold: a tensor of the per-sample shape (or one that broadcasts to it), kept as a buffer.

    Shape: input ``[batch, *threshold.shape]`` -> output of the same shape, values in {0, 1}.
    """

    def __init__(self, threshold: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(threshold).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``1`` where ``x > threshold``, else ``0``, with a surrogate gradient."""
        smooth = sigmoid4x(x - self.threshold)
        return smooth + ((x > self.threshold).to(smooth.dtype) - smooth).detach()


# ---- helpers ---------------------------------------------------------------------------------
def _nir() -> Any:
    try:
        import nir  # absolute import: the `nir` package, not this module
    except ImportError as err:
        raise ImportError(
            "tracetorch.nir needs the 'nir' package: pip install nir (or pip install 'tracetorch[nir]')"
        ) from err
    return nir


def _np() -> Any:
    import numpy

    return numpy


def _check_dt(owner: str, dt: Any) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) and not hasattr(dt, "__float__"):
        raise TypeError(f"{owner}: dt must be a float > 0, received {type(dt).__name__}")
    value = float(dt)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: dt must be a float > 0, received {dt!r}")
    return value


def _f64(value: Any) -> torch.Tensor:
    """Any NIR array (numpy, torch, scalar) as a CPU float64 tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    return torch.as_tensor(_np().asarray(value, dtype="float64"))


def _weight(value: Any) -> torch.Tensor:
    """A NIR weight array as a tensor of torch's default dtype."""
    return _f64(value).to(torch.get_default_dtype())


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _describe(name: str, obj: Any) -> str:
    return f"{name!r} ({type(obj).__name__})" if name else type(obj).__name__


# ---- export ----------------------------------------------------------------------------------
def _is_leaf(module: nn.Module) -> bool:
    return isinstance(module, TTLayer) or next(module.children(), None) is None


def _trace_chain(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """Run ``model`` once on ``x`` and return its leaf-module calls, checked to form a chain.

    Hidden states and the global RNG are left exactly as they were.
    """
    paths: dict[int, str] = {}
    for path, module in model.named_modules():
        paths.setdefault(id(module), path)
    calls: list[tuple[nn.Module, tuple, dict, Any]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        calls.append((module, args, kwargs, output))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules() if _is_leaf(m)]
    layers = named_layers(model)
    saved = {path: layer.state for path, layer in layers}
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        for _, layer in layers:
            layer.zero_states()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        for path, layer in layers:
            layer.state = saved[path]

    chain = []
    current = x
    not_chain = (
        "export: only a chain of modules can be exported (each module taking the previous one's output as its "
        "only input: no tensor operations outside modules, no skip connections, no extra arguments)"
    )
    for module, args, kwargs, output in calls:
        name = _describe(paths.get(id(module), ""), module)
        if kwargs or len(args) != 1 or args[0] is not current:
            raise ValueError(f"{not_chain}; module {name} does not take the previous module's output")
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"{not_chain}; module {name} returns {type(output).__name__}, not a tensor")
        chain.append((paths.get(id(module), ""), module, current, output))
        current = output
    if out is not current:
        raise ValueError(f"{not_chain}; the model's output is not the last module's output")
    return chain


def _neuron_refusal(layer: NeuronLayer) -> str | None:
    """Why ``layer`` has no exact NIR equivalent, or ``None`` if it has one."""
    spec = layer.spec
    if spec.adaptive:
        return (
            "adaptive types (A prefix) raise their thresholds by a trace of their own spikes (state adapt, params "
            "rho and adapt_gain); NIR has no adaptive neuron node, and its LIF/CubaLIF thresholds are constant"
        )
    if spec.dual:
        return (
            "dual types (D prefix) split every trace into a positive and a negative copy, each with its own decay, "
            "routed by the input's sign; a NIR neuron has one membrane and NIR has no sign-rectifying node"
        )
    if spec.recurrent:
        return (
            "recurrent types (R prefix) feed their previous output back through an EMA trace (decay gamma) and a "
            "per-neuron weight; NIR's neuron nodes have no such trace, and the recurrent pattern NIR consumers "
            "understand (snnTorch's LIF <-> Linear loop) feeds back the raw spikes with another timing"
        )
    if spec.firing in ("T", "TS"):
        return (
            "ternary types emit -1/0/+1 from a positive and a negative threshold"
            + (" and scale each polarity" if spec.firing == "TS" else "")
            + "; NIR's LIF/CubaLIF emit 0/1 from one threshold"
        )
    if spec.name not in SUPPORTED:  # pragma: no cover - the table above covers all 52
        return "no NIR node has its dynamics"
    if spec.fires:
        q = layer.quant_fn
        if isinstance(q, str) and q != "round":
            return (
                f"quant_fn={q!r} draws random spikes, while NIR neurons fire deterministically (z = 1 if v > "
                "v_threshold); build the layer with quant_fn='round' for the exact Heaviside forward"
            )
        if not isinstance(q, str) and q is not round_st:
            return (
                f"a custom quant_fn ({getattr(q, '__name__', type(q).__name__)}) cannot be checked to be NIR's "
                "Heaviside step; use quant_fn='round'"
            )
        fn = layer.spike_fn
        ok = (
            (isinstance(fn, (Sigmoid, FastSigmoid)) and fn.slope > 0)
            or (isinstance(fn, Atan) and fn.alpha > 0)
            or (isinstance(fn, Triangle) and fn.width > 0)
            or (isinstance(fn, Erf) and fn.sigma > 0)
        )
        if not ok:
            return (
                f"spike_fn {fn!r} is not a built-in spike function with a positive slope; round(spike_fn(v)) "
                "equals NIR's v > 0 step only for a function rising through 0.5 at v = 0"
            )
    return None


def _export_neuron(nir: Any, name: str, layer: NeuronLayer, x: torch.Tensor, dt: float) -> Any:
    reason = _neuron_refusal(layer)
    if reason is not None:
        raise ValueError(f"export: layer {_describe(name, layer)} has no exact NIR equivalent: {reason}")
    shape = tuple(x.shape[1:])
    axis = layer.dim % x.dim() - 1
    if axis < 0:
        raise ValueError(
            f"export: layer {_describe(name, layer)} has its neurons on the batch dimension (dim={layer.dim})"
        )

    def full(t: torch.Tensor) -> torch.Tensor:  # [] or [N] -> the per-sample shape, neurons along `axis`
        t = t.detach().to("cpu", torch.float64)
        if t.dim() == 1:
            view = [1] * len(shape)
            view[axis] = t.shape[0]
            t = t.reshape(view)
        return t.expand(shape).clone()

    p = layer.activated_params()
    spec = layer.spec
    what = _describe(name, layer)
    beta = full(p.beta)
    zeros = torch.zeros(shape, dtype=torch.float64)
    reset = {RESET_KEY: spec.reset}
    if bool((beta == 1).any()):  # a fixed decay of exactly 1.0: no leak
        if not bool((beta == 1).all()):
            raise ValueError(
                f"export: layer {what} has beta = 1.0 (no leak) for some neurons only; NIR's integrators (IF, I) "
                "and leaky neurons (LIF, LI) are separate nodes, one kind per node"
            )
        if spec.synaptic:
            raise ValueError(
                f"export: layer {what} has beta = 1.0 (no leak) behind a synaptic trace; NIR's CubaLI/CubaLIF need a "
                "finite tau_mem and NIR has no synaptic integrator node"
            )
        r_if = _array(torch.full(shape, 1.0 / dt, dtype=torch.float64))  # v += dt*r*I = I
        if not spec.fires:
            return nir.I(r=r_if)
        return nir.IF(r=r_if, v_threshold=_array(full(p.threshold)), v_reset=_array(zeros), metadata=reset)
    if spec.synaptic and bool((p.alpha == 1).any()):
        raise ValueError(f"export: layer {what} has alpha = 1.0, whose synaptic trace never takes in its input")
    tau_mem = dt / (1.0 - beta)
    r = 1.0 / (1.0 - beta)
    common = {"r": _array(r), "v_leak": _array(zeros)}
    if spec.synaptic:
        common["tau_syn"] = _array(dt / (1.0 - full(p.alpha)))
        common["tau_mem"] = _array(tau_mem)
        common["w_in"] = _array(torch.ones(shape, dtype=torch.float64))
    else:
        common["tau"] = _array(tau_mem)
    if not spec.fires:
        return (nir.CubaLI if spec.synaptic else nir.LI)(**common)
    common["v_threshold"] = _array(full(p.threshold))
    common["v_reset"] = _array(zeros)
    return (nir.CubaLIF if spec.synaptic else nir.LIF)(**common, metadata=reset)


def _export_module(nir: Any, name: str, module: nn.Module, x: torch.Tensor, dt: float) -> Any:
    np = _np()
    what = _describe(name, module)
    if isinstance(module, NeuronLayer):
        return _export_neuron(nir, name, module, x, dt)
    if isinstance(module, (Delay, DelayedLinear)):
        return _export_delay(nir, name, module, x, dt)
    if isinstance(module, TTLayer):
        raise ValueError(f"export: layer {what} is a custom TTLayer; only {', '.join(SUPPORTED)} map to NIR")
    if isinstance(module, nn.Linear):
        if x.dim() != 2:
            raise ValueError(
                f"export: {what} gets an input of shape {list(x.shape)}; NIR's Affine takes [batch, features] only"
            )
        weight = _array(module.weight)
        if module.bias is None:
            return nir.Linear(weight=weight)
        return nir.Affine(weight=weight, bias=_array(module.bias))
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        spatial = 1 if isinstance(module, nn.Conv1d) else 2
        if x.dim() != spatial + 2:
            raise ValueError(
                f"export: {what} gets an input of shape {list(x.shape)}; expected [batch, channels, {spatial} spatial dims]"
            )
        if module.groups != 1:
            raise ValueError(
                f"export: {what} has groups={module.groups}; NIR's Conv nodes read their input channels from "
                "weight.shape[1], which is right only for groups=1, so the graph would fail NIR's type check"
            )
        if module.padding_mode != "zeros":
            raise ValueError(
                f"export: {what} pads with {module.padding_mode!r}; NIR's convolutions pad with zeros only"
            )
        bias = module.bias if module.bias is not None else torch.zeros(module.out_channels, dtype=module.weight.dtype)
        args = {"weight": _array(module.weight), "bias": _array(bias), "groups": module.groups}
        if spatial == 1:
            return nir.Conv1d(
                input_shape=int(x.shape[-1]),
                stride=module.stride[0],
                padding=module.padding if isinstance(module.padding, str) else module.padding[0],
                dilation=module.dilation[0],
                **args,
            )
        return nir.Conv2d(
            input_shape=tuple(int(s) for s in x.shape[-2:]),
            stride=tuple(module.stride),
            padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
            dilation=tuple(module.dilation),
            **args,
        )
    if isinstance(module, (Scale, Threshold)):
        value = module.scale if isinstance(module, Scale) else module.threshold
        full = value.detach().to("cpu", torch.float64).expand(x.shape[1:]).clone()
        return nir.Scale(scale=_array(full)) if isinstance(module, Scale) else nir.Threshold(threshold=_array(full))
    if isinstance(module, nn.AvgPool2d):
        return _export_avg_pool(nir, what, module, x)
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)):
        raise ValueError(
            f"export: module {what} takes a maximum; NIR has no max-pooling node (its pooling nodes are SumPool2d "
            "and AvgPool2d): use nn.AvgPool2d, or a strided convolution"
        )
    if isinstance(module, nn.Flatten):
        start, end = module.start_dim % x.dim(), module.end_dim % x.dim()
        if start == 0:
            raise ValueError(f"export: {what} flattens the batch dimension; NIR shapes have no batch dimension")
        return nir.Flatten(input_type={"input": np.array(x.shape[1:])}, start_dim=start - 1, end_dim=end - 1)
    if isinstance(module, nn.Identity):
        return None
    if isinstance(module, nn.Dropout):
        if module.training and module.p > 0:
            raise ValueError(f"export: {what} is random in training mode; call model.eval() first")
        return None
    raise ValueError(f"export: module {what} has no NIR mapping here; supported: {_SUPPORTED_MODULES}")


def _export_avg_pool(nir: Any, what: str, module: nn.AvgPool2d, x: torch.Tensor) -> Any:
    """``nn.AvgPool2d`` as NIR's ``AvgPool2d``, or ``SumPool2d`` for ``divisor_override=1``."""
    np = _np()
    if x.dim() != 4:
        raise ValueError(f"export: {what} gets an input of shape {list(x.shape)}; expected [batch, channels, H, W]")
    pair = lambda v: tuple(int(i) for i in (v if isinstance(v, (tuple, list)) else (v, v)))  # noqa: E731
    kernel = pair(module.kernel_size)
    stride = pair(module.stride if module.stride is not None else module.kernel_size)
    padding = pair(module.padding)
    if module.ceil_mode:
        raise ValueError(f"export: {what} has ceil_mode=True; NIR's pooling nodes floor the output size")
    if module.divisor_override not in (None, 1):
        raise ValueError(
            f"export: {what} divides by divisor_override={module.divisor_override}; NIR pools by the sum "
            "(SumPool2d, divisor_override=1) or the mean over the window (AvgPool2d) only"
        )
    if any(padding) and not module.count_include_pad and module.divisor_override is None:
        raise ValueError(
            f"export: {what} pads with count_include_pad=False; NIR's AvgPool2d averages over the whole window, "
            "the zero padding included (torch's default)"
        )
    args = {"kernel_size": np.array(kernel), "stride": np.array(stride), "padding": np.array(padding)}
    return nir.SumPool2d(**args) if module.divisor_override == 1 else nir.AvgPool2d(**args)


@keywords
def export(model: nn.Module, sample_input: torch.Tensor, dt: float = 1.0) -> nir_pkg.NIRGraph:
    """Export ``model`` to a ``nir.NIRGraph``.

    ``model`` (an ``nn.Sequential``, a :class:`~tracetorch.nn.TTModel` or any module) must run
    as a chain: each of its leaf modules takes the previous one's output. It is run once on
    ``sample_input`` to find that chain and the shapes; its hidden states and the RNG are left
    as they were.

    Args:
        model: the model; its modules must be among ``Linear``, ``Conv1d``, ``Conv2d``,
            ``Flatten``, ``Identity``, ``Dropout`` (eval) and the neuron types ``LI``, ``SLI``,
            ``LIB``, ``SLIB`` (the firing ones with ``quant_fn="round"``).
        sample_input: one timestep of input with a leading batch dimension, e.g.
            ``torch.zeros(1, 784)``; NIR's shapes leave the batch dimension out.
        dt: the timestep the discrete decays stand for: ``tau = dt / (1 - decay)`` (module
            docstring). Recorded as ``graph.metadata["dt"]``.

    Returns:
        A graph ``input -> node -> ... -> output`` (node names from the module paths), with
        ``metadata = {"dt": dt, "source": "tracetorch"}``.

    Raises:
        ValueError: a module or neuron type NIR cannot express exactly (the message says why), or
            a model that is not a chain.
        ImportError: the ``nir`` package is missing.
    """
    nir = _nir()
    np = _np()
    dt = _check_dt("export", dt)
    if not isinstance(model, nn.Module):
        raise TypeError(f"export: model must be an nn.Module, received {type(model).__name__}")
    if not isinstance(sample_input, torch.Tensor) or sample_input.dim() < 2:
        got = list(sample_input.shape) if isinstance(sample_input, torch.Tensor) else type(sample_input).__name__
        raise ValueError(f"export: sample_input must be a tensor with a leading batch dimension, received {got}")
    chain = _trace_chain(model, sample_input)

    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(sample_input.shape[1:])})}
    edges: list[tuple[str, str]] = []
    previous = "input"
    out_shape = tuple(sample_input.shape[1:])
    for path, module, x, y in chain:
        node = _export_module(nir, path, module, x, dt)
        if node is None:
            continue
        base = path.replace(".", "_") or type(module).__name__.lower()
        name, i = base, 1
        while name in nodes or name == "output":
            name, i = f"{base}_{i}", i + 1
        nodes[name] = node
        edges.append((previous, name))
        previous, out_shape = name, tuple(y.shape[1:])
    nodes["output"] = nir.Output(output_type={"output": np.array(out_shape)})
    edges.append((previous, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": dt, "source": "tracetorch"})


# ---- import ----------------------------------------------------------------------------------
def _walk_chain(nir: Any, graph: Any) -> list[tuple[str, Any]]:
    """The graph's nodes from its Input to its Output, checked to form one chain."""
    nodes = dict(graph.nodes)
    for name, node in nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise ValueError(
                f"import_: node {name!r} is a subgraph (nir.NIRGraph), e.g. a recurrent LIF <-> Linear loop; "
                "only chains of single nodes can be imported (tracetorch's recurrent types have no NIR equivalent)"
            )
    inputs = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
    outputs = [n for n, v in nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"import_: the graph needs one Input and one Output node, found {inputs} and {outputs}")
    succ: dict[str, list[str]] = defaultdict(list)
    edges = [(str(a), str(b)) for a, b in graph.edges]
    for a, b in edges:
        for end in (a, b):
            if end not in nodes:
                raise ValueError(f"import_: edge ({a!r}, {b!r}) names an unknown node {end!r}")
        succ[a].append(b)
    order: list[tuple[str, Any]] = []
    current, seen = inputs[0], {inputs[0]}
    chain_only = "only chains can be imported (no branches, merges, cycles or recurrent edges)"
    while current != outputs[0]:
        following = succ[current]
        if len(following) != 1:
            raise ValueError(f"import_: node {current!r} feeds {len(following)} nodes {following}; {chain_only}")
        current = following[0]
        if current in seen:
            raise ValueError(f"import_: node {current!r} is reached twice (a cycle); {chain_only}")
        seen.add(current)
        if current != outputs[0]:
            order.append((current, nodes[current]))
    if len(seen) != len(nodes) or len(edges) != len(seen) - 1:
        extra = sorted(set(nodes) - seen)
        raise ValueError(f"import_: nodes {extra} or extra edges lie off the Input -> Output chain; {chain_only}")
    return order


def _metadata_reset(node: Any) -> str | None:
    meta = getattr(node, "metadata", None)
    value = meta.get(RESET_KEY) if isinstance(meta, dict) else None
    if isinstance(value, bytes):
        value = value.decode()
    return None if value is None else str(value)


def _neuron_axis(what: str, params: dict[str, torch.Tensor]) -> tuple[int, tuple[int, ...]]:
    """The one per-sample axis along which the params may vary (the neuron ``dim``), and the shape."""
    try:
        shape = tuple(torch.broadcast_shapes(*(t.shape for t in params.values())))
    except RuntimeError as err:
        raise ValueError(f"import_: node {what} has params of mismatched shapes: {err}") from None
    if not shape:
        raise ValueError(f"import_: node {what} has scalar params, so its number of neurons is unknown")
    varying = set()
    for t in params.values():
        t = t.expand(shape)
        for axis in range(len(shape)):
            if not bool((t == t.narrow(axis, 0, 1)).all()):
                varying.add(axis)
    if len(varying) > 1:
        raise ValueError(
            f"import_: node {what} has params varying along per-sample axes {sorted(varying)}; tracetorch params "
            "are one value per neuron along one dimension"
        )
    return (varying.pop() if varying else 0), shape


def _per_neuron(t: torch.Tensor, axis: int, shape: tuple[int, ...]) -> torch.Tensor:
    return t.expand(shape).movedim(axis, 0).reshape(shape[axis], -1)[:, 0].clone()


def _pin_params(layer: NeuronLayer, values: dict[str, torch.Tensor]) -> None:
    """Set each raw param so the activated value is ``values[name]`` exactly, where float32 allows.

    ``sigmoid(logit(b))`` is often an ulp off ``b``; a few ulps of search around the inverse find
    the raw value that gives ``b`` back, so export -> import reproduces the params bit for bit.
    """
    kinds = {name: pspec.kind for name, (pspec, _) in layer._tt_pspecs.items()}
    with torch.no_grad():
        for name, target in values.items():
            raw = getattr(layer, f"raw_{name}")
            act = ACTIVATIONS[kinds[name]]
            target = target.to(raw.dtype)
            start = INVERSES[kinds[name]](target.double()).to(raw.dtype)
            best, err = start, (act(start) - target).abs()
            for direction in (math.inf, -math.inf):
                cand = start
                for _ in range(8):
                    cand = torch.nextafter(cand, torch.full_like(cand, direction))
                    e = (act(cand) - target).abs()
                    best, err = torch.where(e < err, cand, best), torch.minimum(e, err)
            raw.copy_(best)


def _fold_gain(what: str, k: torch.Tensor, axis: int, shape: tuple[int, ...], previous: nn.Module | None) -> None:
    """Multiply the preceding Linear/Conv's output by the per-neuron gain ``k`` (exact up to rounding)."""
    if bool((k == 1).all()) or bool(((k - 1).abs() <= 1e-12).all()):
        return  # float64 round-off of our own export: nothing to fold
    if not isinstance(previous, (nn.Linear, nn.Conv1d, nn.Conv2d)) or (
        axis != 0 and not bool((k == k.flatten()[0]).all())
    ):
        raise ValueError(
            f"import_: node {what} scales its input by r*dt/tau (x w_in) = {k.flatten()[:4].tolist()}..., but "
            "tracetorch's LI/SLI add their input unscaled; the gain can only be folded into a preceding "
            "Affine/Linear/Conv whose output channels are the neurons"
        )
    gain = _per_neuron(k, axis, shape) if axis == 0 else k.flatten()[:1].expand(previous.weight.shape[0])
    with torch.no_grad():
        w = previous.weight
        view = [-1] + [1] * (w.dim() - 1)
        w.copy_((w.double() * gain.reshape(view)).to(w.dtype))
        if previous.bias is not None:
            previous.bias.copy_((previous.bias.double() * gain).to(previous.bias.dtype))


def _import_neuron(
    nir: Any, name: str, node: Any, dt: float, reset: str | None, previous: nn.Module | None
) -> nn.Module:
    kind = type(node).__name__
    what = f"{name!r} ({kind})"
    synaptic = kind in ("CubaLI", "CubaLIF")
    fires = kind in ("LIF", "CubaLIF", "IF")
    integrator = kind in ("IF", "I")  # no leak: beta = 1.0, fixed
    raw = {"r": node.r}
    if not integrator:
        raw["v_leak"] = node.v_leak
        raw.update({"tau_syn": node.tau_syn, "tau_mem": node.tau_mem, "w_in": node.w_in} if synaptic else {"tau": node.tau})
    if fires:
        v_reset = node.v_reset
        raw.update({"v_threshold": node.v_threshold, "v_reset": 0.0 if v_reset is None else v_reset})
    p = {k: _f64(v) for k, v in raw.items()}
    if integrator:
        p["v_leak"] = torch.zeros(())
    for k, v in p.items():
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"import_: node {what} has non-finite {k}")
    if not bool((p["v_leak"] == 0).all()):
        raise ValueError(
            f"import_: node {what} has v_leak != 0 (a constant drive); tracetorch's neurons have no leak potential "
            "(fold (1-beta)*v_leak/... into the preceding Affine's bias by hand if you want it)"
        )
    mode = None
    if fires:
        if not bool((p["v_reset"] == 0).all()):
            raise ValueError(
                f"import_: node {what} has v_reset != 0; tracetorch's resets are to zero (reset='zero') or by "
                "subtracting the threshold (reset='subtract'), which agree with NIR's reset only for v_reset = 0"
            )
        declared = _metadata_reset(node)
        if declared is not None and declared not in RESETS:
            raise ValueError(
                f"import_: node {what} declares {RESET_KEY}={declared!r}; tracetorch neurons reset by subtraction "
                "('subtract') or to zero ('zero')"
            )
        mode = declared or reset
        if mode is None:
            raise ValueError(
                f"import_: node {what} does not say how a discrete-time simulator resets it (in discrete time a reset "
                "to v_reset = 0 and a subtraction of the threshold differ after every overshoot). Pass reset='zero' "
                "for NIR's own reading, v -> v_reset (snnTorch with reset_mechanism='zero' and reset_delay=False; "
                "Norse's default), or reset='subtract' if the source subtracted (snnTorch Leaky/Synaptic with "
                "reset_mechanism='subtract' and reset_delay=False; Norse with reset_method=reset_subtract)"
            )
    axis, shape = _neuron_axis(what, p)
    if integrator:  # v[t] = v[t-1] + dt*r*I[t]: tracetorch's mem = mem + x with the input gain dt*r
        gain = (dt * p["r"]).expand(shape)
        return _integrator_layer(what, kind, gain, p, axis, shape, mode, previous)
    tau_mem = p["tau_mem"] if synaptic else p["tau"]
    decays = {"beta": 1.0 - dt / tau_mem}
    if synaptic:
        decays["alpha"] = 1.0 - dt / p["tau_syn"]
    for dname, d in decays.items():
        if not bool(((d > 0) & (d < 1)).all()):
            tname = "tau_syn" if dname == "alpha" else ("tau_mem" if synaptic else "tau")
            raise ValueError(
                f"import_: node {what}: {dname} = 1 - dt/{tname} must be in (0, 1) (so {tname} > dt), received "
                f"{dname} in [{d.min().item():g}, {d.max().item():g}] with dt={dt:g}; pass the dt the graph was "
                "made for (snnTorch exports with dt=1e-4)"
            )
    gain = (dt / tau_mem) * p["r"] * (p["w_in"] if synaptic else 1.0)
    gain = gain.expand(shape)
    n = shape[axis]
    dim = axis - len(shape)
    values = {k: _per_neuron(v, axis, shape) for k, v in decays.items()}
    if fires:
        if not bool((gain > 0).all()):
            raise ValueError(f"import_: node {what} has an input gain r*dt/tau (x w_in) <= 0; it cannot fire as a LIB")
        threshold = p["v_threshold"].expand(shape) / gain
        if not bool((threshold > 0).all()):
            raise ValueError(f"import_: node {what} has v_threshold <= 0; tracetorch thresholds are > 0")
        values["threshold"] = _per_neuron(threshold, axis, shape)
    else:
        _fold_gain(what, gain, axis, shape, previous)
    dtype = torch.get_default_dtype()
    values = {k: v.to(dtype) for k, v in values.items()}
    cls = LAYERS[{"LI": "LI", "CubaLI": "SLI", "LIF": "LIB", "CubaLIF": "SLIB"}[kind]]
    layer = cls(n, **values, dim=dim, **({"quant_fn": "round", "reset": mode} if fires else {}))
    _pin_params(layer, values)
    return layer


def _integrator_layer(
    what: str, kind: str, gain: torch.Tensor, p: dict, axis: int, shape: tuple, mode: str | None, previous: Any
) -> NeuronLayer:
    """``IF`` -> ``LIB`` and ``I`` -> ``LI``, both with ``beta = 1.0`` fixed (``learn_beta=False``)."""
    n, dim = shape[axis], axis - len(shape)
    dtype = torch.get_default_dtype()
    if kind == "I":
        _fold_gain(what, gain, axis, shape, previous)
        return LAYERS["LI"](n, beta=1.0, learn_beta=False, dim=dim)
    if not bool((gain > 0).all()):
        raise ValueError(f"import_: node {what} has an input gain dt*r <= 0; it cannot fire as a LIB")
    threshold = p["v_threshold"].expand(shape) / gain
    if not bool((threshold > 0).all()):
        raise ValueError(f"import_: node {what} has v_threshold <= 0; tracetorch thresholds are > 0")
    values = {"threshold": _per_neuron(threshold, axis, shape).to(dtype)}
    layer = LAYERS["LIB"](n, beta=1.0, learn_beta=False, **values, dim=dim, quant_fn="round", reset=mode)
    _pin_params(layer, values)
    return layer


def _import_pool(nir: Any, name: str, node: Any) -> nn.Module:
    """``SumPool2d`` -> ``nn.AvgPool2d(divisor_override=1)`` (a window sum); ``AvgPool2d`` -> ``nn.AvgPool2d``
    (the mean over the whole window, zero padding included, as torch's default)."""
    kernel, stride, padding = (_ints(v, 2) for v in (node.kernel_size, node.stride, node.padding))
    if len(kernel) != 2 or len(stride) != 2 or len(padding) != 2:
        raise ValueError(
            f"import_: node {name!r} ({type(node).__name__}) needs 2 values each of kernel_size, stride, padding, "
            f"received {kernel}, {stride}, {padding}"
        )
    if isinstance(node, nir.SumPool2d):
        return nn.AvgPool2d(kernel, stride, padding, divisor_override=1)
    return nn.AvgPool2d(kernel, stride, padding, count_include_pad=True)


def _ints(value: Any, count: int) -> tuple[int, ...]:
    flat = [int(v) for v in _np().atleast_1d(_np().asarray(value)).ravel()]
    return tuple(flat * count if len(flat) == 1 else flat)


def _import_conv(nir: Any, node: Any) -> nn.Module:
    spatial = 1 if isinstance(node, nir.Conv1d) else 2
    weight = _weight(node.weight)
    if weight.dim() != spatial + 2:
        raise ValueError(
            f"import_: a Conv{spatial}d weight must have {spatial + 2} dims, received {list(weight.shape)}"
        )
    groups = int(node.groups)
    padding = node.padding
    if isinstance(padding, bytes):
        padding = padding.decode()
    padding = padding if isinstance(padding, str) else _ints(padding, spatial)
    cls = nn.Conv1d if spatial == 1 else nn.Conv2d
    conv = cls(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=_ints(node.stride, spatial),
        padding=padding,
        dilation=_ints(node.dilation, spatial),
        groups=groups,
        bias=True,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        bias = torch.zeros(weight.shape[0]) if node.bias is None else _weight(node.bias).reshape(-1)
        conv.bias.copy_(bias)
    return conv


def _import_node(nir: Any, name: str, node: Any, dt: float, reset: str | None, previous: nn.Module | None) -> nn.Module:
    if isinstance(node, (nir.LI, nir.CubaLI, nir.LIF, nir.CubaLIF, nir.IF, nir.I)):
        return _import_neuron(nir, name, node, dt, reset, previous)
    if isinstance(node, nir.Scale):
        return Scale(_weight(node.scale))
    if isinstance(node, nir.Threshold):
        return Threshold(_weight(node.threshold))
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        return _import_pool(nir, name, node)
    if isinstance(node, (nir.Affine, nir.Linear)):
        weight = _weight(node.weight)
        if weight.dim() != 2:
            raise ValueError(f"import_: node {name!r} has a weight of shape {list(weight.shape)}; expected 2 dims")
        bias = isinstance(node, nir.Affine) and node.bias is not None
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias:
                linear.bias.copy_(_weight(node.bias).reshape(-1))
        return linear
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        return _import_conv(nir, node)
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)
        return nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)
    if isinstance(node, nir.Delay):
        return _import_delay(name, node, dt)
    raise ValueError(
        f"import_: node {name!r} ({type(node).__name__}) has no tracetorch equivalent; supported: Affine, Linear, "
        "Conv1d, Conv2d, Flatten, SumPool2d, AvgPool2d, Scale, Threshold, Delay, LI, CubaLI, LIF, CubaLIF, I, IF"
    )


@keywords
def import_(graph: nir_pkg.NIRGraph, dt: float | None = None, reset: str | None = None) -> NIRModel:
    """Build a tracetorch model from a chain-shaped ``nir.NIRGraph``.

    ``Affine``/``Linear`` -> ``nn.Linear``, ``Conv1d``/``Conv2d`` -> ``nn.Conv1d``/``nn.Conv2d``,
    ``Flatten`` -> ``nn.Flatten``, ``LI`` -> ``LI``, ``CubaLI`` -> ``SLI``, ``LIF`` -> ``LIB`` and
    ``CubaLIF`` -> ``SLIB`` (both ``quant_fn="round"``, with the node's reset), ``IF`` -> ``LIB``
    and ``I`` -> ``LI`` (``beta = 1.0``, fixed), ``SumPool2d``/``AvgPool2d`` -> ``nn.AvgPool2d``,
    ``Scale``/``Threshold`` -> :class:`Scale`/:class:`Threshold`, with the decays, thresholds and
    input gains of the module docstring. A neuron node's params may vary along one per-sample axis, which
    becomes the layer's ``dim`` (e.g. ``dim=-3`` for per-channel params after a ``Conv2d``).

    Args:
        graph: the graph: ``Input -> node -> ... -> Output``, no branches or recurrent edges.
        dt: the timestep: ``beta = 1 - dt/tau``. ``None``: ``graph.metadata["dt"]`` if present
            (graphs from :func:`export`), else 1.0. snnTorch exports with ``dt=1e-4``.
        reset: ``"subtract"`` or ``"zero"``: the reset of ``LIF``/``CubaLIF``/``IF`` nodes whose
            metadata does not say how they reset (see the module docstring); ``None`` (default)
            refuses them.

    Returns:
        A :class:`NIRModel` (``nn.Sequential`` + ``TTModel``), run once per timestep.

    Raises:
        ValueError: a node or graph shape tracetorch cannot reproduce exactly (the message says why).
        ImportError: the ``nir`` package is missing.
    """
    nir = _nir()
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"import_: graph must be a nir.NIRGraph, received {type(graph).__name__}")
    if reset is not None and reset not in RESETS:
        raise ValueError(f"import_: reset must be None, 'subtract' or 'zero', received {reset!r}")
    if dt is None:
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        dt = meta.get("dt", 1.0)
    dt = _check_dt("import_", dt)
    modules: list[nn.Module] = []
    for name, node in _walk_chain(nir, graph):
        modules.append(_import_node(nir, name, node, dt, reset, modules[-1] if modules else None))
    return NIRModel(*modules)


# ---- delays ----------------------------------------------------------------------------------
#: The longest delay (in steps) :func:`import_` builds a buffer for.
_MAX_IMPORTED_DELAY = 1_000_000


def _export_delay(nir: Any, name: str, layer: Delay | DelayedLinear, x: torch.Tensor, dt: float) -> Any:
    """A ``tt.nn.Delay`` as a ``nir.Delay`` of the per-sample shape: ``delay`` in steps times ``dt``."""
    what = _describe(name, layer)
    if isinstance(layer, DelayedLinear):
        raise ValueError(
            f"export: layer {what} delays every synapse on its own; NIR's Delay node delays whole channels "
            "(one delay per element of its input), so a per-synapse delay has no NIR equivalent"
        )
    shape = tuple(x.shape[1:])
    axis = layer.dim % x.dim() - 1
    if axis < 0:
        raise ValueError(f"export: layer {what} has its channels on the batch dimension (dim={layer.dim})")
    d = layer.delay.detach().to("cpu", torch.float64).clamp(0, layer.max_delay)  # as the layer reads it
    if d.dim() == 1:
        view = [1] * len(shape)
        view[axis] = d.shape[0]
        d = d.reshape(view)
    return nir.Delay(delay=_array(d.expand(shape).clone() * dt))


def _import_delay(name: str, node: Any, dt: float) -> Delay:
    """A ``nir.Delay`` node as a fixed ``tt.nn.Delay``: ``delay / dt`` steps along the one axis where it varies."""
    what = f"{name!r} (Delay)"
    d = _f64(node.delay)
    if not bool(torch.isfinite(d).all()):
        raise ValueError(f"import_: node {what} has non-finite delays")
    steps = d / dt
    if not bool(((steps >= 0) & (steps <= _MAX_IMPORTED_DELAY)).all()):
        raise ValueError(
            f"import_: node {what}: delay / dt must lie in [0, {_MAX_IMPORTED_DELAY}] steps, received "
            f"[{steps.min().item():g}, {steps.max().item():g}] with dt={dt:g}; pass the dt the graph was made for"
        )
    nearest = steps.round()
    steps = torch.where((steps - nearest).abs() <= 1e-6 * nearest.clamp(min=1), nearest, steps)
    axis, shape = _neuron_axis(what, {"delay": steps})
    per_channel = _per_neuron(steps, axis, shape)
    max_delay = max(1, math.ceil(per_channel.max().item()))
    return Delay(shape[axis], max_delay, delay=per_channel.to(torch.get_default_dtype()), dim=axis - len(shape))
