"""Every /v1 error in OpenAI's shape (what the official SDKs parse into their typed exceptions), over a real
server; the native API keeps problem+json for the same faults."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.apikeys.conftest import KeyHolder, new_key
from tests.chat.conftest import serve_with_model
from tests.openai_compat.conftest import AGENT, v1_url
from tests.support import ApiClient

_HI = [{"role": "user", "content": "hi"}]


def _openai_error(response: httpx.Response, status: int, code: str, *, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    assert response.headers["x-request-id"]
    return body["error"]


def test_credentials_errors(openai_api: ApiClient) -> None:
    url = v1_url(openai_api)
    missing = httpx.get(f"{url}/models")
    assert _openai_error(missing, 401, "invalid_api_key")["type"] == "authentication_error"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    _openai_error(
        httpx.get(f"{url}/models", headers={"Authorization": "Bearer agentctl_" + "x" * 43}), 401, "invalid_api_key"
    )
    _openai_error(httpx.get(f"{url}/models", headers={"Authorization": "Bearer not-a-token"}), 401, "invalid_api_key")

    holder = new_key(openai_api)
    openai_api.request("DELETE", f"/auth/api-keys/{holder.key_id}", token=holder.user_token)
    revoked = holder.openai("POST", "/chat/completions", json={"model": AGENT, "messages": _HI})
    assert "revoked" in _openai_error(revoked, 401, "invalid_api_key")["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key=holder.key, max_retries=0).models.list()

    memories_only = new_key(openai_api, scopes=["memories"])
    wrong_scope = memories_only.openai("POST", "/responses", json={"model": AGENT, "input": "hi"})
    assert _openai_error(wrong_scope, 403, "forbidden")["type"] == "permission_error"
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=url, api_key=memories_only.key, max_retries=0).models.list()

    # The native API says the same in its own shape.
    native = openai_api.request("GET", "/auth/sessions", token="agentctl_" + "x" * 43)
    assert native.status_code == 401
    assert native.headers["content-type"].startswith("application/problem+json")


def test_unknown_model_and_unknown_paths(holder: KeyHolder) -> None:
    for path, body in (("/chat/completions", {"messages": _HI}), ("/responses", {"input": "hi"})):
        _openai_error(
            holder.openai("POST", path, json={"model": "gpt-4o", **body}), 404, "model_not_found", param="model"
        )
    _openai_error(holder.openai("GET", "/models/gpt-4o"), 404, "model_not_found")
    _openai_error(holder.openai("GET", "/responses/resp_0123"), 404, "response_not_found")
    _openai_error(holder.openai("GET", "/embeddings"), 404, "not_found")
    with pytest.raises(openai.NotFoundError) as refused:
        openai.OpenAI(base_url=v1_url(holder.api), api_key=holder.key, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=_HI
        )
    assert refused.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": AGENT}, "messages"),
        ({"model": AGENT, "messages": []}, "messages"),
        ({"model": AGENT, "messages": _HI, "temperature": 5}, "temperature"),
        ({"model": AGENT, "messages": _HI, "n": 2}, "n"),
        ({"model": AGENT, "messages": _HI, "max_tokens": 0}, "max_tokens"),
        ({"model": AGENT, "messages": _HI, "frobnicate": True}, "frobnicate"),
        ({"model": AGENT, "messages": [{"role": "assistant", "content": "I speak last"}]}, "messages"),
        (
            {"model": AGENT, "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}, *_HI]},
            "messages[0].role",
        ),
        ({"model": AGENT, "messages": [{"role": "user", "content": " \t\n "}]}, "messages"),
        (
            {"model": AGENT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"model": AGENT, "messages": _HI, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ],
)
def test_invalid_chat_bodies_are_400_naming_the_parameter(holder: KeyHolder, body: dict, param: str) -> None:
    error = _openai_error(holder.openai("POST", "/chat/completions", json=body), 400, "invalid_value", param=param)
    assert error["type"] == "invalid_request_error"


def test_invalid_responses_bodies_and_bodies_that_are_not_json(holder: KeyHolder) -> None:
    for body, param in (
        ({"model": AGENT}, "input"),
        ({"model": AGENT, "input": "hi", "previous_response_id": "resp_" + "0" * 32}, "previous_response_id"),
        ({"model": AGENT, "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].type"),
        ({"model": AGENT, "input": "hi", "max_output_tokens": -1}, "max_output_tokens"),
    ):
        response = holder.openai("POST", "/responses", json=body)
        expected = 404 if param == "previous_response_id" else 400
        code = "response_not_found" if expected == 404 else "invalid_value"
        _openai_error(response, expected, code, param=param)
    not_json = holder.openai(
        "POST", "/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert _openai_error(not_json, 400, not_json.json()["error"]["code"])["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=v1_url(holder.api), api_key=holder.key, max_retries=0).chat.completions.create(
            model=AGENT, messages=_HI, temperature=9
        )


def test_rate_limits_are_the_owning_users_and_say_when_to_retry(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    server = serve_with_model(tmp_path, migrated_database_url, simulator, AGENTCTL_RATELIMIT__CHAT="2/minute")
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        first_key = new_key(api)
        second_key = new_key(api, user_token=first_key.user_token)  # the same user's other key
        request = {"model": AGENT, "messages": _HI}
        assert first_key.openai("POST", "/chat/completions", json=request).status_code == 200
        assert second_key.openai("POST", "/chat/completions", json=request).status_code == 200
        limited = first_key.openai("POST", "/chat/completions", json=request)
        assert _openai_error(limited, 429, "rate_limit_exceeded")["type"] == "rate_limit_error"
        assert int(limited.headers["retry-after"]) >= 1
        assert new_key(api).openai("POST", "/chat/completions", json=request).status_code == 200  # another user
    finally:
        server.terminate()


@pytest.mark.slow
def test_model_unavailable_is_a_503_with_retry_after(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    simulator.configure({"faults": {"*": {"rate_500": 1.0}}})
    server = serve_with_model(
        tmp_path,
        migrated_database_url,
        simulator,
        AGENTCTL_MEMORY__ENABLED="false",
        AGENTCTL_LLM__BACKOFF_INITIAL_SECONDS="0.05",
    )
    try:
        server.wait_until_healthy()
        holder = new_key(ApiClient(server))
        deadline = time.monotonic() + 60
        while True:
            response = holder.openai("POST", "/chat/completions", json={"model": AGENT, "messages": _HI})
            assert response.status_code in (502, 503), response.text
            if response.status_code == 503 and "retry-after" in response.headers:
                break
            assert time.monotonic() < deadline, "the circuit never opened"
        assert _openai_error(response, 503, "model_unavailable")["type"] == "server_error"
        with pytest.raises(openai.InternalServerError):
            openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=holder.key, max_retries=0).responses.create(
                model=AGENT, input="hi"
            )
    finally:
        server.terminate()
