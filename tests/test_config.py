"""Config loading: every problem located as file:line: key: message, secrets never shown."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from orderwatch.config.load import (
    DEFAULT_PATH,
    load_settings,
    load_settings_from_mapping,
    resolve_config_path,
)
from orderwatch.config.models import Settings
from orderwatch.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "orderwatch.example.yaml"


def write(tmp_path: Path, text: str | bytes, name: str = "ow.yaml") -> Path:
    cfg = tmp_path / name
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    return cfg


def problems(tmp_path: Path, text: str | bytes, env: dict[str, str] | None = None) -> list[str]:
    """The rendered problems of a config that must fail, with tmp_path shortened to '.'."""
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env or {})
    return [str(p).replace(str(tmp_path), ".") for p in e.value.problems]


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), env or {})


# --- what loads -------------------------------------------------------------------------------


def test_every_spec_key_parses(tmp_path: Path) -> None:
    """The SPEC's keys load into typed values with units applied and paths made absolute."""
    (tmp_path / "key").write_text("xx.secret\n")
    (tmp_path / "tok").write_text("admin-token\n")
    s = load(
        tmp_path,
        """
runa: {base_url: "https://playground.runa.io/v2", api_key_file: key, api_version: "2024-02-05", timeout: 10s}
rate_limit: {requests_per_second: 5, max_concurrency: 4}
polling: {initial_delay: 250ms, backoff_factor: 2, max_interval: 5m, jitter: 0.1, give_up_after: 3d, not_found_grace: 10m, lease: 90s}
watchlists: [lists/a.txt]
state_dir: state
state_dsn: postgresql://orderwatch@db/orderwatch
output_dir: /srv/orders
webhooks: [{url: "https://h/x", secret: "whsec_abc", timeout: 15s, retry_schedule: [5s, 5m, 2h], max_concurrency: 3}]
commands: [[/usr/local/bin/on-order-final, --flag]]
command_timeout: 1m
callbacks: ["myapp.payouts:on_order_final"]
admin: {listen: "127.0.0.1:9464", token_file: tok}
logging: {format: json, level: info}
shutdown_timeout: 2s
""",
    )
    assert s.runa.api_key is not None and s.runa.api_key.get_secret_value() == "xx.secret"
    assert s.runa.api_key_file == tmp_path / "key" and s.runa.timeout_s == 10
    assert s.rate_limit.requests_per_second == 5 and s.rate_limit.max_concurrency == 4
    assert s.polling.initial_delay_s == 0.25 and s.polling.give_up_after_s == 3 * 86400
    assert s.polling.max_interval_s == 300 and s.polling.lease_s == 90
    assert s.webhooks[0].retry_schedule_s == (5.0, 300.0, 7200.0)
    assert s.webhooks[0].max_concurrency == 3
    assert s.watchlists == (tmp_path / "lists/a.txt",)  # relative to the config file
    assert s.state_dir == tmp_path / "state" and s.output_dir == Path("/srv/orders")
    assert s.admin.token_file == tmp_path / "tok"
    assert s.admin.token is not None and s.admin.token.get_secret_value() == "admin-token"
    assert s.state_dsn is not None and s.state_dsn.get_secret_value().startswith("postgresql:")
    assert s.commands == (("/usr/local/bin/on-order-final", "--flag"),)
    assert s.callbacks == ("myapp.payouts:on_order_final",)
    assert s.command_timeout_s == 60 and s.shutdown_timeout_s == 2
    assert s.logging.format == "json"


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("5m", 300), ("2h", 7200), ("3d", 259200), ("45", 45),
     ("1.5", 1.5), ("'90'", 90), ("1.5m", 90)],
)  # fmt: skip
def test_durations_accept_units_and_numbers(tmp_path: Path, written: str, seconds: float) -> None:
    """Durations are numbers of seconds or a number with ms/s/m/h/d."""
    s = load(tmp_path, f"polling:\n  max_interval: {written}\n")
    assert s.polling.max_interval_s == pytest.approx(seconds)


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    """An empty (or comment-only) config is every default."""
    assert load(tmp_path, "") == Settings()
    assert load(tmp_path, "# nothing yet\n") == Settings()


def test_example_config_loads_and_names_every_key() -> None:
    """config/orderwatch.example.yaml is valid with only RUNA_API_KEY set, and mentions every
    key the settings accept (commented-out alternatives count)."""
    s = load_settings(EXAMPLE, {"RUNA_API_KEY": "xx.example"})
    assert s.runa.api_key is not None and s.runa.api_key.get_secret_value() == "xx.example"
    assert s.rate_limit.requests_per_second == 5 and s.polling.give_up_after_s == 72 * 3600
    text = EXAMPLE.read_text()
    missing = [k for k in _all_keys(Settings) if not re.search(rf"\b{k}:", text)]
    assert missing == []


def _all_keys(model: type[BaseModel]) -> set[str]:
    keys: set[str] = {"state_dsn_file"}
    for name, field in model.model_fields.items():
        keys.add(field.alias or name)
        for inner in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                keys |= _all_keys(inner)
    return keys


def test_relative_secret_file_and_trailing_newline(tmp_path: Path) -> None:
    """*_file secrets are read relative to the config, less their trailing newline, for the
    API key, a webhook secret and the state DSN; the file's path is kept."""
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds/runa").write_text("xx.fromfile\n")
    (tmp_path / "creds/hook").write_text("whsec_fromfile\r\n")
    (tmp_path / "creds/dsn").write_text("postgresql://u:pw@db/x\n")
    s = load(
        tmp_path,
        "runa: {api_key_file: creds/runa}\nstate_dsn_file: creds/dsn\n"
        "webhooks: [{url: 'https://h', secret_file: creds/hook}]\n",
    )
    assert s.runa.api_key is not None and s.runa.api_key.get_secret_value() == "xx.fromfile"
    assert s.webhooks[0].secret is not None
    assert s.webhooks[0].secret.get_secret_value() == "whsec_fromfile"
    assert s.state_dsn is not None and s.state_dsn.get_secret_value() == "postgresql://u:pw@db/x"
    assert s.state_dsn_file == tmp_path / "creds/dsn"


def test_mapping_config_validates_too() -> None:
    """Configs built in code get the same validation, without lines."""
    with pytest.raises(ConfigError) as e:
        load_settings_from_mapping({"rate_limits": 1, "polling": {"jitter": 2}}, source="<t>")
    assert [str(p) for p in e.value.problems] == [
        "<t>: polling.jitter: should be less than or equal to 1",
        "<t>: rate_limits: unknown key 'rate_limits' (did you mean 'rate_limit'?)",
    ]
    assert load_settings_from_mapping({"polling": {"jitter": 0.5}}).polling.jitter == 0.5


def test_resolve_config_path() -> None:
    """-c wins, then $ORDERWATCH_CONFIG, then /etc/orderwatch/orderwatch.yaml."""
    env = {"ORDERWATCH_CONFIG": "/env/ow.yaml"}
    assert resolve_config_path("cli.yaml", env) == Path("cli.yaml")
    assert resolve_config_path(None, env) == Path("/env/ow.yaml")
    assert resolve_config_path(None, {}) == DEFAULT_PATH == Path("/etc/orderwatch/orderwatch.yaml")


# --- located problems ---------------------------------------------------------------------------


def test_unknown_keys_with_did_you_mean_at_their_lines(tmp_path: Path) -> None:
    """Unknown keys, in a section, a list item or at the top, name their line and near match."""
    got = problems(
        tmp_path,
        "polling:\n  initial_dely: 2s\nwebhooks:\n  - url: https://h\n    secret: whsec_x\n"
        "    retry_shedule: [1s]\nstat_dir: /x\nbanana: 1\n",
    )
    assert got == [
        "./ow.yaml:2: polling.initial_dely: unknown key 'initial_dely' (did you mean 'initial_delay'?)",
        "./ow.yaml:6: webhooks[0].retry_shedule: unknown key 'retry_shedule' (did you mean 'retry_schedule'?)",
        "./ow.yaml:7: stat_dir: unknown key 'stat_dir' (did you mean 'state_dir'?)",
        "./ow.yaml:8: banana: unknown key 'banana'",
    ]


def test_wrong_types_in_plain_words(tmp_path: Path) -> None:
    """Wrong types are said plainly, at the line of the key or the list item."""
    got = problems(
        tmp_path,
        "runa:\n  api_version: 2024-02-05\nrate_limit: 5\nwatchlists: a.txt\n"
        "logging:\n  format: xml\ncommands:\n  - [ok]\n  - /bin/x\n"
        "polling:\n  backoff_factor: fast\n",
    )
    assert got == [
        "./ow.yaml:2: runa.api_version: should be a string (put it in quotes)",
        "./ow.yaml:3: rate_limit: should be a mapping of keys",
        "./ow.yaml:4: watchlists: should be a list",
        "./ow.yaml:6: logging.format: should be 'auto', 'json' or 'console'",
        "./ow.yaml:9: commands[1]: should be a list",
        "./ow.yaml:11: polling.backoff_factor: should be a valid number, unable to parse string as a number",
    ]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("5 minutes", "invalid duration '5 minutes': use e.g. 250ms, 30s, 5m, 2h, 3d"),
        ("soon", "invalid duration 'soon': use e.g. 250ms, 30s, 5m, 2h, 3d"),
        ("5w", "invalid duration '5w': use e.g. 250ms, 30s, 5m, 2h, 3d"),
        ("-1s", "invalid duration '-1s': use e.g. 250ms, 30s, 5m, 2h, 3d"),
        ("-3", "invalid duration -3: must be a finite, non-negative time"),
        (".inf", "invalid duration inf: must be a finite, non-negative time"),
        ("true", "expected a duration like 30s, 5m or a number of seconds"),
        ("[1]", "invalid duration [1]: use e.g. 250ms, 30s, 5m, 2h, 3d"),
    ],
)
def test_bad_durations(tmp_path: Path, written: str, message: str) -> None:
    """A duration that is not one is located with what is wrong."""
    assert problems(tmp_path, f"polling:\n  initial_delay: {written}\n") == [
        f"./ow.yaml:2: polling.initial_delay: {message}"
    ]


def test_negative_and_zero(tmp_path: Path) -> None:
    """Zero where a positive value is needed, and negative counts, are out of range; a zero
    initial delay is allowed."""
    got = problems(
        tmp_path,
        "polling:\n  max_interval: 0\n  jitter: -0.1\n"
        "rate_limit:\n  requests_per_second: 0\n  max_concurrency: -1\n"
        "webhooks:\n  - {url: 'https://h', secret: whsec_x, timeout: 0s}\n",
    )
    assert got == [
        "./ow.yaml:2: polling.max_interval: must be greater than zero",
        "./ow.yaml:3: polling.jitter: should be greater than or equal to 0",
        "./ow.yaml:5: rate_limit.requests_per_second: should be greater than 0",
        "./ow.yaml:6: rate_limit.max_concurrency: should be greater than or equal to 1",
        "./ow.yaml:8: webhooks[0].timeout: must be greater than zero",
    ]
    assert load(tmp_path, "polling: {initial_delay: 0}\n").polling.initial_delay_s == 0


def test_booleans_empty_commands_and_bad_listen_addresses(tmp_path: Path) -> None:
    """`true` is not a number (YAML would make it 1), an empty argv cannot be run, and the
    admin address is checked when the config loads, not when the server binds."""
    got = problems(
        tmp_path,
        "rate_limit:\n  requests_per_second: true\n  max_concurrency: yes\n"
        "polling:\n  jitter: false\ncommands:\n  - []\n"
        "admin:\n  listen: 127.0.0.1:99999\n",
    )
    assert got == [
        "./ow.yaml:2: rate_limit.requests_per_second: should be a number, not true or false",
        "./ow.yaml:3: rate_limit.max_concurrency: should be a number, not true or false",
        "./ow.yaml:5: polling.jitter: should be a number, not true or false",
        "./ow.yaml:7: commands[0]: should be a program and its arguments, not empty",
        "./ow.yaml:9: admin.listen: expected host:port with a port up to 65535, got '127.0.0.1:99999'",
    ]
    assert problems(tmp_path, "admin: {listen: nonsense}\n") == [
        "./ow.yaml:1: admin.listen: expected host:port with a port up to 65535, got 'nonsense'"
    ]
    assert problems(tmp_path, "admin: {listen: '0.0.0.0:9464'}\n") == [
        "./ow.yaml:1: admin: 0.0.0.0:9464 is not loopback: set admin.token or admin.token_file to protect it"
    ]
    assert problems(tmp_path, "admin: {listen: '[::1]:1', token: '  '}\n") == [
        "./ow.yaml:1: admin.token: is empty"
    ]
    s = load(tmp_path, "admin: {listen: '[::]:9464', token: ' t0k-of-16-chars-x '}\n")
    assert s.admin.token is not None and s.admin.token.get_secret_value() == "t0k-of-16-chars-x"


WEAK_TOKEN = (
    "should be at least 16 characters when admin.listen is not loopback"
    " (anyone who can reach it may guess it)"
)


def test_a_short_admin_token_off_loopback_is_refused(tmp_path: Path) -> None:
    """An admin listener off loopback took `tok` as its token: anyone who could reach it could
    guess it. Off loopback the token needs 16 characters, wherever it comes from; on
    loopback any token is taken."""
    assert problems(tmp_path, "admin:\n  listen: '0.0.0.0:9464'\n  token: tok\n") == [
        f"./ow.yaml:3: admin.token: {WEAK_TOKEN}"
    ]
    (tmp_path / "token").write_text("fifteen-chars-x\n")
    assert problems(tmp_path, "admin:\n  listen: '[::]:9464'\n  token_file: token\n") == [
        f"./ow.yaml:3: admin.token_file: {WEAK_TOKEN}"
    ]
    env = {"ORDERWATCH_ADMIN__TOKEN": "abc"}
    assert problems(tmp_path, "admin: {listen: '10.1.2.3:9464'}\n", env) == [
        f"env:ORDERWATCH_ADMIN__TOKEN: admin.token: {WEAK_TOKEN}"
    ]
    ok = load(tmp_path, "admin: {listen: '0.0.0.0:9464', token: sixteen-chars-xx}\n")
    assert ok.admin.token is not None
    assert load(tmp_path, "admin: {listen: '127.0.0.1:9464', token: t}\n").admin.token is not None


def test_urls_located_at_their_key(tmp_path: Path) -> None:
    """A URL without http(s) is reported at its own key, not its section."""
    got = problems(
        tmp_path, "runa:\n  base_url: ftp://x\nwebhooks:\n  - secret: whsec_x\n    url: file:///x\n"
    )
    assert got == [
        "./ow.yaml:2: runa.base_url: must start with https:// (or http:// on a trusted network)",
        "./ow.yaml:5: webhooks[0].url: must start with https:// (or http:// on a trusted network)",
    ]


PLAIN_HTTP = (
    "plain http:// would send the API key in clear text: use https://"
    " (http:// only to a loopback host: 127.0.0.0/8, ::1, localhost)"
)


def test_a_plain_http_base_url_is_refused_off_loopback(tmp_path: Path) -> None:
    """`http://api.runa.io/v2` passed check-config, and every request would carry the API key
    in clear text. http:// is for a loopback host only (a local simulator or proxy)."""
    for url in ("http://api.runa.io/v2", "http://10.0.0.5:8080/v2", "http://localhost.evil/v2",
                "http://127.0.0.1.nip.io/v2", "http://[::2]/v2"):  # fmt: skip
        assert problems(tmp_path, f"runa:\n  timeout: 2s\n  base_url: '{url}'\n") == [
            f"./ow.yaml:3: runa.base_url: {PLAIN_HTTP}"
        ], url
    env = {"ORDERWATCH_RUNA__BASE_URL": "http://api.runa.io/v2"}
    assert problems(tmp_path, "runa: {}\n", env) == [
        f"env:ORDERWATCH_RUNA__BASE_URL: runa.base_url: {PLAIN_HTTP}"
    ]
    for url in ("http://127.0.0.1:8080/v2", "http://127.9.9.9/v2", "http://[::1]:8080/v2",
                "http://localhost/v2", "http://LocalHost:1/v2", "https://api.runa.io/v2"):  # fmt: skip
        assert load(tmp_path, f"runa: {{base_url: '{url}'}}\n").runa.base_url == url
    hook = "webhooks: [{url: 'http://hooks.internal/x', secret: whsec_dGVzdA==}]\n"
    assert load(tmp_path, hook).webhooks[0].url == "http://hooks.internal/x"  # not the key


def test_several_problems_reported_at_once(tmp_path: Path) -> None:
    """Problems of different kinds and steps are all reported together, in line order."""
    got = problems(
        tmp_path,
        "rate_limit:\n  requests_per_second: fast\n  max_concurrency: 0\n"
        "polling:\n  max_interval: 5 minutes\n  jitter: 3\n"
        "runa:\n  api_key: ${NOPE}\n  timout: 1s\n",
    )
    assert [g.split(":")[1] for g in got] == ["2", "3", "5", "6", "8", "9"]
    assert got[4] == "./ow.yaml:8: runa.api_key: environment variable NOPE is not set"


def test_cross_key_check_reported(tmp_path: Path) -> None:
    """A lease shorter than two request timeouts is rejected, naming both keys."""
    got = problems(tmp_path, "polling: {lease: 15s}\nruna: {timeout: 10s}\n")
    assert got == [
        "./ow.yaml: polling.lease (15s) must be at least twice runa.timeout (10s) plus one second"
    ]


# --- secrets -----------------------------------------------------------------------------------


def test_missing_or_bad_secret_files_are_located(tmp_path: Path) -> None:
    """A secret file that is missing, a directory, empty or over 64 KiB is an error at its
    *_file key."""
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "big").write_text("x" * (64 * 1024 + 1))
    got = problems(
        tmp_path,
        "runa:\n  api_key_file: /nonexistent/key\nstate_dsn_file: .\n"
        "webhooks:\n  - url: https://h\n    secret_file: empty\n"
        "  - url: https://h2\n    secret_file: big\n",
    )
    assert got == [
        "./ow.yaml:2: runa.api_key_file: cannot read api_key_file /nonexistent/key: No such file or directory",
        "./ow.yaml:3: state_dsn_file: cannot read state_dsn_file .: Is a directory",
        "./ow.yaml:6: webhooks[0].secret_file: ./empty is empty",
        "./ow.yaml:8: webhooks[1].secret_file: ./big is larger than 64 KiB",
    ]


def test_both_secret_forms_rejected(tmp_path: Path) -> None:
    """A secret and its *_file form together are an error, for each kind of secret."""
    (tmp_path / "k").write_text("x")
    got = problems(
        tmp_path,
        "runa:\n  api_key: xx.a\n  api_key_file: k\nstate_dsn: postgresql://db\nstate_dsn_file: k\n"
        "webhooks:\n  - {url: 'https://h', secret: whsec_a, secret_file: k}\n",
    )
    assert got == [
        "./ow.yaml:3: runa.api_key_file: give api_key or api_key_file, not both",
        "./ow.yaml:5: state_dsn_file: give state_dsn or state_dsn_file, not both",
        "./ow.yaml:7: webhooks[0].secret_file: give secret or secret_file, not both",
    ]


SECRETS = ("xx.supersecret", "whsec_topsecret", "whsec_rotated", "pw-in-dsn", "xx.fromfile9")


def test_secret_values_never_in_errors(tmp_path: Path) -> None:
    """No secret value appears in any error, whether it is the wrong shape, used where a
    duration belongs, read from a file or given in an override."""
    (tmp_path / "k").write_text("xx.fromfile9\n")
    dsn = "postgresql://u:pw-in-dsn@db"
    env = {
        "HOOK": "whsec_topsecret",
        "ORDERWATCH_STATE_DSN": dsn,
        "ORDERWATCH_COMMAND_TIMEOUT": dsn,
    }
    got = problems(
        tmp_path,
        "runa:\n  api_key: [xx.supersecret]\n  timeout: xx.supersecret\n"
        "webhooks:\n  - url: ftp://h\n    secret: ${HOOK}\n    secrets: [whsec_rotated, {a: 1}]\n"
        "    retry_schedule: ['${HOOK}', whsec_rotated]\n"
        "  - {url: 'https://h', secret_file: k, timeout: xx.fromfile9}\n",
        env,
    )
    text = "\n".join(got)
    assert not [s for s in SECRETS if s in text]
    assert "./ow.yaml:3: runa.timeout: invalid duration '***'" in text
    assert "./ow.yaml:8: webhooks[0].retry_schedule[0]: invalid duration '***'" in text
    assert "./ow.yaml:2: runa.api_key: should be a string" in text
    assert "env:ORDERWATCH_COMMAND_TIMEOUT: command_timeout: invalid duration '***'" in text
    assert len(got) == 8


def test_a_secret_in_the_wrong_key_is_not_echoed(tmp_path: Path) -> None:
    """A Standard Webhooks secret or a Runa API key (`wg.`, `xx.` or `XX.` and its secret,
    API-NOTES) written literally where it does not belong (a slip of the paste, a wrong
    indent) is not a secret to the loader, but its shape gives it away: the error names the
    key and masks the value, a Runa key's prefix kept. api_version must look like one."""
    got = problems(
        tmp_path,
        "polling:\n  max_interval: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"
        "  initial_delay: wg.9fK2mQ7xLp3RtV8s\n"
        "runa:\n  api_version: XX.Qa7_Zr-4Lm0Pz8Nw\n"
        "webhooks:\n  - {url: 'https://h', retry_schedule: [whsec_c2VjcmV0/+=]}\n",
    )
    text = "\n".join(got)
    for secret in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "c2VjcmV0", "9fK2mQ7x", "Qa7_Zr-4Lm0P"):
        assert secret not in text
    assert "./ow.yaml:2: polling.max_interval: invalid duration 'whsec_***'" in text
    assert "./ow.yaml:3: polling.initial_delay: invalid duration 'wg.***'" in text
    assert "./ow.yaml:5: runa.api_version: should be an API version like 2024-02-05" in text


def test_paths_urls_and_keys_that_would_fail_later_are_located_errors(tmp_path: Path) -> None:
    """Values that passed validation and then failed with a traceback (a NUL byte in a
    path, a port out of range, an IPv6 host without its bracket), or kept the daemon
    failing on 401s (a blank key), or crashed every poll (a key with a line break)."""
    got = problems(
        tmp_path,
        'state_dir: "a\\0b"\n'
        'watchlists: ["nul\\0x", w.txt]\n'
        "runa:\n  base_url: http://127.0.0.1:abc/v2\n"
        '  api_key: "xx.one\\ntwo"\n'
        "webhooks:\n  - {url: 'https://hooks.example:99999/x', secret: whsec_dGVzdA==}\n"
        "  - {url: 'http://[::1/x', secret: whsec_dGVzdA==}\n",
    )
    assert sorted(got) == [
        "./ow.yaml:1: state_dir: contains a NUL byte",
        "./ow.yaml:2: watchlists[0]: contains a NUL byte",
        "./ow.yaml:4: runa.base_url: should be a URL with a host and a port up to 65535",
        "./ow.yaml:5: runa.api_key: contains a control character (a line break?)",
        "./ow.yaml:7: webhooks[0].url: should be a URL with a host and a port up to 65535",
        "./ow.yaml:8: webhooks[1].url: should be a URL with a host and a port up to 65535",
    ]
    got = problems(tmp_path, 'runa:\n  api_key_file: "a\\0b"\n')
    assert got == ["./ow.yaml:2: runa.api_key_file: contains a NUL byte"]
    for blank in ("", "   "):
        got = problems(tmp_path, "runa:\n  api_key: ${K}\n", {"K": blank})
        assert got == ["./ow.yaml:2: runa.api_key: is empty"]


def test_a_state_dsn_postgresql_cannot_read_is_a_located_error(tmp_path: Path) -> None:
    """It passed check-config and failed at the first store call, exit 1, unlocated."""
    pytest.importorskip("psycopg")
    got = problems(tmp_path, 'state_dsn: "mysql://u:pw-9x@db/x"\n')
    assert got == ["./ow.yaml:1: state_dsn: is not a valid PostgreSQL connection string"]


def test_a_malformed_callback_or_a_sink_named_twice_is_a_located_error(tmp_path: Path) -> None:
    """They were found only when the sinks were built: `orderwatch: callback 'x': ...`, with
    no file, line or key. An import that fails still is (it needs the user's code)."""
    got = problems(
        tmp_path,
        "webhooks:\n"
        "  - {url: 'https://h/x', secret: whsec_dGVzdA==}\n"
        "  - {url: 'https://h/x', secret: whsec_dGVzdA==}\n"
        "commands: [[notify, a], [notify, a]]\n"
        "callbacks: [no_colon_here, 'pkg.mod:f', 'pkg.mod:f']\n",
    )
    assert got == [
        "./ow.yaml:3: webhooks[1]: the same sink as webhooks[0]",
        "./ow.yaml:4: commands[1]: the same sink as commands[0]",
        "./ow.yaml:5: callbacks[0]: expected 'package.module:function'",
        "./ow.yaml:5: callbacks[2]: the same sink as callbacks[1]",
    ]


def test_values_from_the_environment_are_not_echoed(tmp_path: Path) -> None:
    """A variable that holds a secret, expanded into the wrong key by mistake, is shown by its
    name in the error, never by its value (the loader cannot know which variables are secret)."""
    env = {"PAYOUT_TOKEN": "tok-0123456789", "LEVEL": "loud"}
    got = problems(
        tmp_path,
        "polling:\n  max_interval: ${PAYOUT_TOKEN}\n  lease: 'x${PAYOUT_TOKEN}'\n"
        "logging:\n  level: ${LEVEL}\n",
        env,
    )
    assert got == [
        "./ow.yaml:2: polling.max_interval: invalid duration '${PAYOUT_TOKEN}': use e.g. 250ms, 30s, 5m, 2h, 3d",
        "./ow.yaml:3: polling.lease: invalid duration 'x${PAYOUT_TOKEN}': use e.g. 250ms, 30s, 5m, 2h, 3d",
        "./ow.yaml:5: logging.level: should be 'debug', 'info', 'warning' or 'error'",
    ]


# --- environment --------------------------------------------------------------------------------


def test_env_expansion_escape_and_unset_variable(tmp_path: Path) -> None:
    """${VAR} expands in any string, $${ is a literal ${, an unset variable or a malformed
    reference is a located error."""
    s = load(
        tmp_path,
        "runa:\n  api_key: ${KEY}\n  base_url: https://${HOST}/v2\ncallbacks: ['m$${x}:f']\n",
        {"KEY": "xx.v", "HOST": "sim.local"},
    )
    assert s.runa.api_key is not None and s.runa.api_key.get_secret_value() == "xx.v"
    assert s.runa.base_url == "https://sim.local/v2" and s.callbacks == ("m${x}:f",)
    assert problems(tmp_path, "runa:\n  api_key: ${RUNA_API_KEY}\nstate_dir: ${a b}\n") == [
        "./ow.yaml:2: runa.api_key: environment variable RUNA_API_KEY is not set",
        "./ow.yaml:3: state_dir: '${' must start a ${NAME} reference (write $${ for a literal ${)",
    ]


def test_env_overrides(tmp_path: Path) -> None:
    """ORDERWATCH_<SECTION>__<KEY> and ORDERWATCH_<KEY> override the file; values parse as YAML
    except for text keys; an override of one secret form replaces the file's other form;
    variables that are not config are ignored."""
    (tmp_path / "k").write_text("xx.file\n")
    cfg = "rate_limit:\n  requests_per_second: 5\nruna:\n  api_key: ${RUNA_API_KEY}\n"
    env = {
        "ORDERWATCH_RATE_LIMIT__REQUESTS_PER_SECOND": "2.5",
        "ORDERWATCH_STATE_DIR": "/x",
        "ORDERWATCH_RUNA__API_KEY_FILE": str(tmp_path / "k"),
        "ORDERWATCH_RUNA__API_VERSION": "2025-01-01",
        "ORDERWATCH_ADMIN__LISTEN": "null",
        "ORDERWATCH_WATCHLISTS": "[/a.txt, /b.txt]",
        "ORDERWATCH_POLLING": "{jitter: 0.5}",
        "ORDERWATCH_CONFIG": "/elsewhere.yaml",
        "ORDERWATCH_EVENT": "order.completed",
    }
    s = load(tmp_path, cfg, env)
    assert s.rate_limit.requests_per_second == 2.5 and s.state_dir == Path("/x")
    assert s.runa.api_key is not None and s.runa.api_key.get_secret_value() == "xx.file"
    assert s.runa.api_version == "2025-01-01" and s.admin.listen is None
    assert s.watchlists == (Path("/a.txt"), Path("/b.txt")) and s.polling.jitter == 0.5
    s = load(tmp_path, "", {"ORDERWATCH_RUNA__API_KEY": "1234"})
    assert s.runa.api_key is not None and s.runa.api_key.get_secret_value() == "1234"


def test_bad_overrides(tmp_path: Path) -> None:
    """Unknown sections and keys in overrides get a did-you-mean, bad values a message; all are
    reported as env:NAME without a line, after the file's own problems."""
    env = {
        "ORDERWATCH_RATE_LIMT__X": "1",
        "ORDERWATCH_POLLING__MAX_INTERVALL": "1s",
        "ORDERWATCH_POLLING__MAX_INTERVAL": "soon",
        "ORDERWATCH_WEBHOOKS__URL": "https://h",
        "ORDERWATCH_A__B__C": "1",
    }
    assert problems(tmp_path, "logging: {level: loud}\n", env) == [
        "./ow.yaml:1: logging.level: should be 'debug', 'info', 'warning' or 'error'",
        "env:ORDERWATCH_A__B__C: expected ORDERWATCH_<KEY> or ORDERWATCH_<SECTION>__<KEY>",
        "env:ORDERWATCH_POLLING__MAX_INTERVAL: polling.max_interval: invalid duration 'soon': use e.g. 250ms, 30s, 5m, 2h, 3d",
        "env:ORDERWATCH_POLLING__MAX_INTERVALL: polling.max_intervall: unknown key 'max_intervall' (did you mean 'max_interval'?)",
        "env:ORDERWATCH_RATE_LIMT__X: rate_limt: unknown key 'rate_limt' (did you mean 'rate_limit'?)",
        "env:ORDERWATCH_WEBHOOKS__URL: webhooks: is not a section: set it whole, as a YAML flow value",
    ]


def test_a_section_check_names_the_override_it_saw(tmp_path: Path) -> None:
    """A check of a whole section (admin: listen off loopback needs a token) that only an
    override made fail names the variable: it blamed the file's `admin:` line alone, where
    nothing is wrong."""
    env = {"ORDERWATCH_ADMIN__LISTEN": "0.0.0.0:9464"}
    assert problems(tmp_path, "admin:\n  listen: null\n", env) == [
        "./ow.yaml:1: admin: 0.0.0.0:9464 is not loopback: set admin.token or admin.token_file"
        " to protect it (with ORDERWATCH_ADMIN__LISTEN from the environment)"
    ]
    assert problems(tmp_path, "runa: {}\n", env) == [  # no admin section in the file
        "./ow.yaml: admin: 0.0.0.0:9464 is not loopback: set admin.token or admin.token_file"
        " to protect it (with ORDERWATCH_ADMIN__LISTEN from the environment)"
    ]


# --- the file itself ------------------------------------------------------------------------------


def test_yaml_syntax_errors_located(tmp_path: Path) -> None:
    """Broken YAML, a control character and a second document name the line of the problem."""
    assert problems(tmp_path, "runa:\n  base_url: [unclosed\nstate_dir: x\n") == [
        "./ow.yaml:3: YAML syntax error: expected ',' or ']', but got ':'"
    ]
    assert problems(tmp_path, b"runa:\n  base_url: a\x07b\n") == [
        "./ow.yaml:2: YAML syntax error: character '\\x07' is not allowed"
    ]
    assert problems(tmp_path, "a: 1\n---\nb: 2\n") == [
        "./ow.yaml:2: YAML syntax error: expected a single document in the stream, but found another document"
    ]


def test_duplicate_key_reported(tmp_path: Path) -> None:
    """A key given twice is an error (YAML would silently keep the last)."""
    assert problems(tmp_path, "runa:\n  timeout: 1s\n  timeout: 2s\n") == [
        "./ow.yaml:3: runa.timeout: duplicate key (also at line 2)"
    ]


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    """A config that is a list or a scalar is rejected with a clear message."""
    assert problems(tmp_path, "# c\n- a\n- b\n") == [
        "./ow.yaml:2: the config must be a mapping of sections"
    ]
    assert problems(tmp_path, "just text\n") == [
        "./ow.yaml:1: the config must be a mapping of sections"
    ]


def test_unreadable_huge_and_binary_config(tmp_path: Path) -> None:
    """A missing file, a directory, a file over 1 MiB and one not in UTF-8 are one problem each."""
    big = write(tmp_path, "#" * (1024 * 1024 + 1), "big.yaml")
    binary = write(tmp_path, b"a: 1\nb: \xff\n", "bin.yaml")
    cases = [
        (tmp_path / "nope.yaml", "nope.yaml: cannot read config: No such file or directory"),
        (tmp_path, ": cannot read config: Is a directory"),
        (big, "big.yaml: config is larger than 1 MiB"),
        (binary, "bin.yaml:2: config is not UTF-8 text"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError) as e:
            load_settings(path, {})
        rendered = [str(p) for p in e.value.problems]
        assert rendered == [f"{tmp_path}{os.sep if path != tmp_path else ''}{message}"]


@pytest.mark.slow
def test_alias_bomb_and_deep_nesting_rejected(tmp_path: Path) -> None:
    """A 'billion laughs' file and absurd nesting are refused instead of eating the machine."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    assert problems(tmp_path, "\n".join(lines) + "\n") == [
        "./ow.yaml: config has more than 100000 values (aliases expanded)"
    ]
    keys = ["? &k0 [x, x, x, x, x, x, x, x, x, x]\n: 0"]
    keys += [f"? &k{i} [{', '.join([f'*k{i - 1}'] * 10)}]\n: {i}" for i in range(1, 9)]
    assert problems(tmp_path, "\n".join(keys) + "\n") == [
        "./ow.yaml: config has more than 100000 values (aliases expanded)"
    ]
    assert problems(tmp_path, "x: " + "[" * 5000 + "\n") == [
        "./ow.yaml: YAML syntax error: nested too deeply"
    ]
    bomb = (
        "["
        + ", ".join([f"&a{i} [{', '.join([f'*a{i - 1}' if i else 'x'] * 10)}]" for i in range(9)])
        + "]"
    )
    assert problems(tmp_path, "", {"ORDERWATCH_COMMANDS": bomb}) == [
        "env:ORDERWATCH_COMMANDS: commands: more than 100000 values (aliases expanded)"
    ]
    assert problems(tmp_path, "", {"ORDERWATCH_COMMANDS": "[" * 5000}) == [
        "env:ORDERWATCH_COMMANDS: commands: nested too deeply"
    ]


@pytest.mark.timeout(20)
def test_fifos_are_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO (or device) given as the config or as a secret file would block the reader, and a
    reload runs on the daemon's event loop: it is refused like a directory."""
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ConfigError) as e:
        load_settings(tmp_path / "pipe", {})
    assert [str(p) for p in e.value.problems] == [
        f"{tmp_path}/pipe: cannot read config: not a regular file"
    ]
    assert problems(tmp_path, "runa:\n  api_key_file: pipe\nadmin:\n  token_file: pipe\n") == [
        "./ow.yaml:2: runa.api_key_file: cannot read api_key_file ./pipe: not a regular file",
        "./ow.yaml:4: admin.token_file: cannot read token_file ./pipe: not a regular file",
    ]


def test_loaded_settings_are_frozen(tmp_path: Path) -> None:
    """What the loader returns cannot be changed by accident."""
    s: Any = load(tmp_path, "rate_limit: {requests_per_second: 3}\n")
    with pytest.raises(ValueError, match="frozen"):
        s.rate_limit.requests_per_second = 9


def test_unused_secrets_are_left_as_written(tmp_path: Path) -> None:
    """A command that names secrets it does not use gets them as the file wrote them: no
    ${NAME} expanded (an unset one is no problem), no *_file read; the others as always."""
    from orderwatch.config.unused_secrets import STORE_ONLY

    path = tmp_path / "ow.yaml"
    path.write_text(
        "runa:\n  api_key_file: ${CREDENTIALS_DIRECTORY}/runa\n"
        "webhooks:\n  - url: http://127.0.0.1:9/hook\n    secret: ${WEBHOOK_SECRET}\n"
        "admin:\n  token_file: /nonexistent/admin.token\n"
        "state_dsn: ${DSN}\n"
    )
    env = {"DSN": "postgresql://u:dsn-pass-123456@db/ow"}
    s = load_settings(path, env, unused_secrets=STORE_ONLY)
    assert s.runa.api_key is None and str(s.runa.api_key_file) == "${CREDENTIALS_DIRECTORY}/runa"
    secret = s.webhooks[0].secret
    assert secret is not None and secret.get_secret_value() == "${WEBHOOK_SECRET}"
    assert s.admin.token is None and str(s.admin.token_file) == "/nonexistent/admin.token"
    assert s.state_dsn is not None and s.state_dsn.get_secret_value() == env["DSN"]
    with pytest.raises(ConfigError) as e:
        load_settings(path, env)
    assert [p.key for p in e.value.problems] == [
        "runa.api_key_file",
        "webhooks[0].secret",
        "admin.token_file",
    ]
