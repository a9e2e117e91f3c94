"""The rendered book: it builds with zero warnings and has a page for every entry of _toc.yml."""
import shutil
import subprocess
import sys
import pathlib

import sync_package
from sync_package import ROOT


def test_book_renders_every_toc_entry_without_warnings(tmp_path):
    jupyter_book = pathlib.Path(sys.executable).with_name("jupyter-book")
    assert jupyter_book.exists(), f"jupyter-book is not installed next to {sys.executable}"
    result = subprocess.run([str(jupyter_book), "build", "-W", "--keep-going", "--path-output", str(tmp_path), str(ROOT)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    html = tmp_path / "_build" / "html"
    entries = sync_package.toc_files(ROOT)
    assert entries, "_toc.yml lists no pages"
    for rel in entries:
        page = html / rel.with_suffix(".html")
        assert page.exists(), f"no rendered page for {rel}"
        assert "<h1>" in page.read_text(encoding="utf-8") or "<h1" in page.read_text(encoding="utf-8"), f"{page} has no title"
    shutil.rmtree(tmp_path / "_build", ignore_errors=True)
