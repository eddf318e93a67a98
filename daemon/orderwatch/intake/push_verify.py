"""What a request to the push listener is: verified Svix headers and signature first, then
the body read as Runa's OpenAPI description has it.

Verification uses `standardwebhooks`, the reference library of the scheme Svix signs with
(already what our own webhooks are signed with), not Svix's `svix` package: that package is
an API client with its own dependencies whose verifier does exactly this, renaming `svix-id`,
`svix-timestamp` and `svix-signature` to the `webhook-*` names and calling the same scheme.
Svix sends `webhook-*` instead for some accounts, so those are taken when `svix-*` are absent.

The body (Runa's OpenAPI `webhooks` section): `order.completion` posts the order object
itself, `CompletedOrderWebhook` (basic details: id, status COMPLETED, created_at...) or
`FailedOrderWebhook` (`{id, status: FAILED}`); `product.update` posts `{product_code,
old_state, new_state, timestamp}`. No field names the event type, and Svix sends none in a
header, so the shape decides: an object with `id` or `status` is an order completion, whose
`id` must be a valid order ID and `status` a string. Anything else that is a JSON object is
some other event: acknowledged and ignored (an error would only make Svix retry it for a day
and then disable the endpoint). A Svix-style envelope `{"type", "data"}` is read by its type.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from orderwatch.core.ids import is_valid_order_id
from orderwatch.core.strict_json import NOT_JSON, strict_json

TOLERANCE_S = 300.0  # the scheme's own: a timestamp further off either way is refused
MAX_ID = 256  # a Svix message id is ~30 characters; it becomes a key in the store
_NAMES = ("id", "timestamp", "signature")


class Unverified(Exception):
    """Answered 401, nothing else done. The message says which check failed, never why
    a signature did not match."""


class NotAnEvent(Exception):
    """Verified, but not a body any event has: answered 400."""


@dataclass(frozen=True, slots=True)
class Completion:
    order_id: str
    status: str


@dataclass(frozen=True, slots=True)
class OtherEvent:
    event_type: str  # product.update, or what an envelope named, or "unknown"


def signed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The three headers under the names the library reads. Raises Unverified if one lacks."""
    out = {}
    for name in _NAMES:
        value = headers.get(f"svix-{name}") or headers.get(f"webhook-{name}")
        if not value:
            raise Unverified("missing svix-id, svix-timestamp or svix-signature")
        out[f"webhook-{name}"] = value
    if len(out["webhook-id"]) > MAX_ID or not out["webhook-id"].isprintable():
        raise Unverified("svix-id is not a message id")
    return out


class SvixVerifier:
    """Any one of the secrets verifies (a rotation: the old and the new)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._hooks = [Webhook(s) for s in secrets]  # the config checked them: base64

    def verify(self, body: bytes, headers: dict[str, str]) -> None:
        try:
            sent = float(headers["webhook-timestamp"])
        except ValueError:
            raise Unverified("svix-timestamp is not a number") from None
        if not abs(time.time() - sent) <= TOLERANCE_S:  # the library's clock, the wall's
            raise Unverified("svix-timestamp is more than 5 minutes off")
        for hook in self._hooks:
            try:
                hook.verify(body, headers, json_parse=False)
                return
            except (WebhookVerificationError, ValueError):  # ValueError: a malformed entry
                continue
        raise Unverified("no valid signature")


def read_event(body: bytes) -> Completion | OtherEvent:
    """What a verified body says. Raises NotAnEvent."""
    try:
        data = strict_json(body)
    except NOT_JSON:
        raise NotAnEvent("body is not JSON") from None
    if not isinstance(data, dict):
        raise NotAnEvent("body is not a JSON object")
    if isinstance(data.get("type"), str) and isinstance(data.get("data"), dict):
        if data["type"] != "order.completion":
            return OtherEvent(data["type"][:64])
        data = data["data"]
    if "id" not in data and "status" not in data:
        return OtherEvent("product.update" if "product_code" in data else "unknown")
    return _completion(data)


def _completion(order: dict[str, Any]) -> Completion:
    order_id, status = order.get("id"), order.get("status")
    if not isinstance(order_id, str) or not is_valid_order_id(order_id):
        raise NotAnEvent("order.completion without a valid order id")
    if not isinstance(status, str):
        raise NotAnEvent("order.completion without a status")
    return Completion(order_id, status[:32])
