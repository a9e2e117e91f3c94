"""The d2ltvm package is generated from the notebooks; these tests keep the two in step."""
import inspect
import json
import textwrap

import pytest

import d2ltvm
import sync_package
from sync_package import ROOT

MARK = sync_package.MARK


def test_package_matches_notebooks():
    current = (ROOT / sync_package.PACKAGE).read_text(encoding="utf-8")
    assert current == sync_package.generate(ROOT), (
        "d2ltvm/__init__.py is out of date with the notebooks: run `make package` "
        "(python tools/sync_package.py) and commit the result")


def test_every_helper_has_a_docstring_and_a_provenance_line():
    source = (ROOT / sync_package.PACKAGE).read_text(encoding="utf-8")
    helpers = [obj for name, obj in vars(d2ltvm).items()
               if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
               and obj.__module__ == "d2ltvm"]
    assert helpers, "the package should define helpers"
    for obj in helpers:
        assert obj.__doc__ and obj.__doc__.strip(), f"{obj.__name__} has no docstring"
        before = source[:source.index(f"{'def' if inspect.isfunction(obj) else 'class'} {obj.__name__}")]
        assert "# Defined in chapters/" in before, f"{obj.__name__} has no provenance comment"


def make_book(tmp_path, notebooks, toc_files=None):
    """Write a tiny book: notebooks maps a path to a list of code cell sources."""
    for rel, cells in notebooks.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nb = {"cells": [{"cell_type": "code", "source": src, "metadata": {}, "outputs": [],
                         "execution_count": None} for src in cells],
              "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        path.write_text(json.dumps(nb), encoding="utf-8")
    files = toc_files if toc_files is not None else [p[:-len(".ipynb")] for p in notebooks]
    toc = "format: jb-book\nroot: " + files[0] + "\n"
    if files[1:]:
        toc += "chapters:\n" + "".join(f"  - file: {f}\n" for f in files[1:])
    (tmp_path / "_toc.yml").write_text(toc, encoding="utf-8")
    return tmp_path


def test_generate_collects_saved_cells_in_toc_order(tmp_path):
    root = make_book(tmp_path, {
        "chapters/b.ipynb": [f"{MARK}\ndef second():\n    '''Two.'''\n    return 2", "x = 1"],
        "chapters/a.ipynb": [f"{MARK}\ndef first():\n    '''One.'''\n    return 1"],
    }, toc_files=["chapters/a", "chapters/b"])
    text = sync_package.generate(root)
    assert text.index("def first") < text.index("def second")
    assert "# Defined in chapters/a.ipynb\ndef first" in text
    assert "x = 1" not in text, "unmarked cells must not be saved"
    namespace = {}
    exec(compile(text, "d2ltvm", "exec"), namespace)
    assert namespace["first"]() + namespace["second"]() == 3


def test_check_fails_when_a_notebook_changes(tmp_path, capsys):
    root = make_book(tmp_path, {"chapters/a.ipynb": [f"{MARK}\ndef f():\n    '''F.'''\n    return 1"]})
    (root / "d2ltvm").mkdir()
    (root / "d2ltvm" / "__init__.py").write_text(sync_package.generate(root), encoding="utf-8")
    assert sync_package.main(["--check"], root=root) == 0
    make_book(tmp_path, {"chapters/a.ipynb": [f"{MARK}\ndef f():\n    '''F.'''\n    return 2"]})
    assert sync_package.main(["--check"], root=root) == 1
    assert "make package" in capsys.readouterr().err


def test_notebook_outside_the_toc_with_saved_cells_is_an_error(tmp_path):
    root = make_book(tmp_path, {
        "chapters/a.ipynb": ["print(1)"],
        "chapters/stray.ipynb": [f"{MARK}\ndef g():\n    pass"],
    }, toc_files=["chapters/a"])
    with pytest.raises(SystemExit, match="stray.ipynb saves helpers to d2ltvm but is not in _toc.yml"):
        sync_package.generate(root)


def test_a_name_saved_twice_is_an_error(tmp_path):
    cell = f"{MARK}\ndef h():\n    pass"
    root = make_book(tmp_path, {"chapters/a.ipynb": [cell], "chapters/b.ipynb": [cell]})
    with pytest.raises(SystemExit, match="h is saved twice"):
        sync_package.generate(root)


def test_toc_entry_without_a_file_is_an_error(tmp_path):
    root = make_book(tmp_path, {"chapters/a.ipynb": ["pass"]}, toc_files=["chapters/a", "chapters/missing"])
    with pytest.raises(SystemExit, match="chapters/missing"):
        sync_package.generate(root)


def test_the_marker_must_be_the_first_line(tmp_path):
    root = make_book(tmp_path, {"chapters/a.ipynb": [textwrap.dedent(f"""\
        x = 1
        {MARK}
        def late():
            pass""")]})
    assert "def late" not in sync_package.generate(root)


def test_import_d2ltvm_stays_light():
    """Frameworks are imported inside the helpers that need them, not by `import d2ltvm`."""
    import subprocess
    import sys
    # `import tvm` itself loads torch when it is installed (for DLPack interop), so compare with it.
    code = ("import sys, tvm; before = set(sys.modules); import d2ltvm; "
            "heavy = [m for m in ('torch', 'torchvision', 'mxnet', 'keras', 'onnx', 'sklearn', 'matplotlib') "
            "if m in sys.modules and m not in before]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"import d2ltvm imported {result.stdout.strip()} {result.stderr[-2000:]}"
