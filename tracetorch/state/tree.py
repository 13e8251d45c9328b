"""Hidden state of a whole model as one pytree.

A model's state tree is a ``dict`` from a layer's path (``"net.1"``, ``"blocks.0"``, the same
dotted form as ``named_modules``; plain lists, tuples, dicts and attributes add their index,
key or name) to that layer's state NamedTuple, or ``None`` while the layer's state is still
lazy. Every :class:`~tracetorch.nn.TTLayer` is found however deep it sits, exactly once
(a shared layer under its first path), by the walker of :mod:`tracetorch.nn.walk`: this package
knows pytrees and files, not modules, and imports nothing from ``tracetorch.nn``.

Trees are mapped with optree under the ``"tracetorch"`` namespace (:data:`NAMESPACE`); dict keys
keep their insertion order when flattened to ``{"net.1.mem": tensor}`` by :func:`flatten`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import optree
import torch
from torch import nn

from .._keywords import keywords

__all__ = [
    "NAMESPACE",
    "named_layers",
    "get_states",
    "set_states",
    "zero_states",
    "detach_states",
    "zero",
    "detach",
    "map",
    "stack",
    "flatten",
    "unflatten",
    "register_node",
]

#: The optree namespace of tracetorch's pytree node types.
NAMESPACE = "tracetorch"

# the module walker, plugged in by tracetorch.nn.walk (the one place that knows what a TTLayer is)
_WALKER: list[Callable[[nn.Module], list[tuple[str, Any]]]] = []


def register_node(cls: type, flatten_fn: Callable, unflatten_fn: Callable) -> None:
    """Register a pytree node type under tracetorch's optree namespace (never globally)."""
    optree.register_pytree_node(cls, flatten_fn, unflatten_fn, namespace=NAMESPACE)


def _join(path: str, name: Any) -> str:
    return f"{path}.{name}" if path else str(name)


def _use_walker(walker: Callable[[nn.Module], list[tuple[str, Any]]]) -> None:
    """Plug in the module walker (``tracetorch.nn.walk.named_layers`` does so when it is imported)."""
    _WALKER[:] = [walker]


def named_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """Every TTLayer in ``model`` with its path, in definition order, each exactly once.

    Looks through submodules (Sequential, ModuleList, ModuleDict, ...) and through plain
    lists, tuples and dicts held as attributes, to any depth. ``model`` itself may be a TTLayer
    (path ``""``). The walker itself is :func:`tracetorch.nn.walk.named_layers` (it knows the
    layers; this package knows pytrees and files).
    """
    if not _WALKER:  # pragma: no cover - importing tracetorch imports tracetorch.nn, which plugs it in
        raise RuntimeError("tracetorch.state.named_layers: the module walker of tracetorch.nn is not loaded")
    return _WALKER[0](model)


def _state_items(value: Any) -> dict[str, Any] | None:
    """A state given as a NamedTuple or a mapping, as a dict; ``None`` for anything else."""
    if hasattr(value, "_asdict") and isinstance(value, tuple):
        return dict(value._asdict())
    if isinstance(value, Mapping):
        return dict(value)
    return None


def zero_states(model: nn.Module) -> None:
    """Forget every hidden state of any module (``TTModel`` or not): each becomes ``None``, re-created lazily."""
    for _, layer in named_layers(model):
        layer.zero_states()


def detach_states(model: nn.Module) -> None:
    """Cut the autograd graph behind every hidden state of any module (values unchanged): truncated BPTT."""
    for _, layer in named_layers(model):
        layer.detach_states()


def get_states(model: nn.Module) -> dict[str, Any]:
    """``{layer path: state NamedTuple or None}`` for every TTLayer of ``model``. The tensors are the live ones."""
    return {path: layer.state for path, layer in named_layers(model)}


@keywords
def set_states(model: nn.Module, tree: dict[str, Any], strict: bool = True) -> None:
    """Put a state tree (as from :func:`get_states`) back into ``model``.

    Validates every entry of every layer first (paths, field names, that each is a dense real
    floating tensor with ``num_neurons`` along the layer's ``dim``, one shape and one dtype per
    layer); on any error nothing is changed and the ``ValueError`` lists every problem.
    ``strict=False`` allows layers missing from ``tree``. The tensors are set as they are (not
    copied), so a state tree keeps its autograd graph.
    """
    if not isinstance(tree, dict):
        raise TypeError(f"set_states: expected a dict of layer path -> state, received {type(tree).__name__}")
    layers = dict(named_layers(model))
    unexpected = [p for p in tree if p not in layers]
    missing = [p for p in layers if p not in tree] if strict else []
    if unexpected or missing:
        raise ValueError(f"set_states: missing layers {missing}, unexpected layers {unexpected}")
    problems: list[str] = []
    updates: list[tuple[Any, dict[str, Any] | None]] = []
    for path, value in tree.items():
        layer = layers[path]
        if value is None:
            updates.append((layer, None))
            continue
        items = _state_items(value)
        where = f"{path}." if path else ""
        if items is None:
            problems.append(
                f"{path or '<model>'}: expected a state NamedTuple or dict, received {type(value).__name__}"
            )
            continue
        found = layer._state_problems(items, prefix=where)
        if found:
            problems.extend(f"{p} ({type(layer).__name__})" for p in found)
            continue
        updates.append((layer, items))
    if problems:
        raise ValueError("set_states: states not set, the model is unchanged: " + "; ".join(problems))
    for layer, items in updates:
        if items is None:
            layer.zero_states()
        else:
            layer._put_states(items)


def map(fn: Callable[[torch.Tensor], torch.Tensor], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` to every tensor of one or more trees of the same structure (``None`` stays ``None``)."""
    return optree.tree_map(fn, tree, *rest, namespace=NAMESPACE)


def zero(tree: Any) -> Any:
    """A tree of zeros shaped like ``tree``."""
    return map(torch.zeros_like, tree)


def detach(tree: Any) -> Any:
    """``tree`` with every tensor detached from the autograd graph."""
    return map(torch.Tensor.detach, tree)


@keywords
def stack(trees: list[Any], dim: int = 0) -> Any:
    """Stack trees of one structure leaf by leaf (e.g. the states of a population of models)."""
    return optree.tree_map(lambda *ts: torch.stack(ts, dim), *trees, namespace=NAMESPACE)


def _flat_items(tree: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    for path, state in tree.items():
        if state is None:
            continue
        items = state._asdict() if hasattr(state, "_asdict") else state
        for name, t in items.items():
            yield _join(path, name), t


def flatten(tree: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``{"net.1": LIBState(mem=t)}`` -> ``{"net.1.mem": t}``; lazy (``None``) layers are left out."""
    return dict(_flat_items(tree))


def unflatten(model: nn.Module, flat: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The inverse of :func:`flatten`, using ``model``'s layers for the structure.

    Layers with none of their keys in ``flat`` map to ``None``; unknown keys raise ``ValueError``.
    """
    out: dict[str, Any] = {}
    used: set[str] = set()
    for path, layer in named_layers(model):
        keys = [_join(path, n) for n in layer.state_names]
        present = [k in flat for k in keys]
        if not any(present):
            out[path] = None
            continue
        if not all(present):
            raise ValueError(
                f"unflatten: incomplete state for layer {path!r}: missing {[k for k, p in zip(keys, present) if not p]}"
            )
        out[path] = layer._state_record()(*(flat[k] for k in keys))
        used.update(keys)
    extra = [k for k in flat if k not in used]
    if extra:
        raise ValueError(f"unflatten: unexpected keys {extra}")
    return out
