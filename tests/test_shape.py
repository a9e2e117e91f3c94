"""The rendered page never scrolls sideways: code lines of at most 100 characters, code cells of
at most 40 lines, in every notebook of the book and in the generated d2ltvm package."""
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LINE = 100
MAX_CELL_LINES = 40
NOTEBOOKS = sorted(p for p in (ROOT / "chapters").rglob("*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)


def shape_problems(cells, max_line=MAX_LINE, max_cell_lines=MAX_CELL_LINES):
    """Return 'cell N: ...' strings for code lines and code cells over the limits."""
    problems = []
    code_number = 0
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        code_number += 1
        lines = "".join(cell["source"]).splitlines()
        if len(lines) > max_cell_lines:
            problems.append(f"code cell {code_number}: {len(lines)} lines (at most {max_cell_lines})")
        for number, line in enumerate(lines, 1):
            if len(line) > max_line:
                problems.append(f"code cell {code_number}, line {number}: {len(line)} characters "
                                f"(at most {max_line}): {line.strip()[:60]}...")
    return problems


def test_the_check_finds_long_lines_and_long_cells():
    cells = [{"cell_type": "code", "source": "x = 1\n" * 41},
             {"cell_type": "markdown", "source": "m" * 300},
             {"cell_type": "code", "source": "y = '" + "a" * 100 + "'"}]
    problems = shape_problems(cells)
    assert problems[0].startswith("code cell 1: 41 lines")
    assert problems[1].startswith("code cell 2, line 1: 106 characters")
    assert len(problems) == 2


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_notebook_code_fits_the_page(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    problems = shape_problems(cells)
    assert not problems, f"{notebook.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_package_lines_fit_the_page():
    text = (ROOT / "d2ltvm" / "__init__.py").read_text(encoding="utf-8")
    long = [f"line {n}: {len(line)} characters: {line.strip()[:60]}..."
            for n, line in enumerate(text.splitlines(), 1) if len(line) > MAX_LINE]
    assert not long, "d2ltvm/__init__.py (fix the notebook cell it comes from):\n" + "\n".join(long)
