"""Command sink: argv (never a shell), the event bytes on stdin, facts in the environment,
retries on failure, the whole process group killed on timeout, output never logged."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from orderwatch.delivery import Deliverer
from orderwatch.events import make_event
from orderwatch.sinks.command import CommandSink
from orderwatch.store.base import EventRecord
from orderwatch.store.sqlite import SqliteStore

from harness import FakeClock, until

# Every shell metacharacter, each of which would create the marker if a shell ever ran it
# (and nothing destructive, should that regression ever happen).
HOSTILE = (
    "$(touch {marker}); ls ~ > {marker} ; `touch {marker}` ' \" | && > {marker} ; touch {marker}"
)
PAYOUT = "https://payouts.example/redeem/very-secret-link"
KEYS = ("ORDERWATCH_EVENT", "ORDERWATCH_EVENT_ID", "ORDERWATCH_ORDER_ID", "ORDERWATCH_STATUS")

# Records what it got; exits 3 for its first `fail_times` runs.
SCRIPT = """
import json, os, sys
out, fail_times = sys.argv[1], int(sys.argv[2])
data = sys.stdin.buffer.read()
count = out + ".count"
n = int(open(count).read()) + 1 if os.path.exists(count) else 1
open(count, "w").write(str(n))
if n <= fail_times:
    sys.exit(3)
env = {k: v for k, v in os.environ.items() if k.startswith("ORDERWATCH_") or k == "PATH"}
json.dump({"stdin": data.decode(), "env": env, "argv": sys.argv[1:]}, open(out, "w"))
print("payout link: " + json.loads(data)["data"]["items"][0]["url"])
"""


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    return sqlite_store


def hostile_event(marker: Path, now: float) -> EventRecord:
    data = {
        "id": "O-CMD",
        "status": "COMPLETED",
        "description": HOSTILE.format(marker=marker),
        "items": [{"url": PAYOUT}],
    }
    return make_event("O-CMD", "COMPLETED", data, now)


async def queue(store: SqliteStore, event: EventRecord, sink: CommandSink) -> None:
    await store.add_orders([event.order_id], event.created_at, event.created_at)
    (claim,) = await store.claim_due(event.created_at, 1, "t", 60)
    assert await store.finish(claim, "final", "COMPLETED", event, [sink.id])


async def run_sink(
    tmp_path: Path, store: SqliteStore, fail_times: int
) -> tuple[dict[str, Any], EventRecord, list[Any]]:
    """Queue one hostile event for the recording script; deliver it on an injected clock."""
    script = tmp_path / "hook.py"
    script.write_text(SCRIPT)
    out, marker = tmp_path / "out.json", tmp_path / "pwned"
    schedule = (10.0, 10.0, 10.0)
    sink = CommandSink([sys.executable, str(script), str(out), str(fail_times)], 10, schedule)
    clock = FakeClock()
    event = hostile_event(marker, clock.now)
    await queue(store, event, sink)
    deliverer = Deliverer(store, [sink], owner="t", clock=clock)
    with structlog.testing.capture_logs() as logs:
        for delay in (0.0, *schedule):
            clock.now += delay
            await deliverer.run_until_idle()
    (row,) = await store.get_deliveries(["O-CMD"])
    assert (row.state, row.attempts, row.last_outcome) == ("delivered", fail_times + 1, "exit 0")
    assert not marker.exists()  # shell metacharacters in the payload stayed inert
    return json.loads(out.read_text()), event, logs


async def test_payload_on_stdin_and_environment(tmp_path: Path, store: SqliteStore) -> None:
    """The event's exact bytes arrive on stdin; event type, event id, order id and status are
    in the environment, on top of ours; argv is passed as given; metacharacters are inert."""
    got, event, _ = await run_sink(tmp_path, store, fail_times=0)
    assert got["stdin"].encode() == event.body
    env = got["env"]
    assert {k: env.get(k) for k in KEYS} == {
        "ORDERWATCH_EVENT": "order.completed",
        "ORDERWATCH_EVENT_ID": event.event_id,
        "ORDERWATCH_ORDER_ID": "O-CMD",
        "ORDERWATCH_STATUS": "COMPLETED",
    }
    assert env["PATH"] == os.environ["PATH"]
    assert got["argv"] == [str(tmp_path / "out.json"), "0"]


async def test_failing_command_is_retried_until_it_succeeds(
    tmp_path: Path, store: SqliteStore
) -> None:
    """Exit 3 twice is retried on the schedule; the third run gets the same payload and is
    delivered; the attempts were logged as "exit 3"."""
    got, event, logs = await run_sink(tmp_path, store, fail_times=2)
    assert got["stdin"].encode() == event.body
    outcomes = [e["outcome"] for e in logs if e["event"] == "delivery.attempt"]
    assert outcomes == ["exit 3", "exit 3", "exit 0"]


async def test_output_is_counted_never_logged(tmp_path: Path, store: SqliteStore) -> None:
    """A command that prints a payout link: the log has its byte counts, not the link."""
    _, _, logs = await run_sink(tmp_path, store, fail_times=0)
    (output,) = [e for e in logs if e["event"] == "command.output"]
    assert output["stdout_bytes"] > len(PAYOUT) and output["stderr_bytes"] == 0
    assert PAYOUT not in repr(logs)


def state_of(pid: int) -> str:
    """The process state letter, or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A command that outlives its timeout is a retryable "timeout", and the child it started
    is killed with it (the process group), not left running."""
    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n"
        "child.wait()\n"
    )
    sink = CommandSink([sys.executable, "-c", code, str(pidfile)], 1.0)
    result = await sink.attempt(hostile_event(tmp_path / "pwned", time.time()))
    assert (result.delivered, result.retry, result.outcome) == (False, True, "timeout")
    pid = int(pidfile.read_text())

    async def child_dead() -> bool:
        return state_of(pid) in {"gone", "Z", "X"}

    await until(child_dead, timeout=5)


async def test_exit_codes_and_missing_programs_are_retryable_outcomes(tmp_path: Path) -> None:
    """Non-zero exits, deaths by signal and programs that cannot start are failed attempts
    to retry, each with a short outcome."""
    event = hostile_event(tmp_path / "pwned", time.time())
    cases = {
        "exit 7": [sys.executable, "-c", "raise SystemExit(7)"],
        "signal 9": [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"],
        "cannot start: No such file or directory": [str(tmp_path / "no-such-program")],
    }
    for outcome, argv in cases.items():
        result = await CommandSink(argv, 10).attempt(event)
        assert (result.delivered, result.retry, result.outcome) == (False, True, outcome)
    assert not (tmp_path / "pwned").exists()


def test_sink_id_is_stable_and_names_the_program() -> None:
    """`command:<program>:<hash of argv>`: equal argv, equal id; other arguments, other id."""
    a = CommandSink(["/usr/local/bin/on-final", "--verbose"], 5)
    assert a.id == CommandSink(("/usr/local/bin/on-final", "--verbose"), 30).id
    assert a.id != CommandSink(["/usr/local/bin/on-final"], 5).id
    assert a.id.startswith("command:on-final:") and len(a.id.rsplit(":", 1)[1]) == 16


def test_variables_holding_config_secrets_are_not_passed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`api_key: ${RUNA_API_KEY}` puts the key in our environment; a command gets the rest
    of it, not that variable (nor one that merely contains a secret)."""
    from orderwatch.logs import REDACTOR

    REDACTOR.add_secret("xx.cmd-env-key-31337")
    monkeypatch.setenv("RUNA_API_KEY", "xx.cmd-env-key-31337")
    monkeypatch.setenv("SOME_URL", "https://u:xx.cmd-env-key-31337@h.example/")
    monkeypatch.setenv("ORDINARY", "kept")
    event = make_event("O-ENV", "COMPLETED", {"id": "O-ENV", "status": "COMPLETED"}, time.time())
    env = CommandSink(["true"], timeout_s=5).environment(event)
    assert "RUNA_API_KEY" not in env and "SOME_URL" not in env
    assert env["ORDINARY"] == "kept" and env["ORDERWATCH_ORDER_ID"] == "O-ENV"
