"""Record what neuron layers emit over a run, without touching the model's code.

::

    with tt.monitor(model) as rec:          # forward hooks on every TTLayer
        for t in range(T):
            model(x[t])
    rec.outputs["net.1"]                     # [T, B, N]: the layer's output at each call
    rec.states["net.1"]["mem"]               # [T, B, N]: its membrane after each call (after the reset)
    rec.membranes["net.1"]                   # [T, B, N]: its membrane before the reset (what reaches threshold)
    rec.firing_rates()["net.1"]              # [N]: mean |output| per neuron
    # the hooks are gone here; the recording stays until rec.clear()

A layer is recorded once per call of its ``forward``: one entry per timestep when the model is
called once per step. Recorded tensors are detached copies (later in-place changes to the
model's tensors do not reach them). Monitor eager runs: not inside ``torch.func`` transforms
(a transformed tensor cannot leave the transform; the hook refuses it) and not under
``torch.compile``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._keywords import keywords
from .functional.neurons import _generic_step
from .nn.layer import TTLayer
from .nn.walk import named_layers

__all__ = ["monitor", "Recorder"]

_is_transformed = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)


class Recorder:
    """The recording of a :func:`monitor`: per-call outputs and states of the chosen layers.

    Use it as a context manager: the forward hooks exist only inside ``with``. Entering again
    appends to the same recording; :meth:`clear` forgets it.

    Made by :func:`monitor`, which checks its arguments; build it directly only with already
    resolved layers.

    Args:
        layers: ``{path: layer}`` of the layers to record (paths as in
            :func:`tracetorch.state.named_layers`); kept as the ``layers`` attribute.
        states: also record each layer's states after each call.
        device: where to keep the recorded tensors; ``None``: their own device.
    """

    def __init__(self, layers: dict[str, TTLayer], states: bool = True, device: Any = None) -> None:
        self.layers = layers
        self._record_states = states
        self._device = None if device is None else torch.device(device)
        self._outputs: dict[str, list[torch.Tensor]] = {}
        self._states: dict[str, dict[str, list[torch.Tensor]]] = {}
        self._membranes: dict[str, list[torch.Tensor]] = {}
        self._before: dict[str, Any] = {}
        self._cache: tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]] | None = None
        self._mem_cache: dict[str, torch.Tensor] | None = None
        self._handles: list[Any] = []

    # ---- hooks --------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        if self._handles:
            raise RuntimeError("monitor: this recorder is already active (a `with` inside the same recorder's `with`)")
        self._handles = [layer.register_forward_hook(self._hook(path)) for path, layer in self.layers.items()]
        if self._record_states:
            self._handles += [
                layer.register_forward_pre_hook(self._pre_hook(path))
                for path, layer in self.layers.items()
                if _built_in(layer)
            ]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the forward hooks (done on leaving ``with``); the recording is kept."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._before = {}

    @property
    def active(self) -> bool:
        """Whether the hooks are attached (inside ``with``)."""
        return bool(self._handles)

    def _keep(self, path: str, name: str, t: torch.Tensor) -> torch.Tensor:
        if _is_transformed(t):
            raise RuntimeError(
                f"monitor: layer {path!r} {name} is a torch.func-transformed tensor (vmap/grad/jacrev); "
                "tensors cannot leave a transform, so leave the monitor for eager runs"
            )
        t = t.detach()
        return t.to(self._device, copy=True) if self._device is not None else t.clone()

    def _pre_hook(self, path: str):
        def pre_hook(layer: nn.Module, args: Any) -> None:
            self._before[path] = layer.state  # the state going into this call (None: zeros)

        return pre_hook

    def _hook(self, path: str):
        def hook(layer: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"monitor: layer {path!r} returned {type(output).__name__}, expected a tensor to record"
                )
            self._outputs.setdefault(path, []).append(self._keep(path, "output", output))
            if self._record_states:
                state = layer.state
                if state is not None:
                    record = self._states.setdefault(path, {})
                    for name, value in state._asdict().items():
                        record.setdefault(name, []).append(self._keep(path, f"state {name!r}", value))
                if _built_in(layer) and path in self._before and args and isinstance(args[0], torch.Tensor):
                    mem = _pre_reset_membrane(layer, self._before.pop(path), args[0])
                    self._membranes.setdefault(path, []).append(self._keep(path, "membrane", mem))
            self._cache = None
            self._mem_cache = None

        return hook

    # ---- reading ------------------------------------------------------------------------
    def _stacked(self) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        if self._cache is None:
            outputs = {path: _stack(path, "outputs", ts) for path, ts in self._outputs.items()}
            states = {
                path: {name: _stack(path, f"state {name!r}", ts) for name, ts in rec.items()}
                for path, rec in self._states.items()
            }
            self._cache = (outputs, states)
        return self._cache

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """``{path: [T, *output shape]}``: each recorded layer's outputs, stacked over its T calls.

        Only layers called at least once appear. Stacked once per change of the recording.
        """
        return self._stacked()[0]

    @property
    def states(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{path: {state name: [T, *state shape]}}``: each layer's states after each call.

        Empty when the monitor was made with ``states=False``.
        """
        return self._stacked()[1]

    @property
    def membranes(self) -> dict[str, torch.Tensor]:
        """``{path: [T, *output shape]}``: each built-in layer's membrane *before* the reset, per call.

        This is the membrane a firing neuron compares with its threshold: at a spike it has
        reached it (for ternary types, the positive threshold or minus the negative one), while
        ``rec.states[path]["mem"]``, taken after the call, is already reset. For dual types it
        is the total ``pos_mem + neg_mem``; for the LI family (no reset) it equals the recorded
        ``mem``. It is recomputed in the monitor from the state before the call, the input and
        the layer's params (the stages up to the membrane, without firing), so the layer's own
        computation is untouched and no random numbers are drawn. Recorded for the 28
        built-in types only, and only with ``states=True``; ``plot.membrane`` draws it.
        """
        if self._mem_cache is None:
            self._mem_cache = {path: _stack(path, "membranes", ts) for path, ts in self._membranes.items()}
        return self._mem_cache

    def __len__(self) -> int:
        """The number of calls recorded for the most-called layer."""
        return max((len(ts) for ts in self._outputs.values()), default=0)

    def firing_rates(self) -> dict[str, torch.Tensor]:
        """``{path: [num_neurons]}``: mean ``|output|`` of each neuron over time and every other dim.

        The neuron dimension is the layer's ``dim`` (so ``[B, C, H, W]`` outputs with
        ``dim=-3`` give one rate per channel). For a firing layer it is the fraction of steps
        with a spike (with ``|.|``, ternary spikes count both polarities); for a
        leaky integrator (``LI``), whose output is its membrane, the mean absolute membrane.
        """
        rates = {}
        for path, out in self.outputs.items():
            per_call = out.dim() - 1
            axis = self.layers[path].dim % per_call + 1
            others = [d for d in range(out.dim()) if d != axis]
            rates[path] = out.abs().mean(dim=others)
        return rates

    def clear(self) -> None:
        """Forget everything recorded so far (the hooks stay as they are)."""
        self._outputs = {}
        self._states = {}
        self._membranes = {}
        self._cache = None
        self._mem_cache = None

    def __repr__(self) -> str:
        return f"Recorder(layers={list(self.layers)}, calls={len(self)}, states={self._record_states}, active={self.active})"


def _built_in(layer: nn.Module) -> bool:
    """Whether ``layer`` is one of the 28 built-in types (whose stages the monitor can recompute)."""
    from .nn.neurons import NeuronLayer

    return isinstance(layer, NeuronLayer)


def _no_spikes(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p)


def _pre_reset_membrane(layer: Any, before: Any, x: torch.Tensor) -> torch.Tensor:
    """The membrane of ``layer``'s last call before its reset, recomputed from the state before that call.

    The generic step with a quantizer that never fires leaves the membrane unreset; stages 1-3
    (synaptic, recurrent, membrane) are the very same computation as in the real call.
    """
    spec = layer.spec
    work = layer._to_working_dim
    xw = work(x.detach())
    if before is None:
        state = spec.State(*(torch.zeros_like(xw) for _ in spec.state_names))
    else:
        state = spec.State(*(work(t.detach()) for t in before))
    with torch.no_grad():
        _, new = _generic_step(spec, layer.activated_params(), state, xw, layer.spike_fn, _no_spikes)
    mem = new.pos_mem + new.neg_mem if spec.dual else new.mem
    return layer._from_working_dim(mem)


def _stack(path: str, what: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(
            f"monitor: layer {path!r} recorded {what} of different shapes {sorted(list(s) for s in shapes)}; "
            "call rec.clear() between runs with different batch or input sizes"
        )
    return torch.stack(tensors)


@keywords
def monitor(
    model: nn.Module, layers: list[str | TTLayer] | None = None, states: bool = True, *, device: Any = None
) -> Recorder:
    """Record the outputs (and states) of a model's neuron layers while inside ``with``.

    ``with tt.monitor(model) as rec: ...`` attaches a forward hook to each chosen layer and
    removes them all on leaving, even on an exception; the model's code is not changed. Each call
    of a layer appends its output (and, with ``states``, its state after the call) to the
    recording; see :class:`Recorder` for reading it (``rec.outputs``, ``rec.states``,
    ``rec.firing_rates()``, ``rec.clear()``).

    Args:
        model: any module holding :class:`~tracetorch.nn.TTLayer` s (or a TTLayer itself).
        layers: which layers to record: paths (as in :func:`tracetorch.state.named_layers`, e.g.
            ``"net.1"``) and/or layer objects from ``model``. Default: every TTLayer.
        states: also record each layer's hidden states after each call.
        device: where to keep the recording (e.g. ``"cpu"`` to spare GPU memory); default the
            tensors' own device.

    Returns:
        The :class:`Recorder`, to be used as a context manager.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"monitor: model must be an nn.Module, received {type(model).__name__}")
    found = named_layers(model)
    if layers is None:
        chosen = dict(found)
        if not chosen:
            raise ValueError(f"monitor: {type(model).__name__} holds no TTLayer to record")
    else:
        if isinstance(layers, (str, TTLayer)):
            layers = [layers]
        by_path = dict(found)
        by_id = {id(layer): path for path, layer in found}
        chosen = {}
        for item in layers:
            if isinstance(item, str):
                if item not in by_path:
                    raise ValueError(f"monitor: no TTLayer at path {item!r}; the model's layers are {list(by_path)}")
                chosen[item] = by_path[item]
            elif isinstance(item, TTLayer):
                if id(item) not in by_id:
                    raise ValueError(f"monitor: the {type(item).__name__} given in layers is not part of the model")
                chosen[by_id[id(item)]] = item
            else:
                raise TypeError(
                    f"monitor: layers must hold paths (str) or TTLayer objects, received {type(item).__name__}"
                )
    if not isinstance(states, bool):
        raise TypeError(f"monitor: states must be a bool, received {type(states).__name__}")
    return Recorder(chosen, states, device)
