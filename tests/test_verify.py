"""`orderwatch verify` on real deliveries: a daemon polls the simulator and signs its webhook
with two secrets (a rotation); an aiohttp receiver and a bare TCP endpoint capture what
arrived, and `python -m orderwatch verify` (a child process) judges it, altered or not.
No output may show a secret or a payout link."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from orderwatch.cli.verify import secrets_from_flags
from orderwatch.delivery.verify import Capture, parse_capture, verify_delivery
from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import SimOptions, running_simulator

from harness import API_KEY, SECRET, child_env, running_daemon, settings_for, until, write_config

OLD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"  # kept during the rotation
RAW_SECRET = "whsec_dGhlIHNlY29uZCBlbmRwb2ludCdzIGtleQ=="  # webhooks[1]'s own
WRONG_SECRET = "whsec_dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGtleQ=="
SECRETS = (SECRET, OLD_SECRET, RAW_SECRET, WRONG_SECRET)
ORDER = "O-VERIFY1"


@dataclass(frozen=True)
class Captured:
    body: bytes  # as the aiohttp receiver read it
    headers: dict[str, str]  # its webhook-* headers, names lower-cased
    raw: bytes  # a whole request, as the bare TCP endpoint read it off the socket
    config: Path  # webhooks[0]: SECRET + OLD_SECRET; webhooks[1]: RAW_SECRET + OLD_SECRET
    tmp: Path


class RawCapture:
    """A bare HTTP/1.1 endpoint that keeps each request byte for byte, like `nc -l` would."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.got = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            assert length is not None
            self.requests.append(head + await reader.readexactly(int(length.group(1))))
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
            self.got.set()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _capture(tmp: Path) -> Captured:
    raw = RawCapture()
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    raw_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    receiver = Receiver(SECRET)
    hooks = [
        {"secret": SECRET, "secrets": [OLD_SECRET]},
        {"url": raw_url, "secret": RAW_SECRET, "secrets": [OLD_SECRET]},
    ]
    try:
        async with (
            running_simulator(SimOptions(api_key=API_KEY, complete_after=0)) as rs,
            running_receiver(receiver) as url,
        ):
            hooks[0]["url"] = url
            async with running_daemon(settings_for(tmp, rs.base_url, webhooks=hooks)) as d:
                await d.add_orders([ORDER])

                async def both_arrived() -> bool:
                    return bool(receiver.events) and raw.got.is_set()

                await raw.got.wait()
                await until(both_arrived, receiver.changed)
            config = write_config(tmp, rs.base_url, webhooks=hooks)
    finally:
        server.close()
        await server.wait_closed()
    got = receiver.events[0]
    assert got.verified
    headers = {k.lower(): v for k, v in got.headers.items() if k.lower().startswith("webhook-")}
    return Captured(got.body, headers, raw.requests[0], config, tmp)


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    """One real delivery per endpoint, captured once for the module (well within 5 minutes)."""
    c = asyncio.run(_capture(tmp_path_factory.mktemp("verify")))
    assert b"spend.runa.io" in c.body  # payout links are there to leak: the checks mean it
    return c


def run_verify(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """`python -m orderwatch verify ARGS`; fails the test if a secret or payout link shows."""
    p = subprocess.run(
        [sys.executable, "-m", "orderwatch", "verify", *args],
        input=stdin,
        capture_output=True,
        env={**child_env(), **(env or {})},
        timeout=60,
        check=False,
    )
    out, err = p.stdout.decode(), p.stderr.decode()
    for secret in SECRETS:
        assert secret.removeprefix("whsec_") not in out + err
    assert "spend.runa.io" not in out + err
    return p.returncode, out, err


def header_flags(headers: dict[str, str]) -> list[str]:
    return [f"--header={name}: {value}" for name, value in headers.items()]


def body_file(c: Captured, body: bytes, name: str = "body.json") -> str:
    path = c.tmp / name
    path.write_bytes(body)
    return str(path)


def signed(body: bytes, event_id: str, stamp: int, *secrets: str) -> dict[str, str]:
    """Headers as the sink would send them at `stamp` (the library signs)."""
    at = datetime.fromtimestamp(stamp, UTC)
    sigs = " ".join(Webhook(s).sign(event_id, at, body) for s in secrets)
    return {"webhook-id": event_id, "webhook-timestamp": str(stamp), "webhook-signature": sigs}


def test_a_captured_delivery_verifies_against_the_config_secrets(captured: Captured) -> None:
    """With -c, every webhook secret is tried: each of the two signatures is named with the
    secret it matched, and the event id, type, order id and age are shown."""
    code, out, err = run_verify(
        "-c",
        str(captured.config),
        *header_flags(captured.headers),
        body_file(captured, captured.body),
    )
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "valid: signature 1 of 2 matched secret #1 (webhooks[0].secret)"
    assert lines[1] == "signature 2 of 2 matched secret #2 (webhooks[0].secrets[0])"
    assert f"event id:  {captured.headers['webhook-id']}" in lines
    assert "type:      order.completed" in lines
    assert f"order id:  {ORDER}" in lines
    assert re.search(r"^timestamp: \d+ \(.*Z, \d+(\.\d)?s ago; tolerance 5m\)$", out, re.M)


@pytest.mark.parametrize(("secret", "signature"), [(SECRET, 1), (OLD_SECRET, 2)])
def test_during_a_rotation_either_secret_alone_verifies(
    captured: Captured, secret: str, signature: int
) -> None:
    """The delivery carries one signature per secret: each secret alone verifies its own."""
    code, out, _ = run_verify(
        "--secret", secret, *header_flags(captured.headers), body_file(captured, captured.body)
    )
    assert code == 0
    assert out.splitlines()[0] == (
        f"valid: signature {signature} of 2 matched secret #1 (--secret #1)"
    )


def test_a_wrong_secret_is_invalid(captured: Captured) -> None:
    """No signature matches another secret: exit 1, with the reason and what was tried."""
    code, out, _ = run_verify(
        "--secret",
        WRONG_SECRET,
        *header_flags(captured.headers),
        body_file(captured, captured.body),
    )
    assert code == 1
    assert out.splitlines()[:2] == [
        "invalid: no signature matches: wrong secret or body changed",
        "tried 1 secret(s): --secret #1",
    ]


def test_a_tampered_body_is_invalid_and_a_cut_one_is_named(captured: Captured) -> None:
    """An edited body fails like a wrong secret; a cut one is also named as not JSON."""
    edited = captured.body.replace(b'"COMPLETED"', b'"FAILED"', 1)
    assert edited != captured.body
    flags = ["-c", str(captured.config), *header_flags(captured.headers)]
    code, out, _ = run_verify(*flags, body_file(captured, edited))
    assert code == 1
    assert "invalid: no signature matches: wrong secret or body changed" in out
    assert "not valid JSON" not in out
    code, out, _ = run_verify(*flags, body_file(captured, captured.body[:-10]))
    assert code == 1
    assert out.splitlines()[0] == "invalid: no signature matches: wrong secret or body changed"
    assert re.search(
        r"^invalid: body is not valid JSON \(.* at byte \d+\): cut or edited\?$", out, re.M
    )


def test_a_newline_the_capture_added_is_pointed_out(captured: Captured) -> None:
    """A body saved with a newline at its end fails, and the note says the newline is why."""
    code, out, _ = run_verify(
        "--secret",
        SECRET,
        *header_flags(captured.headers),
        body_file(captured, captured.body + b"\n"),
    )
    assert code == 1
    assert "note: the body without its trailing newline matches" in out


@pytest.mark.parametrize(("offset", "said"), [(-600, "old"), (600, "in the future")])
def test_a_stale_timestamp_is_invalid_and_says_whether_the_signature_would_match(
    captured: Captured, offset: int, said: str
) -> None:
    """Signed 10 minutes before or after now (tolerance 5 minutes): exit 1 for the timestamp,
    while the signature is still reported as matching."""
    headers = signed(
        captured.body, captured.headers["webhook-id"], int(time.time()) + offset, SECRET
    )
    code, out, _ = run_verify(
        "--secret", SECRET, *header_flags(headers), body_file(captured, captured.body)
    )
    assert code == 1
    lines = out.splitlines()
    assert re.fullmatch(
        rf"invalid: stale timestamp: (9|10)m( \d+s)? {said} \(more than 5m\)", lines[0]
    )
    assert lines[1] == "signature 1 of 1 would match secret #1 (--secret #1)"


def test_staleness_is_judged_against_the_given_now(captured: Captured) -> None:
    """With an injected now: exactly 5 minutes old still verifies, one second more does not."""
    stamp = int(captured.headers["webhook-timestamp"])
    capture = Capture(captured.body, captured.headers)
    secrets = secrets_from_flags([OLD_SECRET])
    assert verify_delivery(capture, secrets, now=stamp + 300).valid
    late = verify_delivery(capture, secrets, now=stamp + 301)
    assert late.problems == ("stale timestamp: 5m 1s old (more than 5m)",)
    assert [(m.signature, m.secret) for m in late.matches] == [(2, 1)]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"webhook-signature": None}, "invalid: missing header webhook-signature"),
        (
            {"webhook-id": None, "webhook-timestamp": None},
            "invalid: missing header webhook-id, webhook-timestamp",
        ),
        ({"webhook-timestamp": "soon"}, "invalid: webhook-timestamp is not whole seconds"),
        ({"webhook-signature": "garbage"}, "invalid: webhook-signature entry 1 of 1 is not"),
        ({"webhook-signature": "v1,bm90LWEtbWFj"}, "invalid: webhook-signature entry 1 of 1"),
        ({"webhook-signature": "v1a,c2lnbmF0dXJl"}, "invalid: webhook-signature has no v1"),
        ({"webhook-signature": "+ v1,!!"}, "invalid: webhook-signature entry 3 of 3 is not"),
    ],
)
def test_a_malformed_header_is_invalid_and_named(
    captured: Captured, change: dict[str, str | None], said: str
) -> None:
    """A missing header, a timestamp that is not a number, or a signature entry that is not
    'v1,<base64 of 32 bytes>' is exit 1 naming it (a good signature beside a bad entry still
    shows as one that would match)."""
    headers = dict(captured.headers)
    for name, value in change.items():
        if value is None:
            del headers[name]
        elif value.startswith("+ "):
            headers[name] += " " + value[2:]
        else:
            headers[name] = value
    code, out, _ = run_verify(
        "--secret", SECRET, *header_flags(headers), body_file(captured, captured.body)
    )
    assert code == 1
    assert out.splitlines()[0].startswith(said)
    if (change.get("webhook-signature") or "").startswith("+ "):
        assert "signature 1 of 3 would match secret #1 (--secret #1)" in out


def test_usage_errors_exit_2_on_one_line(captured: Captured) -> None:
    """No secret (config without webhooks, or no config), an unreadable file, a --header that
    is not 'name: value' and a secret that is not whsec_ base64: exit 2, one stderr line."""
    (captured.tmp / "nohooks").mkdir(exist_ok=True)
    no_hooks = write_config(captured.tmp / "nohooks", "http://127.0.0.1:9/v2")
    body = body_file(captured, captured.body)
    missing = str(captured.tmp / "absent.json")
    cases = [
        (["-c", str(no_hooks), body], {}, "has no webhooks; give --secret"),
        ([body], {"ORDERWATCH_CONFIG": missing}, "cannot read config"),
        (["--secret", SECRET, missing], {}, f"cannot read {missing}: No such file"),
        (["--secret", SECRET, "--header", "webhook-id evt_1", body], {}, "--header #1 is not"),
        (["--secret", "whsec_not*base64", body], {}, "--secret #1 is not a Standard Webhooks"),
    ]
    for args, env, said in cases:
        code, out, err = run_verify(*args, env=env)
        assert (code, out, len(err.splitlines())) == (2, "", 1), (args, err)
        assert said in err, err


def test_a_raw_http_request_is_read_whole(captured: Captured) -> None:
    """The request as it came off the socket (request line, headers, blank line, body) is
    split by itself, from a file or stdin; webhooks[1]'s own secret is found in the config."""
    assert captured.raw.startswith(b"POST /hook HTTP/1.1\r\n")
    request = body_file(captured, captured.raw, "request.http")
    for args, stdin in (([request], b""), ([], captured.raw)):
        code, out, err = run_verify("-c", str(captured.config), *args, stdin=stdin)
        assert code == 0, out + err
        assert out.splitlines()[:2] == [
            "valid: signature 1 of 2 matched secret #3 (webhooks[1].secret)",
            "signature 2 of 2 matched secret #2 (webhooks[0].secrets[0])",
        ]
        assert f"order id:  {ORDER}" in out


def test_a_header_flag_overrides_the_raw_requests_own(captured: Captured) -> None:
    """--header replaces the request's header of that name: another timestamp breaks it."""
    request = body_file(captured, captured.raw, "request.http")
    stamp = str(int(time.time()) - 1)
    code, out, _ = run_verify(
        "--secret", RAW_SECRET, "--header", f"Webhook-Timestamp: {stamp}", request
    )
    assert code == 1
    assert f"timestamp: {stamp} " in out
    assert out.splitlines()[0] == "invalid: no signature matches: wrong secret or body changed"


def test_a_body_on_stdin_verifies(captured: Captured) -> None:
    """No BODY_FILE: the body is read from stdin, bytes as they are."""
    code, out, _ = run_verify(
        "--secret", SECRET, *header_flags(captured.headers), stdin=captured.body
    )
    assert code == 0
    assert out.startswith("valid: signature 1 of 2 matched secret #1 (--secret #1)\n")


def test_verdicts_agree_with_the_reference_library(captured: Captured) -> None:
    """For the same body, headers and now, verify_delivery says valid exactly when the
    library's own Webhook.verify accepts (the receivers' check)."""
    now = int(time.time())
    event_id = captured.headers["webhook-id"]
    variants = [
        (captured.body, captured.headers, SECRET),
        (captured.body, captured.headers, OLD_SECRET),
        (captured.body, captured.headers, WRONG_SECRET),
        (captured.body + b" ", captured.headers, SECRET),
        (captured.body, signed(captured.body, event_id, now - 400, SECRET), SECRET),
        (captured.body, signed(captured.body, event_id, now + 400, SECRET), SECRET),
        (captured.body, signed(captured.body, "evt_other", now, SECRET), SECRET),
        (captured.body, {**captured.headers, "webhook-id": ""}, SECRET),
    ]
    for body, headers, secret in variants:
        try:
            Webhook(secret).verify(body, headers)
            accepted = True
        except WebhookVerificationError:
            accepted = False
        verdict = verify_delivery(Capture(body, headers), secrets_from_flags([secret]), now)
        assert verdict.valid is accepted, (verdict.problems, headers)


def test_a_chunked_raw_request_is_reassembled(captured: Captured) -> None:
    """A captured request with Transfer-Encoding: chunked yields the body it carried."""
    body = captured.body
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100])
        for i in range(0, len(body), 100)
    )
    head = b"POST /hook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    head += b"".join(f"{k}: {v}\r\n".encode() for k, v in captured.headers.items())
    capture = parse_capture(head + b"\r\n" + chunks + b"0\r\n\r\n")
    assert (capture.body, capture.headers["webhook-id"]) == (body, captured.headers["webhook-id"])


def test_help_describes_the_command_and_its_defaults() -> None:
    """`verify --help` explains what is checked and shows every option's default."""
    p = subprocess.run(
        [sys.executable, "-m", "orderwatch", "verify", "--help"],
        capture_output=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    out = " ".join(p.stdout.decode().split())
    assert p.returncode == 0
    assert "Check a captured webhook delivery" in out
    for default in (
        "(default: -, stdin)",
        "(default: every webhook secret of the config)",
        "(default: $ORDERWATCH_CONFIG, else /etc/orderwatch/orderwatch.yaml)",
    ):
        assert default in out
