"""Redaction is a processor: whatever a developer logs, secrets and payout links go.

Every test renders real lines into a StringIO through configure_logging, the way the daemon
does, and reads them back; the last runs a whole daemon and reads its stderr."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from orderwatch.core.redact import REDACTED, REDACTED_URL, REDACTOR, Redactor
from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import Faults, SimOptions, running_simulator
from orderwatch.ops.logs import configure_logging

from harness import API_KEY as RUNA_KEY
from harness import SECRET as HOOK_SECRET
from harness import config_dict, spawn, until

SECRET = "whsec_very-secret-value"
KEY = "xx.api-key-secret"
DSN_PASSWORD = "pg-pass-4711"
SAFE = "https://playground.runa.io/v2"
PAYOUT = "https://spend.runa.io/xyz"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    REDACTOR.add_secret(SECRET)
    REDACTOR.add_secret(KEY)
    REDACTOR.add_secret(DSN_PASSWORD)
    REDACTOR.add_safe_url_prefix(SAFE)
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def json_stream(level: str = "debug") -> io.StringIO:
    out = io.StringIO()
    configure_logging("json", level, stream=out)
    return out


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_iso_utc_time_level_logger_and_event() -> None:
    """Each call is one JSON object with a UTC ISO timestamp, level, logger and event."""
    out = json_stream()
    structlog.get_logger("orderwatch.test").info("order.final", status="COMPLETED", n=3)
    (line,) = lines(out)
    assert line["event"] == "order.final" and line["level"] == "info"
    assert line["logger"] == "orderwatch.test" and line["n"] == 3
    ts = datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00"))
    assert ts.utcoffset() == timedelta(0)


def test_bound_order_id_appears_on_every_line() -> None:
    """order_id bound with bind_contextvars is merged into lines from any logger."""
    out = json_stream()
    structlog.contextvars.bind_contextvars(order_id="O-1")
    structlog.get_logger("a").info("order.polled")
    logging.getLogger("aiohttp.client").warning("plain stdlib line")
    assert [line["order_id"] for line in lines(out)] == ["O-1", "O-1"]


def test_registered_secrets_removed_from_values_and_nested_containers() -> None:
    """A secret inside any string, at any depth of dicts, lists and tuples, is replaced."""
    out = json_stream()
    structlog.get_logger("t").info(
        "x",
        note=f"key={KEY}",
        nested={"a": [f"pw {DSN_PASSWORD}", {"b": (SECRET, 1)}]},
        error=ValueError(f"bad {SECRET}"),
    )
    (line,) = lines(out)
    text = json.dumps(line)
    assert KEY not in text and SECRET not in text and DSN_PASSWORD not in text
    assert line["note"] == f"key={REDACTED}"
    assert line["nested"] == {"a": [f"pw {REDACTED}", {"b": [REDACTED, 1]}]}
    assert line["error"] == f"bad {REDACTED}"


def test_values_shaped_like_secrets_are_masked_unregistered() -> None:
    """A Runa key or a webhook secret that nobody registered (pasted into the wrong setting,
    quoted by an exception) is masked by its shape; the key's prefix stays, as API-NOTES
    allows, and names that merely start alike are kept."""
    out = json_stream()
    structlog.get_logger("t").info(
        "x",
        note="api_version=wg.9fK2mQ7xLp3RtV8s, hook whsec_MfKQ9r8GKYqrTwjU",
        error=ValueError("bad version xx.Qa7_Zr-4Lm0Pz8Nw"),
        kept="xx.example.com wg.short",
    )
    (line,) = lines(out)
    assert line["note"] == f"api_version=wg.{REDACTED}, hook whsec_{REDACTED}"
    assert line["error"] == f"bad version xx.{REDACTED}"
    assert line["kept"] == "xx.example.com wg.short"


def test_sensitive_keys_have_their_whole_value_redacted() -> None:
    """api_key, x-api-key, *_secret, token, password, authorization, payload, body, data."""
    out = json_stream()
    keys = ["api_key", "x-api-key", "webhook_secret", "token", "password", "Authorization"]
    keys += ["payload", "response_body", "data"]
    structlog.get_logger("t").info("x", **{k: {"anything": 1} for k in keys}, kept="visible")
    (line,) = lines(out)
    assert all(line[k] == REDACTED for k in keys)
    assert line["kept"] == "visible"


def test_payout_urls_redacted_and_safe_prefix_kept() -> None:
    """Any http(s) URL not under a safe prefix (a payout link, a look-alike host) is replaced."""
    out = json_stream()
    structlog.get_logger("t").info(
        "x",
        link=PAYOUT,
        text=f"redeem at {PAYOUT}?code=1 now",
        lookalike="https://playground.runa.io.evil.example/v2/order/1",
        base=f"{SAFE}/order/O-1",
    )
    (line,) = lines(out)
    assert line["link"] == REDACTED_URL
    assert line["text"] == f"redeem at {REDACTED_URL} now"
    assert line["lookalike"] == REDACTED_URL
    assert line["base"] == f"{SAFE}/order/O-1"


def test_exception_text_redacted_and_no_locals_rendered() -> None:
    """An exception whose message holds a secret is rendered as dicts without it or locals."""
    out = json_stream()
    only_in_a_local = "local-only-value-0042"
    assert only_in_a_local  # a live local of the raising frame: show_locals would print it
    try:
        raise RuntimeError(f"boom {SECRET} {PAYOUT}")
    except RuntimeError:
        structlog.get_logger("t").error("failed", exc_info=True)
    (line,) = lines(out)
    text = out.getvalue()
    assert SECRET not in text and PAYOUT not in text and only_in_a_local not in text
    (exc,) = line["exception"]
    assert exc["exc_type"] == "RuntimeError"
    assert exc["exc_value"] == f"boom {REDACTED} {REDACTED_URL}"
    assert all("locals" not in frame for frame in exc["frames"])


def test_stdlib_loggers_pass_the_same_redaction() -> None:
    """aiohttp's and asyncio's stdlib lines are JSON, redacted, exceptions included."""
    out = json_stream()
    logging.getLogger("aiohttp.client").warning("retrying %s with %s", PAYOUT, SECRET)
    try:
        raise OSError(f"connect failed for {KEY}")
    except OSError:
        logging.getLogger("asyncio").exception("task died")
    first, second = lines(out)
    assert first["event"] == f"retrying {REDACTED_URL} with {REDACTED}"
    assert first["logger"] == "aiohttp.client" and first["level"] == "warning"
    assert second["logger"] == "asyncio" and KEY not in out.getvalue()
    assert second["exception"][0]["exc_value"] == f"connect failed for {REDACTED}"


def test_console_format_is_redacted_too() -> None:
    """The console renderer gets the same redaction, exception text included."""
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        structlog.get_logger("t").exception("failed", link=PAYOUT)
    text = out.getvalue()
    assert "failed" in text and "RuntimeError: boom [REDACTED]" in text
    assert SECRET not in text and PAYOUT not in text and not text.startswith("{")


def test_auto_is_json_off_a_terminal_and_level_filters() -> None:
    """auto on a non-TTY stream gives JSON; lines below the level are dropped."""
    out = io.StringIO()
    configure_logging("auto", "info", stream=out)
    log = structlog.get_logger("t")
    log.debug("hidden")
    logging.getLogger("aiohttp.client").debug("hidden too")
    log.info("shown")
    assert [line["event"] for line in lines(out)] == ["shown"]


def test_configure_twice_keeps_one_handler() -> None:
    """A second configure_logging replaces the first: one line per call, to the new stream."""
    first = json_stream()
    second = json_stream()
    structlog.get_logger("t").info("once")
    logging.getLogger("aiohttp").warning("once too")
    assert first.getvalue() == ""
    assert [line["event"] for line in lines(second)] == ["once", "once too"]


def test_redactor_rebuilds_its_pattern_when_a_secret_is_added() -> None:
    """Secrets added later are redacted; overlapping secrets go longest first; tiny ones only
    as a whole value (see the next test)."""
    r = Redactor()
    assert r.text("abc-secret-1") == "abc-secret-1"
    r.add_secret("abc-secret-1")
    r.add_secret("abc-secret-1-longer")
    r.add_secret("ab")
    assert r.text("x abc-secret-1-longer y abc-secret-1") == f"x {REDACTED} y {REDACTED}"
    assert r.text("ab cd") == "ab cd"


def test_a_secret_under_four_characters_is_redacted_as_a_whole_value() -> None:
    """A 1-3 character secret (`admin.token: abc` on loopback) was not registered at all: a
    log field or an environment variable holding exactly it went out as is. It is redacted
    where it is a whole value (surrounding whitespace aside); inside longer text it stays,
    since replacing every "abc" would wreck every line that has those letters."""
    r = Redactor()
    r.add_secret("Zq9")
    r.add_secret(" k ")
    assert r.text("Zq9") == REDACTED and r.text(" Zq9\n") == REDACTED and r.text("k") == REDACTED
    assert r.text("a Zq9 b") == "a Zq9 b" and r.text("kilo") == "kilo"
    assert r.holds_secret("Zq9") and r.holds_secret("k ") and not r.holds_secret("Zq9 x")
    line = r(None, "info", {"event": "x", "given": "Zq9", "nested": {"v": ["Zq9"]}})
    assert line == {"event": "x", "given": REDACTED, "nested": {"v": [REDACTED]}}
    assert r(None, "info", {"event": "Zq9"})["event"] == REDACTED  # even an event name


def test_redactor_without_safe_prefixes_redacts_every_url() -> None:
    """Before any prefix is registered, every http(s) URL is unsafe; other schemes stay."""
    r = Redactor()
    r.add_safe_url_prefix("https://")  # no host: refused, it would make every URL safe
    assert r.text("see HTTP://a.example/x and ftp://b.example") == (
        f"see {REDACTED_URL} and ftp://b.example"
    )


def test_safe_urls_lose_their_query_and_credentials_in_base_url_are_not_safe() -> None:
    """A webhook under a safe origin keeps its path, not a token in its query; a base_url
    written with user:password is safe only without them, and its password is a secret."""
    from orderwatch.config.models import Settings
    from orderwatch.config.secrets import register_secrets

    settings = Settings.model_validate(
        {
            "runa": {"base_url": "https://bob:pw-in-url-99@api.example/v2", "api_key": KEY},
            "webhooks": [
                {"url": "https://hooks.example/in?token=tok-in-query-77", "secret": SECRET}
            ],
        }
    )
    register_secrets(settings)
    out = json_stream()
    structlog.get_logger("t").info("config.loaded", config=settings.model_dump(mode="json"))
    structlog.get_logger("t").info("x", url="https://api.example/v2/order/O-1")
    text = out.getvalue()
    assert "tok-in-query-77" not in text and "pw-in-url-99" not in text
    assert "https://hooks.example/in?[REDACTED]" in text
    assert lines(out)[1]["url"] == "https://api.example/v2/order/O-1"


async def test_config_loaded_counts_webhooks_naming_no_url(tmp_path: Path) -> None:
    """Incoming-webhook URLs often carry their credential in the path (Slack's
    /services/T../B../<token>): config.loaded counts the webhooks, naming none."""
    from structlog.testing import capture_logs

    from orderwatch.delivery.sinks.base import webhook_sink_id

    from harness import SECRET, running_daemon, settings_for

    token = "XyZ-sekrit-path-token-123456"
    url = f"http://127.0.0.1:9/services/T000/B000/{token}"
    settings = settings_for(
        tmp_path, "http://127.0.0.1:9/v2", webhooks=[{"url": url, "secret": SECRET}]
    )
    with capture_logs() as logs:
        async with running_daemon(settings):
            pass
    (loaded,) = [e for e in logs if e["event"] == "config.loaded"]
    assert token not in repr(loaded) and webhook_sink_id(url) not in repr(loaded)
    assert loaded["webhooks"] == 1


async def test_config_loaded_counts_commands_naming_no_argv(tmp_path: Path) -> None:
    """A command's arguments may carry a credential (`curl -H "Authorization: ..."`):
    config.loaded counts the commands, naming none."""
    from structlog.testing import capture_logs

    from harness import running_daemon, settings_for

    argv = ["/bin/true", "--header", "Authorization: Bearer sekrit-argv-token-123456"]
    settings = settings_for(tmp_path, "http://127.0.0.1:9/v2", commands=[argv])
    with capture_logs() as logs:
        async with running_daemon(settings):
            pass
    (loaded,) = [e for e in logs if e["event"] == "config.loaded"]
    assert "sekrit-argv-token" not in repr(loaded) and "/bin/true" not in repr(loaded)
    assert loaded["commands"] == 1


async def test_config_loaded_is_a_short_summary(tmp_path: Path) -> None:
    """config.loaded was the whole config on one line (seven rows of a terminal) with
    `state_dsn: [REDACTED]` where none was set: now a summary that fits one row."""
    from harness import running_daemon, settings_for

    settings = settings_for(
        tmp_path,
        "http://127.0.0.1:9/v2",
        webhooks=[{"url": "http://127.0.0.1:9/hook", "secret": HOOK_SECRET}],
        commands=[["/bin/true"], ["/bin/false"]],
        watchlists=[str(tmp_path / "a.txt")],
        admin={"listen": "127.0.0.1:0"},
    )
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    async with running_daemon(settings):
        pass
    (line,) = [x for x in out.getvalue().splitlines() if "config.loaded" in x]
    assert len(line) < 240, line
    assert REDACTED not in line
    summary = line.split("[orderwatch.daemon]", 1)[1].split()
    assert summary == [
        "admin=127.0.0.1:0",
        "callbacks=0",
        "commands=2",
        "max_concurrency=8",
        "rate=200/s",
        "runa=http://127.0.0.1:9/v2",
        "state=sqlite",
        "watchlists=1",
        "webhooks=1",
    ]


@pytest.mark.slow
async def test_logs_never_hold_secrets_or_payout_urls(tmp_path: Path) -> None:
    """A full run with errors, 401s, retries, webhooks and a config dump, at debug level:
    the API key, the webhook secret and every payout URL appear nowhere in the logs."""
    receiver = Receiver(HOOK_SECRET, fail_first=3)
    faults = Faults(rate_5xx=0.1, rate_malformed=0.1, rate_reset=0.05)
    async with (
        running_simulator(
            SimOptions(api_key=RUNA_KEY, complete_after=0.3, seed=5, faults=faults)
        ) as rs,
        running_receiver(receiver) as url,
    ):
        cfg_path = tmp_path / "ow.yaml"
        cfg = config_dict(
            tmp_path,
            rs.base_url,
            logging={"format": "json", "level": "debug"},
            webhooks=[{"url": url, "secret": HOOK_SECRET, "retry_schedule": ["100ms"] * 5}],
            commands=[["/bin/false"]],
        )
        cfg_path.write_text(yaml.safe_dump(cfg))
        ids = [f"O-LOG{i}" for i in range(15)]
        rs.sim.create(["O-LOGSLOW"], complete_after=3600)  # still polled when the key breaks
        assert await (await spawn("add", "-c", str(cfg_path), *ids, "O-LOGSLOW")).wait() == 0
        proc = await spawn("run", "-c", str(cfg_path), stderr=asyncio.subprocess.PIPE)
        out = bytearray()

        async def read() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                out.extend(raw)

        reader = asyncio.create_task(read())

        async def heard() -> bool:
            return {e.order_id for e in receiver.events} == set(ids)

        await until(heard, receiver.changed, timeout=30)
        rs.sim.set_faults(Faults(bad_key=True))  # and an auth failure, for its error line

        async def auth_failed() -> bool:
            return b"api.auth_failed" in out

        await until(auth_failed, timeout=10)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await reader
        urls = [
            item["payout"]["url"]
            for i in ids
            for item in (rs.sim.payload(i) or {}).get("items", [])
        ]
    text = out.decode()
    assert "order.final" in text and "config.loaded" in text and "api.auth_failed" in text
    assert urls, "the run produced payout links to look for"
    for secret in (RUNA_KEY, HOOK_SECRET, HOOK_SECRET.removeprefix("whsec_"), *urls):
        assert secret not in text, secret
    assert "spend.runa.io" not in text
