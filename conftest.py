"""pytest set-up for the whole repository (tests/ and the nbval runs over chapters/).

It sits at the top level so that it also applies to `pytest chapters/some.ipynb`: the tests,
like the stored notebook outputs, run offline (see README.md, "Offline and online").
"""
import os
import pathlib
import sys

os.environ.setdefault("D2LTVM_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "tools"))


# Notebook cells that need something a platform may lack carry a tag; nbval skips them there,
# with the reason, instead of reporting outputs that differ from the stored ones (README.md,
# "Platforms"). The chapters guard the same cells, so they also run top to bottom by hand.
def _mxnet_missing():
    import importlib.util
    if importlib.util.find_spec("mxnet") is None:
        return "MXNet is not installed here (no wheel for this platform): its section is skipped"
    return None


def _onednn_missing():
    import torch
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch has no oneDNN: the route with packed oneDNN weights is skipped"
    return None


CELL_REQUIREMENTS = {"requires-mxnet": _mxnet_missing, "requires-onednn": _onednn_missing}


def pytest_collection_modifyitems(config, items):
    import pytest
    reasons = {}
    for item in items:
        cell = getattr(item, "cell", None)  # nbval's notebook cells
        tags = cell.get("metadata", {}).get("tags", []) if cell is not None else []
        for tag in tags:
            if tag in CELL_REQUIREMENTS:
                if tag not in reasons:
                    reasons[tag] = CELL_REQUIREMENTS[tag]()
                if reasons[tag]:
                    item.add_marker(pytest.mark.skip(reason=reasons[tag]))
