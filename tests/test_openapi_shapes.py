"""The simulator's bodies against Runa's own published OpenAPI description (when present).

The description lives beside the project in ../shared/runa/ and is never copied into it; a
fresh clone without it skips these tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orderwatch.devtools.simulator import SimOptions, running_simulator

SPEC = Path(__file__).resolve().parents[2] / "shared" / "runa" / "openapi-2024-02-05.json"
pytestmark = pytest.mark.skipif(
    not SPEC.exists(), reason=f"Runa's OpenAPI description is not at {SPEC}"
)


def validator_for(status: str, path: str = "/order/{id}") -> Any:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    spec = json.loads(SPEC.read_text())
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:runa", resource)
    responses = spec["paths"][path]["get"]["responses"]
    # GET /order/{id} declares no 429; the description's shared RateExceeded response is it
    response = responses.get(status) or {"$ref": "#/components/responses/RateExceeded"}
    while "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[1]
        response = spec["components"]["responses"][name]
    schema = response["content"]["application/json"]["schema"]
    schema = json.loads(json.dumps(schema).replace('"#/', '"urn:runa#/'))
    return Draft202012Validator(schema, registry=registry)


async def body(url: str, key: str = "xx.k") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, headers={"X-Api-Key": key}) as r:
        return r.status, await r.json(content_type=None)


async def test_processing_completed_failed_match_the_description() -> None:
    """PROCESSING, COMPLETED and FAILED bodies validate against GET /order/{id}'s 200 schema."""
    v = validator_for("200")
    async with running_simulator(SimOptions(api_key="xx.k", complete_after=3600)) as rs:
        _, processing = await body(f"{rs.base_url}/order/O-P")
        rs.sim.complete(["O-C"], "COMPLETED")
        rs.sim.complete(["O-F"], "FAILED")
        _, completed = await body(f"{rs.base_url}/order/O-C")
        _, failed = await body(f"{rs.base_url}/order/O-F")
    for b in (processing, completed, failed):
        errors = [e.message for e in v.iter_errors(b)]
        assert errors == [], errors


async def test_error_bodies_match_the_description() -> None:
    """404 and 401 bodies validate against the error schemas the description declares."""
    async with running_simulator(SimOptions(api_key="xx.k")) as rs:
        s404, b404 = await body(f"{rs.base_url}/order/O-404-x")
        s401, b401 = await body(f"{rs.base_url}/order/O-1", key="xx.bad")
    assert (s404, s401) == (404, 401)
    assert list(validator_for("404").iter_errors(b404)) == []
    assert list(validator_for("401").iter_errors(b401)) == []


async def test_429_body_matches_rate_exceeded() -> None:
    """The 429 body validates against the description's RateExceeded response."""
    async with running_simulator(SimOptions(api_key="xx.k")) as rs:
        rs.sim.script("429")
        status, b = await body(f"{rs.base_url}/order/O-1")
    assert status == 429 and list(validator_for("429").iter_errors(b)) == []


async def test_list_pages_match_the_description() -> None:
    """Every page of GET /order (PROCESSING, COMPLETED, FAILED, history; first, after and
    before cursors) validates against the list's 200 schema."""
    v = validator_for("200", "/order")
    opts = SimOptions(api_key="xx.k", complete_after=3600, history=30, fail_ratio=0.3, seed=5)
    async with running_simulator(opts) as rs:
        rs.sim.create(["O-LP1", "O-LP2"])
        rs.sim.complete(["O-LC"], "COMPLETED")
        rs.sim.complete(["O-LF"], "FAILED")
        await body(f"{rs.base_url}/order/O-LC")  # a full body exists: the list derives from it
        _, first = await body(f"{rs.base_url}/order?limit=10")
        after = first["pagination"]["cursors"]["after"]
        _, second = await body(f"{rs.base_url}/order?limit=500&after={after}")
        _, back = await body(f"{rs.base_url}/order?limit=3&before={after}")
        _, default = await body(f"{rs.base_url}/order")
    statuses = {i["status"] for i in first["items"] + second["items"]}
    assert statuses == {"PROCESSING", "COMPLETED", "FAILED"}
    assert len(second["items"]) == 24 and len(default["items"]) == 34
    for page in (first, second, back, default):
        errors = [e.message for e in v.iter_errors(page)]
        assert errors == [], errors


async def test_list_errors_match_the_description() -> None:
    """A pagination_error (400) and a key that may not list (403) have the error shape the
    list declares."""
    async with running_simulator(SimOptions(api_key="xx.k")) as rs:
        s400, b400 = await body(f"{rs.base_url}/order?after=O-NOPE")
        s400b, b400b = await body(f"{rs.base_url}/order?limit=0")
        rs.sim.script_list("403")
        s403, b403 = await body(f"{rs.base_url}/order")
    assert (s400, s400b, s403) == (400, 400, 403)
    assert b400["type"] == b400b["type"] == "pagination_error"
    for status, b in (("400", b400), ("400", b400b), ("403", b403)):
        assert list(validator_for(status, "/order").iter_errors(b)) == []
