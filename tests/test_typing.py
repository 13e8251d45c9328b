"""Static typing: py.typed ships, the stubs of the generated names match them, a type checker
accepts tests/typing/public_api.py and refuses each misuse in tests/typing/misuse.py."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import runpy
import sys
from pathlib import Path

import pytest

import tracetorch as tt
from tracetorch.functional import NAMES

ROOT = Path(__file__).resolve().parents[1]
TYPING = ROOT / "tests" / "typing"


def _make_stubs():
    spec = importlib.util.spec_from_file_location("make_stubs", TYPING / "make_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_py_typed_ships():
    assert (ROOT / "tracetorch" / "py.typed").exists()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^tracetorch = \["py.typed", "\*\*/\*.pyi"\]', pyproject, re.M)
    assert '"Typing :: Typed"' in pyproject


@pytest.mark.parametrize("path", ["tracetorch/nn/neurons.pyi", "tracetorch/functional/__init__.pyi"])
def test_checked_in_stub_is_what_the_generator_writes(path):
    """Regenerate with ``python tests/typing/make_stubs.py`` when this fails."""
    assert (ROOT / path).read_text() == _make_stubs().STUBS[path]()


def _stub_functions(path: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse((ROOT / path).read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    out[node.name] = item
    return out


def _arg_names_and_defaults(fn: ast.FunctionDef) -> list[tuple[str, object]]:
    args = fn.args.args + fn.args.kwonlyargs
    pos_defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + list(fn.args.defaults)
    defaults = pos_defaults + list(fn.args.kw_defaults)
    out = []
    for a, d in zip(args, defaults):
        value = inspect.Parameter.empty if d is None else ("..." if isinstance(d, ast.Constant) and d.value is Ellipsis else ast.literal_eval(d))
        out.append((a.arg, value))
    return out


def test_layer_stubs_match_the_generated_signatures():
    stub = _stub_functions("tracetorch/nn/neurons.pyi")
    for name in NAMES:
        live = inspect.signature(tt.nn.LAYERS[name]).parameters.values()
        expected = [("self", inspect.Parameter.empty)] + [
            (p.name, "..." if p.name == "spike_fn" else p.default) for p in live
        ]
        assert _arg_names_and_defaults(stub[name]) == expected, name


def test_step_stubs_match_the_generated_signatures():
    stub = _stub_functions("tracetorch/functional/__init__.pyi")
    for name in NAMES:
        fn = getattr(tt.functional, f"{name.lower()}_step")
        live = inspect.signature(fn).parameters.values()
        expected = [(p.name, "..." if p.name == "spike_fn" else p.default) for p in live]
        assert _arg_names_and_defaults(stub[fn.__name__]) == expected, name
        assert [p.kind for p in live][-2:] == [inspect.Parameter.KEYWORD_ONLY] * 2
        assert stub[fn.__name__].args.kwonlyargs  # keyword-only in the stub too


def test_the_28_names_are_spelled_out_for_static_tools():
    for module in ("nn/__init__.py", "snn.py"):
        tree = ast.parse((ROOT / "tracetorch" / module).read_text())
        imported = {a.name for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names}
        assert set(NAMES) <= imported, module
        (all_node,) = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__all__"]
        assert set(NAMES) <= set(ast.literal_eval(all_node.value)), module
    assert set(NAMES) <= set(tt.nn.__all__) and set(NAMES) <= set(tt.snn.__all__)


def test_public_api_file_runs():
    runpy.run_path(str(TYPING / "public_api.py"), run_name="__main__")


@pytest.mark.slow  # mypy reads torch's annotations (fast once .mypy_cache is warm, as after .ci/run's own mypy)
def test_mypy_accepts_the_public_api_and_refuses_misuse():
    api = pytest.importorskip("mypy.api")
    out, err, status = api.run(["--follow-imports=silent", str(TYPING / "public_api.py"), str(TYPING / "misuse.py")])
    errors = re.findall(r"^(\S+?):(\d+): error", out, re.M)
    assert {Path(f).name for f, _ in errors} == {"misuse.py"}, out
    expected = {i + 1 for i, line in enumerate((TYPING / "misuse.py").read_text().splitlines()) if "# E:" in line}
    assert {int(n) for _, n in errors} == expected, out


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
