"""One error shape: problem+json with the request id, also in X-Request-ID; no traceback outside debug."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar import Litestar, get
from litestar.params import FromQuery
from litestar.testing import AsyncTestClient

from agentctl.config import Settings
from server.app import create_app
from server.errors import ConflictError
from tests.support import NO_MODEL_SETTINGS


@get("/test/crash")
async def crash() -> None:
    raise RuntimeError("internal detail that must stay inside")


@get("/test/conflict")
async def conflict() -> None:
    raise ConflictError("that name is taken", extra={"field": "name"})


@get("/test/items")
async def list_items(limit: FromQuery[int]) -> dict[str, int]:
    return {"limit": limit}


def build_app(database_url: str, *, debug: bool = False) -> Litestar:
    app = create_app(Settings(env="test", debug=debug, database={"url": database_url}, llm=NO_MODEL_SETTINGS))
    app.register(crash)
    app.register(conflict)
    app.register(list_items)
    return app


@pytest.fixture
async def client(migrated_database_url: str) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(build_app(migrated_database_url)) as test_client:
        yield test_client


def assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail", "instance", "request_id"}
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_unknown_route_is_a_404_problem(client: AsyncTestClient) -> None:
    body = assert_problem(await client.get("/no/such/route"), 404)
    assert body["type"] == "urn:agentctl:problem:not-found"
    assert body["instance"] == "/no/such/route"


async def test_wrong_method_is_a_405_problem(client: AsyncTestClient) -> None:
    assert_problem(await client.delete("/health"), 405)


async def test_domain_error_maps_to_its_status_and_code(client: AsyncTestClient) -> None:
    body = assert_problem(await client.get("/test/conflict"), 409)
    assert body["type"] == "urn:agentctl:problem:conflict"
    assert body["detail"] == "that name is taken"
    assert body["field"] == "name"


async def test_unexpected_error_hides_its_internals(client: AsyncTestClient) -> None:
    response = await client.get("/test/crash")
    body = assert_problem(response, 500)
    assert "internal detail" not in response.text
    assert "Traceback" not in response.text
    assert "traceback" not in body


async def test_debug_shows_the_traceback(migrated_database_url: str) -> None:
    async with AsyncTestClient(build_app(migrated_database_url, debug=True)) as debug_client:
        body = assert_problem(await debug_client.get("/test/crash"), 500)
    assert "internal detail" in body["detail"]
    assert any("RuntimeError" in line for line in body["traceback"])


async def test_request_id_is_echoed_when_well_formed_and_replaced_otherwise(client: AsyncTestClient) -> None:
    echoed = await client.get("/health", headers={"X-Request-ID": "req-42.abc"})
    assert echoed.headers["x-request-id"] == "req-42.abc"
    for unacceptable in ("bad id <script>", "x" * 129):
        replaced = await client.get("/no/such/route", headers={"X-Request-ID": unacceptable})
        assert replaced.headers["x-request-id"] != unacceptable
        assert len(replaced.headers["x-request-id"]) == 32
        assert replaced.json()["request_id"] == replaced.headers["x-request-id"]
    fresh = [(await client.get("/health")).headers["x-request-id"] for _ in range(3)]
    assert len(set(fresh)) == 3


async def test_invalid_parameter_is_a_422_naming_the_field(client: AsyncTestClient) -> None:
    body = assert_problem(await client.get("/test/items", params={"limit": "many"}), 422)
    assert body["type"] == "urn:agentctl:problem:validation-failed"
    assert [error["field"] for error in body["errors"]] == ["limit"]
    assert "limit" in body["detail"]
