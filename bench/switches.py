"""Thread switches per poll in the overhead bench's orderwatch loop: how often each thread of
the daemon gave up its core (voluntary: waiting, the GIL included; involuntary: preempted).
A diagnostic for the store thread's GIL traffic, not part of the table.

    python -m bench.switches [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable

from bench import overhead
from bench.common import diagnostic_main, proc_status

Counts = dict[int, tuple[int, int]]  # native thread id -> (voluntary, involuntary)


def switches() -> Counts:
    pid = os.getpid()
    return {
        tid: (
            proc_status(pid, "voluntary_ctxt_switches", tid=tid) or 0,
            proc_status(pid, "nonvoluntary_ctxt_switches", tid=tid) or 0,
        )
        for tid in map(int, os.listdir(f"/proc/{pid}/task"))
    }


async def one_round(base: str, seconds: float) -> None:
    measured = overhead.measured  # orderwatch_loop looks it up when it runs: wrap it

    async def counting(seconds: float, count: Callable[[], Awaitable[int]]) -> overhead.Run:
        before = switches()
        run = await measured(seconds, count)
        after = switches()
        polls = run.per_s * seconds
        names = {t.native_id: t.name for t in threading.enumerate()}
        for tid, (vol, invol) in sorted(after.items()):
            if tid not in before:
                continue
            dv, di = vol - before[tid][0], invol - before[tid][1]
            if dv + di > 10:
                name = names.get(tid, f"thread {tid}")
                print(
                    f"  {name:24} voluntary {dv / polls:.3f}  involuntary {di / polls:.3f} per poll"
                )
        print(f"  {run.per_s:,.0f} polls/s, {run.cpu_s * 1000:.3f} ms CPU per poll")
        return run

    overhead.measured = counting
    try:
        await overhead.orderwatch_loop(base, seconds)
    finally:
        overhead.measured = measured


if __name__ == "__main__":
    diagnostic_main(__doc__, one_round, seconds=4.0, rounds=3)
