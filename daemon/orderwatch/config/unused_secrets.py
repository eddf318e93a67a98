"""Secrets a command does not use are left as written: their ${NAME} is not expanded and
their *_file is not read. `orderwatch status` run by hand, outside the systemd unit, then
needs neither RUNA_API_KEY nor the unit's CREDENTIALS_DIRECTORY, which only `run`, `wait` and
`check-config` use. Such a value is the config's text, never a secret: a command that names a
secret here must never use it."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from orderwatch.config.source import Loc

API_KEY = "api_key"  # runa.api_key, runa.api_key_file
WEBHOOK_SECRETS = "webhook_secrets"  # webhooks[*].secret, .secret_file, .secrets
ADMIN_TOKEN = "admin_token"  # noqa: S105 (a kind of secret, not one): admin.token(_file)
NOT_CALLING = frozenset({API_KEY, ADMIN_TOKEN})  # replay: delivers, calls no API, serves nothing
STORE_ONLY = NOT_CALLING | {WEBHOOK_SECRETS}  # add, status: the store's DSN is all they use

_SECTION_KEYS = {
    API_KEY: ("runa", ("api_key", "api_key_file")),
    ADMIN_TOKEN: ("admin", ("token", "token_file")),
}
_WEBHOOK_KEYS = ("secret", "secret_file", "secrets")


def take_out(data: dict[str, Any], unused: Collection[str]) -> list[tuple[Loc, Any]]:
    """Remove the unused secrets from `data` (before ${NAME} expansion and *_file reading);
    what `put_back` needs to return them as written."""
    taken: list[tuple[Loc, Any]] = []
    for kind in unused:
        if kind == WEBHOOK_SECRETS:
            hooks = data.get("webhooks")
            for i, hook in enumerate(hooks if isinstance(hooks, list) else []):
                taken += _take(hook, ("webhooks", i), _WEBHOOK_KEYS)
        else:
            section, keys = _SECTION_KEYS[kind]
            taken += _take(data.get(section), (section,), keys)
    return taken


def put_back(data: dict[str, Any], taken: list[tuple[Loc, Any]]) -> None:
    for (*where, key), value in taken:
        target: Any = data
        for part in where:
            target = target[part]
        target[key] = value


def _take(mapping: Any, loc: Loc, keys: tuple[str, ...]) -> list[tuple[Loc, Any]]:
    if not isinstance(mapping, dict):
        return []  # validation says what is wrong with it
    return [((*loc, key), mapping.pop(key)) for key in keys if key in mapping]
