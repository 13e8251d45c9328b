"""The module walker: every TTLayer of a model with its path, however deep it sits.

It lives in ``nn/`` because it knows what a :class:`~tracetorch.nn.TTLayer` is; ``state/`` knows
pytrees and files, not modules, and reaches the walker through :func:`tracetorch.state.named_layers`,
which this module plugs in when ``tracetorch.nn`` is imported (so no import runs from ``state/`` up
to ``nn/``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..state import tree
from .layer import TTLayer

__all__ = ["named_layers"]

_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _join(path: str, name: Any) -> str:
    return f"{path}.{name}" if path else str(name)


def named_layers(model: nn.Module) -> list[tuple[str, TTLayer]]:
    """Every TTLayer in ``model`` with its path, in definition order, each exactly once.

    Looks through submodules (Sequential, ModuleList, ModuleDict, ...) and through plain
    lists, tuples and dicts held as attributes, to any depth. ``model`` itself may be a TTLayer
    (path ``""``). Paths are dotted like ``named_modules`` (``"net.1"``, ``"blocks.0.lif"``); a
    layer reached twice keeps its first path.
    """
    found: list[tuple[str, TTLayer]] = []
    seen: set[int] = set()

    def visit(obj: Any, path: str) -> None:
        if id(obj) in seen:
            return
        if isinstance(obj, nn.Module):
            seen.add(id(obj))
            if isinstance(obj, TTLayer):
                found.append((path, obj))
            for name, child in obj._modules.items():
                if child is not None:
                    visit(child, _join(path, name))
            states = set(getattr(obj, "_state_names", ()))
            for name, value in vars(obj).items():
                if (
                    name not in _MODULE_INTERNALS
                    and name not in states
                    and isinstance(value, (list, tuple, dict, nn.Module))
                ):
                    visit(value, _join(path, name))
        elif isinstance(obj, (list, tuple)):
            seen.add(id(obj))
            for i, item in enumerate(obj):
                visit(item, _join(path, i))
        elif isinstance(obj, dict):
            seen.add(id(obj))
            for key, item in obj.items():
                visit(item, _join(path, key))

    visit(model, "")
    return found


tree._use_walker(named_layers)
