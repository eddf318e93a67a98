"""The Makefile targets people and CI call: what each one would run (`make -n`)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")


def pytest_runs(target: str) -> list[list[str]]:
    """The pytest command lines `make TARGET` would run, as argv lists."""
    out = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return [shlex.split(line)[1:] for line in out.splitlines() if "bin/pytest" in line]


def test_make_test_quick_leaves_out_the_slow_tests_and_make_test_runs_all() -> None:
    """`make test` had no quick subset: `make test-quick` runs the tests not marked slow;
    `make test` stays the whole suite: the tests marked serial in one process after the rest
    in two, so between them they select every test."""
    jobs = ["-n", "2", "--dist", "worksteal"]
    assert pytest_runs("test-quick") == [
        [*jobs, "-m", "not slow and not serial"],
        ["-m", "serial and not slow"],
    ]
    assert pytest_runs("test") == [[*jobs, "-m", "not serial"], ["-m", "serial"]]
