"""Smoke tests of examples/*.py: each example's main() with tiny settings, checking what it returns."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).parents[1] / "examples"


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (examples/ is not a package).

    examples/ goes on ``sys.path`` as when a script there runs: the examples import ``digits_data``.
    """
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _keep_torch_globals():
    """The examples set torch's thread count and seed; give the rest of the session its own back."""
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


def _is_fraction(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


@pytest.mark.slow  # the first plot pays matplotlib's start-up
@pytest.mark.parametrize("layer", ["LIB", "LI", "DSRLITS"])
def test_digits(layer, tmp_path):
    digits = load_example("digits")
    args = ["--epochs", "2", "--timesteps", "6", "--hidden", "64", "--layer", layer, "--quiet", "--out", str(tmp_path)]
    result = digits.main(args)
    assert _is_fraction(result["accuracy"]) and _is_fraction(result["train_accuracy"])
    if layer == "LIB":
        assert result["accuracy"] > 0.4  # two short epochs already beat chance (0.1) by far
    for key in ("raster", "membrane"):
        path = Path(result[key])
        assert path.parent == tmp_path and path.suffix == ".png" and path.stat().st_size > 1000


@pytest.mark.slow
def test_digits_is_deterministic(tmp_path):
    digits = load_example("digits")
    args = ["--epochs", "1", "--timesteps", "3", "--hidden", "16", "--quant-fn", "bernoulli", "--quiet"]
    first = digits.main([*args, "--out", str(tmp_path / "a")])
    second = digits.main([*args, "--out", str(tmp_path / "b")])
    assert first["accuracy"] == second["accuracy"] and first["train_accuracy"] == second["train_accuracy"]


def test_functional_step():
    example = load_example("functional_step")
    args = ["--timesteps", "12", "--batch-size", "2", "--inputs", "6", "--neurons", "8"]
    result = example.main([*args, "--population", "3", "--steps", "6"])
    assert result["loop_equals_scan"] and result["vmap_equals_loop"]
    assert result["rates"].shape == (3, 8) and ((result["rates"] >= 0) & (result["rates"] <= 1)).all()
    # the vmapped grad steps move every member towards its target rate
    assert result["error_after"].mean() < result["error_before"].mean()


def test_custom_layer():
    example = load_example("custom_layer")
    result = example.main(["--epochs", "2", "--timesteps", "4", "--hidden", "16"])
    assert _is_fraction(result["accuracy"]) and result["accuracy"] > 0.2
    assert all(math.isfinite(v) for v in result["losses"]) and result["losses"][1] < result["losses"][0]
    assert result["compiled_equal"]
    assert result["state_keys"] == ["alif.mem", "alif.adapt", "readout.mem"]
    assert 0.0 < result["adapt_rate"] < 1.0


def test_save_load_states(tmp_path):
    example = load_example("save_load_states")
    result = example.main(["--warmup", "3", "--steps", "3", "--out", str(tmp_path)])
    assert result["pt_identical"] and result["safetensors_identical"] and result["dict_identical"]
    assert not result["zero_states_identical"]  # the states carry the history
    assert result["failed_load_unchanged"]
    assert {Path(p).name for p in result["files"]} == {"states.pt", "states.safetensors"}
    assert all(Path(p).stat().st_size > 0 for p in result["files"])


def test_compile_inference_ttcompile():
    example = load_example("compile_inference")
    result = example.main(
        ["--epochs", "1", "--timesteps", "3", "--hidden", "16", "--repeats", "1", "--no-torch-compile"]
    )
    assert result["tt_equal"] and result["uncompiled_equal"]
    assert _is_fraction(result["accuracy"]) and "compiled_equal" not in result


@pytest.mark.slow
def test_compile_inference_torch_compile():
    example = load_example("compile_inference")
    result = example.main(["--epochs", "0", "--timesteps", "3", "--hidden", "8", "--repeats", "1"])
    assert result["tt_equal"] and result["uncompiled_equal"]
    assert result["compiled_agreement"] > 0.99 and result["compile_s"] > 0


@pytest.mark.parametrize("dense_rec", [True, False])
def test_sequential_digits(dense_rec):
    example = load_example("sequential_digits")
    args = ["--epochs", "1", "--hidden", "32", "--batch-size", "64"] + ([] if dense_rec else ["--no-dense-rec"])
    result = example.main(args)
    assert _is_fraction(result["accuracy"]) and _is_fraction(result["train_accuracy"])


def test_timing_tasks_smoke(tmp_path):
    example = load_example("timing_tasks")
    table = tmp_path / "RESULTS.md"
    table.write_text("# Results\n\nkept\n")
    result = example.main(["--smoke", "--seeds", "0", "--quiet", "--threads", "1", "--results", str(table)])
    assert set(result) == {"randman", "store_recall"}
    for task in result.values():
        assert set(task) == {"LIB", "ALIB", "LIB+delays"}
        for entry in task.values():
            assert all(_is_fraction(a) for a in entry["accuracies"]) and entry["seconds"] > 0
        # the per-synapse delays add one learnable delay per weight of the first layer
        assert task["LIB+delays"]["params"] > task["LIB"]["params"]
    text = table.read_text()
    assert text.startswith("# Results\n\nkept\n") and "## Timing tasks" in text
    assert text.count("| randman | ") == 3 and text.count("| store_recall | ") == 3


@pytest.mark.parametrize("rule", ["eprop", "ottt"])
def test_online_stream(rule):
    online = load_example("online_stream")
    result = online.main(["--steps", "300", "--eval-steps", "100", "--hidden", "16", "--rule", rule, "--quiet"])
    assert _is_fraction(result["accuracy_before"]) and _is_fraction(result["accuracy_after"])
    assert 0 < result["online_bytes"] < result["bptt_bytes"]  # BPTT over 300 steps holds more already
