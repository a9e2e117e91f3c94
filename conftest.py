"""pytest set-up for the whole repository (tests/ and the nbval runs over chapters/).

It sits at the top level so that it also applies to `pytest chapters/some.ipynb`: the tests,
like the stored notebook outputs, run offline (see README.md, "Offline and online").
"""
import os
import pathlib
import sys

os.environ.setdefault("D2LTVM_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "tools"))
