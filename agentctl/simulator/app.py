"""The simulator as a hand-written ASGI app: no framework between uvicorn and msgspec, because a load test must
never be limited by its stand-in model (see loadtests/README.md for the measured rate)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from agentctl.simulator.answers import (
    Answer,
    ChatRequest,
    EmbeddingRequest,
    compose_answer,
    embedding_inputs,
    embedding_tokens,
    embedding_vector,
    prompt_tokens,
)
from agentctl.simulator.config import FaultSpec, SimulatorConfig, SimulatorConfigError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

DEFAULT_MODELS = ("simulator", "gpt-4o-mini", "gpt-4.1-mini", "text-embedding-3-small")
OUTCOMES = ("ok", "429", "500", "timeout", "malformed", "stream_cut", "bad_request")
FAULTS = ("429", "500", "timeout", "malformed", "stream_cut")  # drawn in this order; the first hit wins
SYSTEM_FINGERPRINT = "fp_agentctl_simulator"

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode
_chat_decoder = msgspec.json.Decoder(ChatRequest)
_embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)


class Stats:
    """Requests per model and outcome since the last reset."""

    def __init__(self) -> None:
        self.by_model: dict[str, dict[str, int]] = {}
        self.chat_completions = 0
        self.streams = 0
        self.embeddings = 0
        self.embedding_inputs = 0
        self.last_tools: list[str] = []  # the tools offered by the latest chat request that offered any

    def count(self, model: str, outcome: str) -> None:
        counts = self.by_model.get(model)
        if counts is None:
            counts = self.by_model[model] = dict.fromkeys(("requests", *OUTCOMES), 0)
        counts["requests"] += 1
        counts[outcome] += 1

    def as_dict(self) -> dict[str, Any]:
        outcomes = {outcome: sum(counts[outcome] for counts in self.by_model.values()) for outcome in OUTCOMES}
        return {
            "requests": sum(outcomes.values()),
            "chat_completions": self.chat_completions,
            "streams": self.streams,
            "embeddings": self.embeddings,
            "embedding_inputs": self.embedding_inputs,
            "last_tools": self.last_tools,
            "outcomes": outcomes,
            "models": self.by_model,
        }


class SimulatorApp:
    """OpenAI's chat-completions, embeddings and models endpoints, plus the /_simulator admin API."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.models_seen: dict[str, None] = dict.fromkeys(DEFAULT_MODELS)
        self._rng = random.Random(config.seed)
        self._ids = itertools.count(1)
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/chat/completions"): self._chat_completions,
            ("POST", "/embeddings"): self._embeddings,
            ("GET", "/models"): self._models,
            ("GET", "/_simulator/config"): self._get_config,
            ("PUT", "/_simulator/config"): self._put_config,
            ("GET", "/_simulator/stats"): self._get_stats,
            ("POST", "/_simulator/reset"): self._reset,
        }

    def replace_config(self, config: SimulatorConfig) -> None:
        """New behaviour from the next request on; the fault RNG restarts from the new seed."""
        self.config = config
        self._rng = random.Random(config.seed)

    def reset(self) -> None:
        """Zero the stats and restart the fault RNG, so a run after a reset repeats the same faults."""
        self.stats = Stats()
        self._rng = random.Random(self.config.seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/v1/"):
                path = path[3:]
            handler = self._routes.get((scope["method"], path))
            if handler is not None:
                await handler(scope, receive, send)
            elif path.startswith("/models/") and scope["method"] == "GET":
                await self._model(path[len("/models/") :], send)
            elif any(route_path == path for _, route_path in self._routes):
                message = f"Method {scope['method']} not allowed on {scope['path']}"
                await _send_error(send, 405, message, "method_not_allowed")
            else:
                await _send_error(send, 404, f"Unknown path {scope['path']}", "not_found")
        elif scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # -- OpenAI endpoints ---------------------------------------------------------------------------------

    async def _decoded(self, receive: Receive, send: Send, decoder: msgspec.json.Decoder[T], what: str) -> T | None:
        """The request's body decoded, or None once a 400 has answered it."""
        try:
            return decoder.decode(await _read_body(receive))
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            self.stats.count("?", "bad_request")
            await _send_error(send, 400, f"Invalid {what} request: {error}", "invalid_request")
            return None

    async def _chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await self._decoded(receive, send, _chat_decoder, "chat completion")
        if request is None:
            return
        if not request.messages:
            self.stats.count(request.model, "bad_request")
            await _send_error(
                send, 400, "Invalid chat completion request: messages must not be empty", "invalid_request"
            )
            return
        config = self.config
        model = request.model
        self.models_seen[model] = None
        self.stats.chat_completions += 1
        if request.tools:
            self.stats.last_tools = [_tool_name(tool) for tool in request.tools]
        stream = bool(request.stream)
        if stream:
            self.stats.streams += 1
        fault, spec = self._draw_fault(config, model)
        self.stats.count(model, fault or "ok")
        if await self._refuse(fault, spec, model, receive, send):
            return
        answer = compose_answer(request, config)
        usage = _usage(prompt_tokens(request.messages), answer.completion_tokens)
        completion_id = f"chatcmpl-sim{next(self._ids):010d}"
        if stream:
            include_usage = request.stream_options is not None and bool(request.stream_options.include_usage)
            await self._stream(send, receive, config, completion_id, model, answer, usage, include_usage, fault)
            return
        await _pace(config.ttft_ms / 1000 + _seconds_for(answer.completion_tokens, config.tokens_per_second))
        message: dict[str, Any] = {"role": "assistant", "content": answer.content, "refusal": None}
        if answer.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in answer.tool_calls
            ]
        payload = _encode(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}],
                "usage": usage,
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
        )
        await _send_payload(send, receive, payload, fault)

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        config: SimulatorConfig,
        completion_id: str,
        model: str,
        answer: Answer,
        usage: dict[str, Any],
        include_usage: bool,
        fault: str | None,
    ) -> None:
        head = (
            b'data: {"id":"'
            + completion_id.encode()
            + b'","object":"chat.completion.chunk","created":'
            + str(int(time.time())).encode()
            + b',"model":'
            + _encode(model)
            + b',"system_fingerprint":"'
            + SYSTEM_FINGERPRINT.encode()
            + b'",'
            + (b'"usage":null,' if include_usage else b"")
        )

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return head + b'"choices":[' + _encode(choice) + b"]}\n\n"

        # frames[0] opens the message; frames[1:] are the paced tokens.
        if answer.tool_calls:
            frames = [chunk({"role": "assistant", "content": None, "refusal": None})]
            for index, call in enumerate(answer.tool_calls):
                opening = {
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                frames.append(chunk({"tool_calls": [opening]}))
                frames.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}))
        else:
            frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
            frames.extend(chunk({"content": piece}) for piece in answer.pieces)
        tail = [chunk({}, answer.finish_reason)]
        if include_usage:
            tail.append(head.removesuffix(b'"usage":null,') + b'"choices":[],"usage":' + _encode(usage) + b"}\n\n")
        tail.append(_DONE)

        if fault == "stream_cut":
            frames = frames[: 1 + (len(frames) - 1) // 2]
            tail = []
        elif fault == "malformed":
            broken = head + b'"choices":[{"index":0,"delta":{"content":"\n\n'
            frames = [*frames[: 1 + (len(frames) - 1) // 2], broken]
            tail = [_DONE]

        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        ttft = config.ttft_ms / 1000
        tps = config.tokens_per_second
        if tps <= 0 or len(frames) <= 2:
            await _pace(ttft)
            await send({"type": "http.response.body", "body": b"".join(frames + tail), "more_body": bool(not tail)})
        else:
            loop = asyncio.get_running_loop()
            start = loop.time() + ttft
            await _pace(ttft)
            await send({"type": "http.response.body", "body": frames[0] + frames[1], "more_body": True})
            for index, frame in enumerate(frames[2:], start=1):
                await _pace(start + index / tps - loop.time())
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"".join(tail), "more_body": bool(not tail)})
        if not tail:
            await _cut_connection(send, receive)

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await self._decoded(receive, send, _embedding_decoder, "embeddings")
        if request is None:
            return
        config = self.config
        model = request.model
        inputs = embedding_inputs(request.input)
        dims = request.dimensions or config.embedding_dims
        if not inputs or not 1 <= dims <= 65536:
            self.stats.count(model, "bad_request")
            problem = "input must not be empty" if not inputs else "dimensions must be in 1..65536"
            await _send_error(send, 400, f"Invalid embeddings request: {problem}", "invalid_request")
            return
        self.models_seen[model] = None
        self.stats.embeddings += 1
        self.stats.embedding_inputs += len(inputs)
        fault, spec = self._draw_fault(config, model)
        self.stats.count(model, fault or "ok")
        if await self._refuse(fault, spec, model, receive, send):
            return
        as_base64 = request.encoding_format == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector: Any = embedding_vector(item, dims)
            if as_base64:  # what the official client asks for by default: little-endian float32
                vector = base64.b64encode(array("f", vector).tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(embedding_tokens(item) for item in inputs)
        payload = _encode(
            {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        )
        await _send_payload(send, receive, payload, fault)

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = [_model_entry(model) for model in self.models_seen]
        await _send_json(send, 200, _encode({"object": "list", "data": data}))

    async def _model(self, model: str, send: Send) -> None:
        await _send_json(send, 200, _encode(_model_entry(model)))

    # -- faults ---------------------------------------------------------------------------------------------

    def _draw_fault(self, config: SimulatorConfig, model: str) -> tuple[str | None, FaultSpec | None]:
        """Five independent draws per request, always, so the sequence depends only on the seed and the order."""
        draw = self._rng.random
        draws = (draw(), draw(), draw(), draw(), draw())
        spec = config.fault_for(model)
        if spec is None:
            return None, None
        rates = (spec.rate_429, spec.rate_500, spec.rate_timeout, spec.rate_malformed, spec.rate_stream_cut)
        for fault, value, rate in zip(FAULTS, draws, rates, strict=True):
            if value < rate:
                return fault, spec
        return None, spec

    async def _refuse(
        self, fault: str | None, spec: FaultSpec | None, model: str, receive: Receive, send: Send
    ) -> bool:
        """Answer the faults that replace the answer (429, 500, timeout); True when the request is done."""
        if fault is None or spec is None or fault in ("malformed", "stream_cut"):
            return False
        if fault == "429":
            retry_after = spec.retry_after_seconds
            headers = [
                (b"retry-after", f"{retry_after:g}".encode()),
                (b"retry-after-ms", str(int(retry_after * 1000)).encode()),
            ]
            message = f"Rate limit reached for {model} (simulated). Please try again in {retry_after:g}s."
            await _send_error(send, 429, message, "rate_limit_exceeded", "requests", headers)
        elif fault == "500":
            message = "The server had an error while processing your request (simulated)."
            await _send_error(send, 500, message, "server_error", "server_error")
        else:  # timeout: say nothing, then hang up (sooner if the client gives up first)
            try:
                await asyncio.wait_for(_until_disconnect(receive), spec.timeout_seconds)
            except TimeoutError:
                await _cut_connection(send, receive)
        return True

    # -- admin API ----------------------------------------------------------------------------------------

    async def _get_config(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, _encode(self.config))

    async def _put_config(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            config = SimulatorConfig.from_json(await _read_body(receive))
        except SimulatorConfigError as error:
            await _send_error(send, 400, str(error), "invalid_config")
            return
        self.replace_config(config)
        await _send_json(send, 200, _encode(config))

    async def _get_stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, _encode(self.stats.as_dict()))

    async def _reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reset()
        await _send_json(send, 200, _encode(self.stats.as_dict()))


def create_simulator_app(config: SimulatorConfig | None = None) -> SimulatorApp:
    """The ASGI app; serve it with uvicorn (httptools) for the measured throughput."""
    return SimulatorApp(config or SimulatorConfig())


def _tool_name(tool: Any) -> str:
    function = tool.get("function") if isinstance(tool, dict) else None
    return str(function.get("name")) if isinstance(function, dict) else "?"


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "agentctl-simulator"}


def _seconds_for(tokens: int, tokens_per_second: float) -> float:
    return tokens / tokens_per_second if tokens_per_second > 0 else 0.0


async def _pace(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cut_connection(send: Send, receive: Receive) -> None:
    """Close the TCP connection mid-response, as a crashed upstream would.

    ASGI has no message for this, so reach uvicorn's transport through its bound ``send``; after the close,
    ``receive`` reports the disconnect and uvicorn logs nothing. Under another server, returning with the
    response unfinished makes that server close the connection itself.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None:
        transport.close()
        await _until_disconnect(receive)


async def _send_json(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(payload)).encode()), *(headers or ())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _send_payload(send: Send, receive: Receive, payload: bytes, fault: str | None) -> None:
    """A 200 JSON body, or half of it: as the whole body (malformed) or before a cut connection (stream_cut)."""
    if fault == "malformed":
        await _send_json(send, 200, payload[: len(payload) // 2])
    elif fault == "stream_cut":
        headers = [_JSON, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
        await _cut_connection(send, receive)
    else:
        await _send_json(send, 200, payload)


async def _send_error(
    send: Send,
    status: int,
    message: str,
    code: str,
    kind: str = "invalid_request_error",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """OpenAI's error shape."""
    payload = _encode({"error": {"message": message, "type": kind, "param": None, "code": code}})
    await _send_json(send, status, payload, headers)
