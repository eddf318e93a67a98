"""Tell the log redactor every secret and every URL that is safe to show, from the settings."""

from __future__ import annotations

from urllib.parse import urlsplit

from orderwatch.config.models import Settings
from orderwatch.core.redact import REDACTOR


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def register_secrets(settings: Settings) -> None:
    """Idempotent; called at start and on every reload (new secrets join, none are forgotten)."""
    if settings.runa.api_key is not None:
        REDACTOR.add_secret(settings.runa.api_key.get_secret_value())
    for hook in settings.webhooks:
        for secret in (hook.secret, *hook.secrets):
            if secret is not None:
                value = secret.get_secret_value()
                REDACTOR.add_secret(value)
                REDACTOR.add_secret(value.removeprefix("whsec_"))
        REDACTOR.add_safe_url_prefix(_origin(hook.url))
    for value in settings.push.all_secrets():
        REDACTOR.add_secret(value)
        REDACTOR.add_secret(value.removeprefix("whsec_"))
    if settings.admin.token is not None:
        REDACTOR.add_secret(settings.admin.token.get_secret_value())
    if settings.state_dsn is not None:
        dsn = settings.state_dsn.get_secret_value()
        REDACTOR.add_secret(dsn)
        password = urlsplit(dsn).password
        if password:
            REDACTOR.add_secret(password)
    base = urlsplit(settings.runa.base_url)
    if base.password:
        REDACTOR.add_secret(base.password)
    # Safe without its userinfo: a base_url with credentials in it is never logged whole.
    REDACTOR.add_safe_url_prefix(f"{_origin(settings.runa.base_url)}{base.path.rstrip('/')}")
