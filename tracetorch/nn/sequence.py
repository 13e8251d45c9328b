"""Sequence mode: a whole ``[T, B, ...]`` sequence through a model in one call.

:func:`run` feeds the sequence through a chain of modules *layer by layer*, which is exactly what
``T`` per-step calls compute, only cheaper:

* **stateless modules** (``Linear``, convolutions, pooling, ``Flatten``, ``Dropout``, layer and
  group norms, elementwise activations, padding, ... and anything marked with
  :func:`stateless` or :func:`register_stateless`) run once on all ``T*B`` rows: ``[T, B, ...]``
  is folded to ``[T*B, ...]`` and back;
* **neuron layers** (every :class:`~tracetorch.nn.TTLayer`) run their time loop over ``T``
  (:func:`tracetorch.functional.scan`: one fused kernel call for the 28 built-in types), starting from the layer's stored state and leaving the final state there, so per-step
  calls and sequence calls interleave freely;
* **anything else** in the chain (a module holding TTLayers inside, an unknown module, a
  ``BatchNorm`` in training mode, whose batch statistics and running averages are per step) runs
  step by step, ``T`` calls on ``[B, ...]``.

What is a chain: an ``nn.Sequential`` (nested ones too, and subclasses that keep its
``forward``), a single TTLayer, and any module (a ``TTModel``, say) whose ``forward`` is literally
``return self.<child>(x)`` with ``<child>`` a chain (read from ``forward``'s bytecode; nothing else
is guessed). Any other model (and a chain where one TTLayer sits at two places, or with forward
hooks on a container, or while global module hooks are registered) runs whole, step by step:
``T`` calls of ``model(x_t)``, stacked; the same results, without the speed. A module of the
chain with forward or backward hooks of its own (``tt.monitor`` adds forward hooks), or whose
``forward`` was replaced on the instance, runs step by step, so its hooks (and its replacement
``forward``) see the ``T`` calls they would see in a per-step loop; global backward hooks make the
whole model run step by step, as global forward hooks do. Modules that read an input of one rank
less as one unbatched sample (the ``...1d/2d/3d`` ones: convolutions, pooling, instance norms,
``Softmax2d``, ...) fold only batched steps, and run step by step on unbatched ones.

What sequence mode cannot reproduce it refuses, with every state put back as it was before the
call: a module (a hook, say) that zeroes, sets or detaches the state of a neuron layer elsewhere
in the chain mid-sequence (run such a model step by step yourself). Any failed :func:`run` leaves
every state as it was.

Random draws: the results equal the per-step loop's exactly for deterministic models. Where a
model draws random numbers (``Dropout`` in training, the ``"bernoulli"`` quantizer), sequence mode
draws them in another order and in other shapes: the same distribution, not the same samples.
"""

from __future__ import annotations

import dis
import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any

import optree
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .._keywords import keywords
from ..functional.kernels.context import tracing
from ..functional.time import _check_chunk, _custom_kernel, _loop, check_fast, kernels_auto, scan_spec
from .layer import TTLayer
from .neurons import NeuronLayer
from .walk import named_layers

__all__ = ["run", "scan_layer", "stateless", "register_stateless", "plan"]


# ---- which modules are stateless over time ------------------------------------------------------

_STATELESS_NAMES = (
    # affine, convolution, pooling, shape
    "Identity Linear Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d "
    "MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d LPPool1d LPPool2d LPPool3d "
    "AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d "
    "FractionalMaxPool2d FractionalMaxPool3d Flatten Unflatten Upsample UpsamplingNearest2d UpsamplingBilinear2d "
    "PixelShuffle PixelUnshuffle ChannelShuffle Embedding "
    # padding
    "ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d ConstantPad2d ConstantPad3d ReflectionPad1d ReflectionPad2d "
    "ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d CircularPad1d CircularPad2d CircularPad3d "
    # per-sample normalization and dropout
    "LayerNorm GroupNorm RMSNorm LocalResponseNorm InstanceNorm1d InstanceNorm2d InstanceNorm3d "
    "BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm "
    "Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout "
    # elementwise (or along a feature dim)
    "ReLU ReLU6 LeakyReLU PReLU RReLU ELU SELU CELU GELU SiLU Mish Sigmoid Tanh Hardtanh Hardsigmoid Hardswish "
    "Hardshrink Softshrink Tanhshrink Softplus Softsign LogSigmoid Threshold GLU Softmax LogSoftmax Softmin Softmax2d"
).split()

_STATELESS: set[type] = {getattr(nn, n) for n in _STATELESS_NAMES if hasattr(nn, n)}


def register_stateless(*classes: type) -> None:
    """Declare module classes stateless over time: sequence mode folds ``[T, B, ...]`` into ``T*B`` rows for them.

    Only for modules whose output for a row depends on that row alone (dimension 0 is the batch)
    and that keep no state between calls. Subclasses that override ``forward`` are not covered.
    """
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_stateless: expected nn.Module classes, received {cls!r}")
        if issubclass(cls, TTLayer):
            raise ValueError(f"register_stateless: {cls.__name__} is a neuron layer, it has state")
        _STATELESS.add(cls)


def stateless(module: nn.Module) -> nn.Module:
    """Mark one module stateless over time (see :func:`register_stateless`) and return it.

    ``nn.Sequential(nn.Linear(4, 8), tt.nn.stateless(MyNorm()), tt.nn.LIB(8))``
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"stateless: expected an nn.Module, received {type(module).__name__}")
    if _has_layers(module):
        raise ValueError(f"stateless: {type(module).__name__} holds neuron layers, it has state")
    module.tt_stateless = True
    return module


def _has_layers(module: nn.Module) -> bool:
    return bool(named_layers(module))


def _registered(m: nn.Module) -> type | None:
    for cls in type(m).__mro__:
        if cls in _STATELESS:
            return cls if type(m).forward is cls.forward else None
    return None


def _dim_from_one(dim: int | None, rank: int) -> bool:
    """Whether ``dim`` (of a per-step input of ``rank`` dims) leaves the batch dimension alone."""
    if dim is None:
        return False
    return (dim if dim >= 0 else dim + rank) >= 1


def _foldable(m: nn.Module, step_rank: int) -> bool:
    """Whether ``m`` may run once on all ``T*B`` rows (per-step input of ``step_rank`` dims)."""
    if getattr(m, "tt_stateless", False) is True:
        return True
    cls = _registered(m)
    if cls is None:
        return False
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        # training (or no running stats): batch statistics of each step and T updates of the averages
        return not m.training and m.track_running_stats and m.running_mean is not None
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return not (m.training and m.track_running_stats)
    if isinstance(m, nn.Flatten):
        return _dim_from_one(m.start_dim, step_rank)
    if isinstance(m, nn.Unflatten):
        return _dim_from_one(m.dim, step_rank)
    if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.GLU)):
        return _dim_from_one(m.dim, step_rank)
    return _batched(cls, step_rank)


def _batched(cls: type, step_rank: int) -> bool:
    """Whether a per-step input of ``step_rank`` dims is the batched form for a module of class ``cls``.

    Modules named ``...1d/2d/3d`` (convolutions, pooling, padding, instance norms, ``Softmax2d``,
    ...) read an input of ``k + 1`` dims as one unbatched sample: folding ``T`` such steps would
    turn time into the channel (or batch) axis, so they fold only when the step is batched
    (``k + 2`` dims; ``BatchNorm1d`` also takes ``[B, C]``). The pixel and channel shuffles need a
    batched ``[B, C, H, W]`` step for the same reason.
    """
    if cls in (nn.PixelShuffle, nn.PixelUnshuffle, getattr(nn, "ChannelShuffle", None)):
        return step_rank >= 4
    found = re.search(r"([123])d$", cls.__name__)
    if found is None:
        return True
    k = int(found.group(1))
    if cls is nn.BatchNorm1d:
        return step_rank in (2, 3)
    return step_rank == k + 2


# ---- the plan -----------------------------------------------------------------------------------

_SKIP_OPS = {"RESUME", "NOP", "PRECALL", "PUSH_NULL", "CACHE", "EXTENDED_ARG", "NOT_TAKEN", "COPY_FREE_VARS"}


def _delegate(model: nn.Module) -> nn.Module | None:
    """The child ``c`` if ``type(model).forward`` is exactly ``return self.c(x)``, else ``None``."""
    code = getattr(getattr(type(model), "forward", None), "__code__", None)
    if code is None or code.co_argcount != 2 or code.co_kwonlyargcount:
        return None
    if code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return None
    me, arg = code.co_varnames[:2]
    ops = [i for i in dis.get_instructions(code) if i.opname not in _SKIP_OPS]
    if len(ops) != 5:
        return None
    load_self, load_attr, load_x, call, ret = ops
    if not (
        load_self.opname in ("LOAD_FAST", "LOAD_FAST_BORROW")
        and load_self.argval == me
        and load_attr.opname in ("LOAD_ATTR", "LOAD_METHOD")
        and load_x.opname in ("LOAD_FAST", "LOAD_FAST_BORROW")
        and load_x.argval == arg
        and call.opname in ("CALL", "CALL_FUNCTION", "CALL_METHOD")
        and call.arg == 1
        and ret.opname == "RETURN_VALUE"
    ):
        return None
    child = model._modules.get(load_attr.argval)
    return child if isinstance(child, nn.Module) else None


def _hooked(m: nn.Module) -> bool:
    """Forward or backward hooks: they must see the ``T`` per-step calls (a folded module would
    give a backward hook one call of ``T*B`` rows; a neuron layer's time loop none at all)."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _replaced(m: nn.Module) -> bool:
    """Whether ``forward`` was replaced on the instance (``m.forward = ...``): only calling ``m`` honours it."""
    return "forward" in m.__dict__


def _global_hooks() -> bool:
    # hooks registered with nn.modules.module.register_module_(forward|backward)_(pre_)hook see every call
    module = nn.modules.module
    return bool(
        module._global_forward_hooks
        or module._global_forward_pre_hooks
        or module._global_backward_hooks
        or module._global_backward_pre_hooks
    )


def _chain(model: nn.Module) -> list[nn.Module] | None:
    """The modules ``model`` applies one after the other, or ``None`` if it is not a chain."""
    if isinstance(model, TTLayer):
        return [model]
    if _replaced(model):
        return None
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        children = list(model)
    else:
        child = _delegate(model)
        if child is None:
            return None
        children = [child]
    if _hooked(model):
        return None
    out: list[nn.Module] = []
    for child in children:
        nested = (isinstance(child, nn.Sequential) or _delegate(child) is not None) and not _replaced(child)
        inner = _chain(child) if nested else None
        out.extend(inner if inner is not None else [child])
    return out


def plan(model: nn.Module, xs: torch.Tensor) -> list[tuple[str, nn.Module]] | None:
    """How :func:`run` would feed ``xs`` ``[T, B, ...]`` through ``model``, for inspection.

    A list of ``(kind, module)`` with kind ``"fold"`` (once on all ``T*B`` rows), ``"neuron"``
    (a TTLayer's time loop) or ``"step"`` (``T`` calls: also any module with forward or backward
    hooks, or whose ``forward`` was replaced on the instance), or
    ``None``: the whole model runs step by step. The decision for a module (e.g. a BatchNorm)
    depends on its current train/eval mode.
    """
    chain = _chain(model)
    if chain is None or _global_hooks():
        return None
    seen: set[int] = set()
    for m in chain:
        ids = {id(m)} | {id(layer) for _, layer in named_layers(m)}
        if ids & seen:
            return None  # one module at two places: layer-by-layer order would change what it sees
        seen |= ids
    step_rank = xs.dim() - 1
    out = []
    for m in chain:
        if _hooked(m) or _replaced(m):
            out.append(("step", m))  # its hooks (tt.monitor's, say) see the T per-step calls they expect
        elif isinstance(m, TTLayer) and not getattr(m, "return_mem", False):
            out.append(("neuron", m))
        elif step_rank >= 2 and not _has_layers(m) and _foldable(m, step_rank):
            out.append(("fold", m))
        else:
            out.append(("step", m))
    return out


# ---- running ------------------------------------------------------------------------------------


def _fold(m: nn.Module, xs: torch.Tensor) -> torch.Tensor:
    T, B = xs.shape[:2]
    y = m(xs.reshape(T * B, *xs.shape[2:]))
    if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] != T * B:
        raise TypeError(
            f"run: {type(m).__name__} is marked stateless but did not return one row per input row "
            f"(input [{T * B}, ...], output {list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__})"
        )
    return y.reshape(T, B, *y.shape[1:])


def _stack(outs: list[Any]) -> Any:
    if isinstance(outs[0], torch.Tensor):
        return torch.stack(outs)
    return optree.tree_map(lambda *ts: torch.stack(ts), *outs)


def _cat(outs: list[Any]) -> Any:
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    return optree.tree_map(lambda *ts: torch.cat(ts), *outs)


def _per_step(m: Callable[[Any], Any], xs: torch.Tensor) -> Any:
    return _stack([m(x) for x in xs.unbind(0)])


@keywords
def scan_layer(layer: TTLayer, xs: torch.Tensor, fast: bool | None = None, chunk: int | None = None) -> torch.Tensor:
    """One neuron layer over ``xs`` ``[T, ...]`` (each step shaped as the layer's per-step input).

    Starts from the layer's stored state (zeros if none) and stores the final state, as ``T``
    calls of ``layer(x_t)`` would. Returns ``ys`` ``[T, ...]``. ``chunk`` has no effect. A layer
    with a ``run_sequence(xs)`` method (the delay layers) runs the checked sequence through it,
    before any kernel is tried.
    """
    if not isinstance(xs, torch.Tensor) or xs.dim() < 2:
        raise ValueError(
            f"{type(layer).__name__}: a sequence input must be a tensor [T, ...], received "
            f"{list(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__}"
        )
    check_fast(f"scan_layer({type(layer).__name__})", fast)
    xs = layer._prepare_input(xs, sequence=True)
    hook = getattr(layer, "run_sequence", None)
    if hook is not None:  # a layer that runs a sequence its own way (the delay lines): before any kernel
        return hook(xs)
    x0 = xs[0]
    state = layer.state
    if isinstance(layer, NeuronLayer) and type(layer).step is NeuronLayer.step:
        params = layer._layout_params(x0)
        ys, new = scan_spec(
            layer.spec, params, state, xs, spike_fn=layer.spike_fn, quant_fn=layer._scan_quant(), fast=fast
        )
    else:
        d = layer.dim % x0.dim() + 1
        work = layer._to_working_dim
        state = type(state)(*(work(t) for t in state))
        params, xw = layer.activated_params(), xs.movedim(d, -1)
        out = None
        if fast is not False and (fast or kernels_auto()):  # the step traced into a kernel of its own
            out = _custom_kernel(f"run({type(layer).__name__})", layer.step, params, state, xw, {}, fast)
        ys, new = out if out is not None else _loop(layer.step, params, state, xw, {})
        ys = ys.movedim(-1, d)
        new = layer._state_record()(*(layer._from_working_dim(t) for t in new))
    layer._put_states(dict(zip(layer.state_names, _unaliased(new, ys))))
    return ys


def _unaliased(state: Any, ys: torch.Tensor) -> list[torch.Tensor]:
    """The final state's tensors, each copied if it shares memory with the outputs ``ys``.

    No output may alias a state (an in-place op on ``ys`` must not rewrite the hidden state).
    Only plain tensors are checked (under ``torch.func`` transforms and inside ``torch.compile``
    the storage is not reachable; the plain loop there stacks the outputs into a new tensor).
    """
    out = list(state)
    if tracing() or torch._C._are_functorch_transforms_active() or type(ys) is not torch.Tensor:
        return out
    base = ys.untyped_storage().data_ptr()
    return [t.clone() if type(t) is torch.Tensor and t.untyped_storage().data_ptr() == base else t for t in out]


def _run_plan(steps: list[tuple[str, nn.Module]], xs: torch.Tensor, fast: bool | None, chunk: int | None) -> Any:
    inside = [[layer for _, layer in named_layers(m)] for _, m in steps]
    x: Any = xs
    for i, (kind, m) in enumerate(steps):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"run: {type(m).__name__} received a {type(x).__name__}; a chain passes tensors")
        if kind == "neuron":
            x = scan_layer(m, x, fast, chunk)
        elif kind == "fold":
            x = _fold(m, x)
        else:
            own = {id(layer) for layer in inside[i]}
            outside = [layer for j, group in enumerate(inside) if j != i for layer in group if id(layer) not in own]
            x = _per_step_watched(m, x, outside)
    return x


def _version(layer: TTLayer) -> int:
    return layer.__dict__.get("_tt_version", 0)


def _per_step_watched(m: nn.Module, xs: torch.Tensor, outside: list[TTLayer]) -> Any:
    """``T`` calls of ``m``, refusing a call that changes the state of a neuron layer elsewhere in the chain.

    In sequence mode each layer runs over the whole sequence in turn, so a module (a forward
    hook, say) that zeroes, sets or detaches another layer's state at step ``t`` cannot be
    reproduced: that is refused, and :func:`run` puts every state back as it was.
    """
    before = [_version(layer) for layer in outside]
    outs = []
    for t, x in enumerate(xs.unbind(0)):
        outs.append(m(x))
        for layer, v in zip(outside, before):
            if _version(layer) != v:
                raise ValueError(
                    f"run: calling {type(m).__name__} at step {t} changed the hidden state of a "
                    f"{type(layer).__name__} elsewhere in the model (zero_states(), set or detached, from a hook "
                    "say); sequence mode runs each layer over the whole sequence in turn and cannot do that "
                    "mid-sequence: call the model step by step instead (for x in xs: model(x)). Every state is as "
                    "it was before run()"
                )
    return _stack(outs)


def _checkpointed(body: Callable[[torch.Tensor], Any], xs: torch.Tensor, layers: list[TTLayer]) -> Any:
    """``body(xs)`` under gradient checkpointing, the layers' states passed in and out explicitly."""
    before = [layer.state for layer in layers]
    present = [s is not None for s in before]
    flat_in = [t for s in before if s is not None for t in s]
    shape_out: list[bool] = []

    def fn(x: torch.Tensor, *flat: torch.Tensor) -> tuple[Any, ...]:
        saved = [layer.state for layer in layers]
        try:
            it = iter(flat)
            for layer, has in zip(layers, present):
                layer.state = layer._state_record()(*(next(it) for _ in layer.state_names)) if has else None
            y = body(x)
            after = [layer.state for layer in layers]
            shape_out[:] = [s is not None for s in after]
            return (y, *(t for s in after if s is not None for t in s))
        finally:
            for layer, s in zip(layers, saved):
                layer.state = s

    y, *flat_out = _checkpoint(fn, xs, *flat_in, use_reentrant=False)
    it = iter(flat_out)
    for layer, has in zip(layers, shape_out):
        layer.state = layer._state_record()(*(next(it) for _ in layer.state_names)) if has else None
    return y


def _positive(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"run: {name} must be None or an int >= 1, received {value!r}")
    return value


@keywords
def run(
    model: nn.Module,
    xs: torch.Tensor,
    *,
    fast: bool | None = None,
    chunk: int | None = None,
    checkpoint: int | None = None,
    detach_every: int | None = None,
    time_dim: int = 0,
) -> Any:
    """Feed a whole **time-first** ``[T, B, ...]`` sequence through ``model`` (``time_dim=1`` for ``[B, T, ...]``).

    The outputs of ``T`` per-step calls, in one call.

    Args:
        model: an ``nn.Sequential`` of stateless modules and neuron layers, a TTLayer, or a model
            whose ``forward`` is ``return self.<chain>(x)`` (see the module docs); any other model
            runs step by step, with the same results.
        xs: ``[T, B, ...]``: ``xs[t]`` is what ``model(x)`` would receive at step ``t``. Dim 0 is
            always time (an unbatched sequence is ``[T, N]``): a ``[B, N]`` batch of one step is read
            as ``B`` steps, which is refused where it can be known, when a layer holds a state of
            another rank than one step of ``xs`` (``ValueError``).
        fast: for the neuron layers' time loops (see :func:`tracetorch.functional.scan`):
            ``None`` runs the fused kernels where they apply (the built-in types' and, traced from
            their ``step``, custom layers'), ``True`` insists on every path (a ``ValueError`` says
            why one cannot: a step the tracer cannot read, a model or a module holding neuron
            layers that runs step by step), ``False`` runs the plain step loop.
        chunk: accepted for compatibility; no effect (a ``FutureWarning`` says so).
        checkpoint: gradient checkpointing over chunks of this many steps: each chunk's
            activations are dropped after the forward and recomputed in the backward (random
            draws replayed); the memory of one chunk instead of the whole sequence, for about one
            more forward's time.
        detach_every: truncated BPTT: the hidden states are detached after every ``detach_every``
            steps (counted from this call's first step), so gradients flow back at most that far.
        time_dim: which dimension of ``xs`` is time: ``0`` (default, ``[T, B, ...]``) or ``1``
            (batch-first ``[B, T, ...]``, as snnTorch's and many data loaders' batches). With ``1``
            the outputs come back batch-first too; ``xs`` is read through a transposed view (no
            copy on the way in where the modules read it strided; the fused kernels and folded
            modules copy it once, as ``.contiguous()``), and the outputs are views. Which layout a
            tensor has cannot be told from its shape on a fresh model; once layers hold states,
            a call whose ``T`` and ``B`` look swapped against them is refused, saying so.

    Returns:
        ``[T, B, ...]`` (``[B, T, ...]`` with ``time_dim=1``), the stacked per-step outputs (a
        pytree of those if the model returns one).
        Every neuron layer's state is left where ``T`` per-step calls would leave it. If the call
        fails, every state is put back as it was before it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"run: model must be an nn.Module, received {type(model).__name__}")
    if not isinstance(xs, torch.Tensor) or xs.dim() < 1:
        raise ValueError(
            "run: xs must be a tensor [T, ...] with a leading time dimension, received "
            f"{list(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__}"
        )
    xs = time_first("run", xs, time_dim)
    if xs.shape[0] == 0:
        raise ValueError(f"run: xs must hold at least one timestep, received shape {list(xs.shape)}")
    fast = check_fast("run", fast)
    _check_chunk("run", chunk)
    checkpoint, detach_every = _positive("checkpoint", checkpoint), _positive("detach_every", detach_every)
    steps = plan(model, xs)
    layers = [layer for _, layer in named_layers(model)]
    _check_layout(layers, xs, time_dim)
    if torch.is_grad_enabled():
        _warn_freed_graph(layers)
    if fast and layers:
        _insist(model, steps)
    saved = [(layer, [layer.__dict__.get(n) for n in layer.state_names]) for layer in layers]
    try:
        ys = _run(model, xs, steps, layers, fast, chunk, checkpoint, detach_every)
        return ys if time_dim == 0 else optree.tree_map(lambda y: y.transpose(0, 1), ys)
    except BaseException:
        for layer, values in saved:  # a failed run leaves every state as it was
            for n, t in zip(layer.state_names, values):
                object.__setattr__(layer, n, t)
        raise


def _check_layout(layers: list[TTLayer], xs: torch.Tensor, time_dim: int) -> None:
    """Refuse a call whose ``T`` and ``B`` look swapped against the states the layers hold.

    Looked at only where every live state has the rank of one step of ``xs`` with a batch
    dimension first (rank >= 2, the neurons elsewhere) and all agree on its size ``B``: then ``xs`` (time-first here) of ``[B, T', ...]``
    with ``T' != B`` cannot be the next sequence of that batch, but is one read the wrong way round.
    """
    if xs.dim() < 3:
        return
    sizes = set()
    for layer in layers:
        for n in layer.state_names:
            t = layer.__dict__.get(n)
            if t is None:
                continue
            if t.dim() != xs.dim() - 1 or layer.dim % t.dim() == 0:
                return  # another rank (a batch without a time axis, a flattening model): not for this check
            sizes.add(t.shape[0])
    if len(sizes) != 1:
        return
    (batch,) = sizes
    T, B = xs.shape[:2]
    if T == batch and B != batch:
        given = "[B, T, ...] with time_dim=1" if time_dim else "[T, B, ...] (time_dim=0, the default)"
        other = "time_dim=0 (the default) for [T, B, ...]" if time_dim else "time_dim=1 for batch-first [B, T, ...]"
        raise ValueError(
            f"run: the hidden states hold a batch of {batch}, and xs read as {given} is {T} steps of a batch of "
            f"{B}: T and B look swapped (the shape matches the states only the other way round). Pass {other} "
            "data; if this really is a new batch size, call zero_states() first"
        )


def time_first(owner: str, xs: Any, time_dim: Any) -> torch.Tensor:
    """``xs`` with time first: itself for ``time_dim=0``, a transposed view for ``1`` (checked)."""
    if isinstance(time_dim, bool) or time_dim not in (0, 1):
        raise ValueError(
            f"{owner}: time_dim must be 0 (xs [T, B, ...], the default) or 1 (batch-first [B, T, ...]), "
            f"received {time_dim!r}"
        )
    if time_dim == 0:
        return xs
    if not isinstance(xs, torch.Tensor) or xs.dim() < 2:
        raise ValueError(
            f"{owner}: time_dim=1 needs xs of at least 2 dims [B, T, ...], received "
            f"{list(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__}"
        )
    return xs.transpose(0, 1)


FREED_GRAPH_HINT = (
    "run: the hidden states still hang on the autograd graph of an earlier call whose backward has already "
    "run (its saved tensors are freed), so a backward through this call will fail with torch's 'Trying to "
    "backward through the graph a second time ... Specify retain_graph=True'. retain_graph=True is not the fix: "
    "call model.zero_states() (tt.state.zero_states(net)) before a new sequence, or model.detach_states() "
    "(tt.state.detach_states(net)) to go on with the same sequence without backpropagating into the last "
    "one (truncated BPTT)"
)

_SAVED_NAMES: dict[type, tuple[str, ...]] = {}


def _freed(node: Any, budget: int = 32) -> bool:
    """Whether the graph behind ``node`` has had its saved tensors freed (by a backward without
    ``retain_graph``): the nearest of its first ``budget`` nodes that saves anything tells."""
    stack, seen = [node], set()
    while stack and budget:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        budget -= 1
        seen.add(id(n))
        names = _SAVED_NAMES.get(type(n))
        if names is None:
            names = _SAVED_NAMES[type(n)] = tuple(a for a in dir(n) if a.startswith("_saved_") or a == "saved_tensors")
        holds = False
        try:
            for a in names:
                v = getattr(n, a)
                holds = (
                    holds
                    or isinstance(v, torch.Tensor)
                    or (isinstance(v, tuple) and any(isinstance(e, torch.Tensor) for e in v))
                )
        except RuntimeError as err:  # freed, or modified in place since (another problem, torch's message fits)
            return "freed" in str(err)
        if holds:  # the nearest node that saves a tensor decides: a backward frees the graph it ran through
            return False
        stack.extend(f for f, _ in n.next_functions)
    return False


def _warn_freed_graph(layers: list[TTLayer]) -> None:
    """Warn (:data:`FREED_GRAPH_HINT`) where a state still holds a graph that a backward has freed.

    Costs a loop over the layers where states are ``None`` or detached (after ``zero_states()`` /
    ``detach_states()``, the usual loop); only states that carry a graph are looked into.
    """
    for layer in layers:
        for n in layer.state_names:
            t = layer.__dict__.get(n)
            if t is not None and t.grad_fn is not None:
                if _freed(t.grad_fn):
                    warnings.warn(FREED_GRAPH_HINT, UserWarning, stacklevel=_user_level())
                    return
                break


def _user_level() -> int:
    """The ``stacklevel`` of the first frame outside tracetorch (the user's call), for a warning."""
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(root + os.sep):
        frame, level = frame.f_back, level + 1
    return level
def _insist(model: nn.Module, steps: list[tuple[str, nn.Module]] | None) -> None:
    """``fast=True``: every neuron layer must run its time loop (a fused kernel); one that would run
    step by step is refused, saying why, before anything runs."""
    from ..state.tree import named_layers

    if steps is None:
        why = (
            "global module hooks are registered"
            if _global_hooks()
            else "it is not a chain (an nn.Sequential, a TTLayer, or a model whose forward is "
            "return self.<chain>(x)), or one neuron layer sits at two places"
        )
        raise ValueError(
            f"run: fast=True cannot run {type(model).__name__} in sequence mode: {why}; it would run step by "
            "step, T calls of the whole model, and its neuron layers would take no sequence kernel. Pass "
            "fast=None to run it step by step anyway"
        )
    for kind, m in steps:
        inside = [layer for _, layer in named_layers(m)]
        if kind == "step" and inside:
            why = (
                "it has forward or backward hooks (they must see T per-step calls)"
                if _hooked(m) or _replaced(m)
                else "it holds neuron layers inside a module that is not a chain"
            )
            raise ValueError(
                f"run: fast=True cannot give {type(m).__name__} a sequence kernel: {why}; it would run step by "
                "step. Pass fast=None to run it step by step anyway"
            )


def _run(model, xs, steps, layers, fast, chunk, checkpoint, detach_every) -> Any:

    def body(seq: torch.Tensor) -> Any:
        return _per_step(model, seq) if steps is None else _run_plan(steps, seq, fast, chunk)

    outs = []
    # one segment is xs itself: a split's backward would copy the whole input gradient once more
    segments = xs.split(detach_every) if detach_every and detach_every < xs.shape[0] else [xs]
    for i, segment in enumerate(segments):
        if i:
            for layer in layers:
                layer.detach_states()
        if checkpoint is None:
            outs.append(body(segment))
        else:
            outs.extend(_checkpointed(body, part, layers) for part in segment.split(checkpoint))
    return _cat(outs)
