"""MkDocs hook: an image that a script writes later (the benchmark chart) is shown once it exists.

``benchmarks/bench.py`` writes ``docs/benchmarks.png``. Until a run has written it, a page that
embeds it would fail ``mkdocs build --strict`` on a missing file; this hook replaces such an
embed with a sentence saying where the image comes from. Only the images listed here get this
treatment: every other link is still checked strictly.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.tracetorch")

#: where the site keeps MathJax, as mkdocs.yml's extra_javascript names it
MATHJAX_IN_SITE = Path("js") / "mathjax" / "tex-svg.js"


def mathjax_source() -> Path | None:
    """MathJax's self-contained TeX-to-SVG bundle from the django-static-mathjax package (docs extra)."""
    try:
        import mathjax  # the django-static-mathjax package
    except ImportError:
        return None
    path = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg.js"
    return path if path.exists() else None


def on_post_build(config) -> None:
    """Ship MathJax with the built site, so its maths typesets offline (no CDN at view time)."""
    src = mathjax_source()
    if src is None:
        log.warning("MathJax not found: pip install -e '.[docs]' (django-static-mathjax); the maths stays raw TeX")
        return
    dst = Path(config["site_dir"]) / MATHJAX_IN_SITE
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)

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
