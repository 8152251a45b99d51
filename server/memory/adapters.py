"""mem0's model interfaces, answered by the model layer (retries, fallbacks, breakers, metrics) instead of
mem0's own provider clients.

Imports mem0: import this module only after ``prepare_mem0_environment`` (mem0 reads its telemetry switch at
import time).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from typing import Any, TypeVar

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from mem0.embeddings.base import EmbeddingBase
from mem0.llms.base import LLMBase

from server.llm.service import LLMService
from server.memory.vectors import QueryVectors

T = TypeVar("T")
# A model call made for mem0 may take this long at most (the model layer's own deadline applies first).
_CALL_TIMEOUT_SECONDS = 300.0


class _OnServerLoop:
    """mem0 calls its models from worker threads; each call runs on the server's event loop, through the model
    layer, while the thread waits for it. ``background``: work for the memory writers, which must not delay
    the searches turns wait for."""

    def __init__(self, llm: LLMService, loop: asyncio.AbstractEventLoop, *, background: bool) -> None:
        self._llm = llm
        self._loop = loop
        self._background = background

    def _call(self, call: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(call, self._loop)
        try:
            return future.result(_CALL_TIMEOUT_SECONDS)
        except TimeoutError:
            future.cancel()  # the call stops too, rather than run on for nobody
            raise


class RegistryEmbedder(_OnServerLoop, EmbeddingBase):
    """The embedding role's models, every text in the search form (e5's "query: "), memories included.

    A memory is what the user said, or a fact about them, matched against what they say next: a symmetric task,
    for which e5 takes "query: " on both sides. bench_memory.py's labelled recall is level either way (hit@5 0.976
    stored as queries, 0.980 as passages, same facts and questions), and one form means one vector per text: a
    turn's message, embedded for the recall before the turn, is the vector Mem0 stores (verbatim) or searches
    with (extraction) after it, instead of a second embedding of the same words."""

    def __init__(
        self, llm: LLMService, loop: asyncio.AbstractEventLoop, *, background: bool, queries: QueryVectors
    ) -> None:
        super().__init__(llm, loop, background=background)
        self._queries = queries

    def embed(self, text: str, memory_action: str | None = None) -> list[float]:
        said = _said(text) if memory_action == "search" else text
        if (known := self._queries.get(said)) is not None:
            return known
        vector = self._call(self._llm.embed([text], query=True, background=self._background)).vectors[0]
        self._queries.put(text, vector)
        return vector

    def embed_batch(self, texts: list[str], memory_action: str = "add") -> list[list[float]]:
        return [self.embed(text, memory_action) for text in texts]


class RegistryLLM(_OnServerLoop, LLMBase):
    """The memory role's models."""

    def generate_response(
        self,
        messages: list[dict[str, str]],
        response_format: Any = None,
        tools: Any = None,
        tool_choice: str = "auto",
        **kwargs: Any,
    ) -> str:
        converted = [_as_message(message) for message in messages]
        completion = self._call(self._llm.complete("memory", converted, response_format=response_format))
        return completion.message.text


# Mem0's transcript of one user message, which it embeds to find the memories an extraction may update.
_ONE_USER_MESSAGE = re.compile(r"user: (.*)\n", re.DOTALL)


def _said(text: str) -> str:
    """The message itself, when ``text`` is Mem0's transcript of one user message: the writers add one message per
    turn, the recall before the turn embedded exactly its words, and the label adds nothing to what they find."""
    match = _ONE_USER_MESSAGE.fullmatch(text)
    return match.group(1) if match else text


def _as_message(message: dict[str, str]) -> BaseMessage:
    kind = {"system": SystemMessage, "assistant": AIMessage}.get(message["role"], HumanMessage)
    return kind(message["content"])
