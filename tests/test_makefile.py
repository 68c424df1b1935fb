"""`make test` on a fresh machine installs the one system package its tests need (Debian's chromium) when it
is root on apt, and otherwise stops in its first second with one line saying what to install. Simulated with
stand-in `apt-get` and `id` on a PATH that holds nothing else, so nothing is installed here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")
LINE = ("make test: the report tests need Chromium: run 'sudo apt-get install -y chromium' (Debian/Ubuntu), "
        "then make test again")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def make(folder: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAKE, "--no-print-directory", "-C", ROOT, *targets, f"VENV={folder / 'venv'}"],
                          env={"PATH": str(folder)}, capture_output=True, text=True, timeout=60)


@pytest.fixture()
def bin_dir(tmp_path) -> Path:
    """A PATH with a stand-in apt-get that logs its calls and 'installs' chromium as a script."""
    tool(tmp_path, "apt-get", f'echo "$*" >> {tmp_path}/apt.log\n'
                              f'case "$*" in *install*chromium*) printf "#!/bin/sh\\n" > {tmp_path}/chromium; '
                              f'/bin/chmod +x {tmp_path}/chromium;; esac\n')
    return tmp_path


def test_as_root_a_missing_chromium_is_installed_once(bin_dir):
    tool(bin_dir, "id", "echo 0\n")
    assert make(bin_dir, "chromium").returncode == 0
    assert (bin_dir / "apt.log").read_text() == "update -qq\ninstall -y -qq chromium\n"
    assert make(bin_dir, "chromium").returncode == 0  # present now: apt-get is not asked again
    assert (bin_dir / "apt.log").read_text().count("install") == 1


@pytest.mark.parametrize("case", ["not root", "apt-get fails"])
def test_otherwise_make_test_stops_first_with_one_line_saying_what_to_install(bin_dir, case):
    tool(bin_dir, "id", "echo 1000\n" if case == "not root" else "echo 0\n")
    if case == "apt-get fails":
        tool(bin_dir, "apt-get", "exit 100\n")
    done = make(bin_dir, "test")
    assert done.returncode == 2 and done.stderr.splitlines()[0] == LINE
    assert not (bin_dir / "venv").exists()  # stopped before any set-up
