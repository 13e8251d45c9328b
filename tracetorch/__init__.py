"""tracetorch: spiking neural networks for PyTorch with a pure functional core.

Three ways in, one engine: ``tt.functional`` (pure ``step(params, state, x)`` functions),
populations (``torch.func.vmap`` over stacked params/states or whole models), and the object
API ``tt.nn`` (layers, :class:`TTLayer`, :class:`TTModel`; also spelled ``tt.snn``).
"""

__version__ = "0.16.0"

from . import datasets, encode, functional, learn, loss, nir, nn, plot, snn, state
from .monitoring import Recorder, monitor
from .nn import TTLayer, TTModel, functional_call, functional_run

__all__ = [
    "functional",
    "nn",
    "snn",
    "state",
    "encode",
    "loss",
    "plot",
    "learn",
    "nir",
    "datasets",
    "monitor",
    "Recorder",
    "TTLayer",
    "TTModel",
    "functional_call",
    "functional_run",
    "__version__",
]
