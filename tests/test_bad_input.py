"""Bad input, as a careful user or an attacker would try it: a clear error, raised before anything changes.

A matrix of bad inputs over several layer types (single and dual, synaptic, recurrent, the LI
family and each firing head): complex and integer tensors, bool thresholds, numpy integers
(accepted), wrong ``fast`` values, wrongly shaped functional params and states, bad ``state``
assignments and bad param assignments. After every refusal the layer's params and states are
exactly what they were.
"""

import numpy as np
import pytest
import torch

import tracetorch as tt
import tracetorch.functional as F
from tracetorch.nn.sequence import scan_layer

N, B = 3, 2
TYPES = ["LI", "DSLI", "LIB", "DRLIB", "SLIT", "DSRLITS"]


def make(name, **kw):
    cls = tt.nn.LAYERS[name]
    if cls.spec.fires:
        kw.setdefault("quant_fn", "round")
    return cls(N, **kw)


def warm(layer):
    layer(torch.randn(B, N, generator=torch.Generator().manual_seed(0)))
    return layer


def snapshot(layer):
    params = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    states = {n: getattr(layer, n) for n in layer.state_names}
    return params, {n: (t, None if t is None else t.clone()) for n, t in states.items()}


def unchanged(layer, snap):
    params, states = snap
    now = layer.state_dict()
    if now.keys() != params.keys() or not all(torch.equal(now[k], v) for k, v in params.items()):
        return False
    for n, (t, copy) in states.items():
        cur = getattr(layer, n)
        if cur is not t or (copy is not None and not torch.equal(cur, copy)):
            return False
    return True


def first_param(layer):
    return layer.param_names[0]


def threshold_name(layer):
    names = [n for n in layer.param_names if n.endswith("threshold")]
    return names[0] if names else None


# ---- inputs ---------------------------------------------------------------------------------------

BAD_INPUTS = {
    "complex": (lambda: torch.ones(B, N, dtype=torch.complex64), TypeError, "real floating tensor"),
    "int": (lambda: torch.ones(B, N, dtype=torch.int64), TypeError, "real floating tensor"),
    "bool": (lambda: torch.ones(B, N, dtype=torch.bool), TypeError, "real floating tensor"),
    "list": (lambda: [[1.0] * N] * B, TypeError, "input must be a tensor"),
    "0-d": (lambda: torch.tensor(1.0), ValueError, "out of range"),
    "wrong size": (lambda: torch.ones(B, N + 1), ValueError, f"must be num_neurons={N}, received {N + 1}"),
    "float64 into a float32 layer": (lambda: torch.ones(B, N, dtype=torch.float64), TypeError, "does not round"),
    "batch change": (lambda: torch.ones(B + 1, N), ValueError, "batch size changes"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("name", TYPES)
def test_bad_inputs_are_refused_per_step_and_in_sequence_mode(name, case):
    make_x, err, match = BAD_INPUTS[case]
    layer = warm(make(name))
    snap = snapshot(layer)
    x = make_x()
    with pytest.raises(err, match=match):
        layer(x)
    assert unchanged(layer, snap)
    if isinstance(x, torch.Tensor) and x.dim() >= 1:
        with pytest.raises((TypeError, ValueError)):
            tt.nn.run(layer, torch.stack([x, x]) if x.dim() else x)
        assert unchanged(layer, snap)


@pytest.mark.parametrize("name", TYPES)
def test_complex_and_bool_params_are_refused(name):
    cls = tt.nn.LAYERS[name]
    p = first_param(cls(N))
    for value in (0.5 + 0.1j, torch.full((N,), 0.5, dtype=torch.complex64)):
        with pytest.raises(TypeError, match=f"{name}: {p} must be real"):
            cls(N, **{p: value})
    with pytest.raises(TypeError, match="bool tensor"):
        cls(N, **{p: torch.ones(N, dtype=torch.bool)})
    th = threshold_name(cls(N))
    if th is not None:
        with pytest.raises(TypeError, match=f"{name}: {th} must be a float or a real tensor, received a bool tensor"):
            cls(N, **{th: torch.tensor(True)})


@pytest.mark.parametrize("name", TYPES)
def test_numpy_integers_are_accepted_for_num_neurons_and_dim(name):
    layer = tt.nn.LAYERS[name](np.int64(N), dim=np.int32(-1))
    assert type(layer.num_neurons) is int and type(layer.dim) is int
    assert layer(torch.ones(B, N)).shape == (B, N)
    assert tt.nn.LAYERS[name](np.int16(4), dim=np.int64(-3))(torch.ones(B, 4, 2, 2)).shape == (B, 4, 2, 2)
    for bad in (np.float64(3.0), 3.0, "3", True, np.int64(0)):
        with pytest.raises(ValueError, match="num_neurons must be an int >= 1"):
            tt.nn.LAYERS[name](bad)
    with pytest.raises(TypeError, match="dim must be an int"):
        tt.nn.LAYERS[name](N, dim=-1.0)


# ---- fast= ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", ["no", "yes", 0, 1, 1.0, "False"])
def test_fast_must_be_none_or_a_bool(fast):
    params, xs = F.init_params("LIB", N), torch.ones(4, B, N)
    state = F.init_state("LIB", xs[0])
    with pytest.raises(TypeError, match="fast must be None, True or False"):
        F.scan(F.lib_step, params, state, xs, fast=fast)
    layer = make("LIB")
    with pytest.raises(TypeError, match="fast must be None, True or False"):
        tt.nn.run(layer, xs, fast=fast)
    with pytest.raises(TypeError, match="fast must be None, True or False"):
        scan_layer(layer, xs, fast=fast)
    assert layer.mem is None


# ---- functional steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TYPES)
def test_functional_step_refuses_wrong_shapes_and_types(name):
    spec, step = F.SPECS[name], F.get_step(name)
    x = torch.ones(B, N)
    params, state = F.init_params(name, N), F.init_state(name, x)
    p0, s0 = spec.param_names[0], spec.state_names[0]
    with pytest.raises(ValueError, match=rf"params.{p0} has shape \[{N + 2}\], which does not broadcast"):
        step(params._replace(**{p0: torch.full((N + 2,), 0.5)}), state, x)
    with pytest.raises(ValueError, match=rf"state.{s0} has shape \[{B}, {N + 1}\]"):
        step(params, state._replace(**{s0: torch.zeros(B, N + 1)}), x)
    with pytest.raises(TypeError, match=f"params must be a {name}Params"):
        step(dict(params._asdict()), state, x)
    with pytest.raises(TypeError, match=f"state must be a {name}State"):
        step(params, tuple(state), x)
    with pytest.raises(TypeError, match="x must be a real floating tensor"):
        step(params, state, x.to(torch.complex64))
    with pytest.raises(TypeError, match=f"params.{p0} must be a tensor"):
        step(params._replace(**{p0: 0.5}), state, x)
    # broadcasting shapes stay accepted: [] and [N] params, a [N] state for a [B, N] input
    y, _ = step(params._replace(**{p0: torch.tensor(0.5)}), spec.State(*(t[0] for t in state)), x)
    assert y.shape == x.shape


# ---- the state setter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TYPES)
def test_state_setter_validates_everything(name):
    layer = warm(make(name))
    snap = snapshot(layer)
    good = layer.state
    s0 = layer.state_names[0]
    bad = {
        "neuron count": (good._replace(**{s0: torch.zeros(B, N + 1)}), rf"{s0}: shape \[{B}, {N + 1}\], expected {N}"),
        "integer dtype": (good._replace(**{s0: torch.zeros(B, N, dtype=torch.int64)}), "real floating dtype"),
        "complex dtype": (good._replace(**{s0: torch.zeros(B, N, dtype=torch.complex64)}), "real floating dtype"),
        "not a tensor": (good._replace(**{s0: [[0.0] * N] * B}), f"{s0}: expected a tensor, received list"),
        "0-d": (good._replace(**{s0: torch.tensor(0.0)}), rf"{s0}: shape \[\], expected"),
        "meta": (good._replace(**{s0: torch.zeros(B, N, device="meta")}), "meta tensor"),
        "sparse": (good._replace(**{s0: torch.zeros(B, N).to_sparse()}), "dense"),
        "wrong fields": ({"nope": torch.zeros(B, N)}, "fields must be"),
        "a tensor": (torch.zeros(B, N), "expected a NamedTuple or dict"),
    }
    if len(layer.state_names) > 1:
        bad["shapes differ"] = (good._replace(**{s0: torch.zeros(B + 1, N)}), "one shape")
        bad["dtypes differ"] = (good._replace(**{s0: torch.zeros(B, N, dtype=torch.float64)}), "one dtype")
    for case, (value, match) in bad.items():
        with pytest.raises(ValueError, match=match):
            layer.state = value
        assert unchanged(layer, snap), case


# ---- param assignment ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TYPES)
def test_bad_param_assignments_are_refused_and_change_nothing(name):
    layer = warm(make(name, **{f"{first_param(tt.nn.LAYERS[name](N))}_rank": 0}))
    p = first_param(layer)
    snap = snapshot(layer)
    bad = [
        (float("nan"), ValueError, "finite"),
        (1.5, ValueError, "a decay in"),
        (1 - 1e-9, ValueError, "float32"),
        (torch.full((N,), 0.5), ValueError, "one scalar"),
        (torch.full((N + 1,), 0.5), ValueError, "one scalar"),
        (0.5 + 0j, TypeError, "real"),
        (torch.tensor(True), TypeError, "bool"),
        ("0.5", TypeError, "must be a float or a tensor"),
    ]
    for value, err, match in bad:
        with pytest.raises(err, match=match):
            setattr(layer, p, value)
        assert unchanged(layer, snap), value
    th = threshold_name(layer)
    if th is not None:
        for value in (0.0, -1.0, 1e-60, 1e39, torch.full((N,), 1e39, dtype=torch.float64)):
            with pytest.raises(ValueError, match=f"{name}: {th} must be"):
                setattr(layer, th, value)
            assert unchanged(layer, snap), value


@pytest.mark.parametrize("name", [n for n in TYPES if tt.nn.LAYERS[n].spec.fires])
def test_bad_quant_and_spike_functions_are_refused(name):
    layer = warm(make(name))
    before = (layer.quant_fn, layer.spike_fn, layer._quant)
    with pytest.raises(ValueError, match="quant_fn must be one of"):
        layer.quant_fn = "nonsense"
    with pytest.raises(TypeError, match="quant_fn must be a string or a callable"):
        layer.quant_fn = 3
    with pytest.raises(ValueError, match=r"spike_fn must be one of \['atan', 'erf', 'fast_sigmoid', 'sigmoid'"):
        layer.spike_fn = "sigmod"
    with pytest.raises(TypeError, match="spike_fn must be a name"):
        layer.spike_fn = 3
    assert (layer.quant_fn, layer.spike_fn, layer._quant) == before
    with pytest.raises(ValueError, match="quant_fn must be one of"):
        tt.nn.LAYERS[name](N, quant_fn="stochastic")


def test_li_family_refuses_spike_and_quant_functions():
    layer = make("LI")
    with pytest.raises(ValueError, match="no firing head"):
        layer.quant_fn = "round"
    with pytest.raises(ValueError, match="no firing head"):
        layer.spike_fn = F.sigmoid4x
    assert layer.quant_fn is None


def test_functional_checks_hold_under_vmap_and_read_no_data():
    spec, x = F.SPECS["DSRLIB"], torch.ones(5, B, N)
    params, state = F.init_params("DSRLIB", N), F.init_state("DSRLIB", x)
    step = torch.func.vmap(lambda s, x: F.dsrlib_step(params, s, x, quant_fn="round"))
    assert step(state, x)[0].shape == x.shape
    bad = spec.State(*(torch.zeros(5, B, N + 1) for _ in spec.state_names))
    with pytest.raises(ValueError, match=rf"state.pos_syn has shape \[{B}, {N + 1}\]"):
        step(bad, x)
