"""Config loading: every problem located as file:line: key: message, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from orderwatch.config import load_settings, load_settings_from_mapping
from orderwatch.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    cfg = tmp_path / "ow.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env or {})
    return [str(p).replace(str(cfg), "ow.yaml") for p in e.value.problems]


def test_every_spec_key_parses(tmp_path: Path) -> None:
    """The SPEC's example keys load into typed values with units applied."""
    (tmp_path / "key").write_text("xx.secret\n")
    cfg = tmp_path / "ow.yaml"
    cfg.write_text(
        """
runa: {base_url: "https://playground.runa.io/v2", api_key_file: key, api_version: "2024-02-05", timeout: 10s}
rate_limit: {requests_per_second: 5, max_concurrency: 4}
polling: {initial_delay: 250ms, backoff_factor: 2, max_interval: 5m, jitter: 0.1, give_up_after: 3d, not_found_grace: 10m}
watchlists: [lists/a.txt]
state_dir: state
output_dir: /srv/orders
webhooks: [{url: "https://h/x", secret: "whsec_abc", timeout: 15s, retry_schedule: [5s, 5m, 2h]}]
commands: [[/usr/local/bin/on-order-final, --flag]]
callbacks: ["myapp.payouts:on_order_final"]
admin: {listen: "127.0.0.1:9464"}
logging: {format: json, level: info}
"""
    )
    s = load_settings(cfg, {})
    assert s.runa.api_key is not None and s.runa.api_key.get_secret_value() == "xx.secret"
    assert s.polling.initial_delay_s == 0.25 and s.polling.give_up_after_s == 3 * 86400
    assert s.webhooks[0].retry_schedule_s == (5.0, 300.0, 7200.0)
    assert s.watchlists == (tmp_path / "lists/a.txt",)  # relative to the config file
    assert s.state_dir == tmp_path / "state"
    assert s.commands == (("/usr/local/bin/on-order-final", "--flag"),)


def test_example_config_loads(tmp_path: Path) -> None:
    """config/orderwatch.example.yaml is valid as shipped."""
    s = load_settings(
        REPO / "config" / "orderwatch.example.yaml",
        {"RUNA_API_KEY": "xx.k", "WEBHOOK_SECRET": "whsec_x"},
    )
    assert s.rate_limit.requests_per_second > 0


def test_unknown_key_with_did_you_mean_at_its_line(tmp_path: Path) -> None:
    """An unknown key names its line and the near match."""
    assert problems(tmp_path, "polling:\n  initial_dely: 2s\n") == [
        "ow.yaml:2: polling.initial_dely: unknown key 'initial_dely' (did you mean 'initial_delay'?)"
    ]


def test_several_problems_reported_at_once(tmp_path: Path) -> None:
    """Wrong types, bad durations and out-of-range values are all reported, in line order."""
    got = problems(
        tmp_path,
        "rate_limit:\n  requests_per_second: fast\n  max_concurrency: 0\n"
        "polling:\n  max_interval: 5 minutes\n  jitter: 3\n",
    )
    assert [g.split(":")[1] for g in got] == ["2", "3", "5", "6"]
    assert "rate_limit.requests_per_second: input should be a valid number" in got[0]
    assert "invalid duration '5 minutes'" in got[2]


def test_missing_key_file_is_located(tmp_path: Path) -> None:
    """A secret file that cannot be read is an error at the *_file key."""
    got = problems(tmp_path, "runa:\n  api_key_file: /nonexistent/key\n")
    assert got == [
        "ow.yaml:2: runa.api_key_file: cannot read api_key_file /nonexistent/key: "
        "No such file or directory"
    ]


def test_both_secret_forms_rejected(tmp_path: Path) -> None:
    """api_key and api_key_file together is an error."""
    (tmp_path / "k").write_text("x")
    got = problems(tmp_path, "runa:\n  api_key: xx.a\n  api_key_file: k\n")
    assert got == ["ow.yaml:3: runa.api_key_file: give api_key or api_key_file, not both"]


def test_env_expansion_and_unset_variable(tmp_path: Path) -> None:
    """${VAR} expands; an unset one is a located error."""
    cfg = tmp_path / "ow.yaml"
    cfg.write_text("runa:\n  api_key: ${KEY}\n")
    assert load_settings(cfg, {"KEY": "xx.v"}).runa.api_key.get_secret_value() == "xx.v"  # type: ignore[union-attr]
    assert problems(tmp_path, "runa:\n  api_key: ${KEY}\n") == [
        "ow.yaml:2: runa.api_key: environment variable KEY is not set"
    ]


def test_env_overrides_and_bad_override(tmp_path: Path) -> None:
    """ORDERWATCH_<SECTION>__<KEY> overrides the file; a bad one is reported as env:NAME."""
    cfg = tmp_path / "ow.yaml"
    cfg.write_text("rate_limit:\n  requests_per_second: 5\n")
    env = {"ORDERWATCH_RATE_LIMIT__REQUESTS_PER_SECOND": "2", "ORDERWATCH_STATE_DIR": "/x"}
    s = load_settings(cfg, env)
    assert s.rate_limit.requests_per_second == 2 and s.state_dir == Path("/x")
    got = problems(
        tmp_path, "", {"ORDERWATCH_RATE_LIMT__X": "1", "ORDERWATCH_POLLING__MAX_INTERVAL": "soon"}
    )
    assert "env:ORDERWATCH_POLLING__MAX_INTERVAL: polling.max_interval: invalid duration" in got[0]
    assert (
        got[1]
        == "env:ORDERWATCH_RATE_LIMT__X: rate_limt: unknown key 'rate_limt' (did you mean 'rate_limit'?)"
    )


def test_secret_values_never_in_errors(tmp_path: Path) -> None:
    """A secret with the wrong type or shape is reported without its value."""
    got = problems(
        tmp_path,
        "runa:\n  api_key: [xx.supersecret]\nwebhooks:\n  - url: ftp://h\n"
        "    secret: whsec_topsecret\n",
    )
    text = "\n".join(got)
    assert "supersecret" not in text and "topsecret" not in text
    assert "runa.api_key" in text and "webhooks[0]" in text


def test_yaml_syntax_error_located(tmp_path: Path) -> None:
    """Broken YAML names the line of the problem."""
    got = problems(tmp_path, "runa:\n  base_url: [unclosed\nstate_dir: x\n")
    assert len(got) == 1 and got[0].startswith("ow.yaml:") and "YAML syntax error" in got[0]


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    """A config that is a list or a scalar is rejected with a clear message."""
    assert problems(tmp_path, "- a\n- b\n") == [
        "ow.yaml:1: the config must be a mapping of sections"
    ]


def test_unreadable_and_huge_config(tmp_path: Path) -> None:
    """A missing file and a file over 1 MiB are one clear problem each."""
    with pytest.raises(ConfigError, match="cannot read config: No such file"):
        load_settings(tmp_path / "nope.yaml", {})
    big = tmp_path / "big.yaml"
    big.write_text("#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_settings(big, {})


def test_mapping_config_validates_too() -> None:
    """Configs built in code get the same validation."""
    with pytest.raises(ConfigError, match="unknown key 'rate'"):
        load_settings_from_mapping({"rate": 1})
