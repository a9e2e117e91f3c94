"""Check that every line of requirements.txt has a wheel for each platform and Python we support.

For each platform and Python, the environment markers of requirements.txt are evaluated for
THAT platform and Python (pip itself evaluates them for the running machine only, even with
--platform), and each requirement that applies is fetched alone with

    pip download --no-deps --only-binary=:all: --platform TAG ... NAME==VERSION

into a scratch folder that is deleted afterwards. Needs access to PyPI; prints one line per
requirement and platform (the wheel's file name, or why none matched) and exits 1 if any
requirement has no wheel. Unpinned lines are checked at the newest version pip picks.
With --ignore-markers it also tries the lines the markers leave out (to see that they must be).

    python tools/check_wheels.py                      # all platforms, Pythons 3.11-3.13
    python tools/check_wheels.py --platform macos-arm64 --python 3.13 --only torch
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
PYTHONS = ("3.11", "3.12", "3.13")


def python_env(version):
    """Return the marker variables of CPython VERSION ('3.12')."""
    return {"python_version": version, "python_full_version": version + ".0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "os_name": "posix"}


def requirements(path=ROOT / "requirements.txt"):
    """Return the requirements of a requirements file (comments and blank lines dropped)."""
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def applies(requirement, platform, version):
    """Return whether a requirement's marker holds on a platform and Python (always, unmarked)."""
    marker_env = dict(python_env(version), **PLATFORMS[platform][0])
    return requirement.marker is None or requirement.marker.evaluate(marker_env)


def check(requirement, platform, version, folder):
    """Download the requirement's wheel for platform and Python; return (ok, wheel or error)."""
    spec = requirement.name + str(requirement.specifier)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", version, "--implementation", "cp",
               "--abi", "cp" + version.replace(".", ""), "--abi", "abi3", "--abi", "none",
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
    parser.add_argument("--python", choices=PYTHONS, action="append")
    parser.add_argument("--only", action="append", help="check only these package names")
    parser.add_argument("--ignore-markers", action="store_true",
                        help="also check the lines whose marker leaves them out")
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as scratch:
        folder = pathlib.Path(scratch)
        for platform in args.platform or list(PLATFORMS):
            for version in args.python or PYTHONS:
                where = f"{platform} py{version}"
                for requirement in requirements():
                    if args.only and requirement.name not in args.only:
                        continue
                    spec = requirement.name + str(requirement.specifier)
                    if not args.ignore_markers and not applies(requirement, platform, version):
                        print(f"{where:20s} {spec:28s} skipped (marker: {requirement.marker})")
                        continue
                    ok, what = check(requirement, platform, version, folder)
                    failures += not ok
                    print(f"{where:20s} {spec:28s} {'wheel' if ok else 'NO WHEEL'}: {what}",
                          flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
