"""Before/after for a change: the overhead bench's orderwatch loop at a git revision (A) and in
this working tree (B), in alternating rounds, each round in fresh processes with its own
simulator. On a noisy machine one run of each side says little; the count of rounds B won
says more.

    python -m bench.ab REV [--rounds 6] [--seconds 5] [--bench finals] [--b REV2]

REV needs bench/overhead.py with `Run` (1fad812 or later). `--bench finals` drains 2,000
orders that are final at once instead (bench/finals.py, this tree's, run on each side's
daemon code, so any revision will do). `--b REV2` takes B from a revision too.
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
try:
    from orderwatch.core import aio
except ImportError:  # a revision from before the layout move
    from orderwatch import aio
async def main(seconds):
    async with simulator_process("--complete-after", "100d") as base:
        run = await overhead.orderwatch_loop(base, seconds)
    print(json.dumps({"per_s": run.per_s, "cpu_ms": run.cpu_s * 1000}))

aio.run(main(float(sys.argv[1])))
"""


_ONE_DRAIN = """
import json, sys
from bench import finals
from bench.common import simulator_process
try:
    from orderwatch.core import aio
except ImportError:  # a revision from before the layout move
    from orderwatch import aio
async def main(n):
    async with simulator_process("--complete-after", "0") as base:
        per_s, cpu_ms = await finals.drain(base, n)
    print(json.dumps({"per_s": per_s, "cpu_ms": cpu_ms}))

aio.run(main(2000))
"""


def one_loop(tree: Path, seconds: float, bench: str = "overhead") -> dict[str, float]:
    if bench == "finals":  # this tree's bench, that tree's daemon
        code, cwd, path = _ONE_DRAIN, REPO, f"{REPO}{os.pathsep}{tree / 'daemon'}"
    else:
        code, cwd, path = _ONE_LOOP, tree, f"{tree}{os.pathsep}{tree / 'daemon'}"
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", code, str(seconds)],
        cwd=cwd,
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
    p.add_argument("--bench", choices=("overhead", "finals"), default="overhead")
    p.add_argument("--b", metavar="REV2", help="B from this revision, not the working tree")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a_tree, b_tree = Path(tmp) / "a", REPO
        a_tree.mkdir()
        export(args.rev, a_tree)
        if args.b:
            b_tree = Path(tmp) / "b"
            b_tree.mkdir()
            export(args.b, b_tree)
        unit = "finals" if args.bench == "finals" else "polls"
        print(
            f"A = {args.rev}, B = {args.b or 'working tree'};"
            f" {unit}/s and CPU µs per {unit[:-1]}, per round"
        )
        a_runs, b_runs = [], []
        for i in range(1, args.rounds + 1):
            a = one_loop(a_tree, args.seconds, args.bench)
            b = one_loop(b_tree, args.seconds, args.bench)
            a_runs.append(a)
            b_runs.append(b)
            ratio = b["per_s"] / a["per_s"]
            print(
                f"round {i}: A {a['per_s']:8,.0f}/s {a['cpu_ms'] * 1000:5.1f} µs"
                f"   B {b['per_s']:8,.0f}/s {b['cpu_ms'] * 1000:5.1f} µs   B/A {ratio:.3f}",
                flush=True,
            )
    wins = sum(b["per_s"] > a["per_s"] for a, b in zip(a_runs, b_runs, strict=True))
    a_mean = statistics.mean(r["per_s"] for r in a_runs)
    b_mean = statistics.mean(r["per_s"] for r in b_runs)
    # CPU per poll varies far less from round to round than the rate does on a shared
    # machine: its median ratio resolves changes of a microsecond or two.
    cpu = statistics.median(b["cpu_ms"] / a["cpu_ms"] for a, b in zip(a_runs, b_runs, strict=True))
    cheaper = sum(b["cpu_ms"] < a["cpu_ms"] for a, b in zip(a_runs, b_runs, strict=True))
    print(
        f"mean: A {a_mean:,.0f}/s, B {b_mean:,.0f}/s, B/A {b_mean / a_mean:.3f};"
        f" B higher in {wins} of {len(a_runs)} rounds"
    )
    print(
        f"CPU per {unit[:-1]}: median B/A {cpu:.3f}; B cheaper in {cheaper} of {len(a_runs)} rounds"
    )


if __name__ == "__main__":
    main()
