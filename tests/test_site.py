"""The documentation site as a reader sees it: built with MkDocs, opened in headless Chromium.

Text-level checks and ``mkdocs build --strict`` cannot see that maths shows as raw TeX or that an
underscore inside it turned a paragraph italic; a browser can. The built site must typeset its
maths offline (MathJax is shipped with the site by docs/hooks.py, no CDN). A screenshot of the
maths page is saved under ``tests/_artifacts/`` (git-ignored) for a person to look at.

Skips, saying so, where no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# the site needs the docs extra (MkDocs, Material, pymdown-extensions, the shipped MathJax); the test
# command of the README installs only the test extra, .ci/run installs both
for _module in ("mkdocs", "material", "pymdownx", "mathjax"):
    pytest.importorskip(_module, reason=f"the site check needs the docs extra ({_module!r} missing): pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "_artifacts"
BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
RAW_TEX = re.compile(r"\$\$|\\(?:frac|bar|sum|partial|odot|cdot|begin|mathrm|tilde|hat)\b")


def _text(dom: str) -> str:
    """The visible prose of a page: maths, code, scripts and styles removed."""
    dom = re.sub(r"(?s)<(script|style|pre|code|mjx-container|mjx-assistive-mml)\b.*?</\1>", " ", dom)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _dom(page: Path) -> str:
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_the_site_ships_mathjax_and_has_no_raw_tex(site):
    assert (site / "js" / "mathjax" / "tex-svg.js").stat().st_size > 1_000_000  # offline: shipped, not fetched
    pages = [p for p in site.rglob("index.html") if "assets" not in p.parts]
    assert len(pages) > 10
    for page in pages:
        text = page.read_text()
        assert "cdn.jsdelivr" not in text and "mathjax@" not in text, page
        prose = _text(re.sub(r'(?s)<(span|div) class="arithmatex">.*?</\1>', " ", text))
        found = RAW_TEX.search(prose)
        assert found is None, (page.relative_to(site), prose[max(0, found.start() - 80): found.end() + 80])


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed (apt-get install chromium): browser check skipped")
def test_the_maths_is_typeset_in_a_browser(site):
    pages = [p for p in site.rglob("index.html") if 'class="arithmatex"' in p.read_text()]
    assert any(p.parent.name == "maths" for p in pages)
    for page in pages:
        dom = _dom(page)
        marked = dom.count('class="arithmatex"')
        typeset = len(re.findall(r'(?s)class="arithmatex">\s*<mjx-container', dom))
        assert marked and typeset == marked, (page.relative_to(site), marked, typeset)
        prose = _text(dom)
        assert RAW_TEX.search(prose) is None, page.relative_to(site)
        for em in re.findall(r"(?s)<em>(.*?)</em>", dom):  # an underscore pair read as emphasis spans much
            assert len(_text(em)) < 120 and "\\" not in em, (page.relative_to(site), em[:200])
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "maths_page.png"
    subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                    "--window-size=1200,4000", f"--screenshot={shot}", (site / "maths" / "index.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
