"""The overhead benchmark still runs: it reaches into the store (bench/nostore.py patches the
SQLite store's hot methods), so a change there could break it unseen. No speed is asserted."""

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
    cmd = [sys.executable, "-m", "bench", "--smoke", "--only", "overhead", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=110)
    rows = {r["metric"]: r["value"] for r in json.loads(out.read_text())["rows"]}
    for metric in (
        "orderwatch / bare",
        "diagnostic: orderwatch, store in memory / bare",
        "CPU ms per poll: orderwatch, loop thread",
        "store alone: CPU ms per poll, all threads",
    ):
        assert rows[metric] > 0, metric
