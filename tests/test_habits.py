"""The habits users bring from other libraries (issue 19): each gives the right answer or an error that says what to do."""

from __future__ import annotations

import importlib
import inspect
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import tracetorch as tt
import tracetorch.functional as F

B, T, N = 3, 5, 4
ROOT = Path(__file__).resolve().parents[1]


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N, N), tt.nn.LIB(N, quant_fn="round"), nn.Linear(N, 2), tt.nn.LI(2))


class Model(tt.TTModel):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return self.net(x)


# ---- item 5: names users know ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sigmoid", "fast_sigmoid", "atan", "triangle", "erf", "sigmoid4x"])
def test_spike_fn_takes_names_with_their_default_slopes(name):
    layer = tt.nn.LIB(N, spike_fn=name, quant_fn="round")
    assert layer.spike_fn == F.SPIKE_FUNCTIONS[name] and not isinstance(layer.spike_fn, str)
    x = torch.randn(T, B, N)
    by_object = tt.nn.LIB(N, spike_fn=F.SPIKE_FUNCTIONS[name], quant_fn="round")
    torch.testing.assert_close(tt.nn.run(layer, x), tt.nn.run(by_object, x))
    layer.spike_fn = "atan"
    assert layer.spike_fn == F.Atan()
    # the functional steps and scan take the names too
    params, state = F.init_params("LIB", N), F.init_state("LIB", x[0])
    y, _ = F.lib_step(params, state, x[0], spike_fn=name, quant_fn="round")
    y_ref, _ = F.lib_step(params, state, x[0], spike_fn=F.SPIKE_FUNCTIONS[name], quant_fn="round")
    torch.testing.assert_close(y, y_ref)
    ys, _ = F.scan(F.lib_step, params, state, x, spike_fn=name, quant_fn="round")
    torch.testing.assert_close(ys[0], y_ref)


def test_an_unknown_spike_fn_name_lists_the_names():
    with pytest.raises(ValueError, match=r"LIB: spike_fn must be one of \['atan', 'erf', 'fast_sigmoid', 'sigmoid'"):
        tt.nn.LIB(16, spike_fn="atann")
    with pytest.raises(ValueError, match="lib_step: spike_fn must be one of"):
        F.lib_step(F.init_params("LIB", N), F.init_state("LIB", torch.ones(N)), torch.ones(N), spike_fn="arctan")


def _public_functions():
    mods = ["tracetorch", "tracetorch.nn", "tracetorch.functional", "tracetorch.state", "tracetorch.encode",
            "tracetorch.loss", "tracetorch.plot", "tracetorch.nir"]
    seen, out = set(), []
    for m in mods:
        mod = importlib.import_module(m)
        for name in getattr(mod, "__all__", []):
            fn = getattr(mod, name)
            if not inspect.isfunction(fn) or id(fn) in seen:
                continue
            seen.add(id(fn))
            params = inspect.signature(fn).parameters.values()
            if any(p.kind is p.VAR_KEYWORD for p in params):
                continue  # takes any keyword (init_params' values): checked by the function itself, below
            if any(p.default is not p.empty or p.kind is p.KEYWORD_ONLY for p in params):
                out.append((f"{m}.{name}", fn))
    out += [(f"TTModel.{n}", getattr(tt.TTModel, n)) for n in ("set_states", "save_states", "load_states")]
    return out


PUBLIC = _public_functions()


def test_the_walk_finds_the_functions_with_keyword_options():
    names = {n for n, _ in PUBLIC}
    assert {"tracetorch.nn.run", "tracetorch.functional.lib_step",
            "tracetorch.encode.rate", "tracetorch.state.load_states"} <= names


@pytest.mark.parametrize("name,fn", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_every_public_function_names_a_bad_keyword_and_the_valid_ones(name, fn):
    sig = inspect.signature(fn)
    options = [p.name for p in sig.parameters.values() if p.default is not p.empty or p.kind is p.KEYWORD_ONLY]
    bad = options[0] + "x"
    with pytest.raises(TypeError) as info:
        fn(**{bad: 1})
    message = str(info.value)
    assert f"unknown keyword argument {bad!r}" in message and f"did you mean {options[0]!r}" in message, message
    assert all(o in message.split("valid keywords:")[1] for o in options), message


def test_init_params_names_an_unknown_value():
    with pytest.raises(TypeError, match=r"init_params\(LIB\): unknown argument\(s\) \['betaa'\]; LIB takes \['beta'"):
        F.init_params("LIB", N, betaa=0.5)


def test_scan_names_the_bad_keyword_and_the_valid_ones():
    params, state, xs = F.init_params("LIB", N), F.init_state("LIB", torch.ones(B, N)), torch.ones(T, B, N)
    with pytest.raises(TypeError, match=r"scan: unknown keyword argument\(s\) \['fsat'\]; valid keywords: fast, chunk"):
        F.scan(F.lib_step, params, state, xs, fsat=True)


def test_run_names_the_misspelt_keyword():
    with pytest.raises(TypeError, match=r"run: unknown keyword argument 'detach_evry' \(did you mean 'detach_every'\?\)"
                       r"; valid keywords: model, xs, .*fast, chunk, checkpoint, detach_every"):
        tt.nn.run(_net(), torch.ones(T, B, N), detach_evry=1)
    model = tt.TTModel()
    model.net = _net()
    with pytest.raises(TypeError, match="valid keywords: model, xs"):
        model.run(torch.ones(T, B, N), detach_evry=1)


def test_errors_inside_a_wrapped_function_pass_unchanged():
    with pytest.raises(TypeError, match="^run: model must be an nn.Module"):
        tt.nn.run("not a model", torch.ones(T, B, N))


def test_layer_constructors_name_a_bad_keyword_too():
    with pytest.raises(TypeError, match=r"LIB: unknown keyword argument 'betaa' \(did you mean 'beta'\?\); valid keywords"):
        tt.nn.LIB(N, betaa=0.5)


# ---- item 6: a model-wide construction default -------------------------------------------------


def test_defaults_set_construction_defaults_inside_the_block_only():
    before = tt.nn.LIB(N)
    with tt.nn.defaults(quant_fn="round", spike_fn="atan"):
        inside, explicit, li = tt.nn.LIB(N), tt.nn.SRLIT(N, quant_fn="bernoulli"), tt.nn.LI(N)
        with tt.nn.defaults(beta=0.5):
            nested, dual = tt.nn.LIB(N), tt.nn.DLIB(N)
    after = tt.nn.LIB(N)
    assert inside.quant_fn == "round" and inside.spike_fn == F.Atan()
    assert explicit.quant_fn == "bernoulli" and explicit.spike_fn == F.Atan()  # an explicit argument wins
    assert li.spec.name == "LI"  # no firing head: the firing defaults do not apply to it
    assert nested.quant_fn == "round" and torch.allclose(nested.beta, torch.tensor(0.5))
    assert torch.allclose(dual.pos_beta, torch.tensor(0.9))  # DLIB has no "beta": not its keyword
    assert before.quant_fn == after.quant_fn == "bernoulli"  # construction only; restored on leaving
    torch.testing.assert_close(tt.nn.LIB(N).beta, torch.full((N,), 0.9))


def test_defaults_refuse_unknown_keywords_and_bad_values():
    with pytest.raises(TypeError, match=r"defaults: unknown keyword argument 'quant' \(did you mean 'quant_fn'\?\)"):
        with tt.nn.defaults(quant="round"):
            pass
    with pytest.raises(ValueError, match="quant_fn must be one of"):
        with tt.nn.defaults(quant_fn="rounded"):
            pass
    assert tt.nn.LIB(N).quant_fn == "bernoulli"


def test_defaults_restore_after_an_exception():
    with pytest.raises(RuntimeError):
        with tt.nn.defaults(quant_fn="round"):
            raise RuntimeError
    assert tt.nn.LIB(N).quant_fn == "bernoulli"


# ---- item 4: snnTorch's spk, mem = lif(x) --------------------------------------------------------


@pytest.mark.parametrize("name", ["LIB", "DSLIT", "LI"])
def test_return_mem_gives_spikes_and_membrane(name):
    # without it, a B = 2 output tensor unpacks into its two batch rows: the option says what is meant
    layer = tt.nn.LAYERS[name](N, **({"quant_fn": "round"} if tt.nn.LAYERS[name].spec.fires else {}))
    plain = tt.nn.LAYERS[name](N, **({"quant_fn": "round"} if layer.spec.fires else {}))
    layer.return_mem = True
    x = torch.randn(T, 2, N)
    for t in range(T):
        spk, mem = layer(x[t])
        y = plain(x[t])
        assert spk.shape == mem.shape == (2, N)
        torch.testing.assert_close(spk, y)
        expected = plain.mem if "mem" in plain.state_names else plain.pos_mem + plain.neg_mem
        torch.testing.assert_close(mem, expected)
    layer.zero_states()
    plain.zero_states()
    ys, mems = tt.nn.run(nn.Sequential(nn.Identity(), layer), x)
    torch.testing.assert_close(ys, tt.nn.run(plain, x))
    torch.testing.assert_close(mems[-1], layer.membrane)


# ---- item 2: a hint where torch's "backward a second time" message misleads ------------------------


@pytest.mark.parametrize("fast", [None, False])
def test_a_second_batch_without_zero_states_warns_what_to_do(fast):
    net = _net()
    xs = torch.randn(T, B, N)
    tt.nn.run(net, xs, fast=fast).sum().backward()
    with pytest.warns(UserWarning, match=r"zero_states\(\).*new sequence.*detach_states\(\).*truncated BPTT") as rec:
        ys = tt.nn.run(net, xs, fast=fast)
    assert rec[0].filename == __file__  # points at the user's call
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        ys.sum().backward()


def test_no_warning_where_the_states_are_fine():
    net = _net()
    xs = torch.randn(T, B, N)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tt.nn.run(net, xs).sum().backward()
        tt.state.zero_states(net)
        tt.nn.run(net, xs).sum().backward()
        tt.state.detach_states(net)
        tt.nn.run(net, xs).sum().backward()
        tt.state.zero_states(net)
        a = tt.nn.run(net, xs)  # one graph over two calls, backward once: legitimate
        b = tt.nn.run(net, xs)
        (a.sum() + b.sum()).backward()
        with torch.no_grad():
            tt.nn.run(net, xs)  # no grad mode: nothing to say


# ---- item 1: layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [None, False])
def test_batch_first_data_runs_with_time_dim_1(fast):
    net, xs = _net(), torch.randn(T, B, N)
    ref = tt.nn.run(net, xs, fast=fast)
    ref_states = tt.state.get_states(net)
    tt.state.zero_states(net)
    batch_first = xs.transpose(0, 1).contiguous()  # [B, T, N], as a data loader hands it
    ys = tt.nn.run(net, batch_first, fast=fast, time_dim=1)
    assert ys.shape == (B, T, 2)
    torch.testing.assert_close(ys, ref.transpose(0, 1))
    for path, state in tt.state.get_states(net).items():
        for a, b in zip(state, ref_states[path]):
            torch.testing.assert_close(a, b)
    model = Model()
    torch.testing.assert_close(model.run(batch_first, time_dim=1, fast=fast), ref.transpose(0, 1))


def test_scan_takes_batch_first_data():
    params = F.init_params("SLIB", N)
    xs = torch.randn(T, B, N)
    state = F.init_state("SLIB", xs[0])
    ref, ref_final = F.scan(F.slib_step, params, state, xs, quant_fn="round")
    ys, final = F.scan(F.slib_step, params, state, xs.transpose(0, 1).contiguous(), quant_fn="round", time_dim=1)
    torch.testing.assert_close(ys, ref.transpose(0, 1))
    torch.testing.assert_close(final.mem, ref_final.mem)
    with pytest.raises(ValueError, match="scan: time_dim must be 0"):
        F.scan(F.slib_step, params, state, xs, time_dim=2)


def test_swapped_time_and_batch_against_live_states_is_refused_saying_so():
    net = _net()
    tt.nn.run(net, torch.randn(T, B, N))  # states of batch B
    before = {p: [t.clone() for t in s] for p, s in tt.state.get_states(net).items()}
    with pytest.raises(ValueError, match=r"hold a batch of 3.*is 3 steps of a batch of 5: T and B look swapped.*time_dim=1"):
        tt.nn.run(net, torch.randn(B, T, N))  # batch-first data, read time-first
    with pytest.raises(ValueError, match=r"T and B look swapped.*time_dim=0"):
        tt.nn.run(net, torch.randn(T, B, N), time_dim=1)
    for p, s in tt.state.get_states(net).items():
        assert all(torch.equal(a, b) for a, b in zip(s, before[p]))  # refused before anything changed
    tt.nn.run(net, torch.randn(7, B, N))  # another length of the same batch: fine


def test_run_and_the_docs_say_the_layout_first():
    assert "time-first" in tt.nn.run.__doc__.splitlines()[0] and "[T, B, ...]" in tt.nn.run.__doc__.splitlines()[0]
    assert "time-first" in tt.TTModel.run.__doc__.splitlines()[0]
    assert "time-first" in F.scan.__doc__.splitlines()[0]
    index = (ROOT / "docs" / "index.md").read_text().splitlines()
    first = next(line for line in index if line.strip() and not line.startswith("#"))
    assert "[T, B, ...]" in first and "time_dim=1" in first, first


# ---- item 3: a whole model, pure, over a sequence --------------------------------------------------


def _members(k: int) -> list[nn.Sequential]:
    return [_net() for _ in range(k)]


def test_functional_run_equals_run_and_leaves_the_model_alone():
    net, xs = _net(), torch.randn(T, B, N)
    tt.nn.run(net, xs)
    own = {p: [t.clone() for t in s] for p, s in tt.state.get_states(net).items()}
    states = tt.state.get_states(net)
    ys, new = tt.nn.functional_run(net, None, states, xs)
    ref = tt.nn.run(_copy_with_states(net, states), xs)
    torch.testing.assert_close(ys, ref)
    for p, s in tt.state.get_states(net).items():
        assert all(torch.equal(a, b) for a, b in zip(s, own[p]))  # the model's own states untouched
    assert set(new) == {"1", "3"}
    with pytest.raises(ValueError, match=r"functional_run: states has no layer at \['9'\]"):
        tt.nn.functional_run(net, None, {"9": None}, xs)


def _copy_with_states(net, states):
    import copy

    other = copy.deepcopy(net)
    tt.state.set_states(other, states)
    return other


def test_functional_run_under_vmap_is_a_population_of_whole_models():
    members, xs = _members(3), torch.randn(T, B, N)
    for i, m in enumerate(members):
        with torch.no_grad():
            m[0].weight.mul_(1 + i)
    params, _ = torch.func.stack_module_state(members)
    ys, new = torch.func.vmap(lambda p, x: tt.nn.functional_run(members[0], p, None, x), in_dims=(0, None))(params, xs)
    assert ys.shape == (3, T, B, 2) and new["1"].mem.shape == (3, B, N)
    for i, m in enumerate(members):
        torch.testing.assert_close(ys[i], tt.nn.run(m, xs))
        tt.state.zero_states(m)
    # and grad of a whole model over a sequence, equal to autograd through run
    p0 = {k: v.detach() for k, v in members[0].named_parameters()}
    grads = torch.func.grad(lambda p: tt.nn.functional_run(members[0], p, None, xs)[0].square().sum())(p0)
    tt.nn.run(members[0], xs).square().sum().backward()
    for k, v in members[0].named_parameters():
        torch.testing.assert_close(grads[k], v.grad)


def test_model_called_on_a_whole_sequence_is_one_step_so_use_run():
    # the SpikingJelly habit model(xs): one step over a [T, B] batch, not T steps; run is the sequence call
    net, xs = _net(), torch.randn(T, B, N)
    one_step = net(xs)
    tt.state.zero_states(net)
    assert not torch.allclose(one_step, tt.nn.run(net, xs))


# ---- items 9 and 11: the README agrees with the code and says why tests skip ------------------------


def _adapt_lines(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip().startswith("adapt = params.rho")]


def test_readme_and_the_custom_layer_tutorial_write_alif_alike():
    readme = _adapt_lines((ROOT / "README.md").read_text())
    tutorial = _adapt_lines((ROOT / "docs" / "tutorials" / "custom_layer.md").read_text())
    assert readme and tutorial and set(readme) == set(tutorial), (readme, tutorial)


def test_readme_says_why_tests_skip():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("reported as skipped"):][:900]
    assert "CUDA" in section and "typing" in section and "-rs" in section


def test_an_inplace_change_is_not_taken_for_a_freed_graph():
    layer = tt.nn.LIB(N, quant_fn="round")
    y = layer(torch.randn(B, N))
    with torch.no_grad():
        y.add_(1.0)  # bumps the version of a tensor the state's graph saved: torch's own error fits that
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tt.nn.run(layer, torch.randn(T, B, N))


def test_the_migration_habits_table_is_run_by_its_code():
    page = (ROOT / "docs" / "migration.md").read_text()
    section = page[page.index("## Habits from other libraries"):page.index("A snnTorch training loop")]
    code = section[section.index("```python"):]
    for row in [r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| habit")]:
        ours = row.rstrip("|").split("|")[-1]
        spelled = [c for c in ours.split("`")[1::2] if "(" in c or "=" in c or "." in c]
        key = spelled[0].split("(")[0].split("=")[0].strip() if spelled else None
        assert key is None or key.split(";")[0].split()[0].split(".")[-1] in code, (row, key)
