"""MkDocs hook: an image that a script writes later (the benchmark chart) is shown once it exists.

``benchmarks/bench.py`` writes ``docs/benchmarks.png``. Until a run has written it, a page that
embeds it would fail ``mkdocs build --strict`` on a missing file; this hook replaces such an
embed with a sentence saying where the image comes from. Only the images listed here get this
treatment: every other link is still checked strictly.
"""

from __future__ import annotations

import re
from pathlib import Path

#: images written by scripts, relative to docs/, and the script that writes each
GENERATED = {"benchmarks.png": "benchmarks/bench.py"}


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = Path(config["docs_dir"])
    for name, script in GENERATED.items():
        if (docs / name).exists():
            continue
        note = f"*(The chart is not built yet: run `python {script}` to write `docs/{name}`.)*"
        markdown = re.sub(rf"!\[[^\]]*\]\({re.escape(name)}\)", note, markdown)
    return markdown


_ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|exc|obj):(<code[^>]*>)(~)?")


def on_page_content(html: str, page, config, files) -> str:
    """Docstrings cite names Sphinx-style (``:func:`run```); show just the name, as code."""
    return _ROLE.sub(lambda m: m.group(1), html)
