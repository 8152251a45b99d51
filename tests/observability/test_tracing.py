"""Langfuse tracing: off (and not even imported) without keys; with keys, a turn's trace reaches a Langfuse
endpoint (a fake one on loopback that decodes what the SDK sends) with the user, session and turn ids, under
the trace id the turn record keeps; and an unreachable Langfuse costs the turns nothing."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from loguru import logger
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from agentctl.config import ObservabilitySettings, Settings
from agentctl.simulator.process import RunningSimulator
from server.observability.tracing import TRACE_NAME, TurnTrace, TurnTracer, build_tracer
from tests.chat.conftest import Conversation, serve_with_model
from tests.support import REPO_ROOT, ApiClient

OTLP_TRACES_PATH = "/api/public/otel/v1/traces"
SECRET_KEY = "sk-lf-test-secret"


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class ExportedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]


class FakeLangfuse:
    """A Langfuse stand-in on a free loopback port that records every request and answers like the real one:
    an empty ExportTraceServiceResponse for OTLP, ``{}`` for anything else."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(
                    ReceivedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                if self.path == OTLP_TRACES_PATH:
                    payload, content_type = ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
                else:
                    payload, content_type = b"{}", "application/json"
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            # http.server dispatches on these names.
            def do_POST(self) -> None:
                self._answer()

            def do_GET(self) -> None:
                self._answer()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads self.requests instead

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-langfuse", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def spans(self) -> list[ExportedSpan]:
        """Every span of every OTLP export received so far, decoded."""
        spans = []
        for request in self.requests:
            if request.path != OTLP_TRACES_PATH:
                continue
            body = gzip.decompress(request.body) if request.headers.get("content-encoding") == "gzip" else request.body
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    spans.extend(
                        ExportedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={attribute.key: _plain(attribute.value) for attribute in span.attributes},
                        )
                        for span in scope_spans.spans
                    )
        return spans


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _trace_metadata(span: ExportedSpan, key: str) -> Any:
    # The SDK JSON-encodes metadata values, strings included.
    return json.loads(span.attributes[f"langfuse.trace.metadata.{key}"])


@pytest.fixture
def fake_langfuse() -> Iterator[FakeLangfuse]:
    server = FakeLangfuse()
    yield server
    server.stop()


def _tracer(host: str) -> tuple[TurnTracer, str]:
    """A tracer of its own: the SDK keeps one client per public key for the life of the process."""
    public_key = f"pk-lf-test-{uuid.uuid4().hex}"
    settings = ObservabilitySettings(langfuse_public_key=public_key, langfuse_secret_key=SECRET_KEY, langfuse_host=host)
    tracer = build_tracer(settings, environment="test", release="9.9.9-test")
    assert tracer is not None
    return tracer, public_key


def _model(simulator: RunningSimulator) -> ChatOpenAI:
    return ChatOpenAI(base_url=simulator.base_url, api_key="sim", model="chat-model", max_retries=0, timeout=10)


def test_tracing_is_off_by_default_and_langfuse_never_loaded(tmp_path: Path) -> None:
    assert build_tracer(Settings().observability, environment="test", release="0") is None
    one_key = ObservabilitySettings(langfuse_public_key="pk-lf-only")
    assert build_tracer(one_key, environment="test", release="0") is None

    # A fresh interpreter, the way a worker starts: settings from an environment without Langfuse keys, the
    # app built, the tracer asked for.
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from agentctl.config import load_settings
        from server.app import create_app
        from server.observability.tracing import build_tracer

        settings = load_settings(environ={{}}, env_file_dir=Path({str(tmp_path)!r}))
        create_app(settings)
        tracer = build_tracer(settings.observability, environment=settings.env, release="0")
        loaded = sorted(name for name in sys.modules if name.startswith("langfuse"))
        print(json.dumps({{"tracer": repr(tracer), "langfuse": loaded}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"tracer": "None", "langfuse": []}


async def test_a_turn_is_traced_to_langfuse_with_its_ids(
    fake_langfuse: FakeLangfuse, simulator: RunningSimulator
) -> None:
    tracer, public_key = _tracer(fake_langfuse.url)
    user_id, session_id, turn_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    question = "Which lighthouse guards the fjord?"
    trace = tracer.start_turn(user_id=user_id, session_id=session_id, turn_id=turn_id, input_text=question)
    try:
        answer = await asyncio.wait_for(_model(simulator).ainvoke(question, config={"callbacks": trace.callbacks}), 30)
    finally:
        trace.finish(output=answer.text, status="ok", error_type=None)
    await asyncio.wait_for(tracer.close(), 10)

    # What the turn record keeps: a Langfuse (OpenTelemetry) trace id, which fits chat_turns.trace_id.
    assert trace.trace_id is not None
    assert len(trace.trace_id) == 32
    assert int(trace.trace_id, 16) != 0

    exports = [request for request in fake_langfuse.requests if request.path == OTLP_TRACES_PATH]
    assert exports
    for request in exports:
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/x-protobuf"
        credentials = base64.b64decode(request.headers["authorization"].removeprefix("Basic ")).decode()
        assert credentials == f"{public_key}:{SECRET_KEY}"

    spans = fake_langfuse.spans()
    assert {span.trace_id for span in spans} == {trace.trace_id}
    for span in spans:  # every observation carries the trace's attributes, the way Langfuse aggregates them
        assert span.attributes["user.id"] == str(user_id)
        assert span.attributes["session.id"] == str(session_id)
        assert _trace_metadata(span, "turn_id") == str(turn_id)
        assert span.attributes["langfuse.trace.name"] == TRACE_NAME
        assert span.attributes["langfuse.environment"] == "test"
        assert span.attributes["langfuse.release"] == "9.9.9-test"

    (root,) = [span for span in spans if span.parent_span_id == ""]
    assert root.name == TRACE_NAME
    assert root.attributes["langfuse.observation.input"] == question
    assert root.attributes["langfuse.observation.output"] == answer.text
    assert json.loads(root.attributes["langfuse.observation.metadata.status"]) == "ok"

    (generation,) = [span for span in spans if span.attributes.get("langfuse.observation.type") == "generation"]
    assert generation.parent_span_id == root.span_id
    assert generation.attributes["langfuse.observation.model.name"] == "chat-model"
    assert answer.text in generation.attributes["langfuse.observation.output"]
    assert json.loads(generation.attributes["langfuse.observation.usage_details"])["output"] > 0


async def test_concurrent_graph_turns_keep_their_own_traces(
    fake_langfuse: FakeLangfuse, simulator: RunningSimulator
) -> None:
    """Two turns at once, each a LangGraph run streamed as the chat service streams it: every chain and
    generation lands in its own turn's trace, under that turn's root."""
    model = _model(simulator)

    async def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState).add_node("answer", answer).add_edge(START, "answer").add_edge("answer", END)
    agent = graph.compile()
    tracer, _ = _tracer(fake_langfuse.url)

    async def turn(user_id: uuid.UUID, text: str) -> TurnTrace:
        trace = tracer.start_turn(user_id=user_id, session_id=uuid.uuid4(), turn_id=uuid.uuid4(), input_text=text)
        chunks = []
        try:
            async for chunk, _metadata in agent.astream(
                {"messages": [("user", text)]}, config={"callbacks": trace.callbacks}, stream_mode="messages"
            ):
                chunks.append(chunk.text)
        finally:
            trace.finish(output="".join(chunks), status="ok", error_type=None)
        return trace

    users = [uuid.uuid4(), uuid.uuid4()]
    traces = await asyncio.wait_for(
        asyncio.gather(*(asyncio.create_task(turn(user, f"question {n}")) for n, user in enumerate(users))), 30
    )
    await asyncio.wait_for(tracer.close(), 10)

    spans = fake_langfuse.spans()
    assert traces[0].trace_id != traces[1].trace_id
    assert {span.trace_id for span in spans} == {trace.trace_id for trace in traces}
    for user_id, trace in zip(users, traces, strict=True):
        mine = [span for span in spans if span.trace_id == trace.trace_id]
        assert {span.attributes["user.id"] for span in mine} == {str(user_id)}
        by_id = {span.span_id: span for span in mine}
        (root,) = [span for span in mine if span.parent_span_id == ""]
        assert root.name == TRACE_NAME
        generations = [span for span in mine if span.attributes.get("langfuse.observation.type") == "generation"]
        assert len(generations) == 1
        # generation -> the graph's node -> ... -> the graph -> the turn's root
        ancestor, hops = generations[0], 0
        while ancestor.parent_span_id:
            ancestor, hops = by_id[ancestor.parent_span_id], hops + 1
        assert ancestor is root
        assert hops >= 2


async def test_an_unreachable_langfuse_costs_turns_nothing_and_is_reported_once() -> None:
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING", format="{message}")
    # Whatever the SDK and OpenTelemetry log, at any level, must not carry the turns' texts.
    sdk_lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            sdk_lines.append(record.getMessage())

    capture = Capture(level=logging.DEBUG)
    sdk_loggers = [logging.getLogger(name) for name in ("langfuse", "opentelemetry")]
    for sdk_logger in sdk_loggers:
        sdk_logger.addHandler(capture)
    try:
        started = time.monotonic()
        tracer, _ = _tracer("http://127.0.0.1:1")
        traces = []
        for n in range(5):
            trace = tracer.start_turn(
                user_id=uuid.uuid4(), session_id=uuid.uuid4(), turn_id=uuid.uuid4(), input_text=f"secret question {n}"
            )
            trace.finish(output=f"secret answer {n}", status="error", error_type="model_unavailable")
            traces.append(trace)
        turns_took = time.monotonic() - started
        await asyncio.wait_for(tracer.close(), 10)
        took = time.monotonic() - started
    finally:
        logger.remove(sink)
        for sdk_logger in sdk_loggers:
            sdk_logger.removeHandler(capture)

    assert all(trace.trace_id for trace in traces)  # ids are made locally: the turn record still gets one
    assert turns_took < 0.5
    assert took < 2.5
    outage_warnings = [line for line in warnings if "not taking traces" in line]
    assert len(outage_warnings) == 1, warnings
    assert "Connection refused" in outage_warnings[0]
    for line in [*warnings, *sdk_lines]:
        assert "secret" not in line


def test_a_served_turn_keeps_its_langfuse_trace_id(
    fake_langfuse: FakeLangfuse,
    simulator: RunningSimulator,
    tmp_path: Path,
    migrated_database_url: str,
) -> None:
    """Through `agentctl serve`: the keys in the conventional variables turn tracing on, and the turn record's
    trace id is the trace Langfuse received, carrying that turn's user, session and id."""
    server = serve_with_model(
        tmp_path,
        migrated_database_url,
        simulator,
        LANGFUSE_PUBLIC_KEY=f"pk-lf-served-{uuid.uuid4().hex}",
        LANGFUSE_SECRET_KEY=SECRET_KEY,
        LANGFUSE_HOST=fake_langfuse.url,
        AGENTCTL_MEMORY__ENABLED="false",
    )
    try:
        server.wait_until_healthy()
        conversation = Conversation(ApiClient(server))
        events = conversation.stream("Where does the ferry dock?")
        assert events[-1][0] == "done"
        turn_id = events[-1][1]["message_id"]
        record = asyncio.run(_turn_record(migrated_database_url, turn_id))
    finally:
        server.terminate()  # a graceful stop sends whatever is still queued

    assert record["trace_id"] is not None
    assert len(record["trace_id"]) == 32
    spans = [span for span in fake_langfuse.spans() if span.trace_id == record["trace_id"]]
    (root,) = [span for span in spans if span.parent_span_id == ""]
    assert root.name == TRACE_NAME
    assert root.attributes["user.id"] == str(record["owner"])
    assert root.attributes["session.id"] == conversation.session_id
    assert _trace_metadata(root, "turn_id") == turn_id
    assert any(span.attributes.get("langfuse.observation.type") == "generation" for span in spans)


async def _turn_record(database_url: str, turn_id: str) -> dict[str, Any]:
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow("SELECT owner, trace_id FROM chat_turns WHERE id = $1", uuid.UUID(turn_id))
    finally:
        await connection.close()
    assert row is not None
    return dict(row)
