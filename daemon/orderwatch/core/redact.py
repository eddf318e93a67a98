"""Redaction as one object: `REDACTOR` knows every secret the config holds and removes
them, every URL not known to be safe (payout links), and the whole value of keys that carry
payloads or credentials, from any value. The log chain runs it on every line; sinks and the
admin API use it on what they quote."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

REDACTED = "[REDACTED]"
REDACTED_URL = "[REDACTED-URL]"
# A key whose name is one of these, or ends in "_<one of these>" ("webhook_secret",
# "x-api-key", "response_body"), has its whole value replaced, whatever the value is.
SENSITIVE_KEYS = frozenset(
    {
        "api_key",
        "secret",
        "secrets",
        "token",
        "password",
        "passwd",
        "authorization",
        "cookie",
        "credentials",
        "payload",
        "body",
        "data",
        "dsn",
        "headers",
    }
)
# Values shaped like a secret are masked wherever they turn up, registered or not (pasted into
# the wrong setting, quoted by an exception): a Runa API key, `<wg|xx|XX>.<secret>`, whose
# prefix is safe to show (API-NOTES), and a Standard Webhooks secret, `whsec_<base64>`.
# Twelve characters at least, so that names like `xx.example.com` stay readable.
SECRET_SHAPES = re.compile(r"\b(wg|xx|XX)\.[A-Za-z0-9_+/=-]{12,}|(whsec)_[A-Za-z0-9+/=_-]+")
MIN_SECRET_LEN = 4  # shorter secrets are redacted only as whole values (see add_secret)
_MAX_DEPTH = 16
_KEY_CACHE_MAX = 4096
_URL = re.compile(r"https?://[^\s\"'<>\\`]+", re.IGNORECASE)
_URL_BOUNDARY = ("/", "?", "#")


def mask_secret_shapes(text: str, mask: str = REDACTED) -> str:
    """`text` with every value shaped like a secret masked, its prefix kept."""
    if "." not in text and "whsec_" not in text:
        return text
    return SECRET_SHAPES.sub(
        lambda m: f"{m.group(1)}.{mask}" if m.group(1) else f"whsec_{mask}", text
    )


def _sensitive(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return k in SENSITIVE_KEYS or any(k.endswith("_" + s) for s in SENSITIVE_KEYS)


class Redactor:
    """Removes registered secrets and unsafe URLs from any value, recursively.

    Registering is cheap and thread-safe; redacting a line without URLs costs one regex
    search over each string value (all secrets share one precompiled pattern)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._secret_re: re.Pattern[str] | None = None
        self._short: frozenset[str] = frozenset()  # secrets under MIN_SECRET_LEN
        self._safe: tuple[str, ...] = ()
        self._key_cache: dict[str, bool] = {}

    def add_secret(self, value: str) -> None:
        """Every later occurrence of `value` inside any logged string becomes [REDACTED]. One
        under MIN_SECRET_LEN characters, only where it is a whole value (a log field, an
        environment variable): inside text it would blank out "abc" in every word it is in."""
        value = value.strip()
        if not value or value in self._secrets or value in self._short:
            return
        if len(value) < MIN_SECRET_LEN:
            with self._lock:
                self._short = self._short | {value}
            return
        with self._lock:
            secrets = self._secrets | {value}
            longest_first = sorted(secrets, key=len, reverse=True)
            pattern = re.compile("|".join(re.escape(s) for s in longest_first))
            self._secrets, self._secret_re = secrets, pattern

    def add_safe_url_prefix(self, prefix: str) -> None:
        """URLs under `prefix` (same origin, path at a `/`, `?` or `#` boundary) are kept."""
        prefix = prefix.strip().rstrip("/").lower()
        if not urlsplit(prefix).hostname:
            return  # "https://" alone would make every URL safe: keep redacting
        with self._lock:
            if prefix not in self._safe:
                self._safe = (*self._safe, prefix)

    def is_safe_url(self, url: str) -> bool:
        low = url.lower()
        for prefix in self._safe:
            if low.startswith(prefix) and (
                len(low) == len(prefix) or low[len(prefix)] in _URL_BOUNDARY
            ):
                return True
        return False

    def _url(self, m: re.Match[str]) -> str:
        url = m.group(0)
        if not self.is_safe_url(url):
            return REDACTED_URL
        # A safe origin still may carry a token in its query ("/hook?token=..."): keep the
        # path, never what follows it.
        cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=-1)
        return url if cut < 0 else f"{url[:cut]}?{REDACTED}"

    def text(self, value: str) -> str:
        if self._short and value.strip() in self._short:
            return REDACTED
        pattern = self._secret_re
        if pattern is not None:
            value = pattern.sub(REDACTED, value)
        value = mask_secret_shapes(value)
        if "://" in value:
            value = _URL.sub(self._url, value)
        return value

    def holds_secret(self, value: str) -> bool:
        """True when `value` contains a registered secret (is one, for a short one)."""
        if self._short and value.strip() in self._short:
            return True
        pattern = self._secret_re
        return pattern is not None and pattern.search(value) is not None

    def sensitive_key(self, key: str) -> bool:
        hit = self._key_cache.get(key)
        if hit is None:
            hit = _sensitive(key)
            if len(self._key_cache) < _KEY_CACHE_MAX:  # keys of logged data can be unbounded
                self._key_cache[key] = hit
        return hit

    def value(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return {str(k): self.item(str(k), v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v, depth + 1) for v in value]
        if isinstance(value, bytes | bytearray | memoryview):
            return REDACTED
        return self.text(str(value))

    def item(self, key: str, value: Any, depth: int = 0) -> Any:
        return REDACTED if self.sensitive_key(key) else self.value(value, depth)

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        sensitive, text = self.sensitive_key, self.text
        for key, v in event_dict.items():
            if sensitive(key):
                event_dict[key] = REDACTED
            elif isinstance(v, str):  # the common case, inlined: this runs on every line
                event_dict[key] = text(v)
            elif v is not None and not isinstance(v, bool | int | float):
                event_dict[key] = self.value(v)
        return event_dict


REDACTOR = Redactor()
