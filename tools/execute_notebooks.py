#!/usr/bin/env python3
"""Re-execute notebooks top to bottom in a fresh kernel and store their outputs in place.

    python tools/execute_notebooks.py                      every notebook of _toc.yml
    python tools/execute_notebooks.py chapters/a/b.ipynb   just these

Runs offline (D2LTVM_OFFLINE=1 unless set), as CI does, so the stored outputs are the ones nbval
compares against. Cell and notebook metadata that changes on every run (timings, widgets) is
dropped; tags (e.g. for nbval or jupyter-book) are kept.
"""
import os
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sync_package import ROOT, toc_files  # noqa: E402

KEEP_NB_METADATA = ("kernelspec", "language_info")


def execute(path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_NB_METADATA}
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("collapsed", None)
        cell.metadata.pop("scrolled", None)
    nbformat.write(nb, path)


def main(argv):
    os.environ.setdefault("D2LTVM_OFFLINE", "1")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    paths = [pathlib.Path(a).resolve() for a in argv] or [
        ROOT / p for p in toc_files(ROOT) if p.suffix == ".ipynb"]
    for path in paths:
        start = time.time()
        print(f"executing {path.relative_to(ROOT)} ...", flush=True)
        execute(path)
        print(f"  done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
