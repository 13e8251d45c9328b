"""traceTorch 0.15's namespace: ``from tracetorch import snn; snn.LIB, snn.TTModel, snn.TTLayer``."""

from .nn import (
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
    LAYERS,  # noqa: F401  (snn.LAYERS, as tt.nn.LAYERS)
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
    TTLayer,
    TTModel,
)
from .nn.neurons import unknown_type_message

__all__ = [
    "TTLayer",
    "TTModel",
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
            f"module 'tracetorch.snn' has no attribute {name!r}: {unknown_type_message(name)}", name=name, obj=None
        )
    raise AttributeError(f"module 'tracetorch.snn' has no attribute {name!r}")
