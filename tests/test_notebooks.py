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
