// MathJax reads the maths arithmatex marked (pymdownx.arithmatex, generic mode); the script itself
// is shipped with the site from the django-static-mathjax package by docs/hooks.py (no CDN).
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
