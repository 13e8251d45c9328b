"""State trees: get/set/map/flatten, save/load (.pt, .safetensors, dict), functional_call, populations."""

import copy
import os
import struct

import pytest
import torch
from torch import nn
from torch.func import functional_call as torch_functional_call
from torch.func import grad, stack_module_state, vmap

import tracetorch as tt
from tracetorch import state as S


class Block(tt.TTModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.neuron = tt.nn.SLIB(3, quant_fn="round")

    def forward(self, x):
        return self.neuron(self.fc(x))


class Net(tt.TTModel):
    """Layers in every kind of container: Sequential, ModuleList, ModuleDict, plain list and dict, nested TTModel."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(4, 3), tt.nn.LIB(3, quant_fn="round"))
        self.mlist = nn.ModuleList([tt.nn.DSLI(3)])
        self.mdict = nn.ModuleDict({"rec": tt.nn.RLIT(3, rec_weight=0.5, quant_fn="round")})
        self.plain = [tt.nn.LITS(3, quant_fn="round")]
        self.table = {"tail": tt.nn.DRLIB(3, quant_fn="round")}
        self.block = Block()

    def forward(self, x):
        h = self.seq(x)
        h = self.mlist[0](h) + self.mdict["rec"](h)
        h = self.plain[0](h) + self.block(h)
        return self.table["tail"](h)


def run(model, steps=3, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return [model(2 * torch.randn(batch, 4, generator=g)) for _ in range(steps)]


def snapshot(model):
    return {p: None if s is None else tuple(t.clone() for t in s) for p, s in S.get_states(model).items()}


def same(a, b):
    return a.keys() == b.keys() and all(
        (x is None and y is None) or (x is not None and y is not None and all(torch.equal(u, v) for u, v in zip(x, y)))
        for x, y in zip(a.values(), b.values())
    )


PATHS = ["seq.1", "mlist.0", "mdict.rec", "block.neuron", "plain.0", "table.tail"]


def test_tree_paths_and_ops():
    model = Net()
    assert [p for p, _ in S.named_layers(model)] == PATHS
    tree = S.get_states(model)
    assert list(tree) == PATHS and all(v is None for v in tree.values())
    run(model)
    tree = S.get_states(model)
    flat = S.flatten(tree)
    assert list(flat)[:2] == ["seq.1.mem", "mlist.0.pos_syn"]
    back = S.unflatten(model, flat)
    assert same({k: tuple(v) for k, v in back.items()}, {k: tuple(v) for k, v in tree.items()})
    zeros = S.zero(tree)
    assert all(not t.any() for t in S.flatten(zeros).values())
    doubled = S.map(lambda t: 2 * t, tree)
    assert torch.equal(doubled["seq.1"].mem, 2 * tree["seq.1"].mem)
    stacked = S.stack([tree, tree])
    assert stacked["seq.1"].mem.shape == (2, *tree["seq.1"].mem.shape)
    with pytest.raises(ValueError, match="unexpected keys"):
        S.unflatten(model, {**flat, "nope.mem": torch.zeros(1)})
    with pytest.raises(ValueError, match="incomplete state for layer 'mlist.0'"):
        S.unflatten(model, {k: v for k, v in flat.items() if k != "mlist.0.neg_mem"})


def test_set_states_validates_before_changing():
    model = Net()
    run(model)
    tree = S.get_states(model)
    before = snapshot(model)
    bad = dict(tree)
    bad["table.tail"] = tree["table.tail"]._replace(pos_mem=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"table.tail.pos_mem: shape \[2, 5\], expected 3 along dim=-1"):
        S.set_states(model, bad)
    with pytest.raises(ValueError, match="missing layers"):
        S.set_states(model, {"seq.1": tree["seq.1"]})
    assert same(snapshot(model), before)
    S.set_states(model, {"seq.1": None}, strict=False)
    assert model.seq[1].mem is None


@pytest.mark.parametrize("kind", ["pt", "safetensors", "dict"])
def test_round_trip(tmp_path, kind):
    model = Net()
    run(model)
    target = tmp_path / f"states.{kind}" if kind != "dict" else None
    saved = model.save_states(target)
    fresh = copy.deepcopy(model)
    fresh.zero_states()  # lazy: loading fills them in
    fresh.load_states(saved if kind == "dict" else target)
    assert same(snapshot(fresh), snapshot(model))
    assert fresh(torch.ones(2, 4)).equal(model(torch.ones(2, 4)))
    if target is not None:
        assert os.listdir(tmp_path) == [target.name]  # atomic write leaves no temp file


def test_safetensors_metadata(tmp_path):
    from safetensors import safe_open

    model = Net()
    run(model)
    model.save_states(tmp_path / "s.safetensors")
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == S.FORMAT and meta["version"] == S.FORMAT_VERSION
    assert '"seq.1": {"type": "LIB", "dim": -1, "num_neurons": 3}' in meta["layers"]


def test_strict_and_non_strict():
    model = Net()
    run(model)
    saved = model.save_states()
    partial = {k: v for k, v in saved.items() if not k.startswith("block.")}
    partial["ghost.mem"] = torch.zeros(2, 3)
    fresh = Net()
    with pytest.raises(
        ValueError, match=r"missing: \['block.neuron.syn', 'block.neuron.mem'\]\n  unexpected: \['ghost.mem'\]"
    ):
        fresh.load_states(partial)
    assert all(v is None for v in S.get_states(fresh).values())
    result = fresh.load_states(partial, strict=False)
    assert result.missing_keys == ["block.neuron.syn", "block.neuron.mem"] and result.unexpected_keys == ["ghost.mem"]
    assert fresh.block.neuron.mem is None and torch.equal(fresh.seq[1].mem, saved["seq.1.mem"])


class Payload:
    """An arbitrary picklable object: a .pt file carrying it must be refused."""


def corrupt_cases(tmp_path, saved):
    def write_pt(name, obj):
        torch.save(obj, tmp_path / name)
        return tmp_path / name

    def write_bytes(name, data):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    from safetensors.torch import save_file

    good_pt = write_pt("good.pt", saved)
    save_file(saved, str(tmp_path / "good.safetensors"), metadata={"format": S.FORMAT, "version": "1", "layers": "{}"})
    raw = (tmp_path / "good.safetensors").read_bytes()
    wrong_shape = dict(saved, **{"seq.1.mem": torch.zeros(2, 4)})
    wrong_dtype = dict(saved, **{"seq.1.mem": saved["seq.1.mem"].double()})
    missing = {k: v for k, v in saved.items() if k != "seq.1.mem"}
    partial = {k: v for k, v in saved.items() if k != "mlist.0.neg_mem"}
    extra = dict(saved, **{"seq.9.mem": torch.zeros(2, 3)})

    return [
        (write_bytes("corrupt.pt", os.urandom(300)), "unreadable .pt"),
        (write_bytes("truncated.pt", good_pt.read_bytes()[:200]), "unreadable .pt"),
        (write_bytes("empty.pt", b""), "unreadable .pt"),
        (write_pt("pickled.pt", {"seq.1.mem": Payload()}), "refused or unreadable .pt"),
        (write_pt("list.pt", [1, 2]), "expected a dict of str -> tensor"),
        (write_bytes("corrupt.safetensors", os.urandom(300)), "not a readable .safetensors"),
        (write_bytes("truncated.safetensors", raw[: len(raw) // 2]), "not a readable .safetensors"),
        (write_bytes("empty.safetensors", b""), "not a readable .safetensors"),
        (write_bytes("huge.safetensors", struct.pack("<Q", 2**40) + b"{}"), "not a readable .safetensors"),
        (write_pt("shape.pt", wrong_shape), r"seq.1.mem: shape \[2, 4\]"),
        (write_pt("dtype.pt", wrong_dtype), "seq.1.mem: dtype torch.float64, expected torch.float32"),
        (write_pt("missing.pt", missing), r"missing: \['seq.1.mem'\]"),
        (write_pt("partial.pt", partial), r"mlist.0: incomplete, missing \['mlist.0.neg_mem'\]"),
        (write_pt("extra.pt", extra), r"unexpected: \['seq.9.mem'\]"),
        (write_bytes("bad.txt", b"x"), "must end in .pt or .safetensors"),
    ]


def test_bad_files_leave_model_unchanged(tmp_path):
    model = Net()
    run(model)
    saved = model.save_states()
    for path, match in corrupt_cases(tmp_path, saved):
        for target in (model, Net()):  # a run model and a lazy one
            before = snapshot(target)
            with pytest.raises(ValueError, match=match):
                target.load_states(path)
            assert same(snapshot(target), before), path.name
    with pytest.raises(FileNotFoundError):
        model.load_states(tmp_path / "nowhere.pt")


def test_wrong_layer_type_and_format(tmp_path):
    from safetensors.torch import save_file

    model = Net()
    run(model)
    model.save_states(tmp_path / "s.safetensors")
    other = Net()
    other.seq[1] = tt.nn.LI(3)  # same state names and shapes, another type
    with pytest.raises(ValueError, match="seq.1: saved from a LIB, the model has a LI"):
        other.load_states(tmp_path / "s.safetensors")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a tracetorch state file"):
        model.load_states(tmp_path / "foreign.safetensors")


def test_failed_write_is_atomic(tmp_path, monkeypatch):
    model = Net()
    run(model)
    target = tmp_path / "s.pt"
    model.save_states(target)
    good = target.read_bytes()

    def broken_save(obj, f, *a, **k):
        open(f, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_states(target)
    assert target.read_bytes() == good and os.listdir(tmp_path) == ["s.pt"]


# ---- the model-level pure call -------------------------------------------------------------


def test_functional_call_equals_stateful_and_leaves_model_alone():
    torch.manual_seed(0)
    model = Net()
    run(model, steps=2)
    before = snapshot(model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    states = S.get_states(model)
    x = torch.randn(2, 4)
    out, new_states = tt.functional_call(model, params, states, x)
    assert same(snapshot(model), before)
    expected = model(x)
    assert torch.equal(out, expected)
    assert same({k: tuple(v) for k, v in new_states.items()}, snapshot(model))
    out0, _ = tt.functional_call(model, None, None, x)  # from zero states, own params
    fresh = copy.deepcopy(model)
    fresh.zero_states()
    assert torch.equal(out0, fresh(x))


def make_population(size=4):
    models = []
    for seed in range(size):
        torch.manual_seed(seed)
        models.append(
            nn.Sequential(
                nn.Linear(4, 6), tt.nn.SRLIB(6, rec_weight=0.3, quant_fn="round"), nn.Linear(6, 2), tt.nn.LI(2)
            )
        )
    return models


def test_vmap_population_equals_loop():
    models = make_population()
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs = torch.randn(5, 3, 4)

    def member(params, buffers, states, x):
        return tt.functional_call(base, {**params, **buffers}, states, x)

    states = None
    outs = []
    for x in xs:
        out, states = vmap(member, in_dims=(0, 0, 0 if states else None, None))(params, buffers, states, x)
        outs.append(out)
    for i, m in enumerate(models):
        for t, x in enumerate(xs):
            torch.testing.assert_close(outs[t][i], m(x))
        torch.testing.assert_close(states["1"].mem[i], m[1].mem)


def test_per_member_gradients():
    models = make_population(3)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs, target = torch.randn(4, 3, 4), torch.randn(3, 2)

    def loss(params, buffers):
        states, total = None, 0.0
        for x in xs:
            out, states = tt.functional_call(base, {**params, **buffers}, states, x)
            total = total + ((out - target) ** 2).mean()
        return total

    grads = vmap(grad(loss))(params, buffers)
    for i, m in enumerate(models):
        m.zero_grad()
        total = sum(((m(x) - target) ** 2).mean() for x in xs)
        total.backward()
        for name, p in m.named_parameters():
            torch.testing.assert_close(grads[name][i], p.grad, rtol=1e-4, atol=1e-6)


def test_torch_func_functional_call_alone_leaks_no_state_into_the_model():
    model = make_population(1)[0]
    x = torch.randn(3, 4)
    params = dict(model.named_parameters())
    tt.functional_call(model, params, None, x)
    assert model[1].mem is None  # the pure call restores the lazy state
    torch_functional_call(model, params, (x,))
    assert model[1].mem is not None  # plain torch.func.functional_call runs the stateful module


@pytest.mark.slow
def test_state_tree_survives_torch_compile(tmp_path):
    torch._dynamo.reset()
    model = make_population(1)[0]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def step(states, x):
        return tt.functional_call(model, params, states, x)

    compiled = torch.compile(step, backend="aot_eager")
    x = torch.randn(3, 4)
    _, states = step(None, x)
    out_c, states_c = compiled(states, x)
    out_e, states_e = step(states, x)
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(S.flatten(states_c).values(), S.flatten(states_e).values()):
        torch.testing.assert_close(a, b)
    cmodel = torch.compile(model, backend="aot_eager")
    cmodel(x)
    cmodel(x)
    assert model[1].mem.shape == (3, 6)
    saved = S.save_states(model, tmp_path / "c.safetensors")
    fresh = make_population(1)[0]
    S.load_states(fresh, tmp_path / "c.safetensors")
    assert torch.equal(fresh[1].mem, saved["1.mem"])


def test_state_package_imports_nothing_from_nn():
    # the one arrow that ran back up: state/ knows pytrees and files; the walker lives in nn/walk.py
    import ast
    import pathlib

    import tracetorch.nn.walk as walk
    import tracetorch.state as st

    root = pathlib.Path(st.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
                assert not name.startswith("..nn") and not name.startswith("tracetorch.nn"), (path.name, name)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("tracetorch.nn") for a in node.names), path.name
    model = nn.Sequential(nn.Linear(3, 4), tt.nn.LIB(4), nn.ModuleList([tt.nn.LI(4)]))
    assert st.named_layers(model) == walk.named_layers(model)
    assert [p for p, _ in st.named_layers(model)] == ["1", "2.0"]
