"""NeuroBench's metrics on a small tracetorch model, against counts made by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tracetorch as tt

pytest.importorskip("neurobench")  # installed with --no-deps in CI (.ci/run); see docs/neurobench.md

from neurobench.benchmarks import Benchmark  # noqa: E402
from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount  # noqa: E402
from neurobench.metrics.workload import ActivationSparsity, SynapticOperations  # noqa: E402

from tracetorch.neurobench import TTNeuroBenchModel  # noqa: E402


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), tt.nn.LIB(4, beta=0.8, threshold=0.5, quant_fn="round"), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight[0, :3] = 0.0  # 3 zero weights of 24
        net[2].weight[1, 1] = 0.0  # 1 of 12
    return net


def test_neurobench_metrics_equal_hand_counts():
    net = _net()
    B, T = 5, 7
    x = (torch.rand(B, T, 6) < 0.4).float()  # binary input spikes, NeuroBench's [B, T, features]
    y = torch.zeros(B, dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=B)
    model = TTNeuroBenchModel(net)
    static = [Footprint, ConnectionSparsity, ParameterCount]
    workload = [ActivationSparsity, SynapticOperations]
    results = Benchmark(model, loader, [], [], [static, workload]).run(quiet=True)

    # by hand: run the steps ourselves and count
    for m in net.modules():
        if isinstance(m, tt.TTLayer):
            m.zero_states()
    spikes = []
    with torch.no_grad():
        for t in range(T):
            spikes.append(net[1](net[0](x[:, t])))
    s = torch.stack(spikes)  # [T, B, 4]
    assert 0 < s.sum() < s.numel()  # some spikes, not all
    n_params = sum(p.numel() for p in net.parameters())
    n_buffers = sum(b.numel() for b in net.buffers())
    assert results["ParameterCount"] == n_params == 6 * 4 + 4 + 4 + 4 + 4 * 3 + 3
    assert results["Footprint"] == 4 * (n_params + n_buffers)
    assert results["ConnectionSparsity"] == pytest.approx((3 + 1) / (24 + 12), abs=1e-3)  # NeuroBench rounds it
    assert results["ActivationSparsity"] == pytest.approx(float((s == 0).sum()) / s.numel())
    # synaptic operations: every nonzero binary input times its nonzero outgoing weights, per sample
    ac0 = sum(float(((net[0].weight != 0).float() @ x[:, t].T).sum()) for t in range(T))
    ac1 = sum(float(((net[2].weight != 0).float() @ s[t].T).sum()) for t in range(T))
    synops = results["SynapticOperations"]
    assert synops["Effective_ACs"] == pytest.approx((ac0 + ac1) / B)
    assert synops["Effective_MACs"] == 0
    assert synops["Dense"] == pytest.approx(T * (6 * 4 + 4 * 3))


def test_neurobench_model_refuses_a_batch_without_time():
    with pytest.raises(ValueError, match=r"\[B, T, \.\.\.\]"):
        TTNeuroBenchModel(_net())(torch.zeros(3))
