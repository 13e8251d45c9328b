"""NeuroBench: measure tracetorch models with the field's metrics harness.

``neurobench`` (an optional dependency, see docs/neurobench.md for an install that keeps your
torch) computes static metrics (footprint, connection sparsity, parameter count) from a model's
modules and workload metrics (activation sparsity, synaptic operations, ...) from forward hooks
on its activation and connection layers. It recognises snnTorch's neurons; :class:`TTNeuroBenchModel`
makes a tracetorch model measurable the same way: every :class:`~tracetorch.TTLayer` is registered
as an activation module (its output, the spikes, is what activation sparsity counts), and
``Linear``/``Conv`` layers are the connection layers NeuroBench already knows (a binary input makes
their operations accumulates, ``Effective_ACs``, else ``Effective_MACs``)::

    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from tracetorch.neurobench import TTNeuroBenchModel

    model = TTNeuroBenchModel(net)        # net: any module holding TTLayers, called once per step
    results = Benchmark(model, loader, [], [], [[], [ActivationSparsity, SynapticOperations]]).run()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .nn.layer import TTLayer

try:
    from neurobench.models import NeuroBenchModel
except ImportError as err:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError(
        "tracetorch.neurobench needs the neurobench package: pip install 'tracetorch[neurobench]' && "
        "pip install --no-deps neurobench==2.3.0 (docs/neurobench.md says why --no-deps)"
    ) from err

__all__ = ["TTNeuroBenchModel"]


class TTNeuroBenchModel(NeuroBenchModel):
    """A tracetorch model as a NeuroBench model: NeuroBench's data layout in, per-step calls inside.

    Args:
        net: any ``nn.Module`` holding TTLayers, called once per timestep (``net(x_t)``, ``x_t``
            ``[B, ...]``), as in the object API. It is put in ``eval()`` mode.

    Calling it with a batch ``[B, T, ...]`` (NeuroBench's layout: batch first, then time) zeroes
    every hidden state, runs the ``T`` steps one by one and returns the outputs ``[B, T, ...]``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"TTNeuroBenchModel: net must be an nn.Module, received {type(net).__name__}")
        self.net = net
        self.net.eval()
        self.add_activation_module(TTLayer)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Run ``batch`` ``[B, T, ...]`` from zero states: the outputs ``[B, T, ...]``."""
        if not isinstance(batch, torch.Tensor) or batch.dim() < 2:
            raise ValueError(
                "TTNeuroBenchModel: the batch must be a tensor [B, T, ...] (batch first, then time), "
                f"received {list(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__}"
            )
        for m in self.net.modules():
            if isinstance(m, TTLayer):
                m.zero_states()
        with torch.no_grad():
            outs = [self.net(batch[:, t]) for t in range(batch.shape[1])]
        return torch.stack(outs, 1)

    def __net__(self) -> Any:
        """The wrapped network (NeuroBench reads its modules and parameters)."""
        return self.net
