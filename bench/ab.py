"""Before/after for a change: the overhead bench's orderwatch loop at a git revision (A) and in
this working tree (B), in alternating rounds, each round in fresh processes with its own
simulator. On a noisy machine one run of each side says little; the count of rounds B won
says more.

    python -m bench.ab REV [--rounds 6] [--seconds 5]

REV needs bench/overhead.py with `Run` (1fad812 or later).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO

_ONE_LOOP = """
import json, sys
from bench import overhead
from bench.common import simulator_process
from orderwatch import aio

async def main(seconds):
    async with simulator_process("--complete-after", "100d") as base:
        run = await overhead.orderwatch_loop(base, seconds)
    print(json.dumps({"per_s": run.per_s, "cpu_ms": run.cpu_s * 1000}))

aio.run(main(float(sys.argv[1])))
"""


def one_loop(tree: Path, seconds: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'daemon'}"}
    out = subprocess.run(
        [sys.executable, "-c", _ONE_LOOP, str(seconds)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def export(rev: str, into: Path) -> None:
    """The tracked files of `rev`, as they were, into `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("rev", help="the revision to compare against (A)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a_tree = Path(tmp)
        export(args.rev, a_tree)
        print(f"A = {args.rev}, B = working tree; polls/s and CPU ms per poll, per round")
        a_runs, b_runs = [], []
        for i in range(1, args.rounds + 1):
            a, b = one_loop(a_tree, args.seconds), one_loop(REPO, args.seconds)
            a_runs.append(a)
            b_runs.append(b)
            ratio = b["per_s"] / a["per_s"]
            print(
                f"round {i}: A {a['per_s']:8,.0f}/s {a['cpu_ms']:.3f} ms"
                f"   B {b['per_s']:8,.0f}/s {b['cpu_ms']:.3f} ms   B/A {ratio:.3f}",
                flush=True,
            )
    wins = sum(b["per_s"] > a["per_s"] for a, b in zip(a_runs, b_runs, strict=True))
    a_mean = statistics.mean(r["per_s"] for r in a_runs)
    b_mean = statistics.mean(r["per_s"] for r in b_runs)
    print(
        f"mean: A {a_mean:,.0f}/s, B {b_mean:,.0f}/s, B/A {b_mean / a_mean:.3f};"
        f" B higher in {wins} of {len(a_runs)} rounds"
    )


if __name__ == "__main__":
    main()
