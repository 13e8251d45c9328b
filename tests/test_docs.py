"""The documentation: every Python block of docs/*.md and README.md runs, the maths page matches the
neuron table, every public name has an API entry, the figures' script runs, nothing cites SPEC.md.

A block that is not meant to run (a fragment, a sketch needing data or a second machine) is
preceded by the line ``<!-- docs-test: skip -->``; the blocks of one page run in order in one
namespace, in a temporary working directory.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

import tracetorch as tt
from tracetorch.functional import NAMES, SPECS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP = "<!-- docs-test: skip -->"
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md")) + ["README.md"]
#: pages whose code needs an optional extra (CI installs it): skipped, saying so, without it
NEEDS = {"docs/tutorials/events.md": "tonic"}
#: pages whose blocks train something for a few seconds
SLOW = {"docs/tutorials/digits.md", "docs/tutorials/sequential_digits.md", "docs/tutorials/populations.md"}


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``[(line, code, skipped)]`` of every fenced ``python`` block of a Markdown text."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((start + 1, "\n".join(body) + "\n", previous == SKIP))
        i += 1
    return blocks


def test_block_parser():
    text = "a\n```python\nx = 1\n```\n\n<!-- docs-test: skip -->\n```python\nboom()\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n", False), (7, "boom()\n", True)]


def test_few_blocks_are_skipped():
    counts = [python_blocks((ROOT / page).read_text()) for page in PAGES]
    total = sum(len(b) for b in counts)
    skipped = sum(s for b in counts for _, _, s in b)
    assert total >= 30 and skipped <= 6, (total, skipped)


@pytest.mark.parametrize(
    "page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in PAGES]
)
def test_page_code_runs(page, tmp_path, monkeypatch):
    if page in NEEDS:
        pytest.importorskip(NEEDS[page], reason=f"{page} needs the optional {NEEDS[page]!r} extra")
    blocks = python_blocks((ROOT / page).read_text())
    runnable = [(line, code) for line, code, skipped in blocks if not skipped]
    if not runnable:
        pytest.skip(f"{page} has no Python block to run")
    monkeypatch.chdir(tmp_path)
    # temporary files the page makes land under tmp_path; mkdtemp itself stays real, since the
    # kernel build makes (and removes) its own private directory with it
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    namespace: dict = {"__name__": "__docs__"}
    try:
        for line, code in runnable:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)


def test_maths_page_table_matches_the_specs():
    text = (DOCS / "maths.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z]+)` \| (.*) \|$", text, re.M))
    assert list(rows) == list(NAMES)
    for name, spec in SPECS.items():
        params, states = rows[name].split(" | ")
        assert params == " ".join(f"{p.name}={p.default!r}" for p in spec.params), name
        assert states == ", ".join(spec.state_names), name
    assert "## Fused kernels: the backward pass" in text
    for section in ("## Names", "## Parameters", "## One timestep", "### The dual half-split", "## Spike and quantization functions"):
        assert section in text


def test_docstrings_point_to_the_maths_page():
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "tracetorch").rglob("*.py*") if "SPEC.md" in p.read_text()
    ]
    offenders += [page for page in PAGES if "SPEC.md" in (ROOT / page).read_text()]
    assert offenders == []
    assert 'docs/maths.md, "One timestep"' in tt.nn.LIB.__doc__ and 'docs/maths.md, "One timestep"' in tt.functional.lib_step.__doc__
    for section in ("One timestep", "Parameters", "Spike and quantization functions", "Names"):
        assert f"## {section}" in (DOCS / "maths.md").read_text()


def _api_text() -> str:
    return "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))


def test_api_reference_covers_every_public_name():
    api = _api_text()
    missing = []
    for module, names in (
        ("tracetorch.nn", [n for n in tt.nn.__all__]),
        ("tracetorch.functional", [n for n in tt.functional.__all__ if n not in ("constraints", "spikes", "fast")]),
        ("tracetorch.state", tt.state.__all__),
    ):
        missing += [f"{module}.{n}" for n in names if f"::: {module}.{n}\n" not in api]
    for module in ("encode", "loss", "plot", "monitoring", "nir", "datasets"):
        if f"::: tracetorch.{module}\n" not in api:
            missing.append(f"tracetorch.{module}")
    assert missing == []


def test_nav_lists_every_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert [p for p in pages if f": {p}\n" not in nav] == []


def test_readme_links_to_the_docs():
    readme = (ROOT / "README.md").read_text()
    for page in ("introduction", "maths", "migration", "benchmarks", "tutorials/digits", "tutorials/multi_process"):
        assert f"docs/{page}.md" in readme, page


def test_benchmarks_page_embeds_the_chart():
    assert "![" in (DOCS / "benchmarks.md").read_text() and "(benchmarks.png)" in (DOCS / "benchmarks.md").read_text()


@pytest.mark.slow  # matplotlib start-up
def test_neuron_plot_script_draws_its_figures(tmp_path):
    sys.path.insert(0, str(DOCS))
    try:
        import make_neuron_plots
    finally:
        sys.path.remove(str(DOCS))
    paths = make_neuron_plots.main(tmp_path)
    assert [p.name for p in paths] == ["neuron_families.png", "neuron_prefixes.png"]
    for p in paths:
        checked_in = DOCS / p.name
        assert checked_in.exists() and 0 < checked_in.stat().st_size < 200_000  # small, and in the repository
        assert p.stat().st_size > 10_000
        assert f"({p.name})" in (DOCS / "introduction.md").read_text()


def test_docs_extra_and_ci():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^docs = \[.*"mkdocs-material.*"mkdocstrings\[python\]', pyproject, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in ci and re.search(r"-e .\.\[test,docs,typing\]", ci)
    assert "mypy --follow-imports=silent tests/typing/public_api.py" in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def test_docs_hook_embeds_the_chart_only_once_it_exists(tmp_path):
    sys.path.insert(0, str(DOCS))
    try:
        import hooks
    finally:
        sys.path.remove(str(DOCS))
    page = "text\n\n![ratios](benchmarks.png)\n\n![other](neuron_families.png)\n"
    absent = hooks.on_page_markdown(page, None, {"docs_dir": str(tmp_path)}, None)
    assert "![ratios]" not in absent and "python benchmarks/bench.py" in absent
    assert "![other](neuron_families.png)" in absent  # every other image is left to the strict check
    (tmp_path / "benchmarks.png").write_bytes(b"png")
    assert hooks.on_page_markdown(page, None, {"docs_dir": str(tmp_path)}, None) == page


def test_docs_hook_drops_sphinx_roles():
    sys.path.insert(0, str(DOCS))
    try:
        import hooks
    finally:
        sys.path.remove(str(DOCS))
    html = "see :func:<code>tracetorch.nn.run</code> and :class:<code>~tracetorch.nn.TTLayer</code>"
    assert hooks.on_page_content(html, None, {}, None) == "see <code>tracetorch.nn.run</code> and <code>tracetorch.nn.TTLayer</code>"
