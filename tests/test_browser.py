"""The rendered book in a real browser: headless Chromium, driven by Selenium.

For every page of _toc.yml: no JavaScript console errors, every image loaded, every internal link
resolving to an existing page and anchor, no code cell wider than its column at a 1280-pixel-wide
window; and the search page finds a term that only one chapter contains. A screenshot of one
chapter is saved under _build/ for a person to look at.

Needs Debian's `chromium` and `chromium-driver` (no browser is downloaded at run time). Where they
are missing the test skips and says why, unless D2LTVM_REQUIRE_BROWSER=1 (set by .ci/run, which
installs them), where it fails instead.

Run it alone with:  make test-browser
"""
import functools
import html.parser
import http.server
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import urllib.parse

import pytest

import sync_package
from sync_package import ROOT

WINDOW = (1280, 900)
SCREENSHOT = ROOT / "_build" / "browser" / "resnet18.png"
SEARCH_CANDIDATES = ("BlockBuilder", "rfactor", "emit_te", "symbolic_trace", "Winograd")
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)


def _first_on_path(names):
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    return None


def browser_or_skip():
    """Return (chromium, chromedriver) paths, or skip (fail in CI) naming what is missing."""
    browser, driver = _first_on_path(CHROMIUM), _first_on_path(DRIVER)
    missing = [n for n, p in (("chromium", browser), ("chromium-driver", driver)) if not p]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        why = (f"browser test needs {', '.join(missing)} (Debian: apt-get install chromium "
               "chromium-driver; pip: requirements.txt)")
        if os.environ.get("D2LTVM_REQUIRE_BROWSER") == "1":
            pytest.fail(why + "; D2LTVM_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(why)
    return browser, driver


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the book into a temporary folder and serve it over HTTP; yield (root URL, folder)."""
    browser_or_skip()
    out = tmp_path_factory.mktemp("book")
    jupyter_book = pathlib.Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jupyter_book), "build", "--path-output", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = out / "_build" / "html"
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()


@pytest.fixture(scope="module")
def driver(site):
    """A headless Chromium with a 1280-pixel-wide window that records console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(chromedriver), options=options)
    chrome.set_page_load_timeout(60)
    yield chrome
    chrome.quit()


def toc_pages():
    return [p.with_suffix(".html").as_posix() for p in sync_package.toc_files(ROOT)]


class _Links(html.parser.HTMLParser):
    """Collect the ids and the hrefs of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.hrefs = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


@functools.lru_cache(maxsize=None)
def parse_page(path):
    parser = _Links()
    parser.feed(pathlib.Path(path).read_text(encoding="utf-8"))
    return parser


def broken_internal_links(folder, page):
    """Return the internal links of PAGE (relative to FOLDER) whose page or anchor is missing."""
    broken = []
    for href in parse_page(folder / page).hrefs:
        url = urllib.parse.urlsplit(href)
        if url.scheme or url.netloc or href.startswith(("mailto:", "javascript:")):
            continue
        target = (folder / page).parent / urllib.parse.unquote(url.path) if url.path else folder / page
        if target.is_dir():
            target = target / "index.html"
        if not target.resolve().is_file():
            broken.append(f"{href} (no such page)")
        elif url.fragment and url.fragment not in parse_page(target.resolve()).ids:
            broken.append(f"{href} (no anchor #{url.fragment})")
    return broken


# MathJax 2's HTML-CSS output probes for web fonts with a font at about:blank, which Chromium
# refuses with one of these messages; the formulas still render (math_not_rendered checks that).
MATHJAX_FONT_PROBE = ("Access to font at 'about:blank'", "about:blank - Failed to load resource")


def console_errors(chrome):
    return [e["message"] for e in chrome.get_log("browser")
            if e["level"] == "SEVERE" and not any(p in e["message"] for p in MATHJAX_FONT_PROBE)]


IMAGES_NOT_LOADED = """
return Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => img.getAttribute('src'));
"""
CODE_WIDER_THAN_COLUMN = """
return Array.from(document.querySelectorAll('div.cell_input pre, div.highlight-python pre'))
  .filter(pre => pre.scrollWidth > pre.clientWidth + 1)
  .map(pre => pre.scrollWidth + 'px > ' + pre.clientWidth + 'px: '
              + pre.textContent.split('\\n').reduce((a, b) => a.length >= b.length ? a : b)
                                  .slice(0, 80));
"""


def math_not_rendered(chrome, seconds=30):
    """Return a problem line unless MathJax typeset every formula of the page within SECONDS."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    count = "return document.querySelectorAll('span.math.notranslate, div.math.notranslate').length;"
    typeset = "return document.querySelectorAll('.MathJax, .MathJax_CHTML, .MathJax_SVG').length;"
    formulas = chrome.execute_script(count)
    if not formulas:
        return []
    try:
        WebDriverWait(chrome, seconds).until(lambda d: d.execute_script(typeset) >= formulas)
    except TimeoutException:
        return [f"math not rendered: {chrome.execute_script(typeset)} of {formulas} formulas"]
    return []


@pytest.mark.parametrize("page", toc_pages())
def test_page_in_a_browser(site, driver, page):
    url, folder = site
    driver.get_log("browser")  # drop messages of earlier pages
    driver.get(url + page)
    title = driver.execute_script("const h = document.querySelector('main h1, article h1');"
                                  "return h ? h.textContent.trim() : '';")
    assert title, f"{page} shows no title"
    problems = [f"console error: {m}" for m in console_errors(driver)]
    problems += [f"image not loaded: {src}" for src in driver.execute_script(IMAGES_NOT_LOADED)]
    problems += [f"broken link: {b}" for b in broken_internal_links(folder, page)]
    problems += [f"code wider than its column: {w}"
                 for w in driver.execute_script(CODE_WIDER_THAN_COLUMN)]
    problems += math_not_rendered(driver)
    assert not problems, f"{page}:\n" + "\n".join(problems)


def unique_term():
    """Return (term, page) for the first candidate term that exactly one chapter contains."""
    pages = sync_package.toc_files(ROOT)
    for term in SEARCH_CANDIDATES:
        having = [p for p in pages if term in (ROOT / p).read_text(encoding="utf-8")]
        if len(having) == 1:
            return term, having[0].with_suffix(".html").as_posix()
    pytest.fail(f"none of {SEARCH_CANDIDATES} occurs in exactly one page; add a candidate")


def test_search_finds_the_one_chapter_with_a_term(site, driver):
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = site
    term, page = unique_term()
    driver.get_log("browser")  # drop messages of earlier pages
    driver.get(url + "search.html?q=" + urllib.parse.quote(term))
    found = WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "const r = document.querySelectorAll('#search-results li a');"
        "return r.length ? Array.from(r).map(a => a.getAttribute('href')) : null;"))
    assert any(href.split("#")[0].split("?")[0].endswith(page) for href in found), (term, found)
    assert not console_errors(driver)


def test_screenshot_of_a_chapter(site, driver):
    url, _ = site
    driver.get(url + "chapters/compiling_models/resnet18.html")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOT)) and SCREENSHOT.stat().st_size > 10_000
