"""What the simulator answers: a pure function of the request (and the script), so the same input always gets
the same output.

Token counting is an approximation, stated once here: a token is a whitespace-separated piece of text.
``prompt_tokens`` counts the pieces of every message's text content (text parts of multi-part content
included; images, tool-call arguments and tool definitions are not counted); ``completion_tokens`` counts the
pieces of the answer, or for tool calls the word-like runs (``\\w+``) of each call's name and arguments.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from array import array
from dataclasses import dataclass, field
from typing import Any

import msgspec

from agentctl.simulator.config import ScriptRule, SimulatorConfig
from agentctl.simulator.memory import memory_answer

# Filler words the deterministic answer is made of after its echo of the question (picked by a hash).
_FILLER_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray yankee zulu amber birch cedar dune ember fern grove harbor "
    "island jade kelp lagoon meadow nectar orchard pebble quartz river summit tundra umber valley willow yarrow "
    "zephyr anchor beacon canyon drift estuary fjord glacier horizon inlet jetty knoll ledge"
)
FILLER = _FILLER_WORDS.split()
ECHO_WORDS = 8  # how many words of the last user message the answer starts with (at most half of it)

_PIECE = re.compile(r"\s*\S+")
_WORD = re.compile(r"\w+")
_CALL_DIRECTIVE = re.compile(r"call:([A-Za-z0-9_-]+)")
_JSON_DECODER = json.JSONDecoder()


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = False


class ResponseFormat(msgspec.Struct):
    type: str = "text"
    json_schema: dict[str, Any] | None = None


class ChatRequest(msgspec.Struct):
    """The part of OpenAI's chat-completions request the simulator reads; other fields are ignored."""

    model: str
    messages: list[ChatMessage]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | list[Any]
    dimensions: int | None = None
    encoding_format: str | None = "float"


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(slots=True)
class Answer:
    """One assistant turn: content pieces (their concatenation is the content) or tool calls."""

    pieces: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"

    @property
    def content(self) -> str | None:
        return None if self.tool_calls else "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        if self.tool_calls:
            return sum(len(_WORD.findall(f"{call.name} {call.arguments}")) for call in self.tool_calls)
        return len(self.pieces)


def text_of(content: str | list[Any] | None) -> str:
    """The text of a message's content, whether a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))


def count_tokens(text: str) -> int:
    return len(text.split())


def prompt_tokens(messages: list[ChatMessage]) -> int:
    return sum(count_tokens(text_of(message.content)) for message in messages)


def compose_answer(request: ChatRequest, config: SimulatorConfig) -> Answer:
    """The deterministic answer to a chat request (see the module docstring of `agentctl.simulator`)."""
    messages = request.messages
    last = messages[-1] if messages else ChatMessage(role="user", content="")
    last_user_text = next((text_of(m.content) for m in reversed(messages) if m.role == "user"), "")
    digest = _conversation_digest(messages)
    tools_allowed = bool(request.tools) and request.tool_choice != "none"
    json_mode = request.response_format is not None and request.response_format.type in ("json_object", "json_schema")
    limit = request.max_completion_tokens or request.max_tokens

    if last.role == "tool":
        results = _trailing_tool_results(messages)
        if tools_allowed:
            tool_calls = _apply_tool_choice(_call_directives(" ".join(text for _, text in results)), request)
            if tool_calls:
                return _tool_call_answer(tool_calls, digest)
        text = "Tool results: " + "; ".join(f"{name}: {text}" for name, text in results)
        return _content_answer(text, request, json_mode, limit)

    system_text = "\n".join(text_of(m.content) for m in messages if m.role in ("system", "developer"))
    memory = memory_answer(system_text, last_user_text)
    if memory is not None:
        return Answer(pieces=_pieces(msgspec.json.encode(memory).decode()))

    rule = _first_matching_rule(config.script, last_user_text)
    if rule is not None and rule.echo_system:
        return _content_answer(system_text, request, json_mode, limit)
    if tools_allowed:
        calls: list[tuple[str, Any]] = []
        if rule is not None and rule.tool_calls is not None:
            calls = [(call.name, call.arguments) for call in rule.tool_calls]
        elif rule is None or rule.content is None:
            calls = _call_directives(last_user_text)
        calls = _apply_tool_choice(calls, request)
        if calls:
            return _tool_call_answer(calls, digest)
    if rule is not None and rule.content is not None:
        return _content_answer(rule.content, request, json_mode and not rule.verbatim, limit)
    return _content_answer(_generated_text(last_user_text, digest, config.answer_tokens), request, json_mode, limit)


def _content_answer(text: str, request: ChatRequest, json_mode: bool, limit: int | None) -> Answer:
    """Plain text capped by max_tokens (finish "length"); in JSON mode, valid JSON and never cut."""
    if json_mode:
        return Answer(pieces=_pieces(_json_content(text, request.response_format)))
    pieces = _pieces(text)
    if limit is not None and 0 < limit < len(pieces):
        return Answer(pieces=pieces[:limit], finish_reason="length")
    return Answer(pieces=pieces)


def _pieces(text: str) -> list[str]:
    """Tokens for streaming, each with the whitespace before it: their concatenation is the stripped text."""
    return _PIECE.findall(text.rstrip())


def _generated_text(last_user_text: str, digest: bytes, answer_tokens: int) -> str:
    words = last_user_text.split()[: min(ECHO_WORDS, answer_tokens // 2)]
    filler_count = answer_tokens - len(words)
    choices = hashlib.shake_256(digest).digest(filler_count)
    words.extend(FILLER[byte % len(FILLER)] for byte in choices)
    return " ".join(words) + "."


def _conversation_digest(messages: list[ChatMessage]) -> bytes:
    hasher = hashlib.blake2b(digest_size=16)
    for message in messages:
        hasher.update(message.role.encode())
        hasher.update(b"\x00")
        hasher.update(text_of(message.content).encode("utf-8", "surrogatepass"))
        hasher.update(b"\x1e")
    return hasher.digest()


def _first_matching_rule(script: list[ScriptRule], last_user_text: str) -> ScriptRule | None:
    return next((rule for rule in script if rule.match in last_user_text), None)


def _call_directives(text: str) -> list[tuple[str, Any]]:
    """``call:<tool>`` directives, each optionally followed by a JSON object of arguments."""
    if "call:" not in text:
        return []
    calls: list[tuple[str, Any]] = []
    for directive in _CALL_DIRECTIVE.finditer(text):
        position = directive.end()
        while position < len(text) and text[position] in " \t":
            position += 1
        arguments: Any = {}
        if text.startswith("{", position):
            try:
                parsed, _ = _JSON_DECODER.raw_decode(text, position)
            except ValueError:
                parsed = {}
            arguments = parsed if isinstance(parsed, dict) else {}
        calls.append((directive.group(1), arguments))
    return calls


def _apply_tool_choice(calls: list[tuple[str, Any]], request: ChatRequest) -> list[tuple[str, Any]]:
    """A named tool_choice keeps (or forces) that tool; "required" forces the first tool when none was asked."""
    choice = request.tool_choice
    if isinstance(choice, dict):
        forced = (choice.get("function") or {}).get("name")
        if forced:
            return [call for call in calls if call[0] == forced] or [(forced, {})]
    if choice == "required" and not calls and request.tools:
        first = request.tools[0]
        name = (first.get("function") or {}).get("name") if isinstance(first, dict) else None
        if name:
            return [(name, {})]
    return calls


def _tool_call_answer(calls: list[tuple[str, Any]], digest: bytes) -> Answer:
    tool_calls = []
    for index, (name, arguments) in enumerate(calls):
        encoded = arguments if isinstance(arguments, str) else msgspec.json.encode(arguments).decode()
        call_id = hashlib.blake2b(digest + index.to_bytes(4, "big") + name.encode(), digest_size=12).hexdigest()
        tool_calls.append(ToolCall(id=f"call_{call_id}", name=name, arguments=encoded))
    return Answer(tool_calls=tool_calls, finish_reason="tool_calls")


def _trailing_tool_results(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """(tool name, result text) of the tool messages that end the conversation, in order."""
    start = len(messages)
    while start > 0 and messages[start - 1].role == "tool":
        start -= 1
    names: dict[str, str] = {}
    if start > 0:
        for call in messages[start - 1].tool_calls or ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                names[str(call.get("id"))] = str(call["function"].get("name", "tool"))
    return [
        (names.get(str(message.tool_call_id)) or message.name or "tool", text_of(message.content).strip())
        for message in messages[start:]
    ]


def _json_content(text: str, response_format: ResponseFormat | None) -> str:
    """Valid JSON: scripted JSON verbatim, an object filling a json_schema, else ``{"answer": text}``."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            json.loads(stripped)
            return stripped
        except ValueError:
            pass
    schema = (response_format.json_schema or {}).get("schema") if response_format is not None else None
    if isinstance(schema, dict):
        value = _value_for_schema(schema, schema, text, depth=0)
        if isinstance(value, dict):
            return msgspec.json.encode(value).decode()
    return msgspec.json.encode({"answer": text}).decode()


def _value_for_schema(schema: dict[str, Any], root: dict[str, Any], text: str, depth: int) -> Any:
    """A deterministic instance of a (simple) JSON schema: strings carry the answer text."""
    if depth > 8:
        return None
    reference = schema.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/"):
        target: Any = root
        for part in reference[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _value_for_schema(target, root, text, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = [option for option in schema.get(combinator, ()) if isinstance(option, dict)]
        options = [option for option in options if option.get("type") != "null"]
        if options:
            return _value_for_schema(options[0], root, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        wanted = schema.get("required", list(properties))
        return {
            name: _value_for_schema(properties.get(name, {}), root, text, depth + 1)
            for name in wanted
            if isinstance(name, str)
        }
    if kind == "array":
        count = schema.get("minItems", 0)
        declared_items = schema.get("items")
        items: dict[str, Any] = declared_items if isinstance(declared_items, dict) else {}
        return [_value_for_schema(items, root, text, depth + 1) for _ in range(count)]
    zero_values: dict[str, Any] = {"integer": 0, "number": 0.0, "boolean": False, "null": None}
    return zero_values.get(kind, text) if isinstance(kind, str) else text


def embedding_vector(item: str | list[Any], dims: int) -> list[float]:
    """A unit vector from a hash of the text (or token ids): equal inputs, equal vectors; nothing more."""
    data = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else msgspec.json.encode(item)
    raw = array("h")
    raw.frombytes(hashlib.shake_256(data).digest(2 * dims))
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [value / norm for value in raw]


def embedding_inputs(value: str | list[Any]) -> list[str | list[Any]]:
    """OpenAI's input forms: a string, a list of strings, a list of token ids, or a list of such lists."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(item, int) for item in value):
        return [value]
    return value


def embedding_tokens(item: str | list[Any]) -> int:
    return count_tokens(item) if isinstance(item, str) else len(item)
