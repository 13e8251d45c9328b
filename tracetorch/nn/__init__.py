"""The object API: the 28 neuron layers, TTLayer for custom ones, TTModel for whole models."""

from .layer import TTLayer
from .model import TTModel, functional_call
from .neurons import LAYERS, NeuronLayer

globals().update(LAYERS)

__all__ = ["TTLayer", "TTModel", "NeuronLayer", "LAYERS", "functional_call", *LAYERS]
