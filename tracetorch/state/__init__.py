"""Hidden states as pytrees: get, set, map, flatten, save and load the state of any model."""

from .io import FORMAT, FORMAT_VERSION, METADATA_KEY, LoadResult, load_states, save_states
from .tree import (
    NAMESPACE,
    detach,
    detach_states,
    flatten,
    get_states,
    map,
    named_layers,
    register_node,
    set_states,
    stack,
    unflatten,
    zero,
    zero_states,
)

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
    "save_states",
    "load_states",
    "LoadResult",
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_KEY",
]
