"""traceTorch 0.15's namespace: ``from tracetorch import snn; snn.LIB, snn.TTModel, snn.TTLayer``."""

from .nn import LAYERS, TTLayer, TTModel

globals().update(LAYERS)

__all__ = ["TTLayer", "TTModel", *LAYERS]
