"""What a first-time user trips over: clear errors, state helpers on any module, the examples' command lines."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import tracetorch as tt
from tests.test_examples import load_example

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("module", [tt.nn, tt.snn])
@pytest.mark.parametrize("name, ours", [("LIF", "LIB"), ("Leaky", "LIB"), ("LIFNode", "LIB"), ("Synaptic", "SLIB")])
def test_a_foreign_layer_name_says_ours(module, name, ours):
    with pytest.raises(AttributeError, match=rf"no attribute '{name}': unknown neuron type '{name}'; the {name} neuron is {ours}"):
        getattr(module, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'$"):
        module.nothing_here  # noqa: B018
    assert not hasattr(module, "LIF")


def test_the_traceback_does_not_suggest_li():
    proc = subprocess.run([sys.executable, "-c", "import tracetorch as tt; tt.nn.LIF"], capture_output=True, text=True)
    assert "the LIF neuron is LIB" in proc.stderr and "Did you mean" not in proc.stderr


def test_layers_table_unknown_key():
    with pytest.raises(KeyError, match="unknown neuron type 'LIF'; the LIF neuron is LIB here. The 52 types: LI, DLI"):
        tt.nn.LAYERS["LIF"]
    with pytest.raises(KeyError, match="unknown neuron type 'lib'; the lib neuron is LIB here"):
        tt.nn.LAYERS["lib"]
    assert tt.nn.LAYERS.get("LIF") is None and "LIF" not in tt.nn.LAYERS
    assert tt.nn.LAYERS["LIB"] is tt.nn.LIB and isinstance(tt.nn.LAYERS, dict) and len(tt.nn.LAYERS) == 52


def test_state_helpers_work_on_any_module():
    net = nn.Sequential(nn.Linear(3, 4), tt.nn.SLIB(4), nn.ModuleList([tt.nn.LI(4)]))
    x = torch.rand(2, 3, requires_grad=True)
    net[2][0](net[1](net[0](x)))
    tt.state.detach_states(net)
    assert all(not t.requires_grad for t in (net[1].mem, net[1].syn, net[2][0].mem))
    assert net[1].mem.abs().sum() > 0
    tt.state.zero_states(net)
    assert net[1].mem is None and net[1].syn is None and net[2][0].mem is None


class Chain(tt.TTModel):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), tt.nn.LIB(5))

    def forward(self, x):
        return self.net(x)


class Outer(tt.TTModel):
    def __init__(self):
        super().__init__()
        self.inner = Chain()

    def forward(self, x):
        return self.inner(x)


def test_an_error_inside_a_model_names_the_layer_path():
    msg = r"net\.1 \(LIB\): input size along dim=-1 must be num_neurons=5, received 4"
    with pytest.raises(ValueError, match=rf"^{msg}"):
        Chain()(torch.rand(2, 3))
    with pytest.raises(ValueError, match=rf"^{msg}"):
        Chain().run(torch.rand(3, 2, 3))
    with pytest.raises(ValueError, match=rf"^inner\.{msg}"):
        Outer()(torch.rand(2, 3))
    with pytest.raises(RuntimeError, match=r"^in net\.0 \(Linear\): mat1 and mat2"):
        Chain()(torch.rand(2, 7))
    # an error of the model's own forward is left alone
    class Broken(Chain):
        def forward(self, x):
            raise KeyError("mine")

    with pytest.raises(KeyError, match="^'mine'$"):
        Broken()(torch.rand(2, 3))


def help_text(name, capsys):
    with pytest.raises(SystemExit):
        load_example(name).main(["--help"])
    return capsys.readouterr().out


def test_digits_cli_help_and_zero_epochs(tmp_path, capsys):
    out = help_text("digits", capsys)
    assert "``" not in out and "(default: 20)" in out and "(default: LIB)" in out
    digits = load_example("digits")
    result = digits.main(["--epochs", "0", "--timesteps", "3", "--hidden", "8", "--quiet", "--out", str(tmp_path)])
    assert 0.0 <= result["accuracy"] <= 1.0 and Path(result["membrane"]).exists()


@pytest.mark.parametrize("name", ["sequential_digits", "save_load_states", "population_vmap", "custom_layer"])
def test_examples_help_is_plain_with_defaults(name, capsys):
    out = help_text(name, capsys)
    assert "``" not in out and "(default: 0)" in out  # every example has --seed 0


def test_save_load_states_reports_success(tmp_path, capsys):
    result = load_example("save_load_states").main(["--warmup", "3", "--steps", "3", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert result["ok"] and "False" not in printed and "DIFFERS" not in printed
    assert "control: continuation from zero states differs, as it should (ok)" in printed
