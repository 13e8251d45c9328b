"""The object API: the 28 neuron layers, TTLayer for custom ones, TTModel for whole models."""

from .layer import TTLayer
from .model import TTModel, functional_call
from .neurons import LAYERS, NeuronLayer
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
