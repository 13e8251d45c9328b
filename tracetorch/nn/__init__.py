"""The object API: the 28 neuron layers, TTLayer for custom ones, TTModel for whole models."""

from .layer import TTLayer
from .model import TTModel, functional_call
from .neurons import LAYERS, NeuronLayer, unknown_type_message
from .sequence import plan, register_stateless, run, scan_layer, stateless

globals().update(LAYERS)

__all__ = [
    "TTLayer",
    "TTModel",
    "NeuronLayer",
    "LAYERS",
    "functional_call",
    "run",
    "scan_layer",
    "plan",
    "stateless",
    "register_stateless",
    *LAYERS,
]


def __getattr__(name: str):
    # an unknown attribute: a layer name from elsewhere (LIF, Leaky, ...) gets ours in the message
    if name[:1].isupper():
        raise AttributeError(f"module 'tracetorch.nn' has no attribute {name!r}: {unknown_type_message(name)}", name=name, obj=None)
    raise AttributeError(f"module 'tracetorch.nn' has no attribute {name!r}")
