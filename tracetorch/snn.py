"""traceTorch 0.15's namespace: ``from tracetorch import snn; snn.LIB, snn.TTModel, snn.TTLayer``."""

from .nn import LAYERS, TTLayer, TTModel
from .nn.neurons import unknown_type_message

globals().update(LAYERS)

__all__ = ["TTLayer", "TTModel", *LAYERS]


def __getattr__(name: str):
    # an unknown attribute: a layer name from elsewhere (LIF, Leaky, ...) gets ours in the message
    if name[:1].isupper():
        raise AttributeError(f"module 'tracetorch.snn' has no attribute {name!r}: {unknown_type_message(name)}", name=name, obj=None)
    raise AttributeError(f"module 'tracetorch.snn' has no attribute {name!r}")
