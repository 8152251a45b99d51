"""Schemathesis hooks for tests/server/test_openapi_contract.py: every operation gets a valid token of the kind it
needs (a session token for the chat routes, a user token elsewhere), from a user of its own.

Loaded by `st run` through SCHEMATHESIS_HOOKS; the server's address comes in AGENTCTL_SCHEMATHESIS_BASE_URL.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import schemathesis

_BASE_URL = os.environ.get("AGENTCTL_SCHEMATHESIS_BASE_URL", "")
_PASSWORD = "correct horse 1 battery"
_tokens: dict[str, str] = {}


def _sign_up() -> dict[str, str]:
    email = f"fuzz-{uuid.uuid4().hex[:12]}@example.com"
    registered = httpx.post(f"{_BASE_URL}/api/v1/auth/register", json={"email": email, "password": _PASSWORD})
    registered.raise_for_status()
    user_token = registered.json()["token"]["access_token"]
    session = httpx.post(f"{_BASE_URL}/api/v1/auth/session", headers={"Authorization": f"Bearer {user_token}"})
    session.raise_for_status()
    return {"user": user_token, "session": session.json()["token"]["access_token"]}


@schemathesis.auth()
class AgentctlTokens:
    def get(self, case: Any, context: Any) -> str:
        if not _tokens:
            _tokens.update(_sign_up())
        return _tokens["session" if case.path.startswith("/api/v1/chatbot") else "user"]

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """A generated call may revoke the tokens in use (deleting their session, say): the next call signs up anew."""
    if response.status_code == 401 and b"revoked" in response.content:
        _tokens.clear()
