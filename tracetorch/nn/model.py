"""TTModel: state management for a whole model, and the model-level pure call."""

from __future__ import annotations

from typing import Any, Union

import torch
from torch import nn

from .._keywords import keywords
from ..functional.kernels.context import tracing
from ..state import io, tree
from .walk import named_layers

__all__ = ["TTModel", "functional_call", "functional_run"]


class TTModel(nn.Module):
    """An ``nn.Module`` whose methods reach every TTLayer inside it, however deep, exactly once.

    Layers are found through submodules (``Sequential``, ``ModuleList``, ``ModuleDict``) and plain
    Python lists, tuples, dicts and attributes (see :func:`tracetorch.state.named_layers`).

    An exception raised inside one of its layers during a call (``model(x)``, ``model.run(xs)``)
    comes out with the layer's path in front of its message (``net.1 (LIB): input size ...``;
    other submodules: ``in net.0 (Linear): ...``), same exception, same type, same traceback.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if tracing():  # this call's own fact: another thread compiling changes nothing here
            return super().__call__(*args, **kwargs)
        try:
            return super().__call__(*args, **kwargs)
        except Exception as err:
            _add_layer_path(self, err)
            raise

    def tt_layers(self) -> list[tuple[str, Any]]:
        """``[(path, layer), ...]`` for every TTLayer in the model."""
        return named_layers(self)

    def zero_states(self) -> None:
        """Forget every hidden state (each becomes ``None``, re-created lazily on the next call)."""
        for _, layer in named_layers(self):
            layer.zero_states()

    def detach_states(self) -> None:
        """Cut the autograd graph behind every hidden state (values unchanged): truncated BPTT / online learning."""
        for _, layer in named_layers(self):
            layer.detach_states()

    def get_states(self) -> dict[str, Any]:
        """The state tree ``{layer path: state NamedTuple or None}`` (live tensors)."""
        return tree.get_states(self)

    @keywords
    def set_states(self, states: dict[str, Any], strict: bool = True) -> None:
        """Put a state tree back (validated first; nothing changes on error)."""
        tree.set_states(self, states, strict)

    @keywords
    def save_states(self, path: Union[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Copies of every hidden state as ``{"net.1.mem": tensor}``; also written to ``path`` (``.pt``/``.safetensors``)."""
        return io.save_states(self, path)

    @keywords
    def load_states(self, src: Any, strict: bool = True) -> io.LoadResult:
        """Load states from a path or dict; validated first, the model is unchanged on error."""
        return io.load_states(self, src, strict)

    def TTcompile(self) -> None:
        """Freeze every layer's activated params into buffers for inference (idempotent)."""
        for _, layer in named_layers(self):
            layer.TTcompile()

    def TTuncompile(self) -> None:
        """Undo :meth:`TTcompile`: the raw params, untouched all along, are used again (idempotent)."""
        for _, layer in named_layers(self):
            layer.TTuncompile()

    def run(self, xs: torch.Tensor, **kwargs: Any) -> Any:
        """Feed a whole time-first ``[T, B, ...]`` sequence through the model in one call (see :func:`tracetorch.nn.run`).

        What ``T`` calls of ``self(x_t)``, stacked to ``[T, B, ...]``, compute, with the same final
        states: equal outputs and states with deterministic quantizers (``"round"``); with the random
        ones (``"bernoulli"``, the default, ``"probabilistic"``) the same distribution, other samples.
        Keyword arguments (``fast``, ``chunk``, ``checkpoint``, ``detach_every``, ``time_dim``: ``1``
        for batch-first ``[B, T, ...]`` data) go to :func:`tracetorch.nn.run`.
        """
        from .sequence import run

        try:
            return run(self, xs, **kwargs)
        except Exception as err:
            _add_layer_path(self, err)
            raise


def _add_layer_path(model: nn.Module, err: BaseException) -> None:
    """Put the path of the innermost of ``model``'s modules in ``err``'s traceback in front of its message.

    The message is rebuilt from the original each time, so a TTModel inside a TTModel ends up
    with the full path from the outermost one. Errors whose first argument is not a string, or
    raised outside any layer, are left as they are.
    """
    if not err.args or not isinstance(err.args[0], str):
        return
    paths = {id(m): path for path, m in model.named_modules() if path}
    paths.update((id(layer), path) for path, layer in named_layers(model) if path)
    found = None
    tb = err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in paths:
            found = (paths[id(owner)], type(owner).__name__)
        tb = tb.tb_next
    if found is None or not found[0]:
        return
    path, cls = found
    original = getattr(err, "_tt_message", None)
    if original is None:
        original = err.args[0]
        try:
            err._tt_message = original  # type: ignore[attr-defined]
        except AttributeError:
            return
    if original.startswith(f"{cls}: "):
        message = f"{path} ({cls}): {original[len(cls) + 2 :]}"
    else:
        message = f"in {path} ({cls}): {original}"
    err.args = (message, *err.args[1:])


@keywords
def functional_call(
    model: nn.Module,
    params: dict[str, torch.Tensor] | None,
    states: dict[str, Any] | None,
    *args: Any,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Call ``model`` as a pure function: ``(params, states, *args) -> (out, new_states)``.

    Args:
        model: any module containing TTLayers.
        params: ``{name: tensor}`` replacing some or all params and buffers (as for
            ``torch.func.functional_call``), or ``None`` for the model's own.
        states: a state tree ``{layer path: state or None}`` as from ``get_states``; ``None``
            (or a ``None`` entry) starts those layers from zero.

    Returns:
        ``(out, new_states)``. The model's own params and states are left exactly as they were,
        so this runs under ``torch.func.vmap`` / ``grad`` (populations of whole models with
        ``torch.func.stack_module_state``).
    """
    saved = tree.get_states(model)
    layers = named_layers(model)
    try:
        if states is None:
            states = {}
        for path, layer in layers:
            value = states.get(path)
            if value is None:
                layer.zero_states()
            else:
                layer.state = value
        out = torch.func.functional_call(model, params or {}, args, kwargs, strict=False)
        new_states = {path: layer.state for path, layer in layers}
    finally:
        for path, layer in layers:
            layer.state = saved[path]
    return out, new_states


class _Runner(nn.Module):
    """``forward(xs) = run(model, xs, **options)``: lets ``torch.func.functional_call`` swap the
    params of ``model`` (as ``model.<name>``) around a whole sequence."""

    def __init__(self, model: nn.Module, options: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.options = options

    def forward(self, xs: torch.Tensor) -> Any:
        from .sequence import run

        return run(self.model, xs, **self.options)


@keywords
def functional_run(
    model: nn.Module,
    params: dict[str, torch.Tensor] | None,
    states: dict[str, Any] | None,
    xs: torch.Tensor,
    *,
    fast: bool | None = None,
    checkpoint: int | None = None,
    detach_every: int | None = None,
    time_dim: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """A whole model over a whole sequence as a pure function: ``(params, states, xs) -> (ys, new_states)``.

    What :func:`tracetorch.nn.run` computes (the same plan, the fused kernels where they apply),
    with the params and the starting states passed in and the final states handed out, the
    model's own left exactly as they were. So it runs under ``torch.func.vmap`` (a population
    of whole models over sequences: ``torch.func.stack_module_state`` for the params, stacked
    state trees) and ``torch.func.grad`` / ``vjp``.

    Args:
        model: an ``nn.Sequential``, TTLayer, TTModel or any model :func:`tracetorch.nn.run` takes.
        params: ``{name: tensor}`` replacing some or all params and buffers (the names of
            ``model.named_parameters()``), or ``None`` for the model's own.
        states: a state tree ``{layer path: state or None}`` as from ``tt.state.get_states``;
            ``None`` (or a ``None`` entry) starts those layers from zero.
        xs: ``[T, B, ...]`` (``[B, T, ...]`` with ``time_dim=1``).
        fast, checkpoint, detach_every, time_dim: as for :func:`tracetorch.nn.run`.

    Returns:
        ``(ys, new_states)``: ``ys`` ``[T, B, ...]`` (batch-first with ``time_dim=1``) and the
        state tree after the last step.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"functional_run: model must be an nn.Module, received {type(model).__name__}")
    if params is not None and not isinstance(params, dict):
        raise TypeError(f"functional_run: params must be a dict {{name: tensor}} or None, received {type(params).__name__}")
    if states is not None and not isinstance(states, dict):
        raise TypeError(
            f"functional_run: states must be a state tree {{layer path: state}} or None, received {type(states).__name__}"
        )
    layers = named_layers(model)
    states = states or {}
    unknown = sorted(set(states) - {path for path, _ in layers})
    if unknown:
        raise ValueError(
            f"functional_run: states has no layer at {unknown}; the model's layer paths: {[p for p, _ in layers]}"
        )
    options = {"fast": fast, "checkpoint": checkpoint, "detach_every": detach_every, "time_dim": time_dim}
    runner = _Runner(model, options)
    saved = tree.get_states(model)
    try:
        for path, layer in layers:
            value = states.get(path)
            if value is None:
                layer.zero_states()
            else:
                layer.state = value
        swapped = {f"model.{k}": v for k, v in (params or {}).items()}
        ys = torch.func.functional_call(runner, swapped, (xs,), strict=False)
        new_states = {path: layer.state for path, layer in layers}
    finally:
        for path, layer in layers:
            layer.state = saved[path]
    return ys, new_states
