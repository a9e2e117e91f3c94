"""Check that every line of requirements.txt has a wheel on each platform the book supports.

For each platform, the environment markers of requirements.txt are evaluated for THAT platform
(pip itself evaluates them for the running machine only, even with --platform), and each
requirement that applies is fetched alone with

    pip download --no-deps --only-binary=:all: --platform TAG ... NAME==VERSION

into a scratch folder that is deleted afterwards. Needs access to PyPI; prints one line per
requirement and platform (the wheel's file name, or why none matched) and exits 1 if any
requirement has no wheel. Unpinned lines are checked at the newest version pip picks.
With --ignore-markers it also tries the lines the markers leave out (to see that they must be).

    python tools/check_wheels.py                      # all platforms
    python tools/check_wheels.py --platform macos-arm64 --only torch
"""
import argparse
import pathlib
import re
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Marker environment and pip platform tags of each platform. pip widens a macOS tag to the older
# macOS versions itself, but not a manylinux tag, so the glibc versions are listed: 2.17 (the
# manylinux2014 baseline) to 2.35 (Ubuntu 22.04).
GLIBC = [f"manylinux_2_{minor}" for minor in range(17, 36)] + ["manylinux2014"]
PLATFORMS = {
    "linux-x86_64": ({"sys_platform": "linux", "platform_system": "Linux",
                      "platform_machine": "x86_64"}, [f"{tag}_x86_64" for tag in GLIBC]),
    "linux-aarch64": ({"sys_platform": "linux", "platform_system": "Linux",
                       "platform_machine": "aarch64"}, [f"{tag}_aarch64" for tag in GLIBC]),
    "macos-arm64": ({"sys_platform": "darwin", "platform_system": "Darwin",
                     "platform_machine": "arm64"}, ["macosx_14_0_arm64"]),
}
PYTHON = {"python_version": "3.11", "python_full_version": "3.11.9",
          "implementation_name": "cpython", "platform_python_implementation": "CPython",
          "os_name": "posix"}


def requirements(path=ROOT / "requirements.txt"):
    """Return the requirements of a requirements file (comments and blank lines dropped)."""
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def applies(requirement, platform):
    """Return whether a requirement's marker holds on a platform (always, without a marker)."""
    marker_env = dict(PYTHON, **PLATFORMS[platform][0])
    return requirement.marker is None or requirement.marker.evaluate(marker_env)


def check(requirement, platform, folder):
    """Download the requirement's wheel for the platform; return (ok, wheel name or pip's error)."""
    spec = requirement.name + str(requirement.specifier)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               "--dest", str(folder), "--quiet"]
    for tag in PLATFORMS[platform][1]:
        command += ["--platform", tag]
    before = set(folder.iterdir())
    result = subprocess.run(command + [spec], capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        return False, (errors or ["pip failed"])[0]
    new = sorted(set(folder.iterdir()) - before)
    for path in new:
        path.unlink()
    return True, ", ".join(path.name for path in new) or "(already downloaded)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", choices=sorted(PLATFORMS), action="append")
    parser.add_argument("--only", action="append", help="check only these package names")
    parser.add_argument("--ignore-markers", action="store_true",
                        help="also check the lines whose marker leaves them out")
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as scratch:
        folder = pathlib.Path(scratch)
        for platform in args.platform or list(PLATFORMS):
            for requirement in requirements():
                if args.only and requirement.name not in args.only:
                    continue
                spec = requirement.name + str(requirement.specifier)
                if not args.ignore_markers and not applies(requirement, platform):
                    print(f"{platform:14s} {spec:28s} skipped (marker: {requirement.marker})")
                    continue
                ok, what = check(requirement, platform, folder)
                failures += not ok
                print(f"{platform:14s} {spec:28s} {'wheel' if ok else 'NO WHEEL'}: {what}",
                      flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
