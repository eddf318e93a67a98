"""The typed, frozen shape of the config. Loading and locating errors live in config.py."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orderwatch.config.durations import parse_duration

Seconds = Annotated[float, BeforeValidator(parse_duration)]


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError("must be greater than zero")
    return v


PositiveSeconds = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]


def _not_bool(v: object) -> object:
    if isinstance(v, bool):  # pydantic would take true as 1
        raise ValueError("should be a number, not true or false")
    return v


Number = Annotated[float, BeforeValidator(_not_bool)]
Count = Annotated[int, BeforeValidator(_not_bool)]


def _argv(v: tuple[str, ...]) -> tuple[str, ...]:
    if not v:
        raise ValueError("should be a program and its arguments, not empty")
    return v


Argv = Annotated[tuple[str, ...], AfterValidator(_argv)]


def _no_nul(v: Path) -> Path:
    if "\0" in str(v):  # os calls refuse it later, with a traceback
        raise ValueError("contains a NUL byte")
    return v


FilePath = Annotated[Path, AfterValidator(_no_nul)]


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets; no host means 127.0.0.1) as (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port with a port up to 65535, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _listen(v: str) -> str:
    split_listen(v)
    return v


Listen = Annotated[str, AfterValidator(_listen)]  # host:port, checked


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _http_url(cls: type, v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must start with https:// (or http:// on a trusted network)")
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 (it raises for a port out of range or not a number)
    except ValueError:
        parts = None
    if parts is None or not parts.hostname:
        raise ValueError("should be a URL with a host and a port up to 65535")
    return v


def _key_not_in_clear(cls: type, v: str) -> str:
    # Every request carries the API key in a header: plain HTTP only where it cannot leave
    # the machine (a local simulator, a TLS-terminating sidecar).
    if v.startswith("http://") and not is_loopback(urlsplit(v).hostname or ""):
        raise ValueError(
            "plain http:// would send the API key in clear text: use https://"
            " (http:// only to a loopback host: 127.0.0.0/8, ::1, localhost)"
        )
    return v


def _api_version(cls: type, v: str) -> str:
    # Runa's versions are dates (API-NOTES); anything else is answered 400, and this value
    # is logged, so a key pasted here by mistake would be too.
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", v):
        raise ValueError("should be an API version like 2024-02-05")
    return v


class RunaSettings(_Section):
    base_url: str = "https://playground.runa.io/v2"
    api_key: SecretStr | None = None
    # Where api_key was read from, if a file: the loader reads it and rejects giving both.
    api_key_file: FilePath | None = None
    api_version: str = "2024-02-05"
    timeout_s: PositiveSeconds = Field(10.0, alias="timeout")

    _http = field_validator("base_url")(_http_url)
    _tls = field_validator("base_url")(_key_not_in_clear)
    _version = field_validator("api_version")(_api_version)

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        key = v.get_secret_value().strip()
        if not key:
            raise ValueError("is empty")  # an unset ${VAR}, as often as not
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
            raise ValueError("contains a control character (a line break?)")
        return SecretStr(key)


class RateLimitSettings(_Section):
    requests_per_second: Number = Field(5.0, gt=0, le=100_000)
    max_concurrency: Count = Field(4, ge=1, le=1024)


class PollingSettings(_Section):
    initial_delay_s: Seconds = Field(2.0, alias="initial_delay")
    backoff_factor: Number = Field(2.0, ge=1.0, le=100.0)
    max_interval_s: PositiveSeconds = Field(300.0, alias="max_interval")
    jitter: Number = Field(0.1, ge=0.0, le=1.0)
    give_up_after_s: PositiveSeconds = Field(72 * 3600.0, alias="give_up_after")
    not_found_grace_s: Seconds = Field(600.0, alias="not_found_grace")
    # Poll at ages learned from completion times (polling/cadence.py); false: the back-off.
    learn: bool = True
    # How long a claimed order is invisible to other workers/replicas. A replica that dies
    # holding claims delays those orders by at most this; it must exceed a request's timeout.
    lease_s: PositiveSeconds = Field(60.0, alias="lease")
    # Read the list endpoint for many orders at once when per-order polling cannot keep up
    # (polling/sweep.py says when); off: one GET per order, always.
    sweep: Literal["auto", "off"] = "auto"


class WebhookSettings(_Section):
    url: str
    secret: SecretStr | None = None
    secret_file: FilePath | None = None
    secrets: tuple[SecretStr, ...] = ()  # extra secrets during rotation: every one signs
    timeout_s: PositiveSeconds = Field(15.0, alias="timeout")
    retry_schedule_s: tuple[Seconds, ...] = Field(
        (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0), alias="retry_schedule"
    )
    max_concurrency: Count = Field(8, ge=1, le=256)

    _http = field_validator("url")(_http_url)

    @model_validator(mode="after")
    def _check(self) -> WebhookSettings:
        if self.secret is None and self.secret_file is None and not self.secrets:
            raise ValueError("a webhook needs secret, secret_file or secrets")
        return self


MIN_REMOTE_TOKEN = 16  # an admin token guarding a listener others can reach


class AdminSettings(_Section):
    listen: Listen | None = "127.0.0.1:9464"
    token: SecretStr | None = None  # bearer token for the admin API; or token_file
    token_file: FilePath | None = None  # where token was read from, if a file

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if v is None:
            return v
        if not (token := v.get_secret_value().strip()):
            raise ValueError("is empty")
        listen = info.data.get("listen")  # validated before: it comes first
        if len(token) < MIN_REMOTE_TOKEN and listen and not is_loopback(split_listen(listen)[0]):
            raise ValueError(
                f"should be at least {MIN_REMOTE_TOKEN} characters when admin.listen is not"
                " loopback (anyone who can reach it may guess it)"
            )
        return SecretStr(token)  # as the Authorization header carries it

    @model_validator(mode="after")
    def _protected(self) -> AdminSettings:
        given = self.token is not None or self.token_file is not None  # a file: maybe unread
        if self.listen and not given and not is_loopback(split_listen(self.listen)[0]):
            raise ValueError(
                f"{self.listen} is not loopback: set admin.token or admin.token_file to protect it"
            )
        return self


def _svix_secret(v: SecretStr) -> SecretStr:
    # Strict base64: the library's decoder skips what is not base64 and would verify with
    # another key than Svix signs with. The value itself is never quoted.
    raw = v.get_secret_value().strip().removeprefix("whsec_")
    try:
        if not base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True):
            raise ValueError
    except (binascii.Error, ValueError):
        raise ValueError("is not a Svix signing secret ('whsec_' and base64)") from None
    return SecretStr(v.get_secret_value().strip())


class PushSettings(_Section):
    """Runa's own `order.completion` push (through Svix): the fast path beside polling."""

    listen: Listen | None = None  # host:port of its own listener; None: off
    path: str = "/runa/webhook"
    secret: SecretStr | None = None
    secret_file: FilePath | None = None  # where secret was read from, if a file
    secrets: tuple[SecretStr, ...] = ()  # more during a rotation: any one verifies
    track_unknown: bool = True  # a push for an order not tracked yet starts tracking it

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in "?# ") or not v.isprintable():
            raise ValueError("should be a URL path starting with /, without ? or #")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else _svix_secret(v)

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        return tuple(_svix_secret(s) for s in v)

    @model_validator(mode="after")
    def _signed(self) -> PushSettings:
        # Not loopback is fine: every request must carry Svix's signature.
        if self.listen and self.secret is None and not self.secrets:
            raise ValueError(
                f"listen is {self.listen}: give secret, secret_file or secrets (Svix's"
                " whsec_... signing secret) to verify what arrives"
            )
        return self

    def all_secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.secret, *self.secrets) if s is not None]


class LoggingSettings(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    """The whole config: one frozen object built once at the edge."""

    runa: RunaSettings = RunaSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    polling: PollingSettings = PollingSettings()
    watchlists: tuple[FilePath, ...] = ()
    state_dir: FilePath = Path("/var/lib/orderwatch")
    state_dsn: SecretStr | None = None
    state_dsn_file: FilePath | None = None  # where state_dsn was read from, if a file
    output_dir: FilePath = Path("/var/lib/orderwatch/orders")
    webhooks: tuple[WebhookSettings, ...] = ()
    commands: tuple[Argv, ...] = ()
    command_timeout_s: PositiveSeconds = Field(30.0, alias="command_timeout")
    callbacks: tuple[str, ...] = ()
    admin: AdminSettings = AdminSettings()
    push: PushSettings = PushSettings()
    logging: LoggingSettings = LoggingSettings()
    shutdown_timeout_s: PositiveSeconds = Field(5.0, alias="shutdown_timeout")

    @field_validator("state_dsn")
    @classmethod
    def _dsn(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        try:
            from psycopg import Error
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:  # without the postgres extra, opening the store says so
            return v
        try:
            conninfo_to_dict(v.get_secret_value())
        except Error:
            raise ValueError("is not a valid PostgreSQL connection string") from None
        return v

    @model_validator(mode="after")
    def _lease_outlives_a_request(self) -> Settings:
        if self.polling.lease_s < 2 * self.runa.timeout_s + 1:
            raise ValueError(
                f"polling.lease ({self.polling.lease_s:g}s) must be at least twice"
                f" runa.timeout ({self.runa.timeout_s:g}s) plus one second"
            )
        return self
