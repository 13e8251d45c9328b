"""The object API: 52 layers over the functional core, TTLayer, TTModel."""

import copy
import inspect
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import tracetorch as tt
import tracetorch.functional as F
from tracetorch import snn

NAMES = list(F.NAMES)
TT015 = [n for n in NAMES if not F.SPECS[n].adaptive]  # the 28 types traceTorch 0.15 had
FIXTURES = torch.load(Path(__file__).parent / "tt015" / "fixtures.pt", weights_only=True)
BUGGY = {"SLIB", "SRLIB", "SRLIT", "SRLITS"}


def make_layer(name, n=4, dim=-1, rank=1, learn=True, **kw):
    spec = F.SPECS[name]
    g = torch.Generator().manual_seed(0)
    args = {}
    for p in spec.params:
        if p.kind == "decay":
            v = 0.3 + 0.6 * torch.rand(n, generator=g)
        elif p.kind == "threshold":
            v = 0.5 + torch.rand(n, generator=g)
        else:
            v = torch.rand(n, generator=g) - 0.5
        args[p.name] = v if rank == 1 else float(v[0])
        args[f"{p.name}_rank"] = rank
        args[f"learn_{p.name}"] = learn
    if spec.fires:
        args["quant_fn"] = kw.pop("quant_fn", "round")
    return tt.nn.LAYERS[name](n, dim=dim, **args, **kw)


def test_namespaces_and_table():
    assert list(tt.nn.LAYERS) == NAMES
    for name in NAMES:
        cls = getattr(tt.nn, name)
        assert cls is getattr(snn, name) and cls.__name__ == name and cls.spec is F.SPECS[name]
        assert cls.__doc__ and name in cls.__doc__
    assert snn.TTModel is tt.TTModel and snn.TTLayer is tt.TTLayer


@pytest.mark.parametrize("name", TT015)
def test_signature_matches_tt015(name):
    sig = inspect.signature(getattr(tt.nn, name))
    ours = [
        [p.name, "<required>" if p.default is inspect.Parameter.empty else p.default] for p in sig.parameters.values()
    ]
    if F.SPECS[name].fires:  # one argument more than 0.15, at the end, so every 0.15 call binds the same
        assert ours[-1] == ["reset", "subtract"]
        ours = ours[:-1]
    theirs = FIXTURES[name]["signature"]
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    for (n, d), (_, d015) in zip(ours, theirs):
        if n == "spike_fn":
            assert d is F.sigmoid4x and d015 == "sigmoid4x"
        elif d015 == "<required>":
            assert d == "<required>"
        else:
            assert repr(d) == d015


@pytest.mark.parametrize("name", TT015)
@pytest.mark.parametrize("config", ["rank1", "rank0"])
def test_loads_tt015_state_dict(name, config):
    case = FIXTURES[name][config]
    kwargs = {k: torch.tensor(v) if isinstance(v, list) else v for k, v in case["kwargs"].items()}
    layer = getattr(tt.nn, name)(**kwargs)
    ranks = {k: v for k, v in case["kwargs"].items() if k.endswith("_rank")}
    fresh = getattr(tt.nn, name)(
        case["kwargs"]["num_neurons"], **ranks, **({"quant_fn": "round"} if layer.spec.fires else {})
    )
    fresh.load_state_dict(case["state_dict"], strict=True)
    for k, v in case["params"].items():
        torch.testing.assert_close(getattr(fresh, k), v)
        torch.testing.assert_close(getattr(layer, k), v)
    for k, v in case["state_dict"].items():
        assert layer.state_dict()[k].shape == v.shape
    ys = torch.stack([fresh(x) for x in case["inputs"]])
    if name not in BUGGY:
        torch.testing.assert_close(ys, case["outputs"], rtol=1e-5, atol=1e-5)
        for k, v in case["states"].items():
            torch.testing.assert_close(getattr(fresh, k), v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rank", [0, 1])
def test_layer_equals_functional_step(name, rank):
    layer = make_layer(name, rank=rank)
    xs = 2 * torch.randn(5, 3, 4)
    params = layer.activated_params()
    state = F.init_state(name, xs[0])
    for x in xs:
        y = layer(x)
        ye, state = F.get_step(name)(params, state, x, quant_fn="round")
        torch.testing.assert_close(y, ye)
    for n in layer.state_names:
        torch.testing.assert_close(getattr(layer, n), getattr(state, n))


@pytest.mark.parametrize("name", ["LIB", "DSRLITS", "SLI", "DRLIT"])
@pytest.mark.parametrize(
    "dim,shape",
    [(-1, (2, 3, 4)), (-2, (2, 4, 3)), (-3, (2, 4, 3, 5)), (1, (2, 4, 3, 5)), (-3, (2, 3, 4, 2, 2)), (0, (4,))],
)
def test_dim_handling(name, dim, shape):
    layer = make_layer(name, dim=dim)
    ref = make_layer(name)
    xs = 2 * torch.randn(3, *shape)
    for x in xs:
        y = layer(x)
        assert y.shape == x.shape
        torch.testing.assert_close(y, ref(x.movedim(dim, -1)).movedim(-1, dim))
    for n in layer.state_names:
        assert getattr(layer, n).shape == shape
        torch.testing.assert_close(getattr(layer, n), getattr(ref, n).movedim(-1, dim))


def test_channels_last_and_non_contiguous():
    layer, ref = make_layer("DSRLIB", dim=1), make_layer("DSRLIB", dim=1)
    x = torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(x), ref(x.contiguous()))
    xt = torch.randn(4, 2, 3).transpose(0, 1)  # non-contiguous [2, 4, 3]
    torch.testing.assert_close(make_layer("LIT", dim=1)(xt), make_layer("LIT", dim=1)(xt.contiguous()))


@pytest.mark.parametrize("name", NAMES)
def test_learnable_vs_fixed_and_gradients_reach_params(name):
    layer = make_layer(name, learn=True)
    names = {f"raw_{p}" for p in layer.spec.param_names}
    assert {n for n, _ in layer.named_parameters()} == names and not list(layer.buffers())
    fixed = make_layer(name, learn=False)
    assert not list(fixed.parameters()) and {n for n, _ in fixed.named_buffers()} == names
    assert set(layer.state_dict()) == set(fixed.state_dict()) == names
    # gradients reach every learnable parameter, finite and non-zero (smooth quantizer; rec needs spikes)
    layer = make_layer(name, quant_fn=lambda p: p) if layer.spec.fires else make_layer(name)
    out = sum((layer(2 * torch.randn(3, 4)) * torch.randn(3, 4)).sum() for _ in range(4))
    out.backward()
    # a binary output is never negative, so a dual recurrent B layer's negative recurrent path is dead
    dead = (
        {"raw_neg_gamma", "raw_neg_rec_weight"}
        if layer.spec.recurrent and layer.spec.dual and layer.spec.firing == "B"
        else set()
    )
    for n, p in layer.named_parameters():
        if n in dead:
            assert p.grad is None or not p.grad.any(), n
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def test_lazy_state_zero_detach_and_batch_change():
    layer = make_layer("SRLIB")
    assert layer.mem is None and layer.state is None
    layer(torch.randn(3, 4))
    assert layer.mem.shape == (3, 4) and layer.state.syn is layer.syn
    layer.zero_states()
    assert all(getattr(layer, n) is None for n in layer.state_names)
    layer(torch.randn(8, 4))  # batch change after zero_states works
    with pytest.raises(
        ValueError,
        match=r"SRLIB: hidden state 'syn' has shape \[8, 4\] but the input has shape \[5, 4\]; call zero_states",
    ):
        layer(torch.randn(5, 4))
    x = torch.randn(8, 4, requires_grad=True)
    layer(x)
    assert layer.mem.grad_fn is not None
    before = layer.mem.clone()
    layer.detach_states()
    assert layer.mem.grad_fn is None and torch.equal(layer.mem, before)


def test_to_dtype_moves_params_and_states():
    layer = make_layer("DSLIB")
    layer(torch.randn(2, 4))
    layer.to(torch.float64)
    assert layer.raw_pos_beta.dtype == torch.float64 and layer.pos_mem.dtype == torch.float64
    assert layer(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_are_kept(dtype):
    layer = make_layer("DSRLITS").to(dtype)
    x = torch.randn(2, 4, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert y.dtype == dtype and all(getattr(layer, n).dtype == dtype for n in layer.state_names)
    y.sum().backward()
    assert x.grad.dtype == dtype and layer.raw_pos_beta.grad.dtype == dtype


def test_compile_uncompile_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), make_layer("DSRLITS"), nn.Linear(4, 4), make_layer("SLI"))
    xs = torch.randn(4, 2, 3)
    raw_before = {k: (v.clone(), isinstance(v, nn.Parameter)) for k, v in model.named_parameters()}
    outs = [model(x) for x in xs]
    for layer in (model[1], model[3]):
        layer.zero_states()
        layer.TTcompile()
        layer.TTcompile()  # idempotent
    assert model[1]._buffers["pos_beta"] is not None and "pos_beta" not in model[1].state_dict()
    compiled = [model(x) for x in xs]
    for a, b in zip(outs, compiled):
        torch.testing.assert_close(a, b)
    for layer in (model[1], model[3]):
        layer.TTuncompile()
        layer.TTuncompile()
        assert not layer._compiled and "pos_beta" not in layer._buffers if layer is model[1] else True
    for k, v in model.named_parameters():
        assert torch.equal(v, raw_before[k][0]) and v.requires_grad
    assert set(dict(model.named_parameters())) == set(raw_before)


def test_compiled_layer_picks_up_loaded_state_dict():
    a, b = make_layer("LIB"), make_layer("LIB", rank=0)
    a.TTcompile()
    a.load_state_dict({"raw_beta": torch.zeros(4), "raw_threshold": torch.zeros(4)})
    torch.testing.assert_close(a.beta, torch.full((4,), 0.5))
    assert b.beta.shape == ()


def test_repr_pickle_deepcopy():
    layer = make_layer("DSRLIB", dim=-2)
    assert repr(layer).startswith("DSRLIB(4, dim=-2, pos_alpha=[4]")
    assert "quant_fn='round'" in repr(layer)
    x = torch.randn(2, 4, 3, requires_grad=True)
    layer(x)  # states hang on the graph
    clones = [pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)]
    for clone in clones:
        assert type(clone) is type(layer)
        for n in layer.state_names:
            assert torch.equal(getattr(clone, n), getattr(layer, n).detach())
    y = layer(x.detach())
    for clone in clones:
        assert torch.equal(clone(x.detach()), y)
    assert repr(make_layer("LI")).startswith("LI(4, dim=-1, beta=[4])")
    assert "fixed" in repr(make_layer("LIB", learn=False))


def test_two_instances_do_not_interfere():
    a = tt.nn.LIB(3, beta=0.5)
    b = tt.nn.LIB(3, beta=0.8, beta_rank=0, learn_beta=False)
    torch.testing.assert_close(a.beta, torch.full((3,), 0.5))
    torch.testing.assert_close(b.beta, torch.tensor(0.8))
    assert not hasattr(tt.nn.LIB, "beta")  # nothing installed on the class
    a(torch.ones(2, 3))
    assert b.mem is None


def test_train_eval_and_state_dict_round_trip():
    a, b = make_layer("RLITS"), tt.nn.RLITS(4, quant_fn="round")
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4)
    a.eval()
    assert torch.equal(a(x), b(x)) and not a.training


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(beta=1.0), ValueError, r"LIB: beta must be a decay in \(0, 1\), received 1.0"),
        (dict(beta=-0.5), ValueError, "LIB: beta must be a decay"),
        (dict(threshold=0.0), ValueError, "LIB: threshold must be a threshold > 0, received 0.0"),
        (dict(threshold=torch.tensor([1.0, -1.0, 1.0])), ValueError, "LIB: threshold must be a threshold > 0"),
        (
            dict(beta=torch.full((4,), 0.5)),
            ValueError,
            r"LIB: beta must be a float or a tensor of shape \[\] or \[3\], received a tensor of shape \[4\]",
        ),
        (dict(beta_rank=2), ValueError, "LIB: beta_rank must be 0"),
        (
            dict(quant_fn="stochastic"),
            ValueError,
            r"LIB: quant_fn must be one of \['bernoulli', 'probabilistic', 'round'\]",
        ),
        (dict(spike_fn="sigmod"), ValueError, "LIB: spike_fn must be one of"),
        (dict(spike_fn=3), TypeError, "LIB: spike_fn must be a name"),
        (dict(gamma=0.5), TypeError, "LIB: unknown keyword argument 'gamma'"),
        (dict(dim=1.5), TypeError, "LIB: dim must be an int"),
        (dict(learn_beta="yes"), TypeError, "LIB: learn_beta must be a bool"),
    ],
)
def test_bad_constructor_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tt.nn.LIB(3, **kwargs)


def test_bad_num_neurons_and_input():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="LI: num_neurons must be an int >= 1"):
            tt.nn.LI(bad)
    layer = tt.nn.LIB(16, dim=-3)
    with pytest.raises(ValueError, match=r"^LIB: input size along dim=-3 must be num_neurons=16, received 32"):
        layer(torch.randn(2, 32, 5, 5))
    assert layer.mem is None  # nothing changed
    with pytest.raises(ValueError, match="LIB: dim=-3 is out of range"):
        layer(torch.randn(16, 2))
    with pytest.raises(TypeError, match="LIB: input must be a tensor"):
        layer([1.0])


def test_nan_and_inf_inputs_behave_the_same_for_every_quantizer():
    for q in ("round", "bernoulli", "probabilistic"):
        layer = tt.nn.LIB(2, quant_fn=q)
        y = layer(torch.tensor([[float("nan"), 0.5]]))
        assert torch.isnan(y[0, 0]) and torch.isnan(layer.mem[0, 0]) and not torch.isnan(y[0, 1]), q
        y = tt.nn.LIB(1, quant_fn=q)(torch.tensor([[float("inf")]]))
        assert y.item() == 1, q  # p = 1: fires for sure


# ---- TTModel ------------------------------------------------------------------------------


class Inner(tt.TTModel):
    def __init__(self):
        super().__init__()
        self.cell = tt.nn.LIB(2)


class Everything(tt.TTModel):
    def __init__(self):
        super().__init__()
        shared = tt.nn.LI(2)
        self.seq = nn.Sequential(nn.Linear(2, 2), tt.nn.LIB(2))
        self.mlist = nn.ModuleList([tt.nn.DLIB(2), shared])
        self.mdict = nn.ModuleDict({"a": tt.nn.SLI(2)})
        self.inner = Inner()
        self.plain_list = [tt.nn.LIT(2), (tt.nn.LITS(2),)]
        self.plain_dict = {"x": tt.nn.RLIB(2), "again": shared}
        self.attr = tt.nn.DLI(2)
        self.same = self.attr  # an alias: still once
        self.number = 3


def test_ttmodel_finds_every_layer_once():
    model = Everything()
    paths = [p for p, _ in model.tt_layers()]
    assert paths == [
        "seq.1",
        "mlist.0",
        "mlist.1",
        "mdict.a",
        "inner.cell",
        "attr",
        "plain_list.0",
        "plain_list.1.0",
        "plain_dict.x",
    ]
    layers = [layer for _, layer in model.tt_layers()]
    assert len({id(x) for x in layers}) == len(layers)


def test_ttmodel_state_ops():
    model = Everything()
    for _, layer in model.tt_layers():
        layer(torch.randn(3, 2, requires_grad=True))
    model.detach_states()
    assert all(getattr(layer, n).grad_fn is None for _, layer in model.tt_layers() for n in layer.state_names)
    saved = model.save_states()
    assert len(saved) == sum(len(layer.state_names) for _, layer in model.tt_layers())
    model.zero_states()
    assert all(layer.state is None for _, layer in model.tt_layers())
    model.load_states(saved)
    for k, v in model.save_states().items():
        assert torch.equal(v, saved[k])
    model.TTcompile()
    assert all(layer._compiled for _, layer in model.tt_layers())
    model.TTuncompile()
    assert not any(layer._compiled for _, layer in model.tt_layers())


def test_seed_quickstart_runs_and_its_typo_is_caught():
    class SNN(snn.TTModel):
        def __init__(self, channels=32):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1),
                snn.LIB(channels, dim=-3),
                nn.MaxPool2d(2, 2),
                nn.Conv2d(32, 64, 3, padding=1),
                snn.LIB(64, dim=-3),
                nn.MaxPool2d(2, 2),
                nn.Flatten(),
                nn.Linear(7 * 7 * 64, 128),
                snn.LI(128),
                nn.Linear(128, 10),
            )

        def forward(self, x):
            return self.net(x)

    model = SNN()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.rand(3, 2, 1, 28, 28), torch.randint(0, 10, (3, 2))
    model.train()
    model.zero_states()
    model.zero_grad()
    running_loss = 0.0
    for t in range(3):
        running_loss = running_loss + nn.functional.cross_entropy(model(x[t]), y[t])
    running_loss.backward()
    optimizer.step()
    with pytest.raises(ValueError, match=r"^net\.1 \(LIB\): input size along dim=-3 must be num_neurons=16, received 32"):
        SNN(16)(x[0])


# ---- custom layers ------------------------------------------------------------------------


class ALIF(tt.TTLayer):
    """Adaptive-threshold LIF: the threshold rises by each spike and relaxes with decay ``rho``."""

    def __init__(self, num_neurons, dim=-1):
        super().__init__(num_neurons, dim)
        self.register_decay("beta", 0.9)
        self.register_decay("rho", 0.8, rank=0, learnable=False)
        self.register_threshold("threshold", 1.0)
        self.register_parameter("adapt_gain", 0.5)
        self.register_state("mem", "adapt")

    def step(self, params, state, x):
        mem = params.beta * state.mem + x
        spikes = F.round_st(F.sigmoid4x(mem - params.threshold - params.adapt_gain * state.adapt))
        adapt = params.rho * state.adapt + spikes
        return spikes, state._replace(mem=mem - spikes * params.threshold, adapt=adapt)


def test_custom_layer():
    layer = ALIF(3, dim=-2)
    assert {n for n, _ in layer.named_parameters()} == {"raw_beta", "raw_threshold", "raw_adapt_gain"}
    assert {n for n, _ in layer.named_buffers()} == {"raw_rho"} and layer.rho.shape == ()
    assert layer.mem is None
    xs = 2 * torch.rand(6, 2, 3, 5)
    ys = torch.stack([layer(x) for x in xs])
    assert ys.shape == xs.shape and set(ys.unique().tolist()) <= {0.0, 1.0} and ys.sum() > 0
    assert layer.adapt.shape == (2, 3, 5) and layer.adapt.max() > 0
    model = nn.Sequential(nn.Linear(5, 5), ALIF(5))
    saved = tt.state.save_states(model)
    assert saved == {}
    model(torch.randn(2, 5))
    assert set(tt.state.save_states(model)) == {"1.mem", "1.adapt"}
    layer.TTcompile()
    layer.zero_states()
    ys2 = torch.stack([layer(x) for x in xs])
    torch.testing.assert_close(ys, ys2)
    clone = copy.deepcopy(layer)
    assert torch.equal(clone.adapt, layer.adapt)


class Ported015(tt.TTLayer):
    """A layer written the traceTorch 0.15 way: underscore helpers and its own forward."""

    def __init__(self, num_neurons, beta=0.9, dim=-1):
        super().__init__(num_neurons, dim)
        self._register_decay("beta", beta, 1, True)
        self._register_parameter("gain", 2.0, 0, False)
        self._initialize_state("mem")

    def forward(self, x):
        self._ensure_states(x)
        mem = self._to_working_dim(self.mem)
        mem = self.beta * mem + self.gain * self._to_working_dim(x)
        self.mem = self._from_working_dim(mem)
        return self.mem


def test_ported_015_layer():
    layer = Ported015(3, beta=0.5, dim=-2)
    x = torch.ones(1, 3, 2)
    layer(x)
    out = layer(x)
    torch.testing.assert_close(out, torch.full((1, 3, 2), 3.0))
    assert isinstance(layer.raw_beta, nn.Parameter) and "raw_gain" in dict(layer.named_buffers())
    layer._detach_state("mem")
    layer._zero_state("mem")
    assert layer.mem is None
    layer._ensure_state("mem", x)
    assert torch.equal(layer.mem, torch.zeros_like(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU/GPU parity needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cpu_gpu_parity(name):
    layer = make_layer(name)
    gpu = copy.deepcopy(layer).cuda()
    xs = 2 * torch.randn(4, 3, 4)
    for x in xs:
        torch.testing.assert_close(gpu(x.cuda()).cpu(), layer(x), rtol=1e-5, atol=1e-5)
    for n in layer.state_names:
        assert getattr(gpu, n).device.type == "cuda"
