"""tracetorch.plot and tracetorch.monitoring, plus the spike-function docs and their script."""

import math
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import tracetorch as tt
import tracetorch.plot as plot
from tracetorch.functional.spikes import Atan, Erf, FastSigmoid, Sigmoid, Triangle
from tracetorch.monitoring import Recorder, monitor

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import imread  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def read_png(path):
    """The PNG as an [H, W, channels] array; checks it is a real, non-blank image."""
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 0
    with path.open("rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    assert image.std() > 0  # something was drawn
    return image


def spikes(shape, p=0.2, seed=0):
    return (torch.rand(shape, generator=gen(seed)) < p).float()


# ---- plots --------------------------------------------------------------------------------


def test_raster_figure_and_png(tmp_path):
    s = spikes((30, 12))
    fig = plot.raster(s, path=tmp_path / "sub" / "raster.png", title="hidden")
    assert isinstance(fig, Figure)
    image = read_png(tmp_path / "sub" / "raster.png")
    assert image.shape[:2] == (400, 800)
    (ax,) = fig.axes
    assert ax.get_title() == "hidden"
    (points,) = ax.collections
    assert len(points.get_offsets()) == int(s.sum())  # one tick per spike
    assert sorted(map(tuple, points.get_offsets().tolist())) == sorted(
        (float(t), float(n)) for t, n in torch.nonzero(s).tolist()
    )


def test_raster_batch_ternary_grad_and_user_axes():
    s = torch.zeros(10, 3, 4)
    s[2, 0, 1] = 1
    s[5, 0, 3] = -1
    s[7, 1, 0] = 1  # second batch element: not drawn
    user_fig = Figure()
    ax = user_fig.add_subplot()
    fig = plot.raster(s.requires_grad_(), ax=ax)
    assert fig is user_fig
    on, off = ax.collections
    assert on.get_offsets().tolist() == [[2.0, 1.0]] and off.get_offsets().tolist() == [[5.0, 3.0]]
    # conv maps [T, B, C, H, W] are flattened into neurons
    conv = plot.raster(spikes((5, 2, 3, 2, 2)))
    assert conv.axes[0].get_ylim() == (-0.5, 11.5)


def test_membrane_thresholds_and_png(tmp_path):
    traces = torch.randn(40, 2, 20, generator=gen()).cumsum(0)
    layer = tt.nn.LIB(20, threshold=torch.linspace(0.5, 2.0, 20))
    fig = plot.membrane(traces, thresholds=layer.threshold, path=tmp_path / "m.png")
    read_png(tmp_path / "m.png")
    (ax,) = fig.axes
    solid = [line for line in ax.lines if line.get_linestyle() == "-"]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(solid) == plot.MAX_TRACES and len(dashed) == plot.MAX_TRACES
    assert [line.get_ydata()[0] for line in dashed] == pytest.approx(layer.threshold[:8].tolist())
    assert solid[3].get_ydata().tolist() == pytest.approx(traces[:, 0, 3].tolist())
    assert solid[3].get_color() == dashed[3].get_color()
    one = plot.membrane(traces[:, 0], thresholds=1.0, neurons=[4, 19])  # a shared threshold: one line
    assert [line.get_ydata()[0] for line in one.axes[0].lines if line.get_linestyle() == "--"] == [1.0]
    assert len(plot.membrane(traces[:, 0, :3]).axes[0].lines) == 3


def test_rate_histogram_panels_and_png(tmp_path):
    rates = {"net.1": torch.rand(64, generator=gen()), "net.3": torch.rand(10, generator=gen(1)), "": torch.rand(5)}
    fig = plot.rate_histogram(rates, path=tmp_path / "h.png")
    read_png(tmp_path / "h.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3
    assert visible[0].get_title().startswith("net.1: mean rate")
    assert sum(p.get_height() for p in visible[0].patches) == 64
    four = plot.rate_histogram({str(i): torch.rand(4) for i in range(4)})
    assert sum(ax.get_visible() for ax in four.axes) == 4


def test_plot_errors():
    with pytest.raises(ValueError, match=r"raster: spikes must be \[T, N\] or \[T, B, N\], received shape \[5\]"):
        plot.raster(torch.zeros(5))
    with pytest.raises(TypeError, match="raster: spikes must be a tensor"):
        plot.raster(object())
    with pytest.raises(
        ValueError, match=r"membrane: thresholds must be a number or a tensor \[N\] with N=4, received shape \[3\]"
    ):
        plot.membrane(torch.zeros(5, 4), thresholds=torch.ones(3))
    with pytest.raises(ValueError, match=r"membrane: neurons must be indices in \[0, 4\), received \[4\]"):
        plot.membrane(torch.zeros(5, 4), neurons=[0, 4])
    with pytest.raises(ValueError, match="rate_histogram: rates is empty"):
        plot.rate_histogram({})
    with pytest.raises(TypeError, match="rate_histogram: rates must be a dict"):
        plot.rate_histogram(torch.rand(3))
    with pytest.raises(TypeError, match=r"rate_histogram: rates\['a'\] must be a tensor, received list"):
        plot.rate_histogram({"a": [0.1]})


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot.raster(torch.zeros(3, 2))
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot.rate_histogram({"a": torch.rand(3)})


def test_plot_does_not_use_pyplot():
    before = set(sys.modules.get("matplotlib.pyplot").get_fignums()) if "matplotlib.pyplot" in sys.modules else None
    plot.raster(spikes((5, 3)))
    if before is not None:  # another test imported pyplot: no figure was added to its list
        assert set(sys.modules["matplotlib.pyplot"].get_fignums()) == before


# ---- monitor ------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.lif = tt.nn.LIB(6, quant_fn="round", threshold=0.3)

    def forward(self, x):
        return self.lif(self.fc(x))


class Net(tt.TTModel):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.extra = {"readout": tt.nn.LI(6)}  # a plain dict attribute, found by named_layers

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.extra["readout"](h)


def run(model, xs):
    return torch.stack([model(x) for x in xs])


def test_monitor_records_every_call_and_removes_hooks():
    torch.manual_seed(0)
    model = Net()
    paths = [p for p, _ in tt.state.named_layers(model)]
    assert paths == ["blocks.0.lif", "blocks.1.lif", "extra.readout"]
    xs = torch.rand(9, 3, 4, generator=gen()) * 3
    with monitor(model) as rec:
        assert isinstance(rec, Recorder) and rec.active
        out = run(model, xs)
    assert not rec.active
    for _, layer in tt.state.named_layers(model):
        assert len(layer._forward_hooks) == 0
    assert set(rec.outputs) == set(paths) and len(rec) == 9
    assert torch.equal(rec.outputs["extra.readout"], out.detach())
    assert rec.outputs["blocks.0.lif"].shape == (9, 3, 6)
    assert set(rec.outputs["blocks.1.lif"].unique().tolist()) <= {0.0, 1.0}
    # states after each call: the last one is the layer's current state
    mem = rec.states["blocks.1.lif"]["mem"]
    assert mem.shape == (9, 3, 6) and torch.equal(mem[-1], model.blocks[1].lif.mem.detach())
    assert set(rec.states["extra.readout"]) == {"mem"}
    assert torch.equal(rec.states["extra.readout"]["mem"], rec.outputs["extra.readout"])  # LI: output = mem
    # calls after the with block are not recorded
    model(xs[0])
    assert len(rec) == 9


def test_monitor_recordings_are_detached_copies_and_change_no_gradient():
    torch.manual_seed(0)
    model = Net()
    xs = torch.rand(5, 2, 4, generator=gen()) * 3

    def grads():
        model.zero_grad()
        model.zero_states()
        run(model, xs).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    with monitor(model) as rec:
        monitored = grads()
    assert all(torch.equal(a, b) for a, b in zip(plain, monitored))
    assert not any(t.requires_grad for t in rec.outputs.values())
    assert not any(t.requires_grad for s in rec.states.values() for t in s.values())
    # an in-place change of the model's tensors after a call does not reach the record
    model.zero_states()
    with monitor(model) as rec:
        last = model(xs[0])
    kept = last.detach().clone()
    with torch.no_grad():
        model.extra["readout"].mem.add_(100.0)  # LI: the output equals the membrane, but is a copy of it
    assert torch.equal(last, kept)
    assert torch.equal(rec.outputs["extra.readout"][0], kept)
    assert torch.equal(rec.states["extra.readout"]["mem"][0], kept)


def test_monitor_layer_selection_states_flag_clear_and_reenter():
    model = Net()
    xs = torch.rand(4, 2, 4, generator=gen())
    with monitor(model, layers=["blocks.1.lif", model.extra["readout"]], states=False) as rec:
        run(model, xs)
    assert list(rec.outputs) == ["blocks.1.lif", "extra.readout"] and rec.states == {}
    with monitor(model, layers="blocks.0.lif") as one:
        run(model, xs)
    assert list(one.outputs) == ["blocks.0.lif"]
    rec.clear()
    assert rec.outputs == {} and len(rec) == 0
    with rec:
        run(model, xs[:2])
    with rec:  # entering again appends
        run(model, xs[:1])
    assert rec.outputs["extra.readout"].shape == (3, 2, 6)


def test_monitor_hooks_removed_on_exception():
    model = Net()
    with pytest.raises(RuntimeError, match="boom"):
        with monitor(model):
            model(torch.rand(2, 4))
            raise RuntimeError("boom")
    assert all(len(layer._forward_hooks) == 0 for _, layer in tt.state.named_layers(model))


def test_monitor_firing_rates_use_the_layer_dim():
    conv = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), tt.nn.LIB(3, dim=-3, quant_fn="round", threshold=0.2))
    xs = torch.rand(8, 2, 1, 5, 5, generator=gen())
    with monitor(conv) as rec:
        for x in xs:
            conv(x)
    out = rec.outputs["1"]
    assert out.shape == (8, 2, 3, 5, 5)
    rates = rec.firing_rates()
    assert rates["1"].shape == (3,)
    assert torch.allclose(rates["1"], out.mean(dim=(0, 1, 3, 4)))
    assert ((rates["1"] >= 0) & (rates["1"] <= 1)).all()
    # ternary outputs count both polarities
    lit = tt.nn.LIT(4, quant_fn="round", pos_threshold=0.1, neg_threshold=0.1)
    with monitor(lit) as r2:
        for x in torch.randn(20, 3, 4, generator=gen()):
            lit(x)
    assert list(r2.outputs) == [""]
    assert torch.allclose(r2.firing_rates()[""], r2.outputs[""].abs().mean(dim=(0, 1)))
    assert (r2.outputs[""] < 0).any()


def test_monitor_device_argument_and_batch_change_error():
    model = Net()
    with monitor(model, device="cpu") as rec:
        model(torch.rand(2, 4))
        model.zero_states()
        model(torch.rand(3, 4))
    with pytest.raises(
        ValueError,
        match=r"monitor: layer 'blocks.0.lif' recorded outputs of different shapes \[\[2, 6\], \[3, 6\]\]; call rec.clear\(\)",
    ):
        _ = rec.outputs


def test_monitor_errors():
    model = Net()
    with pytest.raises(
        ValueError, match=r"monitor: no TTLayer at path 'blocks.2.lif'; the model's layers are \['blocks.0.lif'"
    ):
        monitor(model, layers=["blocks.2.lif"])
    with pytest.raises(ValueError, match="monitor: the LIB given in layers is not part of the model"):
        monitor(model, layers=[tt.nn.LIB(6)])
    with pytest.raises(TypeError, match="monitor: layers must hold paths"):
        monitor(model, layers=[model.inp])
    with pytest.raises(ValueError, match="monitor: Sequential holds no TTLayer to record"):
        monitor(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="monitor: model must be an nn.Module"):
        monitor([tt.nn.LIB(2)])
    rec = monitor(model)
    with rec, pytest.raises(RuntimeError, match="already active"):
        with rec:
            pass
    assert not rec.active


def test_monitor_refuses_transformed_tensors():
    layer = tt.nn.LIB(3, quant_fn="round")
    with monitor(layer), pytest.raises(RuntimeError, match="torch.func-transformed tensor"):
        torch.func.vmap(layer)(torch.rand(4, 2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_monitor_and_plots_from_cuda(tmp_path):
    model = Net().cuda()
    with monitor(model, device="cpu") as rec, monitor(model) as on_gpu:
        run(model, torch.rand(4, 2, 4, device="cuda"))
    assert rec.outputs["blocks.0.lif"].device.type == "cpu"
    assert on_gpu.outputs["blocks.0.lif"].device.type == "cuda"
    assert torch.equal(rec.outputs["blocks.0.lif"], on_gpu.outputs["blocks.0.lif"].cpu())
    assert on_gpu.firing_rates()["blocks.0.lif"].device.type == "cuda"
    plot.raster(on_gpu.outputs["blocks.0.lif"], path=tmp_path / "r.png")
    plot.membrane(
        on_gpu.states["blocks.0.lif"]["mem"], thresholds=model.blocks[0].lif.threshold, path=tmp_path / "m.png"
    )
    plot.rate_histogram(on_gpu.firing_rates(), path=tmp_path / "h.png")
    for name in ("r.png", "m.png", "h.png"):
        read_png(tmp_path / name)


def test_plots_and_monitor_doc_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.mkdtemp", lambda *a, **k: str(tmp_path))
    (block,) = re.findall(r"```python\n(.*?)```", (DOCS / "plots_and_monitor.md").read_text(), re.S)
    exec(compile(block, "docs/plots_and_monitor.md", "exec"), {})
    for name in ("raster.png", "membrane.png", "rates.png"):
        read_png(tmp_path / name)


# ---- spike-function docs ------------------------------------------------------------------

#: The derivatives as docs/spike_functions.md states them.
DOCUMENTED = {
    Sigmoid(4.0): lambda v: 4 * torch.sigmoid(4 * v) * (1 - torch.sigmoid(4 * v)),
    FastSigmoid(4.0): lambda v: 2.0 / (1 + (4 * v).abs()) ** 2,
    Atan(2.0): lambda v: 1.0 / (1 + (math.pi / 2 * 2 * v) ** 2),
    Triangle(1.0): lambda v: torch.clamp(1 - v.abs(), min=0.0).to(v.dtype),
    Erf(0.5): lambda v: torch.exp(-(v**2) / (2 * 0.25)) / (0.5 * math.sqrt(2 * math.pi)),
}


@pytest.mark.parametrize("fn", list(DOCUMENTED), ids=lambda f: type(f).__name__)
def test_documented_spike_function_derivatives(fn):
    v = torch.linspace(-3, 3, 601, dtype=torch.float64).requires_grad_()
    p = fn(v)
    (dp,) = torch.autograd.grad(p.sum(), v)
    assert torch.allclose(dp, DOCUMENTED[fn](v.detach()), atol=1e-12)
    assert p[300].item() == pytest.approx(0.5)  # f(0) = 1/2
    assert ((p >= 0) & (p <= 1)).all() and (p[1:] >= p[:-1]).all()
    # f' is a density: it integrates to (almost) 1 over a wide range
    wide = torch.linspace(-400, 400, 800001, dtype=torch.float64).requires_grad_()
    (dw,) = torch.autograd.grad(fn(wide).sum(), wide)
    assert torch.trapezoid(dw, wide.detach()).item() == pytest.approx(1.0, abs=0.01)


def test_spike_plot_script_and_committed_png(tmp_path, monkeypatch):
    read_png(DOCS / "spike_functions.png")
    monkeypatch.setattr(sys, "argv", ["make_spike_plots.py", str(tmp_path / "spikes.png")])
    runpy.run_path(str(DOCS / "make_spike_plots.py"), run_name="__main__")
    image = read_png(tmp_path / "spikes.png")
    assert image.shape[:2] == (420, 1100)
    text = (DOCS / "spike_functions.md").read_text()
    assert "spike_functions.png" in text
    for name in ("Sigmoid", "FastSigmoid", "Atan", "Triangle", "Erf"):
        assert f"`{name}(" in text
    (snippet,) = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(snippet, "docs/spike_functions.md", "exec"), {})


def _dashed(fig):
    return sorted(line.get_ydata()[0] for line in fig.axes[0].lines if line.get_linestyle() == "--")


def test_membrane_lines_are_placed_sensibly():
    """A shared threshold is one line, both ternary thresholds are drawn, the y range holds them, the legend is outside."""
    traces = torch.full((10, 4), 0.1)
    fig = plot.membrane(traces, thresholds=tt.nn.LIB(4, threshold=1.5))
    assert _dashed(fig) == [pytest.approx(1.5)]
    low, high = fig.axes[0].get_ylim()
    assert low < 0.1 and high > 1.5  # the line is inside the axes, not on its edge
    legend = fig.axes[0].get_legend()
    assert legend.get_bbox_to_anchor().x0 > fig.axes[0].get_window_extent().x1 - 1  # right of the axes
    lit = tt.nn.LIT(4, pos_threshold=0.8, neg_threshold=0.6)
    assert _dashed(plot.membrane(traces, thresholds=lit)) == [pytest.approx(-0.6), pytest.approx(0.8)]
    assert _dashed(plot.membrane(traces, thresholds=0.8, neg_thresholds=0.6)) == [pytest.approx(-0.6), pytest.approx(0.8)]
    assert _dashed(plot.membrane(traces, thresholds=tt.nn.LI(4))) == []
    with pytest.raises(ValueError, match=r"membrane: neg_thresholds must be a number or a tensor \[N\] with N=4"):
        plot.membrane(traces, thresholds=1.0, neg_thresholds=torch.ones(3))


@pytest.mark.parametrize("name", ["LIB", "DSLIB", "SRLIT", "DSRLITS", "LI", "DSLI"])
def test_monitor_records_the_membrane_before_the_reset(name):
    torch.manual_seed(0)
    cls = tt.nn.LAYERS[name]
    rec_weights = {n: 0.3 for n in cls.spec.param_names if n.endswith("rec_weight")}
    layer = cls(5, quant_fn="round", **rec_weights) if cls.spec.fires else cls(5)
    net = nn.Sequential(nn.Linear(3, 5), layer)
    xs = 3 * torch.rand(12, 2, 3)
    with tt.monitor(net) as rec:
        for x in xs:
            net(x)
    pre, y, st = rec.membranes["1"], rec.outputs["1"], rec.states["1"]
    post = st["mem"] if "mem" in st else st["pos_mem"] + st["neg_mem"]
    assert pre.shape == y.shape == (12, 2, 5)
    if not cls.spec.fires:
        torch.testing.assert_close(pre, post)
        return
    if cls.spec.firing == "B":
        reset = y * layer.threshold
        assert bool((pre[y > 0] >= layer.threshold.expand_as(pre)[y > 0] - 1e-6).all())  # a spike: it got there
    else:
        s_pos, s_neg = (y > 0).to(y.dtype), -(y < 0).to(y.dtype)
        reset = s_pos * layer.pos_threshold + s_neg * layer.neg_threshold
    assert y.abs().sum() > 0  # it fired, so the two differ
    torch.testing.assert_close(pre, (post + reset).detach())
    # the monitor's recomputation draws no random numbers and leaves the run as it was
    layer.quant_fn, layer._quant = "bernoulli", tt.functional.bernoulli_st
    layer.zero_states()
    torch.manual_seed(1)
    plain = [net(x) for x in xs]
    layer.zero_states()
    torch.manual_seed(1)
    with tt.monitor(net):
        watched = [net(x) for x in xs]
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))


def test_monitor_membranes_in_sequence_mode_and_dim():
    """model.run with a monitor runs step by step and records the pre-reset membrane in the input layout."""
    torch.manual_seed(0)
    model = tt.TTModel()
    model.net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), tt.nn.LIB(3, dim=-3, quant_fn="round", threshold=0.2))
    model.forward = model.net.forward
    xs = torch.rand(6, 2, 1, 4, 4)
    with tt.monitor(model) as rec:
        model.run(xs)
    assert rec.membranes["net.1"].shape == (6, 2, 3, 4, 4)
    y, post = rec.outputs["net.1"], rec.states["net.1"]["mem"]
    torch.testing.assert_close(rec.membranes["net.1"], post + y * model.net[1].threshold.view(3, 1, 1).detach())
    assert tt.monitor(model, states=False).__enter__().membranes == {}
