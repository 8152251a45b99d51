"""The OpenAI request bodies /v1 accepts. Parameters OpenAI defines and agentctl does not use are accepted and
ignored (listed in the README), so that existing clients work; a parameter OpenAI does not define is refused."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from server.schemas import Strict

MaxTokens = Annotated[int, Meta(ge=1, le=1_000_000)]
Temperature = Annotated[float, Meta(ge=0, le=2)]
# What clients send as the conversation: bounded like any body; the context trimming keeps what the model reads.
MAX_MESSAGES = 1000


class ContentPart(msgspec.Struct):
    """A part of a message's content: only text parts (text, input_text, output_text); images and files are not
    read by the agent."""

    type: Literal["text", "input_text", "output_text"]
    text: str


Role = Literal["system", "developer", "user", "assistant"]
# The agent's tools run on the server: a client never runs one, so it has no tool calls or results to send.
NoClientTools = Annotated[
    list[Any],
    Meta(max_length=0, description="Must be absent or empty: the agent's own tools run on the server."),
]


class ChatMessageIn(msgspec.Struct):
    """A message of the conversation: system and developer messages are the user's instructions (added to the
    server's system prompt); the last message must be the user's."""

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    refusal: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChatCompletionRequest(Strict):
    model: str
    messages: Annotated[list[ChatMessageIn], Meta(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    n: Annotated[int, Meta(ge=1, le=1)] | None = None
    tools: NoClientTools | None = None
    tool_choice: Any = None
    functions: NoClientTools | None = None
    function_call: Any = None
    # Accepted and ignored (the README lists them).
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    logit_bias: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    prediction: Any = None
    audio: Any = None
    web_search_options: Any = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    verbosity: str | None = None


class ResponseInputItem(msgspec.Struct):
    """An input item: a message (its role and content); no other item type is accepted."""

    role: Role
    content: str | list[ContentPart]
    type: Literal["message"] = "message"
    id: str | None = None
    status: str | None = None


class ResponseRequest(Strict):
    model: str
    input: str | Annotated[list[ResponseInputItem], Meta(min_length=1, max_length=MAX_MESSAGES)]
    instructions: str | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    tools: NoClientTools | None = None
    tool_choice: Any = None
    # Accepted and ignored (the README lists them).
    top_p: float | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    truncation: str | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    include: list[str] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    stream_options: dict[str, Any] | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    background: bool | None = None
