"""The object API: the 28 neuron layers, TTLayer for custom ones, TTModel for whole models.

The 28 classes are generated from the neuron table (``tracetorch/nn/neurons.py``) and imported here by
name, so static tools see them; ``tracetorch/nn/neurons.pyi`` gives their signatures.
"""

from .delays import Delay, DelayedLinear
from .layer import TTLayer
from .model import TTModel, functional_call
from .neurons import (
    DLI,
    DLIB,
    DLIT,
    DLITS,
    DRLIB,
    DRLIT,
    DRLITS,
    DSLI,
    DSLIB,
    DSLIT,
    DSLITS,
    DSRLIB,
    DSRLIT,
    DSRLITS,
    LAYERS,
    LI,
    LIB,
    LIT,
    LITS,
    RLIB,
    RLIT,
    RLITS,
    SLI,
    SLIB,
    SLIT,
    SLITS,
    SRLIB,
    SRLIT,
    SRLITS,
    NeuronLayer,
    unknown_type_message,
)
from .sequence import plan, register_stateless, run, scan_layer, stateless

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
    "Delay",
    "DelayedLinear",
    "LI",
    "DLI",
    "SLI",
    "DSLI",
    "LIB",
    "DLIB",
    "SLIB",
    "RLIB",
    "DSLIB",
    "DRLIB",
    "SRLIB",
    "DSRLIB",
    "LIT",
    "DLIT",
    "SLIT",
    "RLIT",
    "DSLIT",
    "DRLIT",
    "SRLIT",
    "DSRLIT",
    "LITS",
    "DLITS",
    "SLITS",
    "RLITS",
    "DSLITS",
    "DRLITS",
    "SRLITS",
    "DSRLITS",
]


def __getattr__(name: str):
    # an unknown attribute: a layer name from elsewhere (LIF, Leaky, ...) gets ours in the message
    if name[:1].isupper():
        raise AttributeError(
            f"module 'tracetorch.nn' has no attribute {name!r}: {unknown_type_message(name)}", name=name, obj=None
        )
    raise AttributeError(f"module 'tracetorch.nn' has no attribute {name!r}")
