"""What the daemon says of its config when it starts (`config.loaded`): a summary that fits
one line. Nothing in it can hold a secret: webhook URLs (an incoming-webhook URL often
carries its credential in the path) and command lines (`curl -H "Authorization: ..."`) are
counted, not shown, and the Runa URL is shown without its user information."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from orderwatch.config.models import Settings


def config_summary(settings: Settings, extra_callbacks: int = 0) -> dict[str, Any]:
    """The state backend, the API and its rate, the sinks by kind, the watchlists and the
    admin address; `extra_callbacks`: callbacks given in code (embedding), not in the file."""
    s = settings
    base = urlsplit(s.runa.base_url)
    return {
        "runa": f"{base.scheme}://{base.netloc.rpartition('@')[2]}{base.path}",
        "state": "postgresql" if s.state_dsn is not None else "sqlite",
        "rate": f"{s.rate_limit.requests_per_second:g}/s",
        "max_concurrency": s.rate_limit.max_concurrency,
        "webhooks": len(s.webhooks),
        "commands": len(s.commands),
        "callbacks": len(s.callbacks) + extra_callbacks,
        "watchlists": len(s.watchlists),
        "admin": s.admin.listen or "off",
    }
