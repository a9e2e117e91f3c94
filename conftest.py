"""pytest set-up for the whole repository (tests/ and the nbval runs over chapters/).

It sits at the top level so that it also applies to `pytest chapters/some.ipynb`: the tests,
like the stored notebook outputs, run offline (see README.md, "Offline and online").
"""
import os
import pathlib
import signal
import sys
import time
from queue import Empty

os.environ.setdefault("D2LTVM_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "tools"))


def pytest_configure(config):
    if config.pluginmanager.has_plugin("nbval"):
        _fail_cells_fast_when_the_kernel_dies()


def _fail_cells_fast_when_the_kernel_dies():
    """Make nbval notice at once that a notebook's kernel process has died.

    Compiled code that dies (Illegal instruction, bus error, segfault) takes the Jupyter kernel
    with it, and nbval 0.11 would go on waiting for the cell's reply for the whole
    --nbval-cell-timeout (900 s), then report a misleading "Failed to interrupt kernel". Here it
    waits in one-second slices and, once the kernel is gone, fails the cell saying how it died.
    """
    from nbval.kernel import RunningKernel

    get_message = RunningKernel.get_message
    if getattr(get_message, "watches_the_kernel", False):
        return

    def watched_get_message(self, stream, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                return get_message(self, stream, timeout=1.0 if left is None else max(0.0, min(1.0, left)))
            except Empty:
                if not self.is_alive():
                    raise RuntimeError(f"the notebook's kernel died ({_how_it_died(self)}) "
                                       "while running this cell") from None
                if left is not None and left <= 1.0:
                    raise

    watched_get_message.watches_the_kernel = True
    RunningKernel.get_message = watched_get_message


def _how_it_died(kernel):
    process = getattr(getattr(getattr(kernel, "km", None), "provisioner", None), "process", None)
    code = getattr(process, "returncode", None)
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}: {signal.strsignal(-code)}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


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


def _libdnnl_missing():
    import d2ltvm
    reason = d2ltvm.onednn_library_missing()
    return reason and f"{reason}: the route that calls oneDNN directly is skipped"


CELL_REQUIREMENTS = {"requires-mxnet": _mxnet_missing, "requires-onednn": _onednn_missing,
                     "requires-libdnnl": _libdnnl_missing}


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
