"""Classifying HTTP answers into the kinds the scheduler acts on."""

from __future__ import annotations

import json

import pytest

from orderwatch.core.retry_after import parse_retry_after
from orderwatch.core.strict_json import MAX_DEPTH, strict_json
from orderwatch.delivery.events import make_event, terminal_data
from orderwatch.polling.answers import Kind, Listed, Page, classify, classify_list

NOW = 1_700_000_000.0


def body(**kw: object) -> bytes:
    return json.dumps({"id": "O-1", **kw}).encode()


def kind(status: int, raw: bytes, retry_after: str | None = None) -> Kind:
    return classify(status, raw, "O-1", retry_after, NOW).kind


def test_processing_and_final() -> None:
    """PROCESSING, COMPLETED and FAILED bodies of the documented shape."""
    assert kind(200, body(status="PROCESSING", message="x")) is Kind.PROCESSING
    a = classify(200, body(status="COMPLETED", items=[{"payout": {"url": "u"}}]), "O-1", None, NOW)
    assert a.kind is Kind.FINAL and a.order_status == "COMPLETED" and a.data["id"] == "O-1"
    assert kind(200, body(status="FAILED")) is Kind.FINAL  # FAILED may carry no items


def test_unknown_fields_are_kept() -> None:
    """Extra fields (redemption_url, future ones) never make a body invalid; bytes are kept."""
    raw = body(status="COMPLETED", items=[{"redemption_url": "r", "new": 1}], extra={"a": 1})
    a = classify(200, raw, "O-1", None, NOW)
    assert a.kind is Kind.FINAL and a.body == raw


def test_invalid_bodies() -> None:
    """Not JSON, wrong id, unknown status, wrong item shapes are invalid."""
    assert kind(200, b"<html>") is Kind.INVALID
    assert kind(200, json.dumps({"id": "O-2", "status": "COMPLETED"}).encode()) is Kind.INVALID
    assert kind(200, body(status="DONE")) is Kind.INVALID
    assert kind(200, body(status="COMPLETED", items="x")) is Kind.INVALID
    assert kind(200, body(status="COMPLETED", items=[{"payout": "x"}])) is Kind.INVALID
    assert kind(200, b"[]") is Kind.INVALID
    assert kind(302, b"") is Kind.INVALID


def test_a_body_is_json_exactly_as_the_standard_library_reads_it() -> None:
    """strict_json calls the decoder's scanner itself: whitespace around the value is JSON's
    four characters and no others, and anything after the value makes it not JSON."""
    decoder = json.JSONDecoder()
    for raw in (b'{"a": 1}', b' \t\r\n[1, "x"] \n', b"", b"  ", b'{"a": 1} x', b"{}{", b"nul",
                b"\x0c{}", b"{} \x0c", b'{"a":', b'"x"', b"\xa0{}"):  # fmt: skip
        try:
            expected: object = decoder.decode(raw.decode())
        except ValueError:
            expected = ValueError
        try:
            got: object = strict_json(raw)
        except ValueError:
            got = ValueError
        assert got == expected, raw


def test_error_statuses() -> None:
    """404, 401, 403, 429, 5xx each map to their own kind."""
    assert kind(404, b'{"type":"not_found"}') is Kind.NOT_FOUND
    assert kind(401, b"") is Kind.AUTH and kind(403, b"") is Kind.AUTH
    assert kind(429, b'{"error":"rate exceeded"}') is Kind.RATE_LIMITED
    assert kind(500, b"") is Kind.SERVER_ERROR and kind(504, b"") is Kind.SERVER_ERROR


def test_retry_after_forms() -> None:
    """Retry-After as seconds or as an HTTP-date; garbage is ignored."""
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", NOW) == 10.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None
    # Digits to str.isdigit() that float() refuses: they raised, and a 429 carrying one
    # never paused polling (the client's call failed instead of classifying the answer).
    assert parse_retry_after("\u00b2", NOW) is None
    assert parse_retry_after("\u0663", NOW) is None
    assert classify(429, b"", "O-1", "\u00b2", NOW).kind is Kind.RATE_LIMITED
    # A date whose zone overflows: it raised OverflowError, and the 429 paused nothing.
    huge = "Tue, 14 Nov 2023 22:13:30 +99999999999999999999"
    assert parse_retry_after(huge, NOW) is None
    assert classify(429, b"", "O-1", huge, NOW).kind is Kind.RATE_LIMITED


def test_json_nested_past_the_parser_is_an_invalid_answer() -> None:
    """A body nested deeper than the parser's recursion limit raised RecursionError out of
    classify: the policy never ran, so the order was polled again at every lease, past
    give_up_after, forever."""
    deep = b"[" * 100_000
    assert kind(200, deep) is Kind.INVALID
    assert classify(404, deep, "O-1", None, NOW).kind is Kind.INVALID


def test_a_404_is_an_unknown_order_only_when_runa_says_so() -> None:
    """API-NOTES: branch on the error's `type`. A 404 from anything else (a base_url
    without /v2, a proxy's page) counted as "no such order", and after not_found_grace every
    order ended not_found, for good, with a webhook each. It is now a bad answer, retried
    on the error back-off (give_up_after bounds it), and its detail points at the cause."""
    assert kind(404, b'{"type": "not_found", "message": "Order not found"}') is Kind.NOT_FOUND
    for body in (b"<html>404 Not Found</html>", b"", b'{"type": "route_not_found"}', b"[]"):
        answer = classify(404, body, "O-1", None, NOW)
        assert answer.kind is Kind.INVALID, body
        assert "base_url" in answer.detail
    a = classify(429, b"", "O-1", "12", NOW)
    assert a.retry_after_s == 12.0


def test_numbers_json_cannot_carry_on_are_an_invalid_answer() -> None:
    """1e400 parses as inf and NaN as nan, and the event built from them said Infinity and
    NaN, which no JSON parser downstream accepts: the order's one webhook body was broken."""
    for number in (b"1e400", b"-1e400", b"NaN", b"Infinity"):
        body = b'{"id": "O-1", "status": "COMPLETED", "x": ' + number + b"}"
        assert kind(200, body) is Kind.INVALID, number
    assert kind(200, b'{"id": "O-1", "status": "COMPLETED", "x": 1e300}') is Kind.FINAL


def test_errors_that_refuse_every_order_are_told_apart() -> None:
    """API-NOTES: a retired API version answers 410 version_removed, an unknown one 400
    invalid_version, plain HTTP 400 insecure_protocol. They refuse every request alike, so
    they pause polling as a rejected key does; as bad answers of single orders they ran every
    order out to EXPIRED. Other 400s and 410s stay bad answers of that order."""
    for status, kind_ in (
        (410, "version_removed"),
        (400, "invalid_version"),
        (400, "insecure_protocol"),
    ):
        answer = classify(status, f'{{"type": "{kind_}"}}'.encode(), "O-1", None, NOW)
        assert answer.kind is Kind.REFUSED and kind_ in answer.detail
    assert kind(400, b'{"type": "invalid_request"}') is Kind.INVALID
    assert kind(410, b"<html>gone</html>") is Kind.INVALID


def test_a_404_body_with_numbers_json_cannot_carry_is_not_quoted_in_its_event() -> None:
    """A not_found or expired event quotes the API's last body. A 404 body was parsed
    leniently, so NaN and 1e400 came out as NaN and Infinity: an event body that strict
    receivers (JavaScript's JSON.parse, Go) reject on every retry and replay."""
    body = b'{"type":"not_found","message":"Order not found","trace":1e400,"x":NaN}'
    answer = classify(404, body, "O-1", None, 0.0)
    assert answer.kind is Kind.NOT_FOUND
    event = make_event("O-1", "NOT_FOUND", terminal_data("O-1", "NOT_FOUND", body), 0.0)
    strict = json.loads(event.body, parse_constant=_refuse)
    assert strict["data"] == {"id": "O-1", "status": "NOT_FOUND", "last_response": None}
    ok = b'{"type":"not_found","message":"Order not found"}'
    data = terminal_data("O-1", "NOT_FOUND", ok)
    assert data["last_response"] == {"type": "not_found", "message": "Order not found"}


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _nested(levels: int) -> bytes:
    """A COMPLETED body whose value `x` is `levels` arrays deep (the body itself one more)."""
    return b'{"id": "O-1", "status": "COMPLETED", "items": [], "x": %s%s}' % (
        b"[" * levels,
        b"]" * levels,
    )


def test_a_body_nested_deeper_than_max_depth_is_an_invalid_answer() -> None:
    """A COMPLETED body 985 levels deep parsed, and building its event then raised
    RecursionError after the payload file was written: poll.crashed at every lease, forever.
    Nesting is bounded explicitly (MAX_DEPTH, the body itself counting as one level)."""
    for levels in (MAX_DEPTH, 985):
        answer = classify(200, _nested(levels), "O-1", None, NOW)
        assert answer.kind is Kind.INVALID, levels
        assert answer.detail == "body is not JSON"
    ok = classify(200, _nested(MAX_DEPTH - 1), "O-1", None, NOW)
    assert ok.kind is Kind.FINAL
    event = make_event("O-1", "COMPLETED", ok.data, NOW)  # what the answer is for
    assert json.loads(event.body)["data"] == json.loads(_nested(MAX_DEPTH - 1))
    # the same bound for the bodies an expired / not_found event quotes
    deep_404 = b'{"type": "not_found", "x": ' + b'{"a": ' * 70 + b"1" + b"}" * 71
    assert terminal_data("O-1", "NOT_FOUND", deep_404)["last_response"] is None
    for raw in (b"[" * 65 + b"]" * 65, b'{"a": ' * 65 + b"1" + b"}" * 65):
        with pytest.raises(ValueError, match="nested deeper than 64"):
            strict_json(raw)
    assert strict_json(b"[" * 64 + b"]" * 64) is not None


def test_a_body_with_a_duplicate_key_is_an_invalid_answer() -> None:
    """`{"id": "../../x", "id": "O-1"}` was read as O-1 (the last key wins), while a consumer
    of the file that keeps the first key saw another id. A duplicate key at any level makes
    a body a bad answer."""
    top = b'{"id": "../../x", "id": "O-1", "status": "COMPLETED", "items": []}'
    inner = b'{"id": "O-1", "status": "COMPLETED", "items": [{"payout": {"url": "a", "url": "b"}}]}'
    processing = b'{"id": "O-1", "status": "PROCESSING", "status": "PROCESSING"}'
    for raw in (top, inner, processing):
        answer = classify(200, raw, "O-1", None, NOW)
        assert (answer.kind, answer.detail) == (Kind.INVALID, "body is not JSON"), raw
        with pytest.raises(ValueError, match="duplicate key"):
            strict_json(raw)
    # the same keys in separate objects are no duplicates
    ok = b'{"id": "O-1", "status": "COMPLETED", "items": [{"id": "a"}, {"id": "b"}]}'
    assert kind(200, ok) is Kind.FINAL
    assert strict_json(b'{"a": {"a": 1}}') == {"a": {"a": 1}}


def page(*items: object, **cursors: object) -> bytes:
    return json.dumps({"items": list(items), "pagination": {"cursors": cursors}}).encode()


def listed(status: int, raw: bytes) -> tuple[Kind, str]:
    a = classify_list(status, raw, None, NOW)
    return a.kind, a.detail


def test_a_list_page_of_the_documented_shape() -> None:
    """Basic details and {id, status, message} items become Listed orders in page order;
    cursors are kept; an item whose id could never be tracked is counted but not listed."""
    raw = page(
        {"id": "O-1", "status": "PROCESSING", "message": "m"},
        {"id": "O-2", "status": "COMPLETED", "created_at": "2024-02-05T00:00:00Z", "x": 1},
        {"id": "O-3", "status": "FAILED", "created_at": None},
        {"id": "../etc", "status": "FAILED"},
        after="O-3",
    )
    a = classify_list(200, raw, None, NOW)
    assert a.kind is Kind.LISTED and a.data.size == 4
    assert a.data.orders == (
        Listed("O-1", "PROCESSING", None),
        Listed("O-2", "COMPLETED", "2024-02-05T00:00:00Z"),
        Listed("O-3", "FAILED", None),
    )
    assert (a.data.after, a.data.before) == ("O-3", None)
    empty = classify_list(
        200, b'{"items": [], "pagination": {"cursors": {}, "page": {}}}', None, NOW
    )
    assert empty.kind is Kind.LISTED and empty.data == Page((), 0, None, None)


def test_a_malformed_list_page_is_invalid() -> None:
    """Not JSON, a key named twice, no items, an item without an id, an unknown status, a
    repeated order, a cursor that is not a string: the whole page is invalid."""
    for raw, why in (
        (b"<html>", "page is not JSON (or names a key twice)"),
        (b'{"items": [], "items": [], "pagination": {}}', "page is not JSON (or names a key twice)"),
        (b'{"items": [{"id": "O-1", "status": "COMPLETED", "status": "PROCESSING"}], "pagination": {}}',
         "page is not JSON (or names a key twice)"),
        (b'{"items": [], "pagination": NaN}', "page is not JSON (or names a key twice)"),
        (json.dumps({"pagination": {}}).encode(), "page has no items list"),
        (json.dumps({"items": []}).encode(), "page has no pagination object"),
        (page({"status": "COMPLETED"}), "an item is not an order with an id"),
        (page({"id": 7, "status": "COMPLETED"}), "an item is not an order with an id"),
        (page({"id": "O-1", "status": "DONE"}), "unknown order status"),
        (page({"id": "O-1", "status": "FAILED", "created_at": 5}), "created_at is not a string"),
        (page({"id": "O-1", "status": "FAILED"}, {"id": "O-1", "status": "FAILED"}),
         "an order id is on the page twice"),
        (page(after=3), "a cursor is not a string"),
        (page(after=""), "a cursor is not a string"),
    ):  # fmt: skip
        assert listed(200, raw) == (Kind.INVALID, why), raw


def test_list_answers_that_are_not_a_page() -> None:
    """pagination_error is invalid (this page, not the order); 429, 401/403, refusals and
    5xx are what they are for a GET."""
    error = json.dumps({"type": "pagination_error", "message": "bad cursor"}).encode()
    assert listed(400, error) == (Kind.INVALID, "http 400 pagination_error")
    assert listed(400, b"x")[0] is Kind.INVALID
    assert listed(404, b"{}")[0] is Kind.INVALID
    assert listed(403, b"{}") == (Kind.AUTH, "http 403")
    assert listed(503, b"") == (Kind.SERVER_ERROR, "http 503")
    removed = json.dumps({"type": "version_removed"}).encode()
    assert listed(410, removed)[0] is Kind.REFUSED
    a = classify_list(429, b"{}", "7", NOW)
    assert (a.kind, a.retry_after_s) == (Kind.RATE_LIMITED, 7.0)
