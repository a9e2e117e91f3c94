"""Shared set-up of the test suite: the tests, like the notebooks, never touch the network."""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("D2LTVM_OFFLINE", "1")
