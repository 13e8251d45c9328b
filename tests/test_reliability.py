"""Reliability: nothing silently wrong, nothing half-loaded (issue 11).

Silent wrong results (param assignment, quant_fn/spike_fn, output aliasing, NaN, dtypes, params
that round out of range, a missing time axis, sequence-mode corner cases), loading and saving
(metadata, refused tensor kinds, copies, validation first, corrupt metadata, directories, fsync,
file mode, a minimal install), fault injection and a soak test.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import tracetorch as tt
import tracetorch.functional as F
from tracetorch import state as S
from tracetorch.nn.sequence import plan

N, B, T = 3, 2, 6
NAMES = list(F.NAMES)


def make(name, n=N, **kw):
    cls = tt.nn.LAYERS[name]
    if cls.spec.fires:
        kw.setdefault("quant_fn", "round")
    return cls(n, **kw)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def per_step(model, xs):
    return torch.stack([model(x) for x in xs])


def states_of(model):
    return {p: None if s is None else tuple(s) for p, s in S.get_states(model).items()}


def clone_states(model):
    return {p: None if s is None else tuple(t.clone() for t in s) for p, s in S.get_states(model).items()}


def bit_identical(model, live, copies):
    """Every state is the very tensor it was (``live``) with the very values it had (``copies``)."""
    now = states_of(model)
    if now.keys() != live.keys():
        return False
    for p, s in now.items():
        if s is None or live[p] is None:
            if s is not live[p]:
                return False
            continue
        if any(a is not b for a, b in zip(s, live[p])) or not all(torch.equal(a, c) for a, c in zip(s, copies[p])):
            return False
    return True


# ---- param assignment ---------------------------------------------------------------------------------


def test_param_assignment_sets_the_raw_value_through_the_inverse():
    layer, ref = make("LIB"), make("LIB", beta=0.5, threshold=2.0)
    raw = layer.raw_beta
    layer.beta = 0.5
    layer.threshold = torch.full((N,), 2.0)
    assert layer.raw_beta is raw and isinstance(raw, nn.Parameter) and raw.shape == (N,)
    assert "beta" not in layer.__dict__ and "threshold" not in layer.__dict__
    torch.testing.assert_close(layer.beta, torch.full((N,), 0.5))
    xs = 3 * torch.rand(T, B, N, generator=gen())
    torch.testing.assert_close(per_step(layer, xs), per_step(ref, xs))
    torch.testing.assert_close(layer.mem, ref.mem)
    # kind, rank and dtype kept; a rank-0 param takes a float or a 0-d tensor, not [N]
    fixed = make("LIB", beta_rank=0, learn_beta=False).double()
    fixed.beta = torch.tensor(0.25)
    assert "raw_beta" in fixed._buffers and fixed.raw_beta.shape == () and fixed.raw_beta.dtype == torch.float64
    torch.testing.assert_close(fixed.beta, torch.tensor(0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="LIB: beta is one scalar"):
        fixed.beta = torch.full((N,), 0.5)
    # a compiled layer uses the new value at once
    layer.TTcompile()
    layer.beta = 0.75
    torch.testing.assert_close(layer.activated_params().beta, torch.full((N,), 0.75))
    # 0.15-style custom inverse/activation params are assigned through their own inverse
    port = tt.TTLayer(N)
    port._register_parameter("gain", 2.0, 1, True, inverse_function=torch.log, activation_function=torch.exp)
    port.gain = 5.0
    torch.testing.assert_close(port.gain, torch.full((N,), 5.0))


def test_quant_fn_and_spike_fn_are_validated_properties_used_on_every_path():
    xs = 3 * torch.rand(T, B, N, generator=gen()) - 1
    layer, ref = tt.nn.LIB(N), tt.nn.LIB(N, quant_fn="round")
    layer.quant_fn = "round"
    assert layer.quant_fn == "round" and "quant_fn='round'" in repr(layer)
    torch.testing.assert_close(per_step(layer, xs), per_step(ref, xs))
    layer.zero_states(), ref.zero_states()
    torch.testing.assert_close(tt.nn.run(layer, xs, fast=False), per_step(ref, xs))
    always = tt.nn.LIB(N, quant_fn="round")
    always.spike_fn = lambda v: torch.ones_like(v)  # fires every step, per step and in sequence mode
    assert torch.equal(per_step(always, xs), torch.ones_like(xs))
    always.zero_states()
    assert torch.equal(tt.nn.run(always, xs, fast=False), torch.ones_like(xs))
    mod = tt.nn.LIB(N, quant_fn="round")
    mod.spike_fn = nn.Sigmoid()  # a module is accepted and kept as a submodule, as from the constructor
    assert mod.spike_fn is mod._modules["spike_fn"]
    with pytest.raises(ValueError, match="LIB: quant_fn must be one of"):
        layer.quant_fn = "nonsense"
    assert layer.quant_fn == "round"


# ---- no output aliases a state ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_no_output_aliases_a_state(name):
    layer = make(name)
    x = torch.randn(B, N, generator=gen())
    y = layer(x)
    kept = clone_states(layer)
    with torch.no_grad():
        y.add_(1000.0)
    assert all(torch.equal(a, b) for a, b in zip(layer.state, kept[""]))
    ys = tt.nn.run(layer, torch.randn(T, B, N, generator=gen(1)), fast=False)
    kept = clone_states(layer)
    with torch.no_grad():
        ys.mul_(-7.0)
    assert all(torch.equal(a, b) for a, b in zip(layer.state, kept[""]))


@pytest.mark.parametrize("name", ["LI", "SLI", "DSLI", "RLIB", "SRLITS"])
def test_inplace_ops_downstream_agree_between_per_step_and_sequence_mode(name):
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, N), make(name), nn.ReLU(inplace=True), nn.Linear(N, 2))

    xs = torch.randn(T, B, 4, generator=gen())
    a, b = model(), model()
    ya, yb = per_step(a, xs), tt.nn.run(b, xs, fast=False)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(a[1].state, b[1].state)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


# ---- NaN: one behaviour for all 52 types ------------------------------------------------------------------


def test_dual_split_keeps_nan_and_spec_values_at_zero():
    from tracetorch.functional.neurons import _neg, _pos

    v = torch.tensor([-2.0, -0.0, 0.0, 3.0, float("nan"), float("inf"), -float("inf")])
    pos, neg = _pos(v), _neg(v)
    assert pos[:4].tolist() == [0.0, -0.0, 0.0, 3.0] and neg[:4].tolist() == [-2.0, -0.0, 0.0, 0.0]
    assert torch.isnan(pos[4]) and torch.isnan(neg[4])
    assert pos[5:].tolist() == [float("inf"), 0.0] and neg[5:].tolist() == [0.0, -float("inf")]


@pytest.mark.parametrize(
    "name,quant",
    [
        (n, q)
        for n in NAMES
        for q in (("round", "bernoulli", "probabilistic") if tt.nn.LAYERS[n].spec.fires else ("round",))
    ],  # the LI family has no quantizer: one case each
)
def test_nan_in_gives_nan_out_and_stays_in_the_state_until_zeroed(name, quant):
    """A NaN at neuron 0, step 0: that neuron's output and every state are NaN at every later step
    (all traces decay multiplicatively; the recurrent traces from step 1 on, as they read the previous
    output), the other neurons never see it; zero_states() clears it."""
    kw = {"quant_fn": quant} if tt.nn.LAYERS[name].spec.fires else {}
    xs = torch.rand(T, B, N, generator=gen()) * 2
    xs[0, :, 0] = float("nan")
    for mode in ("step", "sequence"):
        layer = tt.nn.LAYERS[name](N, **kw)
        if mode == "step":
            ys, states = [], []
            for x in xs:
                ys.append(layer(x))
                states.append(layer.state)
            ys = torch.stack(ys)
        else:
            ys, states = tt.nn.run(layer, xs, fast=False), [layer.state]
        assert torch.isnan(ys[:, :, 0]).all() and not torch.isnan(ys[:, :, 1:]).any(), mode
        for t, st in enumerate(states if mode == "step" else [None] * (T - 1) + states):
            for field_name, field in zip(layer.state_names, st or ()):
                late = field_name.endswith("rec") and t == 0
                assert torch.isnan(field[:, 0]).all() != late and not torch.isnan(field[:, 1:]).any(), (mode, t)
        layer.zero_states()
        assert not torch.isnan(layer(xs[1])).any()


# ---- dtypes -------------------------------------------------------------------------------------------


def test_live_states_never_change_dtype():
    layer = make("SLIB")
    layer(torch.ones(B, N))
    live, copies, orig = states_of(layer), clone_states(layer), layer.state
    layer.state = layer.state._replace(**{n: getattr(layer, n).double() for n in layer.state_names})
    with pytest.raises(TypeError, match=r"SLIB: hidden state 'syn' is torch.float64.*computes in torch.float32"):
        layer(torch.ones(B, N))
    with pytest.raises(TypeError, match="never changes dtype"):
        tt.nn.run(layer, torch.ones(T, B, N), fast=False)
    layer.state = orig
    assert bit_identical(layer, live, copies)
    assert layer(torch.ones(B, N)).dtype == torch.float32  # the next float32 call still works


def test_a_wider_input_is_refused_not_rounded_nor_promoted():
    # issue 19, item 8: a float64 input used to come out float64, and the next nn.Linear failed far from the cause
    layer = make("SLIB")
    layer(torch.ones(B, N))
    live, copies = states_of(layer), clone_states(layer)
    for call in (lambda: layer(torch.ones(B, N, dtype=torch.float64)),
                 lambda: tt.nn.run(layer, torch.ones(T, B, N, dtype=torch.float64), fast=False),
                 lambda: tt.nn.run(layer, torch.ones(T, B, N, dtype=torch.float64))):
        with pytest.raises(TypeError, match=r"SLIB: the input is torch.float64 but the layer is torch.float32.*x.to"):
            call()
        assert bit_identical(layer, live, copies)
    layer.zero_states()
    with pytest.raises(TypeError, match="does not round a wider input down"):
        layer(torch.ones(B, N, dtype=torch.float64))
    net = nn.Sequential(layer, nn.Linear(N, 2))
    assert net(torch.ones(B, N, dtype=torch.float16)).dtype == torch.float32  # narrower: widened, Linear works
    layer.zero_states()
    layer.double()  # .to(dtype) converts params and states together
    assert layer(torch.ones(B, N, dtype=torch.float64)).dtype == torch.float64 and layer.mem.dtype == torch.float64
    assert layer(torch.ones(B, N)).dtype == torch.float64  # float32 into a float64 layer: widened


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_into_a_float32_layer_compute_in_float32(dtype, rank):
    layer = make("DSRLIT", **{f"{p}_rank": rank for p in tt.nn.DSRLIT.spec.param_names})
    for x in torch.rand(3, B, N, generator=gen()).to(dtype):
        y = layer(x)
        assert y.dtype == torch.float32 and all(t.dtype == torch.float32 for t in layer.state)
    layer.zero_states()
    ys = tt.nn.run(layer, torch.rand(T, B, N).to(dtype), fast=False)
    assert ys.dtype == torch.float32 and all(t.dtype == torch.float32 for t in layer.state)
    half = make("LIB").to(dtype)  # a layer converted to half keeps half
    assert half(torch.rand(B, N).to(dtype)).dtype == dtype


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            dict(beta=1 - 1e-9),
            r"beta must be a decay in \(0, 1\), received 0.999999999, which is .*1.0.* in torch.float32",
        ),
        (dict(beta=torch.tensor(1 - 1e-9, dtype=torch.float64)), r"which is 1.0 once stored raw in torch.float32"),
        (dict(beta=1e-50), r"which is .*0.0.* in torch.float32"),
        (
            dict(threshold=1e-60),
            r"threshold must be a threshold > 0, received 1e-60, which is .*0.0.* in torch.float32",
        ),
        (dict(threshold=torch.tensor(1e-60, dtype=torch.float64)), r"once stored raw in torch.float32"),
        (dict(threshold=1e39), r"threshold must be finite, received 1e\+39, which is .*inf.* in torch.float32"),
        (dict(threshold=10**400), r"threshold must be finite"),
    ],
)
def test_params_are_validated_after_conversion_to_the_stored_dtype(kw, match):
    with pytest.raises(ValueError, match=match):
        make("LIB", **kw)
    if not any(isinstance(v, torch.Tensor) for v in kw.values()):  # a tensor keeps its own dtype there
        with pytest.raises(ValueError, match=match.split(",")[0]):
            F.init_params("LIB", N, **kw)


# ---- the time axis ---------------------------------------------------------------------------------------


def test_run_refuses_a_batch_without_a_time_axis():
    chain = nn.Sequential(nn.Linear(4, N), make("LIB"))
    x = torch.randn(8, 4, generator=gen())
    chain(x)  # states [8, N]
    live, copies = states_of(chain), clone_states(chain)
    with pytest.raises(ValueError, match=r"dim 0 of xs is time"):
        tt.nn.run(chain, x)
    assert bit_identical(chain, live, copies)


# ---- sequence mode: run step by step where folding or scanning would differ -------------------------------


def check_equal(make_model, xs):
    a, b = make_model(), make_model()
    ya, yb = per_step(a, xs), tt.nn.run(b, xs, fast=False)
    torch.testing.assert_close(ya, yb)
    for sa, sb in zip(S.get_states(a).values(), S.get_states(b).values()):
        torch.testing.assert_close(sa, sb)
    return a, b


def test_softmax2d_on_unbatched_steps_runs_step_by_step():
    def model():
        return nn.Sequential(nn.Softmax2d(), make("LIB", 5, quant_fn="round"))

    unbatched = torch.randn(T, 4, 3, 5, generator=gen())  # each step [C, H, W]
    assert [k for k, _ in plan(model(), unbatched)] == ["step", "neuron"]
    check_equal(model, unbatched)
    batched = torch.randn(T, B, 4, 3, 5, generator=gen())
    assert [k for k, _ in plan(model(), batched)] == ["fold", "neuron"]
    check_equal(model, batched)
    conv = nn.Sequential(nn.Conv1d(2, 3, 1), make("LIB", 4))
    assert plan(conv, torch.randn(T, 2, 4))[0][0] == "step"  # an unbatched [C, L] step
    assert plan(conv, torch.randn(T, B, 2, 4))[0][0] == "fold"


def test_instance_replaced_forward_runs_step_by_step():
    def model():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, N), make("LIB"), make("LI"))
        lin = m[0]
        lin.forward = lambda x: nn.Linear.forward(lin, x) * 3.0 + torch.arange(x.shape[0]).unsqueeze(-1)
        lif = m[1]
        lif.forward = lambda x: tt.nn.LIB.forward(lif, x) * 2.0
        return m

    xs = torch.randn(T, B, 4, generator=gen())
    assert [k for k, _ in plan(model(), xs)] == ["step", "step", "neuron"]
    check_equal(model, xs)

    def replaced_chain():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, N), make("LIB"))
        m.forward = lambda x: m[1](m[0](x) - 1.0)
        return m

    assert plan(replaced_chain(), xs) is None
    check_equal(replaced_chain, xs)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_backward_hooks_see_the_per_step_calls():
    calls = {}

    def model(tag):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, N), make("LIB", quant_fn="round"), nn.Linear(N, 2))
        calls[tag] = []
        m[0].register_full_backward_hook(lambda mod, gin, gout: calls[tag].append(gout[0].shape))
        m[1].register_full_backward_pre_hook(lambda mod, gout: calls[tag].append(gout[0].shape))
        return m

    xs = torch.randn(T, B, 4, generator=gen())
    a, b = model("step"), model("run")
    assert [k for k, _ in plan(b, xs)] == ["step", "step", "fold"]
    per_step(a, xs).sum().backward()
    tt.nn.run(b, xs, fast=False).sum().backward()
    assert len(calls["step"]) == 2 * T and sorted(calls["run"]) == sorted(calls["step"])
    handle = nn.modules.module.register_module_full_backward_hook(lambda *a: None)
    try:
        assert plan(nn.Sequential(nn.Linear(4, N), make("LIB")), xs) is None
    finally:
        handle.remove()


def test_a_hook_that_changes_another_layers_state_mid_sequence_is_refused():
    model = nn.Sequential(nn.Linear(4, N), make("LIB"), nn.Linear(N, N), make("LIB"))
    count = [0]

    def hook(mod, inp, out):
        count[0] += 1
        if count[0] == 3:
            model[3].zero_states()  # per step: the last layer restarts at step 3

    model[2].register_forward_hook(hook)
    xs = torch.randn(T, B, 4, generator=gen())
    model(xs[0])
    live, copies = states_of(model), clone_states(model)
    with pytest.raises(ValueError, match="changed the hidden state of a LIB elsewhere in the model"):
        tt.nn.run(model, xs, fast=False)
    assert bit_identical(model, live, copies)
    # a hook that zeroes only its own module's states is per-step semantics, and allowed
    own = nn.Sequential(nn.Linear(4, N), make("LIB"))
    own[1].register_forward_hook(lambda mod, inp, out: mod.zero_states())
    tt.nn.run(own, xs, fast=False)
    assert own[1].mem is None


def test_a_failed_run_leaves_every_state_as_it_was():
    model = nn.Sequential(nn.Linear(4, N), make("LIB"), nn.Linear(N, 5), make("LIB", 4))
    xs = torch.randn(T, B, 4, generator=gen())
    live, copies = states_of(model), clone_states(model)
    with pytest.raises(ValueError, match="num_neurons=4, received 5"):
        tt.nn.run(model, xs)
    assert bit_identical(model, live, copies) and model[1].mem is None


# ---- loading and saving --------------------------------------------------------------------------------


class Net(tt.TTModel):
    def __init__(self, head="LIB"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, N), make(head), nn.Linear(N, N), make("DSRLIT"))

    def forward(self, x):
        return self.net(x)


def ran(model=None, seed=0):
    model = model or Net()
    for x in torch.randn(3, B, 4, generator=gen(seed)):
        model(x)
    return model


def test_pt_files_carry_layer_types_and_load_with_weights_only(tmp_path):
    model = ran()
    model.save_states(tmp_path / "s.pt")
    flat = torch.load(tmp_path / "s.pt", weights_only=True)
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in flat.items())
    meta = json.loads(bytes(flat[S.METADATA_KEY].tolist()).decode())
    assert meta["format"] == S.FORMAT and json.loads(meta["layers"])["net.1"]["type"] == "LIB"
    li = ran(Net(head="LI"))
    live, copies = states_of(li), clone_states(li)
    with pytest.raises(ValueError, match="net.1: saved from a LIB, the model has a LI"):
        li.load_states(tmp_path / "s.pt")
    assert bit_identical(li, live, copies)
    # the dict read by hand carries the metadata too, and is checked the same way
    with pytest.raises(ValueError, match="saved from a LIB"):
        li.load_states(flat)
    fresh = Net()
    fresh.load_states(tmp_path / "s.pt")
    assert all(torch.equal(a, b) for a, b in zip(fresh.net[3].state, model.net[3].state))
    legacy = {k: v for k, v in flat.items() if k != S.METADATA_KEY}  # written before the metadata existed
    torch.save(legacy, tmp_path / "old.pt")
    Net().load_states(tmp_path / "old.pt")


def test_load_states_from_a_dict_copies():
    saved = ran().save_states()
    a, b = Net(), Net()
    a.load_states(saved)
    b.load_states(saved)
    assert a.net[1].mem.data_ptr() != b.net[1].mem.data_ptr() != saved["net.1.mem"].data_ptr()
    kept = a.net[1].mem.clone()
    saved["net.1.mem"].add_(5.0)
    assert torch.equal(a.net[1].mem, kept)


def bad_flat_sources(saved):
    def with_(key, value):
        return dict(saved, **{key: value})

    yield "meta tensor", with_("net.3.pos_mem", torch.empty(B, N, device="meta")), "meta tensor"
    yield "sparse tensor", with_("net.3.pos_mem", saved["net.3.pos_mem"].to_sparse()), "dense"
    yield "complex", with_("net.1.mem", saved["net.1.mem"].to(torch.complex64)), "real floating"
    yield "integer", with_("net.1.mem", saved["net.1.mem"].long()), "real floating"
    yield "0-d", with_("net.3.neg_mem", torch.tensor(0.0)), r"net.3.neg_mem: shape \[\]"
    yield "one shape", with_("net.3.neg_mem", torch.zeros(B + 1, N)), "one shape"
    yield "not a tensor", with_("net.1.mem", [0.0]), "expected a dict of str -> tensor"
    meta = {"format": S.FORMAT, "version": S.FORMAT_VERSION, "layers": json.dumps({"net.1": {"type": "LI"}})}
    blob = torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)
    yield "wrong type", with_(S.METADATA_KEY, blob), "saved from a LI"
    yield "corrupt blob", with_(S.METADATA_KEY, torch.tensor([1.0])), "corrupt metadata"
    junk = torch.frombuffer(bytearray(b"{not json"), dtype=torch.uint8)
    yield "junk blob", with_(S.METADATA_KEY, junk), "not valid UTF-8 JSON"


def test_failed_loads_and_sets_leave_every_state_bit_identical(tmp_path):
    saved = ran(seed=1).save_states()
    for lazy in (False, True):
        model = Net() if lazy else ran()
        live, copies = states_of(model), clone_states(model)
        for case, src, match in bad_flat_sources(saved):
            with pytest.raises(ValueError, match=match):
                model.load_states(src)
            assert bit_identical(model, live, copies), case
            if case in ("sparse tensor", "complex", "integer", "0-d", "one shape", "wrong type", "junk blob"):
                torch.save(src, tmp_path / "bad.pt")  # the same, from a file
                with pytest.raises(ValueError, match=match):
                    model.load_states(tmp_path / "bad.pt")
                assert bit_identical(model, live, copies), case
            if S.METADATA_KEY not in src and case != "not a tensor":
                with pytest.raises(ValueError, match=match):
                    model.set_states(S.unflatten(model, src))
                assert bit_identical(model, live, copies), case


def test_set_states_validates_every_layer_before_changing_any():
    model = ran()
    live, copies = states_of(model), clone_states(model)
    good = S.get_states(ran(seed=2))
    for bad in (torch.tensor(0.0), torch.zeros(B, N + 1), "zeros", torch.zeros(B, N, dtype=torch.int32)):
        tree = dict(good, **{"net.3": good["net.3"]._replace(neg_mem=bad)})
        with pytest.raises(ValueError, match=r"net.3.neg_mem: .*\(DSRLIT\)"):
            model.set_states(tree)
        assert bit_identical(model, live, copies)
    with pytest.raises(ValueError, match="expected a state NamedTuple or dict, received Tensor"):
        model.set_states(dict(good, **{"net.3": torch.zeros(B, N)}))
    deep = tt.nn.LIB(N, dim=-3)
    with pytest.raises(ValueError, match=r"mem: shape \[3\], expected 3 along dim=-3"):
        S.set_states(deep, {"": {"mem": torch.zeros(N)}})  # once an IndexError


def write_safetensors(path, meta):
    from safetensors.torch import save_file

    save_file({"net.1.mem": torch.zeros(B, N)}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "layers",
    [None, "not json", "[1, 2]", "null", '{"net.1": 3}', '{"net.1": {"dim": -1}}', '{"net.1": []}'],
)
def test_corrupt_safetensors_metadata_is_a_value_error_naming_the_file(tmp_path, layers):
    meta = {"format": S.FORMAT, "version": S.FORMAT_VERSION}
    if layers is not None:
        meta["layers"] = layers
    path = write_safetensors(tmp_path / "corrupt.safetensors", meta)
    model = ran()
    live, copies = states_of(model), clone_states(model)
    with pytest.raises(ValueError, match=r"load_states\('.*corrupt.safetensors'\): corrupt metadata"):
        model.load_states(path)
    assert bit_identical(model, live, copies)


def test_a_directory_gets_its_own_error(tmp_path):
    model = ran()
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        model.load_states(tmp_path / "d.pt")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        model.save_states(tmp_path / "d.pt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        model.load_states(tmp_path / "none.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.save_states(tmp_path / "no" / "s.pt")


@pytest.mark.parametrize("suffix", ["pt", "safetensors"])
def test_writes_sync_file_and_directory_and_follow_the_umask(tmp_path, monkeypatch, suffix):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd))[1])
    model = ran()
    old = os.umask(0o027)
    try:
        model.save_states(tmp_path / f"s.{suffix}")
    finally:
        os.umask(old)
    assert synced == [False, True]  # the temporary file before the rename, the directory after
    assert stat.S_IMODE(os.stat(tmp_path / f"s.{suffix}").st_mode) == 0o640
    os.chmod(tmp_path / f"s.{suffix}", 0o604)
    model.save_states(tmp_path / f"s.{suffix}")  # a replaced file keeps its mode
    assert stat.S_IMODE(os.stat(tmp_path / f"s.{suffix}").st_mode) == 0o604
    assert sorted(os.listdir(tmp_path)) == [f"s.{suffix}"]


# ---- fault injection: an interrupted write ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["pt", "safetensors"])
@pytest.mark.parametrize("where", ["writer", "fsync", "chmod", "replace", "interrupt"])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, suffix, where):
    import safetensors.torch

    model = ran()
    target = tmp_path / f"s.{suffix}"
    model.save_states(target)
    good = target.read_bytes()
    ran(model, seed=5)  # new states, so a completed write would differ

    def fail(*a, **k):
        if where == "writer" and a and isinstance(a[-1], str):
            with open(a[-1], "wb") as f:
                f.write(b"half a file")
        raise KeyboardInterrupt() if where == "interrupt" else OSError(f"injected failure in {where}")

    if where in ("writer", "interrupt"):
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: fail(f))
        monkeypatch.setattr(safetensors.torch, "save_file", lambda t, f, *a, **k: fail(f))
    else:
        monkeypatch.setattr(os, where, fail)
    with pytest.raises(KeyboardInterrupt if where == "interrupt" else OSError):
        model.save_states(target)
    monkeypatch.undo()
    assert target.read_bytes() == good and os.listdir(tmp_path) == [target.name]
    fresh = Net()
    fresh.load_states(target)


# ---- a minimal install ------------------------------------------------------------------------------------

MINIMAL = textwrap.dedent(
    """
    import importlib.abc, sys
    OPTIONAL = {"matplotlib", "sklearn", "scipy", "tqdm", "nir", "nirtorch", "snntorch", "norse", "pandas", "h5py"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in OPTIONAL:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Block())
    import os, tempfile, torch
    import tracetorch as tt

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), tt.nn.LIB(3))
    model(torch.ones(1, 2))
    d = tempfile.mkdtemp()
    for suffix in ("pt", "safetensors"):
        path = os.path.join(d, "s." + suffix)
        tt.state.save_states(model, path)
        tt.state.load_states(model, path)
    assert not [m for m in sys.modules if m.split(".")[0] in OPTIONAL]
    print("ok")
    """
)


def test_import_and_save_on_a_minimal_install_do_not_warn():
    """torch, optree, safetensors and numpy (declared: without it torch warns at import and safetensors
    cannot write); nothing optional imported, no warning at all (``-W error``)."""
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", MINIMAL], capture_output=True, text=True, timeout=120, cwd=os.getcwd()
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    from pathlib import Path

    import tomllib

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in deps}
    assert {"torch", "optree", "safetensors", "numpy"} <= names


# ---- soak ------------------------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_soak_300_training_iterations_in_sequence_mode_keep_memory_flat():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), tt.nn.SLIB(16), nn.Linear(16, 4), tt.nn.LI(4))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xs = torch.rand(10, 8, 8)
    target = torch.randint(0, 4, (8,))
    samples = []
    for i in range(300):
        for _, layer in S.named_layers(net):
            layer.zero_states()
        ys = tt.nn.run(net, xs, fast=False, detach_every=5)
        loss = nn.functional.cross_entropy(ys.mean(0), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 10 == 0:
            samples.append(_rss())
    after_warmup = samples[5:]
    growth = max(after_warmup) - after_warmup[0]
    assert growth < 16 * 2**20, [s // 2**20 for s in samples]
