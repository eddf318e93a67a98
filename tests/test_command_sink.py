"""Command sink: argv (never a shell), the event bytes on stdin, facts in the environment,
retries on failure, the whole process group killed on timeout, output never logged."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from orderwatch.delivery.events import make_event
from orderwatch.delivery.outbox import Deliverer
from orderwatch.delivery.sinks.command import CommandSink
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


async def test_output_is_never_logged(tmp_path: Path, store: SqliteStore) -> None:
    """A command that prints a payout link: the link is in no log line."""
    _, _, logs = await run_sink(tmp_path, store, fail_times=0)
    assert PAYOUT not in repr(logs)


async def test_output_is_not_held_in_the_daemon(tmp_path: Path) -> None:
    """A command that writes 300 MB: its output goes to /dev/null, not into our memory (it
    was gathered whole, only for its size to be logged)."""
    code = (
        "import sys\n"
        "sys.stdin.read()\n"
        "chunk = b'x' * 1_000_000\n"
        "for _ in range(300): sys.stdout.buffer.write(chunk)\n"
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    result = await CommandSink([sys.executable, "-c", code], 60).attempt(
        hostile_event(tmp_path / "pwned", time.time())
    )
    grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert (result.delivered, result.outcome) == (True, "exit 0")
    assert grew_mib < 100, grew_mib


async def test_a_background_child_does_not_hold_the_attempt(tmp_path: Path) -> None:
    """`notify-something &` in a hook: the hook exits 0 at once and is delivered at once; the
    child it left running (it inherited stdin and stdout) does not turn it into a timeout."""
    code = "import subprocess, sys\nsys.stdin.read()\nsubprocess.Popen(['sleep', '30'])\n"
    started = time.monotonic()
    result = await CommandSink([sys.executable, "-c", code], 5).attempt(
        hostile_event(tmp_path / "pwned", time.time())
    )
    assert (result.delivered, result.outcome) == (True, "exit 0")
    assert time.monotonic() - started < 4


DAEMONIZES = (
    "import subprocess, sys, time\n"
    "sys.stdin.read()\n"
    "subprocess.Popen(['sleep', '20'], start_new_session=True)\n"  # out of our process group
    "time.sleep(60)\n"
)


@pytest.mark.timeout(30)
async def test_a_timeout_ends_even_when_a_daemonized_child_lives_on(tmp_path: Path) -> None:
    """Killing the group cannot reach a grandchild in its own session; the attempt still ends
    at its timeout instead of waiting for that grandchild's inherited descriptors."""
    sink = CommandSink([sys.executable, "-c", DAEMONIZES], 1.0)
    started = time.monotonic()
    result = await asyncio.wait_for(sink.attempt(hostile_event(tmp_path / "p", time.time())), 8)
    assert (result.delivered, result.outcome) == (False, "timeout")
    assert time.monotonic() - started < 8


@pytest.mark.timeout(30)
@pytest.mark.slow
async def test_shutdown_is_bounded_with_such_a_command(tmp_path: Path, store: SqliteStore) -> None:
    """SIGTERM while that command runs: the deliverer stops within its shutdown bound."""
    sink = CommandSink([sys.executable, "-c", DAEMONIZES], 60.0)
    event = hostile_event(tmp_path / "pwned", time.time())
    await queue(store, event, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(Deliverer(store, [sink], owner="t").run(stop, shutdown_timeout_s=1))
    await asyncio.sleep(1.5)  # the attempt is in flight
    stop.set()
    done, _ = await asyncio.wait([task], timeout=8)
    if not done:
        task.cancel()
    assert done


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
    from orderwatch.core.redact import REDACTOR

    REDACTOR.add_secret("xx.cmd-env-key-31337")
    monkeypatch.setenv("RUNA_API_KEY", "xx.cmd-env-key-31337")
    monkeypatch.setenv("SOME_URL", "https://u:xx.cmd-env-key-31337@h.example/")
    monkeypatch.setenv("ORDINARY", "kept")
    event = make_event("O-ENV", "COMPLETED", {"id": "O-ENV", "status": "COMPLETED"}, time.time())
    env = CommandSink(["true"], timeout_s=5).environment(event)
    assert "RUNA_API_KEY" not in env and "SOME_URL" not in env
    assert env["ORDINARY"] == "kept" and env["ORDERWATCH_ORDER_ID"] == "O-ENV"


async def test_no_secret_of_the_config_reaches_a_command_however_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADMIN_TOKEN=Zq9 (`token: ${ADMIN_TOKEN}`, loopback admin) reached a command's
    environment: secrets under 4 characters were never told to the redactor, so the
    variables holding them passed its check. Every configured secret counts now, a short
    one as a whole value; a real child shows what it was given."""
    from orderwatch.config.load import load_settings_from_mapping
    from orderwatch.config.secrets import register_secrets

    environ = {"ADMIN_TOKEN": "Zq9", "RUNA_KEY": "xx.cmd-env-key-424242"}
    settings = load_settings_from_mapping(
        {
            "runa": {"api_key": "${RUNA_KEY}"},
            "admin": {"listen": "127.0.0.1:9464", "token": "${ADMIN_TOKEN}"},
        },
        environ=environ,
    )
    register_secrets(settings)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ORDERWATCH_ADMIN__TOKEN", " Zq9 ")  # an override, as written
    monkeypatch.setenv("ORDINARY", "Zq9 is not the whole value here")
    out = tmp_path / "env.json"
    dump = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    event = make_event("O-ENV2", "COMPLETED", {"id": "O-ENV2", "status": "COMPLETED"}, 0.0)
    result = await CommandSink([sys.executable, "-c", dump, str(out)], 10).attempt(event)
    assert result.delivered
    env = json.loads(out.read_text())
    assert not {"ADMIN_TOKEN", "RUNA_KEY", "ORDERWATCH_ADMIN__TOKEN"} & set(env)
    assert "Zq9" not in env.values() and "xx.cmd-env-key-424242" not in repr(env)
    assert env["ORDINARY"] == "Zq9 is not the whole value here"
    assert env["ORDERWATCH_ORDER_ID"] == "O-ENV2"
