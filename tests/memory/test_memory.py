"""Long-term memory over real HTTP: Mem0 on the test PostgreSQL, its models answered by the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, serve_with_model
from tests.support import ApiClient, ServeProcess

RECALL_PROBE = "what do you remember about me"


@pytest.fixture(scope="module")
def memory_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[tuple[ApiClient, Path]]:
    workdir = tmp_path_factory.mktemp("memory")
    server = serve_with_model(workdir, migrated_database_url, simulator)
    try:
        server.wait_until_healthy()
        yield ApiClient(server), workdir
    finally:
        server.terminate()


@pytest.fixture
def api(memory_server: tuple[ApiClient, Path]) -> ApiClient:
    return memory_server[0]


@pytest.fixture
def recall_probe(simulator: RunningSimulator) -> None:
    """A message containing RECALL_PROBE is answered with the system prompt the model was given."""
    simulator.configure({"script": [{"match": RECALL_PROBE, "echo_system": True}]})


def memories_of(api: ApiClient, user_token: str, query: str = "") -> list[dict]:
    response = api.request("GET", "/memories", token=user_token, params={"query": query} if query else {})
    assert response.status_code == 200, response.text
    return response.json()["memories"]


def wait_for_memories(
    api: ApiClient, user_token: str, done: Callable[[list[dict]], bool], timeout: float = 30.0
) -> list[dict]:
    """Remembering happens after the turn, in the background: poll until it shows."""
    deadline = time.monotonic() + timeout
    while True:
        found = memories_of(api, user_token)
        if done(found):
            return found
        assert time.monotonic() < deadline, f"memories never became what was expected: {found}"
        time.sleep(0.2)


def tell(api: ApiClient, conversation: Conversation, *facts: str) -> list[dict]:
    response = conversation.send(" ".join(facts))
    assert response.status_code == 200, response.text
    return wait_for_memories(
        api, conversation.user_token, lambda found: all(any(fact == m["memory"] for m in found) for fact in facts)
    )


def user_id_of(api: ApiClient, user_token: str) -> str:
    return api.request("GET", "/auth/me", token=user_token).json()["id"]


async def stored_memory_count(database_url: str, user_id: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval("SELECT count(*) FROM memories WHERE payload->>'user_id' = $1", user_id)
    finally:
        await connection.close()


@pytest.mark.usefixtures("recall_probe")
def test_a_fact_told_in_one_session_is_recalled_in_another(api: ApiClient) -> None:
    first = Conversation(api)
    found = tell(api, first, "I live in Lisbon.", "I keep bees on my roof.")
    lisbon = next(memory for memory in found if memory["memory"] == "I live in Lisbon.")
    assert lisbon["session_id"] == first.session_id
    assert lisbon["created_at"]
    assert uuid.UUID(lisbon["id"])

    second = Conversation(api, user_token=first.user_token)
    response = second.send(f"{RECALL_PROBE}?")
    assert response.status_code == 200, response.text
    system_prompt = response.json()["messages"][0]["content"]
    assert "I live in Lisbon." in system_prompt
    assert "I keep bees on my roof." in system_prompt

    ranked = memories_of(api, first.user_token, query="Where do I live? Lisbon")
    assert ranked[0]["memory"] == "I live in Lisbon."
    assert ranked[0]["score"] > 0


@pytest.mark.usefixtures("recall_probe")
def test_users_cannot_read_search_or_delete_each_others_memories(api: ApiClient) -> None:
    owner = Conversation(api)
    (secret,) = tell(api, owner, "My locker code is 4711.")
    intruder = Conversation(api)

    assert memories_of(api, intruder.user_token) == []
    assert memories_of(api, intruder.user_token, query="locker code 4711") == []
    answer = intruder.send(f"{RECALL_PROBE}? my locker code?").json()["messages"][0]["content"]
    assert "4711" not in answer.replace(f"{RECALL_PROBE}? my locker code?", "")
    response = api.request("DELETE", f"/memories/{secret['id']}", token=intruder.user_token)
    assert response.status_code == 404
    assert response.json()["type"].endswith("memory-not-found")
    response = api.request("DELETE", "/memories", token=intruder.user_token)
    assert response.status_code == 200
    assert response.json() == {"deleted": 0}
    assert [m["id"] for m in memories_of(api, owner.user_token)] == [secret["id"]]

    # Memories belong to the user, not to a session: a session token does not open them; no token neither.
    assert api.request("GET", "/memories", token=owner.token).status_code == 401
    assert api.request("GET", "/memories").status_code == 401


def test_forgetting_leaves_no_vectors_and_no_history(
    memory_server: tuple[ApiClient, Path], migrated_database_url: str
) -> None:
    api, workdir = memory_server
    conversation = Conversation(api)
    found = tell(api, conversation, "My cat is called Miso.", "I was born in Porto.")
    user_id = user_id_of(api, conversation.user_token)

    miso = next(memory for memory in found if "Miso" in memory["memory"])
    assert api.request("DELETE", f"/memories/{miso['id']}", token=conversation.user_token).status_code == 204
    assert [m["memory"] for m in memories_of(api, conversation.user_token)] == ["I was born in Porto."]
    again = api.request("DELETE", f"/memories/{miso['id']}", token=conversation.user_token)
    assert again.status_code == 404

    response = api.request("DELETE", "/memories", token=conversation.user_token)
    assert response.status_code == 200
    assert response.json() == {"deleted": 1}
    assert memories_of(api, conversation.user_token) == []
    assert asyncio.run(stored_memory_count(migrated_database_url, user_id)) == 0
    with contextlib.closing(sqlite3.connect(workdir / ".agentctl" / "mem0" / "history.db")) as history:
        leftovers = history.execute(
            "SELECT count(*) FROM history WHERE old_memory LIKE '%Porto%' OR new_memory LIKE '%Porto%' "
            "OR old_memory LIKE '%Miso%' OR new_memory LIKE '%Miso%'"
        ).fetchone()[0]
        messages = history.execute("SELECT count(*) FROM messages WHERE content LIKE '%Porto%'").fetchone()[0]
    assert (leftovers, messages) == (0, 0)


def test_deleting_a_user_deletes_their_memories(api: ApiClient, migrated_database_url: str) -> None:
    conversation = Conversation(api)
    tell(api, conversation, "I collect old maps.")
    user_id = user_id_of(api, conversation.user_token)
    assert asyncio.run(stored_memory_count(migrated_database_url, user_id)) == 1

    async def delete_user() -> None:
        connection = await asyncpg.connect(migrated_database_url)
        try:
            await connection.execute("DELETE FROM users WHERE id = $1", uuid.UUID(user_id))
        finally:
            await connection.close()

    asyncio.run(delete_user())
    assert asyncio.run(stored_memory_count(migrated_database_url, user_id)) == 0


def metric(server: ServeProcess, name: str) -> float:
    """One sample's value from /metrics (0 when absent)."""
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_late_recall_lets_the_turn_go_on_without_memories(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    server = serve_with_model(
        tmp_path, migrated_database_url, simulator, AGENTCTL_MEMORY__RECALL_BUDGET_SECONDS="0.000001"
    )
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        simulator.configure({"script": [{"match": RECALL_PROBE, "echo_system": True}]})
        conversation = Conversation(api)
        tell(api, conversation, "I play the cello.")  # remembering does not depend on the recall budget
        started = time.monotonic()
        response = conversation.send(f"{RECALL_PROBE}?")
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 5
        assert "I play the cello." not in response.json()["messages"][0]["content"]
        assert metric(server, 'agentctl_memory_recalls_total{outcome="timeout"}') >= 2
        assert metric(server, 'agentctl_memory_recalls_total{outcome="ok"}') == 0
        assert "memory recall ran past its" in server.output()
    finally:
        assert server.terminate() == 0


def embedding_calls(server: ServeProcess) -> float:
    """Embedding calls the server made, whatever their model and outcome."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in server.get("/metrics").text.splitlines()
        if line.startswith("agentctl_model_calls_total{") and 'role="embedding"' in line
    )


def test_a_verbatim_memory_is_stored_with_the_vector_its_turns_recall_used(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """Memories stored verbatim are the user's own words, embedded in the form a search is: each turn's message is
    embedded once, for the recall before the turn, and stored with that vector after it."""
    server = serve_with_model(tmp_path, migrated_database_url, simulator, AGENTCTL_MEMORY__EXTRACTION="verbatim")
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        conversation = Conversation(api)
        facts = [f"My locker at the {place} is number {n}." for n, place in enumerate(("gym", "pool", "station"))]
        for fact in facts:
            tell(api, conversation, fact)
        assert embedding_calls(server) == len(facts)

        # The same words find their memory first, with the vector the turn already had: no embedding either.
        ranked = memories_of(api, conversation.user_token, query=facts[1])
        assert ranked[0]["memory"] == facts[1]
        assert embedding_calls(server) == len(facts)
        # Other words are embedded once, in the same form, and still find it.
        ranked = memories_of(api, conversation.user_token, query="which locker do I use at the pool?")
        assert ranked[0]["memory"] == facts[1]
        assert embedding_calls(server) == len(facts) + 1
    finally:
        assert server.terminate() == 0


def test_an_extracted_memory_costs_the_turn_one_embedding_besides_its_recall(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """With model extraction Mem0 embeds its transcript of the message to find memories to update: the recall's
    vector of the same words stands in for it, so a turn embeds its message once and each extracted fact once."""
    server = serve_with_model(tmp_path, migrated_database_url, simulator, AGENTCTL_MEMORY__EXTRACTION="model")
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        conversation = Conversation(api)
        told = [("I sing in a choir.", "My bicycle is green."), ("I was born in Riga.", "I collect stamps.")]
        for facts in told:
            tell(api, conversation, *facts)  # one turn, two facts extracted from it
        assert embedding_calls(server) == len(told) * (1 + 2)
        ranked = memories_of(api, conversation.user_token, query="where was I born?")
        assert ranked[0]["memory"] == "I was born in Riga."
    finally:
        assert server.terminate() == 0


async def vectors_of(database_url: str, user_id: str) -> dict[str, tuple[list[float], bool]]:
    """Each of the user's memories: its vector, and whether it is marked as embedded in the search form."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT payload->>'data' AS text, vector::text AS vector, payload ? 'embedded_as' AS marked "
            "FROM memories WHERE payload->>'user_id' = $1",
            user_id,
        )
    finally:
        await connection.close()
    return {row["text"]: (json.loads(row["vector"]), row["marked"]) for row in rows}


async def store_as_an_older_version_did(database_url: str, user_id: str, vectors: dict[str, list[float]]) -> None:
    """Document-form vectors and no mark: how memories were stored before every vector took the search form."""
    connection = await asyncpg.connect(database_url)
    try:
        for text, vector in vectors.items():
            await connection.execute(
                "UPDATE memories SET vector = $1::vector, payload = payload - 'embedded_as' "
                "WHERE payload->>'user_id' = $2 AND payload->>'data' = $3",
                str(vector),
                user_id,
                text,
            )
    finally:
        await connection.close()


def test_memories_stored_in_the_old_document_form_are_embedded_again_in_the_search_form(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """A collection holding both forms ranks badly, so a server that finds memories an older version stored
    re-embeds them in the background: the vectors become what a memory written now gets, and each is marked."""
    from server.llm.local import LocalEmbeddings

    settings = {"AGENTCTL_MEMORY__EXTRACTION": "verbatim"}
    server = serve_with_model(tmp_path, migrated_database_url, simulator, **settings)
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        conversation = Conversation(api)
        facts = ["My car is a red van.", "I teach maths on Tuesdays.", "Our cat is called Pixel."]
        for fact in facts:
            tell(api, conversation, fact)
        user_id = user_id_of(api, conversation.user_token)
    finally:
        assert server.terminate() == 0
    written_now = asyncio.run(vectors_of(migrated_database_url, user_id))
    assert sorted(written_now) == sorted(facts)
    assert all(marked for _, marked in written_now.values())
    as_documents = dict(zip(facts, LocalEmbeddings().embed_documents(facts), strict=True))
    asyncio.run(store_as_an_older_version_did(migrated_database_url, user_id, as_documents))

    server = serve_with_model(tmp_path, migrated_database_url, simulator, **settings)
    try:
        server.wait_until_healthy()
        deadline = time.monotonic() + 30
        while True:
            stored = asyncio.run(vectors_of(migrated_database_url, user_id))
            if all(marked for _, marked in stored.values()):
                break
            assert time.monotonic() < deadline, "the old vectors were never embedded again"
            time.sleep(0.2)
        for text, (vector, _) in stored.items():
            assert vector == pytest.approx(written_now[text][0], abs=1e-5)
            assert vector != pytest.approx(as_documents[text], abs=1e-3)
        assert metric(server, "agentctl_memory_reembedded_total") == len(facts)
    finally:
        assert server.terminate() == 0


def test_a_full_queue_drops_without_blocking_and_shutdown_drains_the_rest(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """One writer, room for one more: of four turns ending together, the writer takes one, one waits, two are
    dropped. Every model call takes 1.5 s, so the writer is still busy when SIGTERM comes; both are kept."""
    server = serve_with_model(
        tmp_path,
        migrated_database_url,
        simulator,
        AGENTCTL_MEMORY__QUEUE_SIZE="1",
        AGENTCTL_MEMORY__WRITERS="1",
        AGENTCTL_MEMORY__DRAIN_SECONDS="60",
    )
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        first = Conversation(api)
        conversations = [first] + [Conversation(api, user_token=first.user_token) for _ in range(3)]
        simulator.configure({"ttft_ms": 1500})
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(lambda pair: pair[1].send(f"My badge number is {pair[0]}."), enumerate(conversations))
            )
        assert [response.status_code for response in responses] == [200] * 4
        assert time.monotonic() - started < 6  # chat never waited for memory
        assert metric(server, 'agentctl_memory_writes_total{outcome="dropped"}') == 2
        assert metric(server, 'agentctl_memory_writes_total{outcome="ok"}') == 0
        user_id = user_id_of(api, first.user_token)
    finally:
        assert server.terminate(timeout=60) == 0
    assert asyncio.run(stored_memory_count(migrated_database_url, user_id)) == 2
    assert "not remembered: the drain time ran out" not in server.output()


def test_forgetting_everything_also_forgets_what_is_still_being_remembered(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """Turns still queued for remembering, or being written, when the user forgets everything (on any worker):
    none of them leaves a memory, nor a copy in Mem0's history or messages."""
    server = serve_with_model(
        tmp_path, migrated_database_url, simulator, "--workers", "2", AGENTCTL_MEMORY__WRITERS="1"
    )
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        first = Conversation(api)
        conversations = [first] + [Conversation(api, user_token=first.user_token) for _ in range(5)]
        facts = [f"My secret word number {n} is zebra{n}." for n in range(len(conversations))]
        with ThreadPoolExecutor(len(conversations)) as pool:
            responses = list(pool.map(lambda pair: pair[0].send(pair[1]), zip(conversations, facts, strict=True)))
        assert [response.status_code for response in responses] == [200] * len(conversations)
        simulator.configure({"ttft_ms": 700})  # each remembering takes a while: the writers are mid-way
        time.sleep(0.3)
        forgotten = api.request("DELETE", "/memories", token=first.user_token)
        assert forgotten.status_code == 200, forgotten.text
        deadline = time.monotonic() + 60
        while metric(server, 'agentctl_memory_writes_total{outcome="ok"}') + metric(
            server, 'agentctl_memory_writes_total{outcome="erased"}'
        ) < len(facts) or metric(server, "agentctl_memory_queue_depth"):
            assert time.monotonic() < deadline, server.get("/metrics").text
            time.sleep(0.3)
        simulator.configure({})
        assert memories_of(api, first.user_token) == []
        user_id = user_id_of(api, first.user_token)
        assert asyncio.run(stored_memory_count(migrated_database_url, user_id)) == 0
    finally:
        assert server.terminate() == 0
    with contextlib.closing(sqlite3.connect(tmp_path / ".agentctl" / "mem0" / "history.db")) as history:
        copies = history.execute(
            "SELECT count(*) FROM history WHERE old_memory LIKE '%zebra%' OR new_memory LIKE '%zebra%'"
        ).fetchone()[0]
        messages = history.execute("SELECT count(*) FROM messages WHERE content LIKE '%zebra%'").fetchone()[0]
    assert (copies, messages) == (0, 0)


@pytest.mark.slow
def test_one_users_long_messages_do_not_hold_up_another_users_turns(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """Five 10,000-character messages from one user cost 191 CPU-seconds of local embedding, and another user's
    turns went from 0.1 to 11 s and lost their memory recall. Embedding is bounded to what the model reads, and a
    recall never leaves a thread waiting past its budget: the other user's turns stay quick and recall."""
    server = serve_with_model(tmp_path, migrated_database_url, simulator, "--workers", "2")
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        simulator.configure({"script": [{"match": RECALL_PROBE, "echo_system": True}]})
        other = Conversation(api)
        tell(api, other, "I play the cello.")
        heavy = Conversation(api)
        long_messages = [
            f"Part {n} of my notes. " + "The quick brown fox jumps over the lazy dog. " * 220 for n in range(5)
        ]
        assert all(9_000 < len(message) <= 10_000 for message in long_messages)

        with ThreadPoolExecutor(5) as pool:
            storm = [
                pool.submit(Conversation(api, user_token=heavy.user_token).send, message) for message in long_messages
            ]
            latencies, recalled = [], 0
            for _ in range(6):
                started = time.monotonic()
                response = other.send(f"{RECALL_PROBE}?")
                latencies.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
                recalled += "I play the cello." in response.json()["messages"][0]["content"]
            assert [future.result().status_code for future in storm] == [200] * 5
        assert max(latencies) < 3.0, latencies
        assert recalled >= 4, latencies
    finally:
        assert server.terminate() == 0
