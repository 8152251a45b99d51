"""The LLM simulator over real HTTP: a real `agentctl llm simulate` process, spoken to by the official openai
client and by langchain-openai, as the rest of the test suite will speak to it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from typer.testing import CliRunner

from agentctl.cli import app as cli_app
from agentctl.simulator import RunningSimulator

USER_TURNS = [
    {"role": "user", "content": "Hi! I live in Lisbon. I am allergic to peanuts. What should I cook tonight?"},
    {"role": "assistant", "content": "How about a bean stew?"},
    {"role": "user", "content": "Thanks. My daughter Ana turns six in May.\nCan you suggest a cake?"},
]
USER_FACTS = ["I live in Lisbon.", "I am allergic to peanuts.", "My daughter Ana turns six in May."]


@pytest.fixture
def simulator(simulator: RunningSimulator) -> Iterator[RunningSimulator]:
    """The module's simulator (tests/conftest.py) with zeroed stats, whatever the previous test did; and after each
    test, nothing in its output that says it broke."""
    simulator.reset()
    yield simulator
    assert "Traceback" not in simulator.output()
    assert "ERROR" not in simulator.output()


@pytest.fixture
def client(simulator: RunningSimulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=simulator.base_url, api_key="sim", max_retries=0) as opened:
        yield opened


@pytest.fixture(scope="module")
def mem0_imported(tmp_path_factory: pytest.TempPathFactory) -> None:
    """mem0 reads these once, at import: no telemetry (it would delay the exit ~7 s), no ~/.mem0."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEM0_TELEMETRY", "False")
        patch.setenv("MEM0_DIR", str(tmp_path_factory.mktemp("mem0")))
        import mem0  # noqa: F401


def chat_model(simulator: RunningSimulator, **kwargs: object) -> ChatOpenAI:
    options: dict = {"model": "gpt-4o-mini", "base_url": simulator.base_url, "api_key": "sim", "max_retries": 0}
    return ChatOpenAI(**{**options, **kwargs})


def ask(client: openai.OpenAI, text: str, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **kwargs)  # type: ignore[call-overload]


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    return "4"


# -- answers ---------------------------------------------------------------------------------------------------


def test_answers_are_deterministic_echo_the_question_and_count_tokens(client: openai.OpenAI) -> None:
    first = ask(client, "What is the capital of Portugal?")
    again = ask(client, "What is the capital of Portugal?")
    other = ask(client, "What is the capital of Spain?")

    text = first.choices[0].message.content
    assert text == again.choices[0].message.content
    assert text != other.choices[0].message.content
    assert text.startswith("What is the capital of Portugal?")
    assert len(text.split()) == 24
    assert first.model == "gpt-4o-mini"
    assert first.object == "chat.completion"
    assert first.choices[0].finish_reason == "stop"
    assert first.usage.prompt_tokens == 6
    assert first.usage.completion_tokens == 24
    assert first.usage.total_tokens == 30
    assert first.usage.prompt_tokens_details.cached_tokens == 0


def test_streaming_yields_the_same_text_and_a_usage_chunk(client: openai.OpenAI) -> None:
    expected = ask(client, "Tell me about tides").choices[0].message.content

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Tell me about tides"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == expected
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 24)
    assert len(chunks) == 1 + 24 + 1 + 1  # role, tokens, finish, usage


def test_langchain_chat_openai_invoke_and_stream_agree(client: openai.OpenAI, simulator: RunningSimulator) -> None:
    model = chat_model(simulator, stream_usage=True)
    expected = ask(client, "How do tides work?").choices[0].message.content

    answer = model.invoke("How do tides work?")
    chunks = list(model.stream("How do tides work?"))
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk

    assert answer.content == expected
    assert answer.usage_metadata["output_tokens"] == 24
    assert isinstance(streamed, AIMessageChunk)
    assert streamed.content == expected
    assert streamed.usage_metadata["input_tokens"] == 4


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client: openai.OpenAI) -> None:
    full = ask(client, "Explain the moon").choices[0].message.content

    for limit in ({"max_tokens": 5}, {"max_completion_tokens": 5}):
        cut = ask(client, "Explain the moon", **limit)
        assert cut.choices[0].finish_reason == "length"
        assert cut.usage.completion_tokens == 5
        assert full.startswith(cut.choices[0].message.content)
        assert len(cut.choices[0].message.content.split()) == 5
    streamed = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Explain the moon"}], stream=True, max_tokens=5
    )
    finish = [chunk.choices[0].finish_reason for chunk in streamed if chunk.choices]
    assert finish[-1] == "length"


def test_answer_length_and_an_unknown_model_follow_the_config(
    client: openai.OpenAI, simulator: RunningSimulator
) -> None:
    simulator.configure({"answer_tokens": 3})

    answer = client.chat.completions.create(model="my-own-model", messages=[{"role": "user", "content": "a b c d"}])

    assert len(answer.choices[0].message.content.split()) == 3
    assert answer.model == "my-own-model"
    assert "my-own-model" in {model.id for model in client.models.list()}


# -- tool calls -------------------------------------------------------------------------------------------------

TOOLS = [
    {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}},
]


def test_call_directives_become_tool_calls_and_the_results_close_the_loop(client: openai.OpenAI) -> None:
    question = 'Please call:calculator {"expression": "2+2"} and then call:search {"query": "tides"}'
    messages: list[dict] = [{"role": "user", "content": question}]

    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)
    again = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)
    without_tools = ask(client, question)

    calls = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.content is None
    assert [(call.function.name, json.loads(call.function.arguments)) for call in calls] == [
        ("calculator", {"expression": "2+2"}),
        ("search", {"query": "tides"}),
    ]
    assert [call.id for call in calls] == [call.id for call in again.choices[0].message.tool_calls]
    assert calls[0].id.startswith("call_")
    assert without_tools.choices[0].message.tool_calls is None

    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "4"})
    messages.append({"role": "tool", "tool_call_id": calls[1].id, "content": "High tide at noon"})
    final = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)

    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "Tool results: calculator: 4; search: High tide at noon"


def test_a_call_directive_in_a_tool_result_continues_the_loop(client: openai.OpenAI) -> None:
    messages: list[dict] = [{"role": "user", "content": "call:search"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": 'found it, now call:calculator {"x": 1}'})

    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)

    assert second.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in second.choices[0].message.tool_calls] == [
        ("calculator", '{"x":1}')
    ]


def test_tool_choice_none_required_and_named(client: openai.OpenAI) -> None:
    def calls(text: str, choice: object) -> list[str]:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], tools=TOOLS, tool_choice=choice
        )
        return [call.function.name for call in answer.choices[0].message.tool_calls or ()]

    assert calls("call:calculator", "none") == []
    assert calls("no directive here", "required") == ["calculator"]
    assert calls("call:calculator call:search", {"type": "function", "function": {"name": "search"}}) == ["search"]


def test_langchain_tool_loop_with_a_script_rule_streaming_and_not(simulator: RunningSimulator) -> None:
    simulator.configure(
        {
            "script": [
                {"match": "weather", "tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
                {"match": "greet", "content": "Hello from the script."},
            ]
        }
    )
    model = chat_model(simulator).bind_tools([calculator])

    asked = model.invoke("What is the weather in Lisbon?")
    chunks = list(model.stream("What is the weather in Lisbon?"))
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk
    greeting = model.invoke("Please greet me")
    result = calculator.invoke(asked.tool_calls[0])
    final = model.invoke(["What is the weather in Lisbon?", asked, result])

    assert [(call["name"], call["args"]) for call in asked.tool_calls] == [("calculator", {"expression": "6*7"})]
    assert streamed.tool_calls == asked.tool_calls
    assert streamed.response_metadata["finish_reason"] == "tool_calls"
    assert greeting.content == "Hello from the script."
    assert isinstance(result, ToolMessage)
    assert final.content == "Tool results: calculator: 4"
    assert final.tool_calls == []


# -- JSON mode and memory ---------------------------------------------------------------------------------------


class Verdict(BaseModel):
    title: str
    score: int
    tags: list[str]


def test_json_mode_answers_valid_json(client: openai.OpenAI, simulator: RunningSimulator) -> None:
    plain = ask(client, "Summarise tides in JSON", response_format={"type": "json_object"})
    structured = chat_model(simulator).with_structured_output(Verdict).invoke("Judge this essay")

    assert set(json.loads(plain.choices[0].message.content)) == {"answer"}
    assert json.loads(plain.choices[0].message.content)["answer"].startswith("Summarise tides in JSON")
    assert isinstance(structured, Verdict)
    assert structured.title.startswith("Judge this essay")


@pytest.mark.usefixtures("mem0_imported")
def test_mem0_additive_extraction_prompt_gets_the_users_declarative_sentences(client: openai.OpenAI) -> None:
    from mem0.configs.prompts import ADDITIVE_EXTRACTION_PROMPT, generate_additive_extraction_prompt
    from mem0.memory.utils import parse_messages

    # As mem0 2.2's Memory.add builds its single extraction call.
    prompt = generate_additive_extraction_prompt(
        existing_memories=[{"id": "0", "text": "I live in Lisbon."}],
        new_messages=parse_messages(USER_TURNS),
        last_k_messages=[],
    )
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": ADDITIVE_EXTRACTION_PROMPT}, {"role": "user", "content": prompt}],
        response_format={"type": "json_object"},
    )

    memories = json.loads(answer.choices[0].message.content)["memory"]
    assert [memory["text"] for memory in memories] == USER_FACTS[1:]  # the existing memory is not repeated
    assert {memory["attributed_to"] for memory in memories} == {"user"}


@pytest.mark.usefixtures("mem0_imported")
def test_mem0_fact_retrieval_and_update_prompts(client: openai.OpenAI) -> None:
    from mem0.configs.prompts import FACT_RETRIEVAL_PROMPT, get_update_memory_messages
    from mem0.memory.utils import get_fact_retrieval_messages, parse_messages

    def json_answer(messages: list[dict]) -> dict:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, response_format={"type": "json_object"}
        )
        return json.loads(answer.choices[0].message.content)

    conversation = parse_messages(USER_TURNS)
    system, user = get_fact_retrieval_messages(conversation)
    facts = json_answer([{"role": "system", "content": system}, {"role": "user", "content": user}])["facts"]
    legacy = json_answer(
        [{"role": "system", "content": FACT_RETRIEVAL_PROMPT}, {"role": "user", "content": f"Input:\n{conversation}"}]
    )["facts"]
    old_memory = [{"id": "0", "text": "I live in Lisbon."}]
    update = json_answer([{"role": "user", "content": get_update_memory_messages(old_memory, facts)}])["memory"]

    assert facts == legacy == USER_FACTS
    assert update == [
        {"id": "0", "text": "I live in Lisbon.", "event": "NONE"},
        {"id": "1", "text": "I am allergic to peanuts.", "event": "ADD"},
        {"id": "2", "text": "My daughter Ana turns six in May.", "event": "ADD"},
    ]


@pytest.mark.usefixtures("mem0_imported")
def test_mem0_memory_add_and_search_end_to_end(simulator: RunningSimulator, tmp_path: Path) -> None:
    from mem0 import Memory

    endpoint = {"openai_base_url": simulator.base_url, "api_key": "sim"}
    memory = Memory.from_config(
        {
            "llm": {"provider": "openai", "config": {"model": "gpt-4o-mini", **endpoint}},
            "embedder": {
                "provider": "openai",
                "config": {"model": "text-embedding-3-small", "embedding_dims": 64, **endpoint},
            },
            "vector_store": {
                "provider": "qdrant",
                "config": {"collection_name": "facts", "embedding_model_dims": 64, "path": str(tmp_path / "qdrant")},
            },
            "history_db_path": str(tmp_path / "history.db"),
        }
    )

    added = memory.add(USER_TURNS, user_id="ana")
    found = memory.search("I am allergic to peanuts.", filters={"user_id": "ana"}, top_k=1)

    assert sorted(result["memory"] for result in added["results"]) == sorted(USER_FACTS)
    assert found["results"][0]["memory"] == "I am allergic to peanuts."  # equal text, equal vector
    stats = simulator.stats()
    assert stats["chat_completions"] == 1
    assert stats["embeddings"] >= 2


# -- embeddings and models --------------------------------------------------------------------------------------


def test_embeddings_are_deterministic_unit_vectors_of_the_asked_size(client: openai.OpenAI) -> None:
    first = client.embeddings.create(model="text-embedding-3-small", input=["tides", "moon", "tides"])
    as_floats = client.embeddings.create(model="text-embedding-3-small", input="tides", encoding_format="float")
    small = client.embeddings.create(model="text-embedding-3-small", input="tides", dimensions=16)

    vectors = [item.embedding for item in first.data]
    assert [len(vector) for vector in vectors] == [384, 384, 384]
    assert vectors[0] == vectors[2] != vectors[1]
    assert as_floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)  # the client asked base64 first
    assert len(small.data[0].embedding) == 16
    for vector in [*vectors, small.data[0].embedding]:
        assert math.sqrt(sum(value * value for value in vector)) == pytest.approx(1.0, abs=1e-5)
    assert first.usage.prompt_tokens == 3


def test_models_lists_the_defaults_and_the_models_seen(client: openai.OpenAI) -> None:
    ask(client, "hi")

    ids = [model.id for model in client.models.list()]

    assert {"simulator", "gpt-4o-mini", "text-embedding-3-small"} <= set(ids)
    assert client.models.retrieve("anything").id == "anything"


# -- faults -----------------------------------------------------------------------------------------------------


def test_429_carries_retry_after_in_openais_error_shape(client: openai.OpenAI, simulator: RunningSimulator) -> None:
    simulator.configure({"faults": {"*": {"rate_429": 1.0, "retry_after_seconds": 7}}})

    with pytest.raises(openai.RateLimitError) as raised:
        ask(client, "hello")
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="text-embedding-3-small", input="hello")

    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.body["code"] == "rate_limit_exceeded"
    assert set(raised.value.response.json()["error"]) == {"message", "type", "param", "code"}


def test_500_and_faults_per_model(client: openai.OpenAI, simulator: RunningSimulator) -> None:
    simulator.configure({"faults": {"flaky": {"rate_500": 1.0}, "*": {"rate_429": 0.0}}})

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(openai.InternalServerError):
        chat_model(simulator, model="flaky").invoke("hello")

    assert ask(client, "hello").choices[0].finish_reason == "stop"


def test_malformed_bodies_and_cut_streams_are_errors_for_the_clients(
    client: openai.OpenAI, simulator: RunningSimulator
) -> None:
    messages = [{"role": "user", "content": "Tell me a long story about the sea"}]

    simulator.configure({"faults": {"*": {"rate_malformed": 1.0}}})
    with pytest.raises(json.JSONDecodeError):  # the openai client lets the decoder's error through
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    with pytest.raises(json.JSONDecodeError):
        list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    with pytest.raises(json.JSONDecodeError):
        client.embeddings.create(model="text-embedding-3-small", input="hello")

    simulator.configure({"faults": {"*": {"rate_stream_cut": 1.0}}})
    received: list[str] = []
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    with pytest.raises(openai.APIConnectionError):
        received.extend(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    with pytest.raises(openai.APIConnectionError):
        list(chat_model(simulator).stream("Tell me a long story about the sea"))
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert 0 < len("".join(received).split()) < 24  # part of the answer came through
    outcomes = simulator.stats()["outcomes"]
    assert (outcomes["malformed"], outcomes["stream_cut"]) == (3, 3)


def test_timeouts_hold_the_request_then_hang_up(client: openai.OpenAI, simulator: RunningSimulator) -> None:
    simulator.configure({"faults": {"*": {"rate_timeout": 1.0, "timeout_seconds": 5}}})
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client, "hello", timeout=0.3)
    assert time.monotonic() - started < 2

    simulator.configure({"faults": {"*": {"rate_timeout": 1.0, "timeout_seconds": 0.3}}})
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        ask(client, "hello", timeout=5)
    assert 0.25 < time.monotonic() - started < 2
    assert simulator.stats()["outcomes"]["timeout"] == 2


def test_fault_rates_are_honoured_and_reproducible_with_the_seed(simulator: RunningSimulator) -> None:
    simulator.configure({"seed": 42, "faults": {"*": {"rate_429": 0.3}}})
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}

    def statuses() -> list[int]:
        with httpx.Client(base_url=simulator.base_url) as http:
            return [http.post("/chat/completions", json=body).status_code for _ in range(200)]

    first = statuses()
    simulator.reset()
    second = statuses()
    simulator.configure({"seed": 7, "faults": {"*": {"rate_429": 0.3}}})
    other_seed = statuses()

    assert set(first) == {200, 429}
    assert 0.22 <= first.count(429) / 200 <= 0.38
    assert second == first
    assert other_seed != first
    assert simulator.stats()["models"]["gpt-4o-mini"]["429"] == second.count(429) + other_seed.count(429)  # since reset


# -- latency ----------------------------------------------------------------------------------------------------


def test_time_to_first_token_and_tokens_per_second(client: openai.OpenAI, simulator: RunningSimulator) -> None:
    simulator.configure({"ttft_ms": 200, "tokens_per_second": 40, "answer_tokens": 9})

    started = time.monotonic()
    ask(client, "slow please")
    whole = time.monotonic() - started

    started = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "slow please"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)

    assert 0.2 + 9 / 40 - 0.02 <= whole < 2.0  # ttft + tokens / rate
    assert 0.18 <= arrivals[0] < 1.0
    assert len(arrivals) == 9
    assert 8 / 40 - 0.03 <= arrivals[-1] - arrivals[0] < 1.5


# -- admin API, errors and the command --------------------------------------------------------------------------


def test_admin_config_stats_and_reset(simulator: RunningSimulator) -> None:
    http = httpx.Client(base_url=simulator.url)
    replaced = http.put("/_simulator/config", json={"answer_tokens": 5, "faults": {"m": {"rate_500": 1}}})
    refused = http.put("/_simulator/config", json={"faults": {"*": {"rate_429": 2}}})
    unknown = http.put("/_simulator/config", json={"answer_token": 5})
    http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    http.post("/v1/chat/completions", json={"model": "n", "messages": [{"role": "user", "content": "x"}]})
    http.post("/v1/embeddings", json={"model": "e", "input": ["a", "b"]})
    stats = http.get("/_simulator/stats").json()
    after_reset = http.post("/_simulator/reset").json()

    assert replaced.status_code == 200
    assert replaced.json()["answer_tokens"] == 5
    assert replaced.json()["faults"]["m"] == {**http.get("/_simulator/config").json()["faults"]["m"], "rate_500": 1}
    assert refused.status_code == 400
    assert "rate_429" in refused.json()["error"]["message"]
    assert unknown.status_code == 400
    assert http.get("/_simulator/config").json()["answer_tokens"] == 5  # a refused config changes nothing
    assert stats["models"]["m"]["500"] == 1
    assert stats["models"]["n"]["ok"] == 1
    assert (stats["chat_completions"], stats["embeddings"], stats["embedding_inputs"]) == (2, 1, 2)
    assert stats["outcomes"]["ok"] == 2
    assert after_reset["requests"] == 0
    assert simulator.stats()["models"] == {}


def test_bad_requests_get_openais_error_shape(simulator: RunningSimulator) -> None:
    http = httpx.Client(base_url=simulator.base_url)

    missing = http.post("/chat/completions", json={"model": "m"})
    empty = http.post("/chat/completions", json={"model": "m", "messages": []})
    not_json = http.post("/chat/completions", content=b"{")
    wrong_path = http.get("/nowhere")
    wrong_method = http.get("/chat/completions")

    assert [missing.status_code, not_json.status_code, wrong_path.status_code, wrong_method.status_code] == [
        400,
        400,
        404,
        405,
    ]
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert "messages" in missing.json()["error"]["message"]
    assert empty.status_code == 400


def test_command_options_config_file_and_script_file(tmp_path: Path) -> None:
    """Also standalone: a broken agentctl environment (production, bad database URL) does not stop it."""
    broken = {"AGENTCTL_ENV": "production", "DATABASE_URL": "not a url", "AGENTCTL_DATA_DIR": str(tmp_path / "data")}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"answer_tokens": 4, "faults": {"*": {"rate_500": 0.5, "timeout_seconds": 3}}}))
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"match": "ping", "content": "pong"}]))

    simulator = RunningSimulator(
        args=("--config", str(config), "--script", str(script), "--fail-429", "0.25", "--seed", "9", "--ttft-ms", "1"),
        env=broken,
    )
    try:
        effective = simulator.config()
        answer = httpx.post(
            f"{simulator.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "ping?"}]},
        )
    finally:
        exit_code = simulator.stop()

    assert effective["answer_tokens"] == 4
    assert (effective["seed"], effective["ttft_ms"]) == (9, 1)
    faults = effective["faults"]["*"]
    assert (faults["rate_429"], faults["rate_500"], faults["timeout_seconds"]) == (0.25, 0.5, 3)
    assert effective["script"] == [
        {"match": "ping", "tool_calls": None, "content": "pong", "echo_system": False, "verbatim": False}
    ]
    assert answer.status_code in (200, 429, 500)
    assert exit_code == 0
    assert simulator.output().startswith(f"LLM simulator listening on {simulator.url} ")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--fail-429", "1.5"], "--fail-429"),
        (["--port", "http"], "--port"),
        (["--answer-tokens", "0"], "--answer-tokens"),
        (["--config", "/nonexistent/simulator.json"], "cannot read /nonexistent/simulator.json"),
    ],
)
def test_bad_option_values_are_one_plain_line(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_app, ["llm", "simulate", *arguments])

    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("agentctl: ")
    assert message in lines[0]


def test_a_config_file_with_a_bad_value_is_one_plain_line(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"faults": {"*": {"rate_timeout": -1}}}))

    result = CliRunner().invoke(cli_app, ["llm", "simulate", "--config", str(config)])

    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "agentctl: invalid simulator config: faults.rate_timeout must be a probability between 0 and 1, got -1.0 "
        "- at `$.faults[...]`"
    ]
