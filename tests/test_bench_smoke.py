"""The overhead and finals benchmarks still run: they reach into the store (bench/nostore.py patches the
SQLite store's hot methods), so a change there could break them unseen. No speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_overhead_bench_smoke_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench", "--smoke", "--only", "overhead", "finals"]
    subprocess.run(
        [*cmd, "--out", str(out)], cwd=REPO, check=True, capture_output=True, timeout=120
    )
    rows = {r["metric"]: r["value"] for r in json.loads(out.read_text())["rows"]}
    for metric in (
        "orderwatch / bare",
        "diagnostic: orderwatch, store in memory / bare",
        "diagnostic: minimal poll loop (heap, no store) / bare",
        "CPU ms per poll: orderwatch, loop thread",
        "store alone: CPU ms per poll, all threads",
        "finals/s (500 orders final at the first GET)",
    ):
        assert rows[metric] > 0, metric


@pytest.mark.slow
def test_ab_bench_compares_a_revision_with_the_tree() -> None:
    """`python -m bench.ab REV` exports REV and runs both sides; here HEAD against itself."""
    cmd = [sys.executable, "-m", "bench.ab", "HEAD", "--rounds", "1", "--seconds", "1"]
    done = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=110)
    assert "round 1: A" in done.stdout and "B higher in" in done.stdout


@pytest.mark.slow
def test_ab_bench_compares_two_revisions_on_finals() -> None:
    """`--bench finals --b REV2`: both sides exported, each drained by this tree's bench."""
    cmd = [sys.executable, "-m", "bench.ab", "HEAD", "--b", "HEAD", "--bench", "finals"]
    done = subprocess.run(
        [*cmd, "--rounds", "1"], cwd=REPO, check=True, capture_output=True, text=True, timeout=110
    )
    assert "A = HEAD, B = HEAD; finals/s" in done.stdout and "B higher in" in done.stdout
