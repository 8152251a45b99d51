"""What the model reads: the history trimmed to its context window, counted with its own tokenizer, offline.

Before every model call the history is cut to the window less the room kept for the answer, oldest first,
always keeping the system prompt and the latest user message, and never separating a tool call from its
results (an endpoint rejects either half alone).

Counting happens on the event loop (``trim_messages`` calls the counter synchronously), so every counter
here is CPU only: no file, no network. tiktoken would download its encoding files on first use; OpenAI
models are counted with toktok instead, whose cl100k/o200k vocabularies are compiled into its wheel and
give tiktoken's counts exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import tiktoken.model
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    trim_messages,
)
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from loguru import logger

from agentctl.config import ModelSpec
from server.errors import AppError
from server.llm.local import LocalChatModel

TokenCounter = Callable[[list[BaseMessage]], int]

# With no max_output_tokens, the answer gets a quarter of the window, but never more than this: a long
# window would otherwise give up tens of thousands of tokens of history for answers that never come.
DEFAULT_OUTPUT_FRACTION = 0.25
DEFAULT_OUTPUT_CAP = 4096

# OpenAI's chat format, as langchain-openai counts it: each message is wrapped in 3 tokens, a name costs
# one more, a tool result's id about 3, and every answer is primed with 3.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_TOKENS_PER_TOOL_CALL_ID = 3
_TOKENS_FOR_REPLY = 3
# An image's cost depends on its size, which only downloading it would tell; low detail is a flat 85 and
# 765 is a 1024x1024 image at high detail.
_TOKENS_PER_LOW_DETAIL_IMAGE = 85
_TOKENS_PER_IMAGE = 765
# The encoding of OpenAI-compatible models that tiktoken does not know (Llama, Qwen, Mistral behind vLLM
# or Ollama, or a newer OpenAI name): their tokenizer is unknown here, and o200k is closer to today's 100k+
# vocabularies than "4 characters a token", above all outside English.
_STAND_IN_ENCODING = "o200k_base"
_ROLES: dict[type[BaseMessage], str] = {
    SystemMessage: "system",
    HumanMessage: "user",
    AIMessage: "assistant",
    ToolMessage: "tool",
    FunctionMessage: "function",
}


class ContextTooLongError(AppError):
    """The system prompt and the latest user message alone do not fit what the model can read."""

    status = 413
    code = "context-too-long"
    title = "Message too long for the model"


# --- budgets ------------------------------------------------------------------------------------------------


def output_budget(spec: ModelSpec) -> int:
    """Tokens kept free for the answer: the model's max_output_tokens, else a share of its window."""
    if spec.max_output_tokens is not None:
        return spec.max_output_tokens
    return min(int(spec.context_window * DEFAULT_OUTPUT_FRACTION), DEFAULT_OUTPUT_CAP)


def input_budget(spec: ModelSpec) -> int:
    """Tokens the history may take: the context window less the output budget."""
    budget = spec.context_window - output_budget(spec)
    if budget <= 0:
        raise ValueError(
            f"model {spec.model_id or spec.provider}: max_output_tokens ({output_budget(spec)}) leaves no room "
            f"for input in its context_window ({spec.context_window})"
        )
    return budget


# --- trimming -----------------------------------------------------------------------------------------------


def trim_history(messages: Sequence[BaseMessage], *, max_tokens: int, count_tokens: TokenCounter) -> list[BaseMessage]:
    """The newest part of ``messages`` that fits ``max_tokens``, as a model may be given it.

    Kept always: the system prompt (a SystemMessage first) and the latest user message. Dropped first: the
    oldest exchanges, whole, so that what is kept starts on a user message. A tool call and its results are
    kept or dropped together; an interrupted turn's unanswered tool call (or a result without its call) is
    dropped, since an endpoint refuses either. When the current turn's tool rounds do not fit, its oldest
    rounds go. When the system prompt and the latest user message alone do not fit, ContextTooLongError
    says so: sending them would only make the endpoint refuse, less clearly.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, not {max_tokens}")
    history = paired_tool_calls(messages)
    system = history[:1] if history and isinstance(history[0], SystemMessage) else []
    rest = history[len(system) :]
    latest_user = _previous_question(rest, len(rest))
    if latest_user is None:
        return [*system, *_newest_rounds_that_fit(system, rest, max_tokens, count_tokens)]

    trimmed = trim_messages(
        history,
        max_tokens=max_tokens,
        token_counter=count_tokens,
        strategy="last",
        include_system=True,
        start_on="human",
        allow_partial=False,
    )
    start = len(rest) - (len(trimmed) - len(system))  # where the kept part of ``rest`` begins, on a question
    core = [*system, rest[latest_user]]
    if start > latest_user:
        return [*core, *_newest_rounds_that_fit(core, rest[latest_user + 1 :], max_tokens, count_tokens)]
    # trim_messages counts the system prompt and the rest apart, and a chat template's fixed overhead makes
    # the parts add up to more (or less) than the whole: the cut is moved, an exchange at a time, to where
    # the whole fits.
    fits = count_tokens([*system, *rest[start:]]) <= max_tokens
    while not fits and start < latest_user:
        start = _next_question(rest, start)
        fits = count_tokens([*system, *rest[start:]]) <= max_tokens
    if not fits:
        return [*core, *_newest_rounds_that_fit(core, rest[latest_user + 1 :], max_tokens, count_tokens)]
    while (earlier := _previous_question(rest, start)) is not None:
        if count_tokens([*system, *rest[earlier:]]) > max_tokens:
            break
        start = earlier
    return [*system, *rest[start:]]


def _newest_rounds_that_fit(
    core: list[BaseMessage], rounds: list[BaseMessage], max_tokens: int, count_tokens: TokenCounter
) -> list[BaseMessage]:
    """As many of the newest rounds of ``rounds`` as fit after ``core``, which must fit by itself."""
    needed = count_tokens(core)
    if needed > max_tokens:
        system_tokens = count_tokens(core[:1]) if core and isinstance(core[0], SystemMessage) else 0
        raise ContextTooLongError(
            f"the system prompt ({system_tokens} tokens) and the latest message take {needed} tokens together, "
            f"more than the {max_tokens} this model reads besides its answer; send a shorter message",
            extra={"tokens": needed, "max_tokens": max_tokens},
        )
    kept: list[BaseMessage] = []
    for unit in reversed(_units(rounds)):
        candidate = [*unit, *kept]
        if count_tokens([*core, *candidate]) > max_tokens:
            break
        kept = candidate
    return kept


def _next_question(messages: list[BaseMessage], start: int) -> int:
    return next(index for index in range(start + 1, len(messages)) if isinstance(messages[index], HumanMessage))


def _previous_question(messages: list[BaseMessage], start: int) -> int | None:
    return next((index for index in range(start - 1, -1, -1) if isinstance(messages[index], HumanMessage)), None)


def _units(messages: list[BaseMessage]) -> list[list[BaseMessage]]:
    """The messages in the groups that must stay together: a tool call with its results, anything else alone."""
    units: list[list[BaseMessage]] = []
    for message in messages:
        if isinstance(message, ToolMessage) and units:
            units[-1].append(message)
        else:
            units.append([message])
    return units


def paired_tool_calls(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """``messages`` without tool calls that lack a result or results that lack their call."""
    paired: list[BaseMessage] = []
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        if isinstance(message, ToolMessage):
            logger.info("context: dropped a tool result whose call is not in the history ({})", message.tool_call_id)
            continue
        if not (isinstance(message, AIMessage) and message.tool_calls):
            paired.append(message)
            continue
        results: list[ToolMessage] = []
        while index < len(messages) and isinstance(result := messages[index], ToolMessage):
            results.append(result)
            index += 1
        calls = {call["id"] for call in message.tool_calls}
        answered = {result.tool_call_id for result in results}
        if not calls <= answered:
            # An interrupted turn: the endpoint would refuse a call without its result.
            logger.info("context: dropped a tool call left without its result ({})", ", ".join(map(str, calls)))
            continue
        paired.append(message)
        paired.extend(result for result in results if result.tool_call_id in calls)
    return paired


# --- counting -----------------------------------------------------------------------------------------------


def token_counter_for(
    chat_model: BaseChatModel, spec: ModelSpec, *, tools: Sequence[BaseTool | dict[str, Any]] = ()
) -> TokenCounter:
    """A counter of the prompt tokens ``chat_model`` would read for a list of messages, without network.

    The local model counts with its own llama.cpp tokenizer and chat template (exact). An OpenAI-compatible
    model counts with tiktoken's encoding for its name (through toktok, exact for OpenAI's models, with
    OpenAI's per-message overhead as langchain-openai counts it), or o200k for names tiktoken does not know;
    ``tools`` adds the schemas bound to the call. Anything else is approximated at 4 characters a token.
    Whatever the counter needs is loaded here, at start-up, not on the first request.
    """
    if isinstance(chat_model, LocalChatModel):
        chat_model.get_num_tokens("")  # loads the vocabulary now (~70 ms) rather than inside a request

        def count_local(messages: list[BaseMessage]) -> int:
            return chat_model.get_num_tokens_from_messages(messages)

        return count_local
    if spec.provider == "openai":
        counter = _openai_counter(spec.model_id, tools)
        if counter is not None:
            return counter
    tool_list = list(tools) or None

    def count_approximately(messages: list[BaseMessage]) -> int:
        return count_tokens_approximately(messages, tools=tool_list)

    return count_approximately


def encoding_for(model_id: str) -> str:
    """tiktoken's encoding name for an OpenAI model (a table lookup, no download); o200k for other names."""
    try:
        return tiktoken.model.encoding_name_for_model(model_id)
    except KeyError:
        return _STAND_IN_ENCODING


def _openai_counter(model_id: str, tools: Sequence[BaseTool | dict[str, Any]]) -> TokenCounter | None:
    try:
        import toktok
    except ImportError:
        logger.warning("toktok is not installed: OpenAI-compatible models' tokens are approximated")
        return None
    encoding = encoding_for(model_id)
    try:
        toktok.batch_count([""], encoding, threads=1)  # loads the vocabulary now (~0.4 s for o200k)
    except KeyError:
        logger.warning("toktok has no {} encoding: the tokens of {} are approximated", encoding, model_id)
        return None
    tool_texts = [json.dumps(convert_to_openai_tool(tool), ensure_ascii=False) for tool in tools]
    tool_tokens = sum(toktok.batch_count(tool_texts, encoding, threads=1)) if tool_texts else 0

    def count_openai(messages: list[BaseMessage]) -> int:
        fixed, texts = _openai_parts(messages)
        # One thread: counting runs on the event loop's thread and a short history gains nothing from more.
        return tool_tokens + fixed + sum(toktok.batch_count(texts, encoding, threads=1))

    return count_openai


def _openai_parts(messages: list[BaseMessage]) -> tuple[int, list[str]]:
    """The fixed tokens of OpenAI's chat format and the texts to tokenize, for ``messages``."""
    fixed = _TOKENS_FOR_REPLY
    texts: list[str] = []
    for message in messages:
        fixed += _TOKENS_PER_MESSAGE
        texts.append(message.role if isinstance(message, ChatMessage) else _role_of(message))
        if isinstance(message.content, str):
            texts.append(message.content)
        else:
            for block in message.content:
                fixed += _block_parts(block, texts)
        if message.name and not isinstance(message, ToolMessage):
            texts.append(message.name)
            fixed += _TOKENS_PER_NAME
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                texts += [call["name"], json.dumps(call["args"], ensure_ascii=False)]
            for invalid in message.invalid_tool_calls:
                texts += [invalid.get("name") or "", invalid.get("args") or ""]
        if isinstance(message, ToolMessage):
            fixed += _TOKENS_PER_TOOL_CALL_ID
    return fixed, texts


def _block_parts(block: str | dict[str, Any], texts: list[str]) -> int:
    """Adds a content block's text to ``texts``; returns its fixed tokens (images)."""
    if isinstance(block, str):
        texts.append(block)
        return 0
    kind = block.get("type")
    if kind == "text":
        texts.append(str(block.get("text", "")))
        return 0
    if kind == "image_url":
        detail = (block.get("image_url") or {}).get("detail")
        return _TOKENS_PER_LOW_DETAIL_IMAGE if detail == "low" else _TOKENS_PER_IMAGE
    if kind == "image":
        return _TOKENS_PER_IMAGE
    texts.append(json.dumps(block, ensure_ascii=False, default=str))
    return 0


def _role_of(message: BaseMessage) -> str:
    return next((role for kind, role in _ROLES.items() if isinstance(message, kind)), message.type)
