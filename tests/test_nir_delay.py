"""NIR's Delay node: tt.nn.Delay exported and imported (per channel), round trips run identically."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tracetorch as tt
import tracetorch.nir as ttnir

T = 10


@pytest.fixture(scope="module")
def nir():
    return pytest.importorskip("nir")


def run(model, xs):
    tt.state.zero_states(model)
    with torch.no_grad():
        return torch.stack([model(x) for x in xs])


def dense():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 5),
        tt.nn.LIB(5, beta=0.8, threshold=0.5, quant_fn="round"),
        tt.nn.Delay(5, 4, delay=torch.tensor([0, 1, 2, 3, 4])),
        nn.Linear(5, 3),
        tt.nn.Delay(3, 2, delay=torch.tensor([0.5, 2.0, 1.25])),  # fractional: interpolated
        tt.nn.LI(3),
    )


def conv():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        tt.nn.LIB(3, beta=0.7, threshold=0.4, dim=-3, quant_fn="round"),
        tt.nn.Delay(3, 3, delay=torch.tensor([3, 0, 1]), dim=-3),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 2),
    )


@pytest.mark.parametrize("make, shape", [(dense, (4,)), (conv, (2, 4, 4))])
@pytest.mark.parametrize("dt", [1.0, 1e-3])
def test_round_trip_runs_identically(nir, make, shape, dt, tmp_path):
    model = make()
    xs = 2 * torch.randn(T, 3, *shape, generator=torch.Generator().manual_seed(5))
    ref = run(model, xs)
    graph = ttnir.export(model, xs[0, :1], dt=dt)
    delays = [n for n in graph.nodes.values() if isinstance(n, nir.Delay)]
    assert len(delays) == sum(isinstance(m, tt.nn.Delay) for m in model)
    nir.write(tmp_path / "g.nir", graph)
    for g in (graph, nir.read(tmp_path / "g.nir")):
        back = ttnir.import_(g)
        out = run(back, xs)
        assert torch.equal(out, ref)
        for a, b in zip(
            [m for m in back if isinstance(m, tt.nn.Delay)], [m for m in model if isinstance(m, tt.nn.Delay)]
        ):
            assert torch.equal(a.delay, b.delay) and a.dim == b.dim and not a.learn_delay
            assert torch.equal(a.buffer[-1], b.buffer[-1])  # the same history at the end
    assert (ref != 0).any()


def test_export_writes_delays_in_time_units_over_the_node_shape(nir):
    model = conv()
    graph = ttnir.export(model, torch.zeros(1, 2, 4, 4), dt=1e-3)
    (node,) = [n for n in graph.nodes.values() if isinstance(n, nir.Delay)]
    assert node.delay.shape == (3, 4, 4)
    expected = torch.tensor([3.0, 0.0, 1.0], dtype=torch.float64).reshape(3, 1, 1).expand(3, 4, 4) * 1e-3
    assert torch.equal(torch.as_tensor(node.delay), expected)


def test_import_a_foreign_delay_node(nir):
    # 3e-4 / 1e-4 is 2.9999999999999996 in floating point: taken as 3 steps
    delay = nir.Delay(delay=torch.tensor([3e-4, 0.0, 1e-4, 2.5e-4]).numpy())
    graph = nir.NIRGraph.from_list(delay)
    graph.metadata = {"dt": 1e-4}
    (layer,) = ttnir.import_(graph)
    assert isinstance(layer, tt.nn.Delay) and layer.max_delay == 3
    assert torch.equal(layer.delay, torch.tensor([3.0, 0.0, 1.0, 2.5]))
    xs = torch.arange(1.0, 7.0)[:, None].expand(6, 4)
    ys = tt.nn.run(layer, xs)
    assert torch.equal(ys[:, 0], torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0]))
    assert torch.equal(ys[:, 3], torch.tensor([0.0, 0.0, 0.5, 1.5, 2.5, 3.5]))


def test_delayed_linear_export_is_refused(nir):
    model = nn.Sequential(tt.nn.DelayedLinear(3, 2, 2), tt.nn.LI(2))
    with pytest.raises(ValueError, match=r"export: layer '0' \(DelayedLinear\) delays every synapse on its own"):
        ttnir.export(model, torch.zeros(1, 3))


@pytest.mark.parametrize(
    "delay, match",
    [
        ([1.0, -1.0], r"delay / dt must lie in \[0, 1000000\] steps, received \[-1, 1\]"),
        ([1.0, math.nan], "non-finite delays"),
        ([[1.0, 2.0], [3.0, 1.0]], "varying along per-sample axes"),
    ],
)
def test_import_refuses_bad_delays(nir, delay, match):
    graph = nir.NIRGraph.from_list(nir.Delay(delay=torch.tensor(delay).numpy()))
    with pytest.raises(ValueError, match=r"import_: node '.*' \(Delay\).*" + match):
        ttnir.import_(graph, dt=1.0)
