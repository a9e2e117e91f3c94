"""Static checks of the stored notebooks: what nbval relies on but does not check itself."""
import json
import re

import pytest

import sync_package
from sync_package import ROOT

NOTEBOOKS = [p for p in sync_package.toc_files(ROOT) if p.suffix == ".ipynb"]
MARKERS = {"NBVAL_IGNORE_OUTPUT", "NBVAL_CHECK_OUTPUT", "NBVAL_RAISES_EXCEPTION", "NBVAL_SKIP"}


def code_cells(rel):
    nb = json.loads((ROOT / rel).read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


@pytest.mark.parametrize("rel", NOTEBOOKS, ids=str)
def test_executed_top_to_bottom_without_errors(rel):
    cells = code_cells(rel)
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{rel}: execution counts {counts} are not 1..{len(cells)}: re-execute it with `make outputs NB={rel}`")
    errors = [o.get("ename") for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{rel}: stored error outputs {errors}; demonstrate errors with try/except instead"


@pytest.mark.parametrize("rel", NOTEBOOKS, ids=str)
def test_nbval_markers_are_spelled_so_nbval_sees_them(rel):
    for cell in code_cells(rel):
        for line in "".join(cell["source"]).splitlines():
            match = re.match(r"\s*#\s*(NBVAL_\w+)(.*)", line)
            if match:
                assert match.group(1) in MARKERS and not match.group(2).strip(), (
                    f"{rel}: {line.strip()!r}: nbval only honours a marker alone on its line; "
                    "put the reason in a comment on the next line")


GUARDS = {"requires-mxnet": "if mx is not None", "requires-onednn": "if HAS_ONEDNN",
          "requires-libdnnl": "if HAS_LIBDNNL"}


@pytest.mark.parametrize("rel", NOTEBOOKS, ids=str)
def test_guarded_cells_carry_the_tag_nbval_skips_them_by(rel):
    # a cell guarded for a platform that lacks MXNet or oneDNN prints nothing there: conftest.py
    # skips it by its tag, or nbval would report an output that differs from the stored one
    for cell in code_cells(rel):
        source, tags = "".join(cell["source"]), cell.get("metadata", {}).get("tags", [])
        for tag, guard in GUARDS.items():
            assert (guard in source) == (tag in tags), (
                f"{rel}: a cell {'with' if guard in source else 'without'} `{guard}` must "
                f"{'' if guard in source else 'not '}carry the tag {tag!r}: {source[:80]!r}")


def test_tagged_cells_are_skipped_where_the_requirement_is_missing(monkeypatch):
    import conftest

    class NotebookCell:  # what nbval's items look like to the hook
        def __init__(self, tags):
            self.cell, self.marks = {"metadata": {"tags": tags}}, []

        def add_marker(self, mark):
            self.marks.append(mark)

    monkeypatch.setitem(conftest.CELL_REQUIREMENTS, "requires-mxnet", lambda: "no MXNet here")
    monkeypatch.setitem(conftest.CELL_REQUIREMENTS, "requires-onednn", lambda: None)
    items = [NotebookCell(["requires-mxnet"]), NotebookCell(["requires-onednn"]), NotebookCell([])]
    conftest.pytest_collection_modifyitems(None, items)
    assert [len(item.marks) for item in items] == [1, 0, 0]
    assert items[0].marks[0].name == "skip" and items[0].marks[0].kwargs["reason"] == "no MXNet here"
