#!/usr/bin/env python3
"""Refuse, with a clear message, a Python the book does not support, or a venv made by another.

    python tools/check_python.py VENV 3.11 3.12 3.13

Run by the Makefile with $(PYTHON) before anything is installed; exits 1 and says what to do.
"""
import pathlib
import subprocess
import sys


def version_of(python):
    """Return 'X.Y' of the interpreter at PYTHON."""
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def main(argv):
    venv, supported = pathlib.Path(argv[0]), argv[1:]
    version = "%d.%d" % sys.version_info[:2]
    if version not in supported:
        print(f"d2ltvm supports Python {', '.join(supported)}; {sys.executable} is {version}. "
              f"Pass one of those: make test PYTHON=python{supported[-1]}", file=sys.stderr)
        return 1
    venv_python = venv / "bin" / "python"
    if venv_python.exists():
        made_with = version_of(venv_python)
        if made_with != version:
            print(f"{venv} was made with Python {made_with}, but PYTHON is {version}: remove "
                  f"{venv}, or keep it and pass VENV=.venv-{version}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
