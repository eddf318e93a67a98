"""Command sink: argv (never a shell), event JSON on stdin, facts in the environment."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from orderwatch.delivery import Deliverer
from orderwatch.events import make_event
from orderwatch.sinks.command import CommandSink
from orderwatch.store.sqlite import SqliteStore

HOSTILE = "$(touch {marker}); rm -rf ~ ; `touch {marker}` ' \" | && > {marker}"

SCRIPT = """
import json, os, sys
out = sys.argv[1]
data = sys.stdin.buffer.read()
count = out + ".count"
n = int(open(count).read()) + 1 if os.path.exists(count) else 1
open(count, "w").write(str(n))
if n <= int(sys.argv[2]):
    sys.exit(3)
env = {k: v for k, v in os.environ.items() if k.startswith("ORDERWATCH_")}
json.dump({"stdin": data.decode(), "env": env, "argv": sys.argv[1:]}, open(out, "w"))
"""


async def run_sink(tmp_path: Path, fail_times: int) -> tuple[dict[str, object], Path, str]:
    script = tmp_path / "hook.py"
    script.write_text(SCRIPT)
    out, marker = tmp_path / "out.json", tmp_path / "pwned"
    sink = CommandSink(
        [sys.executable, str(script), str(out), str(fail_times)], 10, (0.05, 0.05, 0.05)
    )
    store = await SqliteStore.open(tmp_path / "state", daemon=True, now=time.time())
    now = time.time()
    await store.add_orders(["O-CMD"], now, now)
    (claim,) = await store.claim_due(now, 1, "t", 60)
    data = {
        "id": "O-CMD",
        "status": "COMPLETED",
        "description": HOSTILE.format(marker=marker),
        "items": [],
    }
    event = make_event("O-CMD", "COMPLETED", data, now)
    await store.finish(claim, "final", "COMPLETED", event, [sink.id])
    deliverer = Deliverer(store, [sink], owner="t")
    for _ in range(50):
        await deliverer.run_until_idle()
        if (await store.delivery_counts())["pending"] == 0:
            break
        time.sleep(0.05)
    (row,) = await store.get_deliveries(["O-CMD"])
    await store.close()
    assert row.state == "delivered", row
    assert row.attempts == fail_times + 1
    return json.loads(out.read_text()), marker, event.event_id


async def test_payload_on_stdin_and_environment(tmp_path: Path) -> None:
    """The event JSON arrives on stdin verbatim; event, order id and status in the env."""
    got, marker, event_id = await run_sink(tmp_path, fail_times=0)
    body = json.loads(got["stdin"])  # type: ignore[arg-type]
    assert body["type"] == "order.completed" and body["data"]["id"] == "O-CMD"
    env = got["env"]
    assert isinstance(env, dict)
    assert {k: env[k] for k in env if k != "ORDERWATCH_REQUIRE_POSTGRES"} == {
        "ORDERWATCH_EVENT": "order.completed",
        "ORDERWATCH_EVENT_ID": event_id,
        "ORDERWATCH_ORDER_ID": "O-CMD",
        "ORDERWATCH_STATUS": "COMPLETED",
    }
    assert not marker.exists()  # shell metacharacters in the payload were inert


async def test_failing_command_is_retried(tmp_path: Path) -> None:
    """Non-zero exits are retried on the schedule until the command succeeds."""
    got, marker, _ = await run_sink(tmp_path, fail_times=2)
    assert json.loads(got["stdin"])["data"]["status"] == "COMPLETED"  # type: ignore[arg-type]
    assert not marker.exists()
