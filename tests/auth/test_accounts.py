"""Accounts and sessions over real HTTP: passwords round-trip, validation, ownership, limits, CORS."""

from __future__ import annotations

import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.auth.conftest import ALLOWED_ORIGIN
from tests.support import ApiClient, unique_email

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("password", ["<script>&\"'1a", "пароль🔐 with spaces 7", "a1" + "ü" * 100, "tab\tand 9 é"])
def test_passwords_round_trip_unaltered(api: ApiClient, password: str) -> None:
    email = unique_email()
    api.register(email, password)
    assert api.request("POST", "/auth/login", json={"email": email, "password": password}).status_code == 200
    form = {"username": email, "password": password, "grant_type": "password"}
    assert api.request("POST", "/auth/login", data=form).status_code == 200
    wrong = api.request("POST", "/auth/login", json={"email": email, "password": password + "x"})
    assert wrong.status_code == 401


def test_register_response_and_me(api: ApiClient) -> None:
    email = unique_email("Mixed.Case")
    registered = api.register(email.upper(), username="Ann <b>\x00")
    assert registered["email"] == email.lower()
    assert registered["username"] == "Ann <b>"  # NUL removed, markup kept: escaping is the renderer's job
    assert registered["token"]["token_type"] == "bearer"
    me = api.request("GET", "/auth/me", token=registered["token"]["access_token"]).json()
    assert me["id"] == registered["id"]
    assert me["email"] == email.lower()


def test_duplicate_email_is_409_whatever_its_case(api: ApiClient) -> None:
    email = unique_email()
    api.register(email)
    response = api.request("POST", "/auth/register", json={"email": email.upper(), "password": api.password})
    assert response.status_code == 409
    assert response.json()["type"] == "urn:agentctl:problem:email-taken"


def test_weak_password_says_what_is_missing(api: ApiClient) -> None:
    response = api.request("POST", "/auth/register", json={"email": unique_email(), "password": "short"})
    assert response.status_code == 422
    assert response.json()["detail"] == "the password needs at least 8 characters, a digit"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "x@example.com", "password": "abcdefg1", "role": "admin"}, "role"),
        ({"email": "not-an-email", "password": "abcdefg1"}, "email"),
        ({"email": "x@example.com", "password": 12345678}, "password"),
        ({"email": "x@example.com"}, "password"),
    ],
)
def test_invalid_registration_is_422_naming_the_field(api: ApiClient, body: dict, field: str) -> None:
    response = api.request("POST", "/auth/register", json=body)
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]


def test_unknown_login_field_is_422(api: ApiClient) -> None:
    response = api.request("POST", "/auth/login", json={"email": "a@example.com", "password": "x", "admin": True})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "admin"


def test_oversized_body_is_413(api: ApiClient) -> None:
    response = api.request(
        "POST", "/auth/register", json={"email": unique_email(), "password": "a1", "username": "x" * 70_000}
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")


def test_login_takes_the_same_time_for_unknown_email_and_wrong_password(api: ApiClient) -> None:
    email, _ = api.new_user()

    def median_seconds(login_email: str) -> float:
        durations = []
        for _ in range(12):
            started = time.perf_counter()
            response = api.request("POST", "/auth/login", json={"email": login_email, "password": "wrong-pass-1"})
            durations.append(time.perf_counter() - started)
            assert response.status_code == 401
            assert response.json()["detail"] == "wrong email or password"
        return statistics.median(durations)

    unknown = median_seconds(unique_email("nobody"))
    wrong_password = median_seconds(email)
    # Without the decoy hash an unknown email answers in a few ms against ~20+ ms for a real verification.
    assert min(unknown, wrong_password) / max(unknown, wrong_password) > 0.6, (unknown, wrong_password)


def test_brute_force_on_one_email_is_stopped_while_others_sign_in(limited_api: ApiClient) -> None:
    victim = unique_email("victim")
    limited_api.register(victim, headers={"X-Forwarded-For": "198.51.100.1"})
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    statuses = [
        limited_api.request(
            "POST", "/auth/login", json={"email": victim, "password": f"guess-{n}1"}, headers=attacker
        ).status_code
        for n in range(7)
    ]
    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429, 429]
    refused = limited_api.request("POST", "/auth/login", json={"email": victim, "password": "x1"}, headers=attacker)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    # Even the right password is refused for that email until the window moves...
    right = {"email": victim, "password": limited_api.password}
    assert limited_api.request("POST", "/auth/login", json=right, headers=attacker).status_code == 429
    # ...while another person, from another address, signs in normally.
    other = unique_email("bystander")
    limited_api.register(other, headers={"X-Forwarded-For": "198.51.100.2"})
    ok = limited_api.request(
        "POST",
        "/auth/login",
        json={"email": other, "password": limited_api.password},
        headers={"X-Forwarded-For": "192.0.2.44"},
    )
    assert ok.status_code == 200


def test_sign_up_limit_is_shared_by_both_workers(limited_api: ApiClient) -> None:
    client = {"X-Forwarded-For": "203.0.113.77"}
    request_ids = [f"signup-{n}-{uuid.uuid4().hex[:6]}" for n in range(16)]

    def sign_up(request_id: str) -> httpx.Response:
        return limited_api.request(
            "POST",
            "/auth/register",
            json={"email": unique_email(), "password": limited_api.password},
            headers={**client, "X-Request-ID": request_id},
        )

    # Concurrent, so that both workers are busy and both take requests.
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(sign_up, request_ids))
    statuses = [response.status_code for response in responses]
    # One window for the client across both workers: in memory each worker would have allowed 5.
    assert statuses.count(201) == 5, statuses
    assert statuses.count(429) == 11, statuses
    assert all(response.headers["ratelimit-limit"] == "5" for response in responses)
    refused = next(response for response in responses if response.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert len(limited_api.pids_that_served(request_ids)) == 2
    # The client IP comes from X-Forwarded-For only because the peer (127.0.0.1) is a trusted proxy.
    other_client = {"X-Forwarded-For": "203.0.113.78"}
    assert (
        limited_api.request(
            "POST",
            "/auth/register",
            json={"email": unique_email(), "password": limited_api.password},
            headers=other_client,
        ).status_code
        == 201
    )


def test_cors_preflight_allows_the_configured_origin_only(api: ApiClient) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = api.request("OPTIONS", "/auth/login", headers={"Origin": ALLOWED_ORIGIN, **preflight})
    assert allowed.status_code in (200, 204)
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert int(allowed.headers["access-control-max-age"]) == 600
    refused = api.request("OPTIONS", "/auth/login", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
    simple = api.request("GET", "/auth/me", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_security_headers_on_every_response(api: ApiClient) -> None:
    for response in (
        api.request("GET", "/auth/me"),
        api.request("POST", "/auth/register", json={}),
        api.server.get("/health"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "strict-transport-security" not in response.headers  # HSTS only in production
    assert "ratelimit-limit" not in api.server.get("/health").headers  # probes are never rate limited
    assert "ratelimit-limit" in api.request("GET", "/auth/me").headers


def test_openapi_documents_every_route_with_auth_and_errors(api: ApiClient) -> None:
    spec = api.server.get("/schema/openapi.json").json()
    assert spec["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    expected = {
        ("post", "/api/v1/auth/register"): False,
        ("post", "/api/v1/auth/login"): False,
        ("post", "/api/v1/auth/refresh"): False,
        ("post", "/api/v1/auth/logout"): True,
        ("get", "/api/v1/auth/me"): True,
        ("post", "/api/v1/auth/session"): True,
        ("get", "/api/v1/auth/sessions"): True,
        ("patch", "/api/v1/auth/session/{session_id}/name"): True,
        ("delete", "/api/v1/auth/session/{session_id}"): True,
        ("post", "/api/v1/auth/session/{session_id}/token"): True,
    }
    for (method, path), needs_token in expected.items():
        operation = spec["paths"][path][method]
        assert operation.get("description") or operation.get("summary"), (method, path)
        responses = operation["responses"]
        assert "429" in responses, (method, path)
        if needs_token:
            assert operation["security"] == [{"BearerToken": []}], (method, path)
            assert "401" in responses, (method, path)
    login_body = spec["paths"]["/api/v1/auth/login"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(login_body)
