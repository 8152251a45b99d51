"""Redis stopped (a real redis-server of the test's own, killed) or never reachable (a wrong port): sign-out and
session deletion still work, every revoked token stays revoked (PostgreSQL answers), Redis is refilled when it
returns, and readiness reports Redis as degraded while rate limits fail open, unready when they fail closed."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from tests.resilience.conftest import RedisServer
from tests.support import ApiClient, ServeProcess, free_port, unique_email


def serve_with_redis(workdir: Path, database_url: str, redis_url: str, **env: str) -> ServeProcess:
    server = ServeProcess(
        workdir,
        "--workers",
        "2",
        env={
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "AGENTCTL_REDIS__TIMEOUT_SECONDS": "1",
            "AGENTCTL_RATELIMIT__REGISTER_PER_IP": "1000/hour",
            "AGENTCTL_RATELIMIT__LOGIN_PER_IP": "1000/minute",
            "AGENTCTL_MEMORY__ENABLED": "false",
            **env,
        },
    )
    server.wait_until_healthy()
    return server


class SignIn:
    """One sign-in: its access and refresh tokens, and a session token minted from it."""

    def __init__(self, api: ApiClient, email: str) -> None:
        pair = api.login(email)
        self.access, self.refresh = pair["access_token"], pair["refresh_token"]
        session = api.request("POST", "/auth/session", token=self.access).json()
        self.session_id, self.session_token = session["session_id"], session["token"]["access_token"]


def assert_signed_out(api: ApiClient, sign_in: SignIn) -> None:
    """Nothing of the sign-in works any more, on whichever worker answers."""
    for _ in range(4):  # both workers
        assert api.request("GET", "/auth/me", token=sign_in.access).status_code == 401
        assert api.request("GET", "/chatbot/messages", token=sign_in.session_token).status_code == 401
    refreshed = api.request("POST", "/auth/refresh", json={"refresh_token": sign_in.refresh})
    assert refreshed.status_code == 401, refreshed.text


@pytest.mark.slow
def test_with_redis_stopped_sign_out_works_and_holds_after_it_returns(
    tmp_path: Path, migrated_database_url: str, redis_server: RedisServer
) -> None:
    server = serve_with_redis(tmp_path, migrated_database_url, redis_server.url)
    api = ApiClient(server)
    try:
        email = unique_email()
        api.register(email)
        doomed, kept = SignIn(api, email), SignIn(api, email)
        other_session = api.request("POST", "/auth/session", token=kept.access).json()["session_id"]

        redis_server.stop()
        started = time.monotonic()
        logout = api.request("POST", "/auth/logout", token=doomed.access)
        assert logout.status_code == 204, logout.text
        assert time.monotonic() - started < 3
        deleted = api.request("DELETE", f"/auth/session/{other_session}", token=kept.access)
        assert deleted.status_code == 204, deleted.text
        assert_signed_out(api, doomed)
        assert api.request("GET", "/auth/me", token=kept.access).status_code == 200  # only what was revoked

        ready = server.get("/health/ready")
        assert ready.status_code == 200  # rate limits fail open: Redis is a degraded dependency
        assert ready.json()["checks"]["redis"]["status"] == "degraded"

        redis_server.start()  # empty: it kept nothing
        deadline = time.monotonic() + 15
        while server.get("/health/ready").json()["checks"]["redis"]["status"] != "ok":
            assert time.monotonic() < deadline, "readiness never saw Redis back"
            time.sleep(0.2)
        # Past the pause after a failure (5 s) and the next reconcile (every 2 s), requests ask Redis again, which
        # is refilled; meanwhile PostgreSQL answers, and the revocation holds throughout.
        client = redis_server.client()
        deadline = time.monotonic() + 15
        while True:
            assert_signed_out(api, doomed)
            assert api.request("GET", "/auth/me", token=kept.access).status_code == 200
            if client.exists("agentctl:revoked-loaded"):
                break
            assert time.monotonic() < deadline, "Redis was never refilled"
            time.sleep(0.5)
        assert client.get(f"agentctl:revoked:{family_of(doomed.access)}") is not None
    finally:
        server.terminate()


def family_of(token: str) -> str:
    """The sign-in (refresh family) id a token carries."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["fam"]


@pytest.mark.slow
def test_a_revocation_redis_missed_reaches_it_when_it_answers_again(
    tmp_path: Path, migrated_database_url: str, redis_server: RedisServer
) -> None:
    """Redis paused (not restarted: it keeps its marker that it holds every revocation) while a sign-in is revoked:
    the revocation is stored in PostgreSQL, PostgreSQL answers meanwhile, and the reconciler copies it into Redis."""
    server = serve_with_redis(tmp_path, migrated_database_url, redis_server.url)
    api = ApiClient(server)
    try:
        email = unique_email()
        api.register(email)
        assert api.request("GET", "/auth/me", token=api.login(email)["access_token"]).status_code == 200
        doomed = SignIn(api, email)
        client = redis_server.client()
        assert client.exists("agentctl:revoked-loaded")

        client.execute_command("CLIENT", "PAUSE", 2500, "ALL")
        assert api.request("POST", "/auth/logout", token=doomed.access).status_code == 204
        assert_signed_out(api, doomed)
        family_key = f"agentctl:revoked:{family_of(doomed.access)}"
        deadline = time.monotonic() + 20
        while client.get(family_key) is None:
            assert_signed_out(api, doomed)  # at every moment, whoever answers
            assert time.monotonic() < deadline, "the revocation never reached Redis"
            time.sleep(0.5)
    finally:
        server.terminate()


@pytest.mark.slow
def test_with_redis_on_a_wrong_port_revocation_still_holds(tmp_path: Path, migrated_database_url: str) -> None:
    server = serve_with_redis(tmp_path, migrated_database_url, f"redis://127.0.0.1:{free_port()}/0")
    api = ApiClient(server)
    try:
        email = unique_email()
        api.register(email)
        sign_in = SignIn(api, email)
        assert api.request("POST", "/auth/logout", token=sign_in.access).status_code == 204
        assert_signed_out(api, sign_in)
    finally:
        server.terminate()


@pytest.mark.slow
def test_with_rate_limits_failing_closed_redis_is_required(
    tmp_path: Path, migrated_database_url: str, redis_server: RedisServer
) -> None:
    server = serve_with_redis(
        tmp_path, migrated_database_url, redis_server.url, AGENTCTL_RATELIMIT__ON_STORAGE_ERROR="deny"
    )
    try:
        assert server.get("/health/ready").status_code == 200
        redis_server.stop()
        down = server.get("/health/ready")
        assert down.status_code == 503
        assert down.json()["failing"] == ["redis"]
        refused = ApiClient(server).request("POST", "/auth/login", json={"email": unique_email(), "password": "x" * 9})
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
    finally:
        server.terminate()
