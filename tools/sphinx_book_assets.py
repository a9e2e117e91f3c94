"""A Sphinx extension with the book's own page assets; _config.yml loads it.

- Each <script> of a page is kept once. jupyter-book 1.0.4 registers the inline scripts of
  sphinx-thebe and sphinx-togglebutton twice (once with filename None, once ""), so every page
  declared `const THEBE_JS_URL` twice, which the browser reports as a SyntaxError.
- MathJax is served from the book itself (the copy that the pip package jupyter-server-mathjax
  ships, MathJax 2.7) instead of a CDN, so that the math renders offline too.
- tools/book_static/d2ltvm.css fits 100-character code lines into the text column.
tests/test_browser.py checks all three in a real browser.
"""
import pathlib

STATIC = pathlib.Path(__file__).resolve().parent / "book_static"


def _drop_repeated_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # the two copies differ only in how they say "no file": None and ""
        key = (getattr(script, "filename", script) or "",
               repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def _use_local_assets(app):
    import jupyter_server_mathjax

    mathjax = pathlib.Path(jupyter_server_mathjax.__file__).parent / "static"
    app.config.html_static_path.extend([str(STATIC), str(mathjax)])
    app.config.mathjax_path = "MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
    # MathJax 2 reads `window.MathJax`, which Sphinx writes from mathjax3_config, as its author
    # config (an inline MathJax.Hub.Config block would stop it loading the file named above).
    # That copy ships the STIX-Web fonts only, so the HTML-CSS output is told to use them.
    app.config.mathjax3_config = {
        "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "imageFont": None}}
    app.add_css_file("d2ltvm.css")


def setup(app):
    app.connect("builder-inited", _use_local_assets)
    # early: html-page-context stops at the first handler that returns a template name
    app.connect("html-page-context", _drop_repeated_scripts, priority=1)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
