"""The token attack catalogue, against a real server with two workers and Redis."""

from __future__ import annotations

import datetime
import uuid

import jwt
import pytest

from tests.auth.conftest import JWT_SECRET
from tests.support import ApiClient, b64url_json

pytestmark = pytest.mark.slow


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def forge(claims: dict, key: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def test_alg_none_is_rejected(api: ApiClient) -> None:
    _, token = api.new_user()
    unsigned = f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(claims_of(token))}."
    response = api.request("GET", "/auth/me", token=unsigned)
    assert response.status_code == 401
    assert response.json()["detail"] == "the token is invalid"


def test_wrong_key_is_rejected(api: ApiClient) -> None:
    _, token = api.new_user()
    assert api.request("GET", "/auth/me", token=forge(claims_of(token), key="x" * 48)).status_code == 401


def test_tampered_claims_are_rejected(api: ApiClient) -> None:
    _, victim_token = api.new_user()
    _, attacker_token = api.new_user()
    header, _, signature = attacker_token.split(".")
    claims = claims_of(attacker_token) | {"sub": claims_of(victim_token)["sub"]}
    tampered = f"{header}.{b64url_json(claims)}.{signature}"
    assert api.request("GET", "/auth/me", token=tampered).status_code == 401


def test_expired_token_is_rejected(api: ApiClient) -> None:
    _, token = api.new_user()
    past = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=5)
    expired = forge(claims_of(token) | {"iat": past - datetime.timedelta(minutes=30), "exp": past})
    response = api.request("GET", "/auth/me", token=expired)
    assert response.status_code == 401
    assert response.json()["detail"] == "the token has expired"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_token_signed_with_the_right_key_works(api: ApiClient) -> None:
    """The forging helper is sound: the rejections above are about the attack, not the helper."""
    _, token = api.new_user()
    reissued = forge(claims_of(token) | {"jti": str(uuid.uuid4())})
    assert api.request("GET", "/auth/me", token=reissued).status_code == 200


def test_logout_revokes_on_every_worker_at_once(api: ApiClient) -> None:
    email, _ = api.new_user()
    pair = api.login(email)
    assert api.request("POST", "/auth/logout", token=pair["access_token"]).status_code == 204

    request_ids = [f"after-logout-{index}-{uuid.uuid4().hex[:6]}" for index in range(24)]
    for request_id in request_ids:
        response = api.request("GET", "/auth/me", token=pair["access_token"], headers={"X-Request-ID": request_id})
        assert response.status_code == 401
        assert response.json()["detail"] == "the token has been revoked"
    assert len(api.pids_that_served(request_ids)) == 2, "both workers must have refused the revoked token"

    refreshed = api.request("POST", "/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 401  # the whole sign-in is gone, not only the access token


def test_refresh_rotates_and_reuse_revokes_the_family(api: ApiClient) -> None:
    email, _ = api.new_user()
    first = api.login(email)
    second = api.request("POST", "/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    second_pair = second.json()
    assert second_pair["refresh_token"] != first["refresh_token"]
    assert api.request("GET", "/auth/me", token=second_pair["access_token"]).status_code == 200

    reuse = api.request("POST", "/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    assert "already used" in reuse.json()["detail"]
    # Theft detected: the thief's and the owner's newer tokens of that sign-in all stop working.
    assert api.request("POST", "/auth/refresh", json={"refresh_token": second_pair["refresh_token"]}).status_code == 401
    assert api.request("GET", "/auth/me", token=second_pair["access_token"]).status_code == 401
    # Another sign-in of the same account is untouched.
    assert api.request("GET", "/auth/me", token=api.login(email)["access_token"]).status_code == 200


def test_token_types_cannot_stand_in_for_each_other(api: ApiClient) -> None:
    email, access = api.new_user()
    pair = api.login(email)
    session = api.request("POST", "/auth/session", token=access).json()
    session_token = session["token"]["access_token"]

    # A refresh token or a session token cannot act as a user token.
    for wrong in (pair["refresh_token"], session_token):
        response = api.request("GET", "/auth/me", token=wrong)
        assert response.status_code == 401
        assert response.json()["detail"] == "this endpoint needs a access token"
        assert api.request("POST", "/auth/session", token=wrong).status_code == 401
    # An access or session token cannot be exchanged as a refresh token.
    for wrong in (pair["access_token"], session_token):
        response = api.request("POST", "/auth/refresh", json={"refresh_token": wrong})
        assert response.status_code == 401
        assert response.json()["detail"] == "this endpoint needs a refresh token"


def test_session_token_is_bound_to_its_session_and_dies_with_it(api: ApiClient) -> None:
    _, access = api.new_user()
    session = api.request("POST", "/auth/session", token=access).json()
    claims = claims_of(session["token"]["access_token"])
    assert claims["typ"] == "session"
    assert claims["sid"] == session["session_id"]
    assert api.request("DELETE", f"/auth/session/{session['session_id']}", token=access).status_code == 204
    assert api.request("GET", "/auth/sessions", token=access).json()["total"] == 0


def test_missing_or_malformed_authorization(api: ApiClient) -> None:
    assert api.request("GET", "/auth/me").status_code == 401
    assert api.request("GET", "/auth/me", headers={"Authorization": "Basic abc"}).status_code == 401
    assert api.request("GET", "/auth/me", token="not-a-jwt").status_code == 401
