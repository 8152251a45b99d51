"""A run's events and records in OpenAI's shapes: chat completions (whole, or as chunks) and Responses (objects, and
the Responses stream's events). Tool activity and recalled memories travel in an ``agentctl`` extension field that
OpenAI clients ignore; tools always run on the server, so no answer ever carries ``tool_calls`` for the client."""

from __future__ import annotations

import uuid
from typing import Any

from server.chat.events import TurnEvent, as_json
from server.chat.streams import GatheredTurn

_KEEP_ALIVE = b": keep-alive\n\n"
_DONE = b"data: [DONE]\n\n"
RESPONSE_ID_PREFIX = "resp_"


def completion_id(run_id: uuid.UUID) -> str:
    return f"chatcmpl-{run_id.hex}"


def response_id(run_id: uuid.UUID) -> str:
    return f"{RESPONSE_ID_PREFIX}{run_id.hex}"


def run_id_of_response(value: str) -> uuid.UUID | None:
    """The run a response id names; None if it is not one of ours."""
    if not value.startswith(RESPONSE_ID_PREFIX):
        return None
    try:
        return uuid.UUID(hex=value[len(RESPONSE_ID_PREFIX) :])
    except ValueError:
        return None


def completion_usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
    }


def response_usage(usage: dict[str, Any]) -> dict[str, Any]:
    given, produced = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
        "output_tokens": produced,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": given + produced,
    }


def _extension(
    run_id: uuid.UUID, session_id: uuid.UUID | None, usage: dict[str, Any] | None, turn: GatheredTurn | None
) -> dict[str, Any]:
    extension: dict[str, Any] = {"run_id": str(run_id), "session_id": str(session_id) if session_id else None}
    if usage:
        extension["cost_usd"] = usage.get("cost_usd", 0.0)
        extension["model"] = usage.get("model")
    if turn is not None:
        extension["tool_calls"] = turn.tool_calls
        extension["memories"] = turn.memories
        if turn.interrupt:
            extension["interrupt"] = turn.interrupt
    return extension


def chat_completion(
    *, run_id: uuid.UUID, session_id: uuid.UUID | None, model: str, created: int, turn: GatheredTurn
) -> dict[str, Any]:
    return {
        "id": completion_id(run_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": turn.content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": _finish_reason(turn.finish_reason),
            }
        ],
        "usage": completion_usage(turn.usage),
        "agentctl": _extension(run_id, session_id, turn.usage, turn),
    }


def _finish_reason(reason: str | None) -> str:
    return "length" if reason in ("length", "max_tokens") else "stop"


class CompletionChunks:
    """Encodes a run's event batches as chat.completion.chunk server-sent events, then ``data: [DONE]``."""

    def __init__(
        self, *, run_id: uuid.UUID, session_id: uuid.UUID | None, model: str, created: int, include_usage: bool
    ) -> None:
        self._run_id, self._session_id = run_id, session_id
        self._include_usage = include_usage
        self._head = (
            f'{{"id":"{completion_id(run_id)}","object":"chat.completion.chunk","created":{created},'
            f'"model":{as_json(model)},"system_fingerprint":null,'
        )
        # A token is the hot path: its chunk is two constant halves around the token's JSON.
        self._token_start = ("data: " + self._head + '"choices":[{"index":0,"delta":{"content":').encode()
        self._token_end = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        self._started = False
        self._said_anything = False
        self._usage: dict[str, Any] = {}

    def _chunk(self, choices: str, extra: dict[str, Any] | None = None) -> bytes:
        tail = f',"agentctl":{as_json(extra)}' if extra else ""
        return f"data: {self._head}{choices}{tail}}}\n\n".encode()

    def _delta(self, delta: dict[str, Any], *, finish: str | None = None, extra: dict[str, Any] | None = None) -> bytes:
        reason = as_json(finish) if finish else "null"
        return self._chunk(
            f'"choices":[{{"index":0,"delta":{as_json(delta)},"logprobs":null,"finish_reason":{reason}}}]', extra
        )

    def __call__(self, batch: list[TurnEvent]) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._delta({"role": "assistant", "content": ""}))
        for event in batch:
            kind, data = event.kind, event.data
            if kind == "token":
                self._said_anything = True
                out.append(self._token_start + as_json(data["content"]).encode() + self._token_end)
            elif kind == "heartbeat":
                out.append(_KEEP_ALIVE)
            elif kind == "tool":
                tool = {key: data.get(key) for key in ("name", "arguments", "status", "result") if key in data}
                out.append(self._delta({}, extra={"tool": tool}))
            elif kind == "memory":
                out.append(self._delta({}, extra={"memories": data.get("memories", [])}))
            elif kind == "interrupt":
                question = {"question": data.get("question")}
                delta = {} if self._said_anything else {"content": data.get("question") or ""}
                out.append(self._delta(delta, extra={"interrupt": question}))
            elif kind == "usage":
                self._usage = data["usage"]
            elif kind == "done":
                extension = _extension(self._run_id, self._session_id, self._usage, None)
                out.append(self._delta({}, finish=_finish_reason(data.get("finish_reason")), extra=extension))
                if self._include_usage:
                    out.append(self._chunk(f'"choices":[],"usage":{as_json(completion_usage(self._usage))}'))
                out.append(_DONE)
            elif kind == "error":
                error = data["error"]
                body = {
                    "error": {"message": error["detail"], "type": "server_error", "param": None, "code": error["type"]}
                }
                out.append(f"data: {as_json(body)}\n\n".encode())
        return b"".join(out)


def response_object(
    *,
    run_id: uuid.UUID,
    session_id: uuid.UUID | None,
    created_at: int,
    status: str,
    model: str,
    text: str,
    usage: dict[str, Any] | None,
    previous_response_id: str | None,
    instructions: str | None,
    store: bool,
    max_output_tokens: int | None = None,
    temperature: float | None = None,
    error: dict[str, Any] | None = None,
    turn: GatheredTurn | None = None,
) -> dict[str, Any]:
    """A Response as OpenAI's API returns it (``status``: in_progress, completed, failed, cancelled)."""
    output = []
    if text or status == "completed":
        output.append(_message_item(run_id, text, "completed" if status == "completed" else "incomplete"))
    return {
        "id": response_id(run_id),
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": None,
        "instructions": instructions,
        "max_output_tokens": max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "previous_response_id": previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": store,
        "temperature": temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": response_usage(usage) if usage is not None else None,
        "user": None,
        "metadata": {},
        "agentctl": _extension(run_id, session_id, usage, turn),
    }


def _message_item(run_id: uuid.UUID, text: str, status: str) -> dict[str, Any]:
    return {
        "id": f"msg_{run_id.hex}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


class ResponseEvents:
    """Encodes a run's event batches as the Responses API's stream: response.created, output item and content part
    added, output_text deltas, their done events, then response.completed (or response.failed)."""

    def __init__(self, **response: Any) -> None:
        self._response = response  # response_object's arguments, but status, text, usage and turn
        self._run_id: uuid.UUID = response["run_id"]
        self._item_id = f"msg_{self._run_id.hex}"
        self._sequence = 0
        self._started = False
        self._text: list[str] = []
        self._usage: dict[str, Any] | None = None
        self._turn = GatheredTurn()
        self._delta_start = f'"item_id":"{self._item_id}","output_index":0,"content_index":0,"logprobs":[],"delta":'

    def _event(self, kind: str, body: str) -> bytes:
        self._sequence += 1
        return f'event: {kind}\ndata: {{"type":"{kind}","sequence_number":{self._sequence},{body}}}\n\n'.encode()

    def _object(self, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_object(
            **self._response, status=status, text="".join(self._text), usage=self._usage, error=error, turn=self._turn
        )

    def __call__(self, batch: list[TurnEvent]) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._event("response.created", f'"response":{as_json(self._object("in_progress"))}'))
            out.append(self._event("response.in_progress", f'"response":{as_json(self._object("in_progress"))}'))
            item = {"id": self._item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            out.append(self._event("response.output_item.added", f'"output_index":0,"item":{as_json(item)}'))
            part = as_json({"type": "output_text", "text": "", "annotations": [], "logprobs": []})
            out.append(
                self._event(
                    "response.content_part.added",
                    f'"item_id":"{self._item_id}","output_index":0,"content_index":0,"part":{part}',
                )
            )
        for event in batch:
            kind, data = event.kind, event.data
            if kind == "token":
                self._text.append(data["content"])
                out.append(self._event("response.output_text.delta", self._delta_start + as_json(data["content"])))
            elif kind == "heartbeat":
                out.append(_KEEP_ALIVE)
            elif kind == "tool" and data.get("status") != "started":
                self._turn.tool_calls.append({key: data.get(key) for key in ("name", "arguments", "status", "result")})
            elif kind == "memory":
                self._turn.memories = list(data.get("memories", []))
            elif kind == "interrupt":
                self._turn.interrupt = {"question": data.get("question") or ""}
                if not self._text:
                    self._text.append(data.get("question") or "")
                    out.append(self._event("response.output_text.delta", self._delta_start + as_json(self._text[0])))
            elif kind == "usage":
                self._usage = data["usage"]
            elif kind == "done":
                out.extend(self._closing_events())
                out.append(self._event("response.completed", f'"response":{as_json(self._object("completed"))}'))
            elif kind == "error":
                error = data["error"]
                failed = self._object(
                    "cancelled" if error["type"] == "cancelled" else "failed",
                    error={"code": error["type"], "message": error["detail"]},
                )
                out.append(self._event("response.failed", f'"response":{as_json(failed)}'))
        return b"".join(out)

    def _closing_events(self) -> list[bytes]:
        text = "".join(self._text)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        where = f'"item_id":"{self._item_id}","output_index":0,"content_index":0'
        return [
            self._event("response.output_text.done", f'{where},"text":{as_json(text)},"logprobs":[]'),
            self._event("response.content_part.done", f'{where},"part":{as_json(part)}'),
            self._event(
                "response.output_item.done",
                f'"output_index":0,"item":{as_json(_message_item(self._run_id, text, "completed"))}',
            ),
        ]
