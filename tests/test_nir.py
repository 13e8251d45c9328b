"""NIR interchange (tracetorch.nir): what maps, what is refused, round trips, and snnTorch/Norse graphs.

Needs the ``nir`` package (skipped without it); the cross-library tests also need ``snntorch`` /
``norse`` (each skipped without its library).
"""

import subprocess
import sys

import pytest
import torch
from torch import nn

import tracetorch as tt
import tracetorch.functional as F
import tracetorch.nir as ttnir

T = 12  # timesteps


@pytest.fixture(scope="module")
def nir():
    return pytest.importorskip("nir")


def u(n, lo=0.4, hi=0.95, seed=0):
    g = torch.Generator().manual_seed(seed + n)
    return lo + (hi - lo) * torch.rand(n, generator=g)


def reset(model):
    for _, layer in tt.state.named_layers(model):
        layer.zero_states()


def run(model, xs):
    reset(model)
    with torch.no_grad():
        return torch.stack([model(x) for x in xs])


def states(model):
    return [t for _, layer in tt.state.named_layers(model) for t in layer.state]


def np_(x):
    return torch.as_tensor(x, dtype=torch.float64)


# ---- models that map exactly -----------------------------------------------------------------
def dense():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 5),
        tt.nn.LIB(5, beta=u(5), threshold=u(5, 0.3, 1.2), quant_fn="round"),
        nn.Linear(5, 4, bias=False),
        tt.nn.SLIB(4, alpha=0.6, alpha_rank=0, beta=u(4), threshold=0.15, spike_fn=F.Atan(), quant_fn="round"),
        nn.Linear(4, 3),
        tt.nn.LI(3, beta=u(3, 0.5, 0.99)),
    )


def conv2d():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        tt.nn.LIB(3, beta=u(3), threshold=u(3, 0.3, 1.0, 1), dim=-3, spike_fn=F.Triangle(0.5), quant_fn="round"),
        nn.Conv2d(3, 2, 3, stride=2, bias=False),
        tt.nn.SLI(2, alpha=u(2, 0.2, 0.8), beta=u(2), dim=-3),
        nn.Flatten(),
        nn.Linear(8, 4),
        tt.nn.SLIB(4, alpha=u(4, 0.2, 0.8, 2), threshold=0.4, quant_fn="round"),
    )


def conv1d():
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, stride=2, padding=1),
        tt.nn.SLIB(4, alpha=u(4, 0.2, 0.8), beta=u(4), threshold=u(4, 0.2, 0.6), dim=-2, quant_fn="round"),
        nn.Flatten(),
        nn.Linear(12, 3),
        tt.nn.LIB(3, beta=0.9, beta_rank=0, threshold=0.5, threshold_rank=0, quant_fn=F.round_st),
    )


class Chain(tt.TTModel):
    """A TTModel whose forward is a chain, with an Identity and an eval-mode Dropout in it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc1 = nn.Linear(4, 5)
        self.lif = tt.nn.LIB(5, beta=u(5), threshold=0.6, spike_fn=F.FastSigmoid(), quant_fn="round")
        self.skip = nn.Identity()
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(5, 2)
        self.out = tt.nn.LI(2)

    def forward(self, x):
        return self.out(self.fc2(self.drop(self.skip(self.lif(self.fc1(x))))))


def integrators():
    """IF (LIB, beta = 1.0 fixed) with both resets, LIF/CubaLIF with the zero reset, I (LI, beta 1.0)."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Linear(6, 5),
        tt.nn.LIB(5, beta=1.0, learn_beta=False, threshold=u(5, 0.5, 1.5), quant_fn="round"),
        nn.Linear(5, 5),
        tt.nn.LIB(5, beta=1.0, learn_beta=False, threshold=u(5, 0.05, 0.2, 1), quant_fn="round", reset="zero"),
        nn.Linear(5, 4),
        tt.nn.LIB(4, beta=u(4), threshold=0.05, quant_fn="round", reset="zero"),
        nn.Linear(4, 4),
        tt.nn.SLIB(4, alpha=u(4, 0.2, 0.8), beta=u(4), threshold=0.2, quant_fn="round", reset="zero"),
        nn.Linear(4, 3),
        tt.nn.LI(3, beta=1.0, learn_beta=False),
    )


def pooling():
    """Conv -> IF -> AvgPool2d -> Scale -> SumPool2d (AvgPool2d(divisor_override=1)) -> ... -> Threshold."""
    torch.manual_seed(6)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        tt.nn.LIB(3, beta=1.0, learn_beta=False, threshold=u(3, 0.3, 0.8), dim=-3, quant_fn="round", reset="zero"),
        nn.AvgPool2d(2),
        ttnir.Scale(u(27, 0.5, 2.0).reshape(3, 3, 3)),
        nn.AvgPool2d(2, stride=1, padding=1, divisor_override=1),
        nn.AvgPool2d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(12, 4),
        tt.nn.SLIB(4, alpha=0.5, beta=u(4), threshold=0.1, quant_fn="round", reset="zero"),
        nn.Linear(4, 3),
        ttnir.Threshold(torch.tensor([0.1, -0.2, 0.3])),
    )


MODELS = {
    "dense": (dense, (6,)),
    "conv2d": (conv2d, (2, 6, 6)),
    "conv1d": (conv1d, (2, 6)),
    "ttmodel": (Chain, (4,)),
    "integrators": (integrators, (6,)),
    "pooling": (pooling, (2, 6, 6)),
}


@pytest.mark.parametrize("which", list(MODELS))
def test_round_trip_identical_outputs_and_states(nir, which, tmp_path):
    make, shape = MODELS[which]
    model = make().eval()
    xs = 1.5 * torch.randn(T, 3, *shape, generator=torch.Generator().manual_seed(7))
    fired = {}
    firing = [(p, m) for p, m in tt.state.named_layers(model) if m.spec.fires]
    hooks = [
        m.register_forward_hook(lambda m, a, o, p=p: fired.__setitem__(p, fired.get(p, 0) + o.sum())) for p, m in firing
    ]
    ref = run(model, xs)
    for h in hooks:
        h.remove()
    ref_states = states(model)
    graph = ttnir.export(model, xs[0, :1])
    if which == "integrators":
        kinds = [type(n).__name__ for n in graph.nodes.values()]
        assert [k for k in kinds if k in ("IF", "LIF", "CubaLIF", "I")] == ["IF", "IF", "LIF", "CubaLIF", "I"]
        resets = [n.metadata[ttnir.RESET_KEY] for n in graph.nodes.values() if type(n).__name__ in ("IF", "LIF", "CubaLIF")]
        assert resets == ["subtract", "zero", "zero", "zero"]
    if which == "pooling":
        kinds = [type(n).__name__ for n in graph.nodes.values()]
        assert {"AvgPool2d", "SumPool2d", "Scale", "Threshold", "IF", "CubaLIF"} <= set(kinds)
    nir.write(tmp_path / "g.nir", graph)
    for g in (graph, nir.read(tmp_path / "g.nir")):
        back = ttnir.import_(g)
        assert isinstance(back, ttnir.NIRModel) and isinstance(back, tt.TTModel)
        out = run(back, xs)
        assert torch.equal(out, ref)
        for a, b in zip(states(back), ref_states, strict=True):
            assert torch.equal(a, b)
    # the comparison is not vacuous: every firing layer fired
    assert len(fired) == len(firing) and all(n > 0 for n in fired.values())
    assert (ref != 0).any()


def test_export_leaves_states_and_rng_untouched(nir):
    model = dense()
    xs = torch.randn(3, 2, 6)
    run(model, xs)
    before = [t.clone() for t in states(model)]
    rng = torch.get_rng_state()
    ttnir.export(model, torch.zeros(1, 6))
    assert all(torch.equal(a, b) for a, b in zip(states(model), before, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)


def test_export_writes_the_time_constants(nir):
    beta, thr, alpha = torch.tensor([0.5, 0.8, 0.95]), torch.tensor([0.5, 1.0, 2.0]), torch.tensor([0.5, 0.6, 0.9])
    lib = tt.nn.LIB(3, beta=beta, threshold=thr, quant_fn="round")
    slib = tt.nn.SLIB(3, alpha=alpha, beta=beta, threshold=thr, quant_fn="round")
    dt = 1e-3
    g = ttnir.export(
        nn.Sequential(nn.Linear(2, 3), lib, nn.Linear(3, 3), slib, nn.Linear(3, 3), tt.nn.LI(3, beta=beta)),
        torch.zeros(1, 2),
        dt=dt,
    )
    assert g.metadata["dt"] == dt and [type(n).__name__ for n in g.nodes.values()] == [
        "Input", "Affine", "LIF", "Affine", "CubaLIF", "Affine", "LI", "Output"
    ]  # fmt: skip
    b, a = lib.beta.double(), slib.alpha.double()
    lif, cuba, li = g.nodes["1"], g.nodes["3"], g.nodes["5"]
    for node in (lif, li):
        assert torch.allclose(np_(node.tau), dt / (1 - b), rtol=1e-15, atol=0)
        assert torch.allclose(np_(node.r), 1 / (1 - b), rtol=1e-15, atol=0)
        assert torch.equal(1 - dt / np_(node.tau), b)  # the Euler step gives the decay back
    assert torch.allclose(np_(cuba.tau_syn), dt / (1 - a), rtol=1e-15, atol=0)
    assert torch.allclose(np_(cuba.tau_mem), dt / (1 - b), rtol=1e-15, atol=0)
    assert torch.equal(np_(cuba.w_in), torch.ones(3))
    for node in (lif, cuba):
        assert torch.equal(np_(node.v_threshold), lib.threshold.double())
        assert torch.equal(np_(node.v_reset), torch.zeros(3)) and torch.equal(np_(node.v_leak), torch.zeros(3))
        assert node.metadata == {ttnir.RESET_KEY: "subtract"}
    # dt travels with the graph; another dt means other decays
    assert torch.equal(ttnir.import_(g)[1].beta, lib.beta)
    assert torch.allclose(ttnir.import_(g, dt=1.5e-3)[1].beta.double(), 1 - 1.5 * (1 - b), atol=1e-7)


def test_per_channel_params_broadcast_over_the_node_shape(nir):
    layer = tt.nn.LIB(3, beta=torch.tensor([0.5, 0.7, 0.9]), dim=-3, quant_fn="round")
    g = ttnir.export(nn.Sequential(nn.Conv2d(1, 3, 3), layer), torch.zeros(1, 1, 5, 5))
    tau = np_(g.nodes["1"].tau)
    assert tau.shape == (3, 3, 3) and torch.equal(tau[:, 1, 2], 1 / (1 - layer.beta.double()))
    back = ttnir.import_(g)[1]
    assert back.dim == -3 and back.num_neurons == 3


# ---- an independent reference of NIR's Euler semantics, for foreign graphs ------------------
def euler_reference(xs, w1, b1, cuba, w2, lif, w3, li, dt):
    """Plain float64 Euler stepping of Affine -> CubaLIF -> Affine -> LIF -> Affine -> LI, subtractive reset."""
    x64 = xs.double()
    i1 = v1 = v2 = v3 = 0.0
    out, spikes = [], []
    for x in x64:
        h = x @ w1.T + b1
        i1 = i1 + dt / cuba["tau_syn"] * (-i1 + cuba["w_in"] * h)
        v1 = v1 + dt / cuba["tau_mem"] * (-v1 + cuba["r"] * i1)
        z1 = (v1 > cuba["v_threshold"]).double()
        v1 = v1 - z1 * cuba["v_threshold"]
        v2 = v2 + dt / lif["tau"] * (-v2 + lif["r"] * (z1 @ w2.T))
        z2 = (v2 > lif["v_threshold"]).double()
        v2 = v2 - z2 * lif["v_threshold"]
        v3 = v3 + dt / li["tau"] * (-v3 + li["r"] * (z2 @ w3.T))
        spikes.append(torch.cat([z1, z2], -1))
        out.append(v3)
    return torch.stack(out), torch.stack(spikes)


def test_import_foreign_gains_against_euler_reference(nir):
    g = torch.Generator().manual_seed(11)
    dt = 0.5
    w1, b1 = torch.randn(5, 3, generator=g), 0.1 * torch.randn(5, generator=g)
    w2, w3 = torch.randn(4, 5, generator=g), torch.randn(2, 4, generator=g)
    cuba = {"tau_syn": 0.6 + 2 * torch.rand(5, generator=g), "tau_mem": 0.6 + 3 * torch.rand(5, generator=g),
            "r": 2.0 * torch.ones(5), "w_in": 1.5 * torch.ones(5), "v_threshold": 0.5 + torch.rand(5, generator=g)}  # fmt: skip
    lif = {
        "tau": 0.6 + 3 * torch.rand(4, generator=g),
        "r": torch.ones(4),
        "v_threshold": 0.2 + 0.3 * torch.rand(4, generator=g),
    }
    li = {"tau": 0.6 + 3 * torch.rand(2, generator=g), "r": torch.tensor([1.0, 3.0])}
    zeros = {n: torch.zeros(n) for n in (2, 4, 5)}
    a = lambda d: {k: v.numpy() for k, v in d.items()}
    graph = nir.NIRGraph.from_list(
        nir.Affine(weight=w1.numpy(), bias=b1.numpy()),
        nir.CubaLIF(**a(cuba), v_leak=zeros[5].numpy(), v_reset=zeros[5].numpy()),
        nir.Linear(weight=w2.numpy()),
        nir.LIF(**a(lif), v_leak=zeros[4].numpy(), v_reset=zeros[4].numpy()),
        nir.Linear(weight=w3.numpy()),
        nir.LI(**a(li), v_leak=zeros[2].numpy()),
    )
    with pytest.raises(ValueError, match="reset='subtract'"):
        ttnir.import_(graph, dt=dt)
    model = ttnir.import_(graph, dt=dt, reset="subtract")
    assert [type(m).__name__ for m in model] == ["Linear", "SLIB", "Linear", "LIB", "Linear", "LI"]
    xs = 2 * torch.randn(T, 4, 3, generator=g)
    ref_out, ref_spikes = euler_reference(xs, w1.double(), b1.double(), {k: v.double() for k, v in cuba.items()},
                                          w2.double(), {k: v.double() for k, v in lif.items()}, w3.double(),
                                          {k: v.double() for k, v in li.items()}, dt)  # fmt: skip
    spikes = []
    hooks = [model[i].register_forward_hook(lambda m, a, o: spikes.append(o)) for i in (1, 3)]
    out = run(model, xs)
    for h in hooks:
        h.remove()
    ours = torch.cat([torch.stack(spikes[0::2]), torch.stack(spikes[1::2])], -1)
    assert torch.equal(ours.double(), ref_spikes) and ref_spikes.sum() > 10
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)  # LI gain folded into the Linear


def test_import_conv_li_folds_per_channel_gain(nir):
    g = torch.Generator().manual_seed(12)
    w, b = torch.randn(3, 2, 3, 3, generator=g), torch.randn(3, generator=g)
    tau = torch.tensor([2.0, 3.0, 5.0])[:, None, None].expand(3, 4, 4).contiguous()
    graph = nir.NIRGraph.from_list(
        nir.Conv2d(
            input_shape=(4, 4), weight=w.numpy(), stride=1, padding="same", dilation=1, groups=1, bias=b.numpy()
        ),
        nir.LI(tau=tau.numpy(), r=torch.ones(3, 4, 4).numpy(), v_leak=torch.zeros(3, 4, 4).numpy()),
    )
    model = ttnir.import_(graph)
    assert model[1].dim == -3
    xs = torch.randn(T, 2, 2, 4, 4, generator=g)
    v, ref = 0.0, []
    for x in xs.double():
        v = v + 1 / tau.double() * (-v + torch.nn.functional.conv2d(x, w.double(), b.double(), padding="same"))
        ref.append(v)
    torch.testing.assert_close(run(model, xs).double(), torch.stack(ref), rtol=1e-5, atol=1e-5)


# ---- refusals -------------------------------------------------------------------------------
UNSUPPORTED = [n for n in F.NAMES if n not in ttnir.SUPPORTED]


def test_supported_table():
    assert set(ttnir.SUPPORTED) == {"LI", "SLI", "LIB", "SLIB"} and len(UNSUPPORTED) == 48


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_export_refuses_types_nir_cannot_express(nir, name):
    spec = F.SPECS[name]
    layer = tt.nn.LAYERS[name](3, **({"quant_fn": "round"} if spec.fires else {}))
    why = "adaptive" if spec.adaptive else "dual" if spec.dual else "recurrent" if spec.recurrent else "ternary"
    with pytest.raises(ValueError, match=rf"'1' \({name}\) has no exact NIR equivalent: {why}"):
        ttnir.export(nn.Sequential(nn.Linear(2, 3), layer), torch.zeros(1, 2))


class Custom(tt.TTLayer):
    def __init__(self):
        super().__init__(3)
        self.register_decay("beta", 0.9)
        self.register_state("mem")

    def step(self, params, state, x):
        mem = params.beta * state.mem + x
        return mem, state._replace(mem=mem)


class Skip(tt.TTModel):
    def __init__(self, op):
        super().__init__()
        self.fc, self.lif, self.op = nn.Linear(3, 3), tt.nn.LIB(3, quant_fn="round"), op

    def forward(self, x):
        h = self.fc(x)
        return self.lif(h) + h if self.op == "skip" else self.lif(2 * h)


REFUSED_MODULES = {
    "bernoulli": (lambda: tt.nn.LIB(3), "quant_fn='bernoulli' draws random spikes"),
    "probabilistic": (lambda: tt.nn.LIB(3, quant_fn="probabilistic"), "quant_fn='probabilistic'"),
    "custom quant": (lambda: tt.nn.LIB(3, quant_fn=lambda p: F.round_st(p)), "custom quant_fn"),
    "custom spike_fn": (lambda: tt.nn.SLIB(3, spike_fn=lambda v: torch.sigmoid(v), quant_fn="round"), "spike_fn"),
    "negative slope": (lambda: tt.nn.LIB(3, spike_fn=F.Sigmoid(-4.0), quant_fn="round"), "positive slope"),
    "custom TTLayer": (Custom, "custom TTLayer"),
    "ReLU": (nn.ReLU, r"'1' \(ReLU\) has no NIR mapping"),
    "dropout in training": (lambda: nn.Dropout(0.2), "training mode"),
    "adaptive": (lambda: tt.nn.ALIB(3, quant_fn="round"), r"'1' \(ALIB\) has no exact NIR equivalent: adaptive"),
    "some decays 1.0": (
        lambda: tt.nn.LIB(3, beta=torch.tensor([1.0, 0.5, 1.0]), learn_beta=False, quant_fn="round"),
        "for some neurons only",
    ),
    "synaptic IF": (lambda: tt.nn.SLIB(3, beta=1.0, learn_beta=False, quant_fn="round"), "synaptic integrator"),
}


@pytest.mark.parametrize("case", list(REFUSED_MODULES))
def test_export_refuses_modules(nir, case):
    make, match = REFUSED_MODULES[case]
    with pytest.raises(ValueError, match=match):
        ttnir.export(nn.Sequential(nn.Linear(2, 3), make()), torch.zeros(1, 2))


@pytest.mark.parametrize(
    ("model", "sample", "match"),
    [
        (lambda: Skip("skip"), torch.zeros(1, 3), "only a chain"),
        (lambda: Skip("scale"), torch.zeros(1, 3), r"only a chain.*'lif' \(LIB\)"),
        (lambda: nn.Sequential(nn.Flatten(0), nn.Linear(6, 2)), torch.zeros(2, 3), "flattens the batch"),
        (lambda: nn.Sequential(nn.Linear(3, 2)), torch.zeros(1, 4, 3), "Affine takes"),
        (lambda: nn.Sequential(nn.Conv1d(1, 1, 3, padding=1, padding_mode="reflect")), torch.zeros(1, 1, 5), "zeros"),
        (lambda: nn.Sequential(nn.Linear(3, 2)), torch.zeros(3), "leading batch dimension"),
        (lambda: nn.Sequential(nn.Conv1d(2, 2, 3, groups=2)), torch.zeros(1, 2, 5), "groups=2"),
    ],
)
def test_export_refuses_shapes(nir, model, sample, match):
    with pytest.raises(ValueError, match=match):
        ttnir.export(model(), sample)


POOL_REFUSALS = {
    "max": (nn.MaxPool2d(2), "NIR has no max-pooling node"),
    "ceil": (nn.AvgPool2d(2, ceil_mode=True), "ceil_mode=True"),
    "divisor": (nn.AvgPool2d(2, divisor_override=2), "divisor_override=2"),
    "exclude pad": (nn.AvgPool2d(3, padding=1, count_include_pad=False), "count_include_pad=False"),
}


@pytest.mark.parametrize("case", list(POOL_REFUSALS))
def test_export_refuses_pooling_nir_cannot_express(nir, case):
    pool, match = POOL_REFUSALS[case]
    with pytest.raises(ValueError, match=match):
        ttnir.export(nn.Sequential(nn.Conv2d(1, 2, 3), pool), torch.zeros(1, 1, 6, 6))


def test_import_resets_and_integrators(nir):
    """v_reset = 0 with reset_method 'zero' (or reset='zero') gives the zero reset; IF and I nodes the
    integrators, with their input gain dt*r in the threshold (IF) or the preceding weights (I)."""
    w = nir.Linear(weight=torch.ones(3, 2).numpy())
    zero = ttnir.import_(nir.NIRGraph.from_list(w, lif_node(nir, metadata={ttnir.RESET_KEY: "zero"})))
    assert zero[1].reset == "zero" and ttnir.import_(nir.NIRGraph.from_list(w, lif_node(nir, metadata={})), reset="zero")[1].reset == "zero"
    as_if = nir.IF(r=np_([2.0, 2.0, 2.0]).numpy(), v_threshold=np_([1.0, 2.0, 3.0]).numpy(), v_reset=np_([0, 0, 0.0]).numpy())
    model = ttnir.import_(nir.NIRGraph.from_list(w, as_if), dt=0.25, reset="zero")
    lib = model[1]
    assert type(lib).__name__ == "LIB" and lib.reset == "zero" and not isinstance(lib.raw_beta, nn.Parameter)
    assert torch.equal(lib.beta, torch.ones(3)) and torch.allclose(lib.threshold, torch.tensor([2.0, 4.0, 6.0]))
    integ = ttnir.import_(nir.NIRGraph.from_list(nir.Affine(weight=torch.ones(3, 2).numpy(), bias=torch.ones(3).numpy()),
                                                 nir.I(r=np_([4.0, 4.0, 4.0]).numpy())), dt=0.5)  # fmt: skip
    assert type(integ[1]).__name__ == "LI" and torch.equal(integ[1].beta, torch.ones(3))
    assert torch.equal(integ[0].weight, torch.full((3, 2), 2.0)) and torch.equal(integ[0].bias, torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="Pass reset='zero'"):
        ttnir.import_(nir.NIRGraph.from_list(w, as_if))


def test_export_failure_keeps_states_and_rng(nir):
    model = nn.Sequential(nn.Linear(2, 3), tt.nn.LIB(3, quant_fn="round"), nn.Linear(3, 3), tt.nn.LIB(3))
    run(model, torch.randn(3, 2, 2))
    before = [t.clone() for t in states(model)]
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="bernoulli"):
        ttnir.export(model, torch.zeros(1, 2))
    assert all(torch.equal(a, b) for a, b in zip(states(model), before, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(ValueError, match="dt"):
        ttnir.export(model, torch.zeros(1, 2), dt=0.0)


def lif_node(nir, n=3, **kw):
    args = {"tau": 5 * torch.ones(n), "r": 5 * torch.ones(n), "v_leak": torch.zeros(n), "v_threshold": torch.ones(n),
            "v_reset": torch.zeros(n)}  # fmt: skip
    args.update(kw)
    meta = args.pop("metadata", {ttnir.RESET_KEY: "subtract"})
    return nir.LIF(**{k: v.numpy() for k, v in args.items()}, metadata=meta)


def test_import_refusals(nir):
    ok = nir.NIRGraph.from_list(nir.Linear(weight=torch.ones(3, 2).numpy()), lif_node(nir))
    ttnir.import_(ok)
    bad = {
        "reset_method='hard'": lif_node(nir, metadata={ttnir.RESET_KEY: "hard"}),
        "v_reset != 0": lif_node(nir, v_reset=torch.full((3,), -0.5)),
        "v_leak != 0": lif_node(nir, v_leak=torch.full((3,), 0.1)),
        r"tau > dt": lif_node(nir, tau=torch.full((3,), 0.5)),
        "v_threshold <= 0": lif_node(nir, v_threshold=torch.tensor([1.0, -1.0, 1.0])),
        "Pass reset='zero'": nir.IF(r=torch.ones(3).numpy(), v_threshold=torch.ones(3).numpy()),
        r"input gain dt\*r <= 0": nir.IF(r=-torch.ones(3).numpy(), v_threshold=torch.ones(3).numpy(),
                                        metadata={ttnir.RESET_KEY: "zero"}),  # fmt: skip
        "unscaled": nir.LI(tau=5 * torch.ones(3).numpy(), r=torch.ones(3).numpy(), v_leak=torch.zeros(3).numpy()),
    }
    for match, node in bad.items():
        first = nir.Flatten(input_type={"input": torch.tensor([3]).numpy()}, start_dim=0, end_dim=-1)
        graph = nir.NIRGraph.from_list(first, node)
        with pytest.raises(ValueError, match=match):
            ttnir.import_(graph)
    two_axes = lif_node(nir, 6, tau=(2 + torch.arange(6.0)).reshape(2, 3), r=torch.ones(2, 3),
                        v_leak=torch.zeros(2, 3), v_threshold=torch.ones(2, 3), v_reset=torch.zeros(2, 3))  # fmt: skip
    with pytest.raises(ValueError, match="varying along per-sample axes"):
        ttnir.import_(nir.NIRGraph.from_list(two_axes))
    with pytest.raises(ValueError, match="reset must be None, 'subtract' or 'zero'"):
        ttnir.import_(ok, reset="hard")
    with pytest.raises(TypeError, match="NIRGraph"):
        ttnir.import_(lif_node(nir))


def test_import_refuses_non_chains(nir):
    w = nir.Linear(weight=torch.eye(3).numpy())
    branch = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": torch.tensor([3]).numpy()}), "a": w, "lif": lif_node(nir),
               "b": nir.Linear(weight=torch.eye(3).numpy()), "output": nir.Output(output_type={"output": torch.tensor([3]).numpy()})},
        edges=[("input", "a"), ("a", "lif"), ("a", "b"), ("lif", "output"), ("b", "output")],
    )  # fmt: skip
    with pytest.raises(ValueError, match="feeds 2 nodes"):
        ttnir.import_(branch)
    loop = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": torch.tensor([3]).numpy()}), "lif": lif_node(nir),
               "w_rec": nir.Linear(weight=torch.eye(3).numpy()), "output": nir.Output(output_type={"output": torch.tensor([3]).numpy()})},
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
    )  # fmt: skip
    with pytest.raises(ValueError, match="only chains"):
        ttnir.import_(loop)
    nested = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": torch.tensor([3]).numpy()}), "rnn": loop,
               "output": nir.Output(output_type={"output": torch.tensor([3]).numpy()})},
        edges=[("input", "rnn"), ("rnn", "output")],
    )  # fmt: skip
    with pytest.raises(ValueError, match="subgraph"):
        ttnir.import_(nested)


def test_module_imports_without_the_nir_package(monkeypatch):
    code = "import sys; sys.modules['nir'] = None; import tracetorch.nir as m; print(sorted(m.SUPPORTED))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LIB" in done.stdout
    monkeypatch.setitem(sys.modules, "nir", None)
    with pytest.raises(ImportError, match="pip install"):
        ttnir.export(nn.Linear(2, 2), torch.zeros(1, 2))


# ---- other libraries ------------------------------------------------------------------------
def test_snntorch_graph_runs_with_snntorchs_spikes(nir):
    snn = pytest.importorskip("snntorch")
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 6),
        snn.Leaky(beta=u(6), threshold=u(6, 0.5, 1.0), init_hidden=True, reset_delay=False),
        nn.Linear(6, 3),
        snn.Synaptic(alpha=u(3, 0.3, 0.8), beta=u(3), threshold=u(3, 0.5, 1.0, 1), init_hidden=True, reset_delay=False),
    )  # reset_mechanism="subtract" is snnTorch's default
    graph = export_to_nir(net, torch.zeros(4))  # snnTorch: unbatched sample, dt = 1e-4
    with pytest.raises(ValueError, match="dt=1e-4"):
        ttnir.import_(graph, reset="subtract")
    model = ttnir.import_(graph, dt=1e-4, reset="subtract")
    assert [type(m).__name__ for m in model] == ["Linear", "LIB", "Linear", "SLIB"]
    xs = 0.5 * torch.randn(2 * T, 5, 4, generator=torch.Generator().manual_seed(1))
    hidden = {"snn": [], "tt": []}
    net[1].register_forward_hook(lambda m, a, o: hidden["snn"].append(o))
    model[1].register_forward_hook(lambda m, a, o: hidden["tt"].append(o))
    reset(model)
    kept = 0  # spikes after which the membrane is not zero: a reset to zero would differ there
    with torch.no_grad():
        for x in xs:
            y = model(x)
            assert torch.equal(y, net(x))
            for layer in (model[1], model[3]):
                # snnTorch decides a spike on mem - threshold*H(previous mem - threshold): it agrees with plain
                # subtraction while no reset leaves the membrane above threshold, which holds here
                assert (layer.mem <= layer.threshold).all()
            kept += int(((hidden["tt"][-1] == 1) & (model[1].mem != 0)).sum() + ((y == 1) & (model[3].mem != 0)).sum())
    assert torch.equal(torch.stack(hidden["tt"]), torch.stack(hidden["snn"]))
    assert torch.stack(hidden["snn"]).sum() > 10 and kept > 10


def norse_or_skip():
    norse = pytest.importorskip("norse.torch")
    from norse.torch.functional.reset import reset_subtract

    return norse, reset_subtract


def test_norse_lifbox_graph_runs_with_norses_spikes(nir):
    norse, reset_subtract = norse_or_skip()
    torch.manual_seed(0)
    p1 = norse.LIFBoxParameters(
        tau_mem_inv=u(6, 0.1, 0.6), v_th=u(6, 0.3, 0.8), v_leak=torch.zeros(6), reset_method=reset_subtract
    )
    p2 = norse.LIBoxParameters(tau_mem_inv=u(3, 0.1, 0.6), v_leak=torch.zeros(3))
    net = norse.SequentialState(
        nn.Linear(4, 6), norse.LIFBoxCell(p1, dt=1.0), nn.Linear(6, 3), norse.LIBoxCell(p2, dt=1.0)
    )
    graph = norse.to_nir(net, torch.zeros(4), dt=1.0)  # Norse 1.1 writes tau = dt/tau_mem_inv: right for dt = 1 only
    model = ttnir.import_(graph, reset="subtract")
    assert [type(m).__name__ for m in model] == ["Linear", "LIB", "Linear", "LI"]
    xs = 3 * torch.randn(T, 5, 4, generator=torch.Generator().manual_seed(2))
    spikes = {"norse": [], "tt": []}
    net[1].register_forward_hook(lambda m, a, o: spikes["norse"].append(o[0]))
    model[1].register_forward_hook(lambda m, a, o: spikes["tt"].append(o))
    state, ref = None, []
    with torch.no_grad():
        for x in xs:
            y, state = net(x, state)
            ref.append(y)
    out = run(model, xs)
    assert torch.equal(torch.stack(spikes["tt"]), torch.stack(spikes["norse"]))
    assert torch.stack(spikes["norse"]).sum() > 10
    torch.testing.assert_close(out, torch.stack(ref), rtol=1e-5, atol=1e-6)  # LI: (1-beta) folded into the Linear


def test_norse_cuba_graph_runs_with_norses_import(nir):
    """Norse's LIFCell exports as CubaLIF, but steps its current a step earlier and unscaled (inexact by design):
    tracetorch matches Norse's own reading of the graph (from_nir with reset_subtract)."""
    norse, reset_subtract = norse_or_skip()
    torch.manual_seed(0)
    p = norse.LIFParameters(
        tau_mem_inv=u(6, 0.1, 0.6), tau_syn_inv=u(6, 0.2, 0.7, 1), v_th=u(6, 0.3, 0.7), v_leak=torch.zeros(6),
        v_reset=torch.zeros(6),
    )  # fmt: skip
    net = norse.SequentialState(nn.Linear(4, 6), norse.LIFCell(p, dt=1.0))
    graph = norse.to_nir(net, torch.zeros(4), dt=1.0)
    model = ttnir.import_(graph, reset="subtract")
    theirs = norse.from_nir(graph, reset_method=reset_subtract, dt=1.0)
    xs = 3 * torch.randn(T, 5, 4, generator=torch.Generator().manual_seed(3))
    state, ref = None, []
    with torch.no_grad():
        for x in xs:
            y, state = theirs(x, state)
            ref.append(y)
    ref = torch.stack(ref)
    assert torch.equal(run(model, xs), ref) and ref.sum() > 10


def test_tracetorch_cuba_graph_runs_in_norse(nir):
    norse, reset_subtract = norse_or_skip()
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Linear(4, 6),
        tt.nn.SLIB(6, alpha=u(6, 0.2, 0.8), beta=u(6), threshold=u(6, 0.2, 0.6), quant_fn="round"),
        nn.Linear(6, 3),
        tt.nn.SLIB(3, alpha=u(3, 0.2, 0.8), beta=u(3), threshold=0.3, quant_fn="round"),
    )
    graph = ttnir.export(model, torch.zeros(1, 4))
    theirs = norse.from_nir(graph, reset_method=reset_subtract, dt=1.0)
    xs = 2 * torch.randn(T, 5, 4, generator=torch.Generator().manual_seed(5))
    state, ref = None, []
    with torch.no_grad():
        for x in xs:
            y, state = theirs(x, state)
            ref.append(y)
    ref = torch.stack(ref)
    assert torch.equal(run(model, xs), ref.to(torch.float32)) and ref.sum() > 10


def test_snntorch_zero_reset_graph_runs_with_snntorchs_spikes(nir):
    """snnTorch's reset_mechanism="zero" (its own importer's reading of NIR's v_reset) is reset="zero",
    through Leaky and Synaptic (snnTorch 1.0's Conv2d export fails NIR's shape inference, so the
    pooling nodes are checked by the round trips)."""
    snn = pytest.importorskip("snntorch")
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(2)
    zero = dict(init_hidden=True, reset_delay=False, reset_mechanism="zero")
    net = nn.Sequential(
        nn.Linear(4, 5),
        snn.Leaky(beta=u(5), threshold=u(5, 0.2, 0.6), **zero),
        nn.Linear(5, 3),
        snn.Synaptic(alpha=u(3, 0.3, 0.8), beta=u(3), threshold=u(3, 0.3, 0.6, 1), **zero),
    )
    graph = export_to_nir(net, torch.zeros(4))
    model = ttnir.import_(graph, dt=1e-4, reset="zero")
    assert [type(m).__name__ for m in model] == ["Linear", "LIB", "Linear", "SLIB"]
    assert all(m.reset == "zero" for m in model if isinstance(m, tt.nn.NeuronLayer))
    xs = 1.5 * torch.randn(2 * T, 4, 4, generator=torch.Generator().manual_seed(3))
    hidden = {"snn": [], "tt": []}
    net[1].register_forward_hook(lambda m, a, o: hidden["snn"].append(o))
    model[1].register_forward_hook(lambda m, a, o: hidden["tt"].append(o))
    reset(model)
    with torch.no_grad():
        for x in xs:
            assert torch.equal(model(x), net(x))
    assert torch.equal(torch.stack(hidden["tt"]), torch.stack(hidden["snn"])) and torch.stack(hidden["snn"]).sum() > 10


def _norse_run(net, xs):
    state, out = None, []
    with torch.no_grad():
        for x in xs:
            y, state = net(x, state)
            out.append(y)
    return torch.stack(out)


def test_norse_default_reset_and_iaf_graphs_run_with_norses_spikes(nir):
    """Norse's default reset (to v_reset = 0) is reset="zero"; its IAFCell exports an IF node."""
    norse, _ = norse_or_skip()
    torch.manual_seed(3)
    p1 = norse.LIFBoxParameters(tau_mem_inv=u(6, 0.1, 0.6), v_th=u(6, 0.3, 0.8), v_leak=torch.zeros(6))
    p2 = norse.IAFParameters(v_th=u(3, 0.5, 1.5))
    net = norse.SequentialState(nn.Linear(4, 6), norse.LIFBoxCell(p1, dt=1.0), nn.Linear(6, 3), norse.IAFCell(p2))
    graph = norse.to_nir(net, torch.zeros(4), dt=1.0)
    assert {"LIF", "IF"} <= {type(n).__name__ for n in graph.nodes.values()}
    model = ttnir.import_(graph, dt=1.0, reset="zero")
    assert [type(m).__name__ for m in model] == ["Linear", "LIB", "Linear", "LIB"]
    assert torch.equal(model[3].beta, torch.ones(3))
    xs = 2 * torch.randn(2 * T, 5, 4, generator=torch.Generator().manual_seed(6))
    hidden = {"norse": [], "tt": []}
    net[1].register_forward_hook(lambda m, a, o: hidden["norse"].append(o[0]))
    model[1].register_forward_hook(lambda m, a, o: hidden["tt"].append(o))
    ref = _norse_run(net, xs)
    assert torch.equal(run(model, xs), ref) and ref.sum() > 10
    assert torch.equal(torch.stack(hidden["tt"]), torch.stack(hidden["norse"]))
