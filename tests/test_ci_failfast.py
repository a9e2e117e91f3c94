"""A test that crashes or hangs fails `make test` within minutes, and the failure names it.

Each test here runs a tiny pytest session in a subprocess, as `make test` runs the real one
(`-n 2 --dist loadfile`), under this repository's own settings: the pytest options of
pyproject.toml and, for notebooks, conftest.py. Without them a worker killed by an Illegal
instruction is replaced, its test re-run, and the run then waits forever with idle workers.
"""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib

from sync_package import ROOT

OPTIONS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
ADDOPTS = shlex.split(OPTIONS["addopts"])
# Well under the hour and a half at which CI would give up; each session takes seconds.
LIMIT = 120


def run_pytest(tmp_path, files, ini, *args, plugins=("xdist.plugin",)):
    """Run pytest on `files` ({name: text}) in tmp_path with the given ini options: (exit status, output)."""
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + "".join(f"{k} = {v}\n" for k, v in ini.items()),
                                         encoding="utf-8")
    # Only the plugins named are loaded (the workers inherit this), which keeps each session short;
    # nothing of the pytest session running this test (PYTEST_ADDOPTS, PYTEST_XDIST_WORKER...) leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
               *(a for p in plugins for a in ("-p", p)), *args]
    # Its own process group, so that a session that hangs is ended together with its workers.
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as session:
        try:
            out, _ = session.communicate(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(session.pid, signal.SIGKILL)
            out, _ = session.communicate()
            raise AssertionError(f"the session was still running after {LIMIT} s:\n{out[-4000:]}") from None
    return session.returncode, out


def worker_options():
    """The settings of pyproject.toml that decide what happens when a worker dies or hangs."""
    restart = [a for a in ADDOPTS if a.startswith("--max-worker-restart")]
    assert restart == ["--max-worker-restart=0"], (
        "pyproject.toml addopts should hold --max-worker-restart=0: pytest-xdist 3.8.0 cannot replace a "
        "crashed worker under --dist loadfile without re-running the crash and then hanging")
    assert OPTIONS.get("faulthandler_exit_on_timeout") is True and float(OPTIONS.get("faulthandler_timeout", 0)) > 0, (
        "pyproject.toml should end a hung test with faulthandler_timeout and faulthandler_exit_on_timeout = true")
    return {"addopts": " ".join(restart), "faulthandler_timeout": OPTIONS["faulthandler_timeout"],
            "faulthandler_exit_on_timeout": "true"}


PASSING = "def test_passes():\n    pass\n"


def test_a_crashed_worker_fails_the_run_and_names_the_test(tmp_path):
    crash = ("import os, signal\n\n"
             "def test_before():\n    pass\n\n"
             "def test_illegal_instruction():\n    os.kill(os.getpid(), signal.SIGILL)\n\n"
             "def test_after():\n    pass\n")
    others = {f"test_other{i}.py": PASSING for i in range(3)}  # with these, xdist 3.8.0 alone hangs
    rc, out = run_pytest(tmp_path, {"test_crash.py": crash, **others}, worker_options(),
                         "-n", "2", "--dist", "loadfile")
    # Python's faulthandler, on in every worker, names the test in its dump of the dying process
    assert re.search(r'File ".*test_crash\.py", line \d+ in test_illegal_instruction', out), out[-4000:]
    if rc == 3:
        # xdist 3.8.0 has a race (seen once in CI, under load): the crashed worker's last report
        # arrives, the scheduler sends it more work over the closed channel, and the session ends
        # at once with this INTERNALERROR (exit status 3) before it reports the crash. The run
        # still fails within seconds, and the dump above names the test.
        assert "OSError: cannot send (already closed?)" in out, out[-4000:]
        return
    assert rc == 1, f"exit status {rc}, expected 1 (tests failed):\n{out[-4000:]}"
    # The message names the worker; it appears in the failure's header and in the short summary,
    # so crashes are counted by the distinct workers named, not by lines.
    crashes = set(re.findall(r"worker '(gw\d+)' crashed while running "
                             r"'test_crash.py::test_illegal_instruction'", out))
    assert crashes, out[-4000:]
    assert "replacing crashed worker" not in out, out[-4000:]
    # No worker is replaced, so the crash happens at most once per worker: xdist may hand the
    # crashed worker's file to the other worker, which then dies on it too (seen with Python 3.12),
    # and then the run ends. What must not happen is a crash re-run by replacement workers.
    summary = re.search(r"^=+ (\d+) failed, \d+ passed in ", out, re.M)
    assert summary and int(summary.group(1)) == len(crashes) <= 2, (
        f"the crashing test ran more often than once per worker:\n{out[-4000:]}")


def test_a_hung_test_is_ended_and_named(tmp_path):
    # A deadlock in compiled code that holds the GIL: no Python-level timer can interrupt it.
    hang = ("import ctypes\n\n"
            "def test_deadlock():\n"
            "    libc = ctypes.PyDLL(None)\n"
            "    mutex = ctypes.create_string_buffer(64)  # zeros: an unlocked default pthread mutex\n"
            "    libc.pthread_mutex_lock(mutex)\n"
            "    libc.pthread_mutex_lock(mutex)\n")
    options = {**worker_options(), "faulthandler_timeout": "2"}  # the real limit is 20 minutes
    rc, out = run_pytest(tmp_path, {"test_hang.py": hang, "test_other.py": PASSING}, options,
                         "-n", "2", "--dist", "loadfile")
    assert "Timeout (0:00:02)!" in out, f"no stack dump of the hung test:\n{out[-4000:]}"
    assert re.search(r'File ".*test_hang\.py", line \d+ in test_deadlock', out), out[-4000:]
    if rc == 3:  # xdist's race after a worker dies (see the test above): still failed, named
        assert "OSError: cannot send (already closed?)" in out, out[-4000:]
        return
    assert rc == 1, f"exit status {rc}, expected 1 (tests failed):\n{out[-4000:]}"
    assert re.search(r"worker 'gw\d+' crashed while running 'test_hang.py::test_deadlock'", out), out[-4000:]


def test_a_dead_kernel_fails_its_cell_at_once(tmp_path):
    # The repository's nbval options (--nbval-cell-timeout=900 among them) and conftest.py.
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "nbval_sanitize.cfg", tmp_path / "tests")
    shutil.copy(ROOT / "conftest.py", tmp_path)
    cells = ["x = 1", "import os, signal\nos.kill(os.getpid(), signal.SIGILL)", "x"]
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": s,
                           "execution_count": None, "outputs": []} for i, s in enumerate(cells)]}
    rc, out = run_pytest(tmp_path, {"kernel_dies.ipynb": json.dumps(notebook)}, {"addopts": OPTIONS["addopts"]},
                         "-rf", "kernel_dies.ipynb", plugins=("xdist.plugin", "nbval"))
    assert rc == 1, f"exit status {rc}, expected 1 (tests failed):\n{out[-4000:]}"
    # Within LIMIT, not after the 900 s of --nbval-cell-timeout, and saying what happened.
    assert re.search(r"^FAILED kernel_dies.ipynb::Cell 1\b", out, re.M), out[-4000:]
    assert "the notebook's kernel died (killed by SIGILL: Illegal instruction) while running this cell" in out, out[-4000:]
