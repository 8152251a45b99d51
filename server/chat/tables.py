from piccolo.columns import (
    JSONB,
    UUID,
    Boolean,
    DoublePrecision,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)

from server.database.tables import TimestampedTable
from server.sessions.tables import ChatSession
from server.users.tables import User


class ChatTurn(TimestampedTable, tablename="chat_turns"):
    """One run: created when its message is accepted (queued or running), finished as the turn's record, the source
    for evaluation and analytics (queried by time range). At most one run of a session is running (a partial unique
    index, migrations/), which is what serialises a session's turns across workers and replicas."""

    id = UUID(primary_key=True)
    # None for a turn run without a stored conversation (an OpenAI-compatible request that named no session)
    session = ForeignKey(ChatSession, on_delete=OnDelete.cascade, null=True)
    owner = ForeignKey(User, on_delete=OnDelete.cascade, null=False, index=True)
    input = Text(null=False)
    output = Text(null=False, default="")
    tool_calls = JSONB(default=[])
    model = Varchar(length=200, null=True, default=None)
    fallbacks = JSONB(default=[])
    input_tokens = Integer(default=0)
    output_tokens = Integer(default=0)
    cached_tokens = Integer(default=0)
    cost_usd = DoublePrecision(default=0.0)
    time_to_first_token_ms = DoublePrecision(null=True, default=None)
    latency_ms = DoublePrecision(default=0.0)
    # queued, running, awaiting_human, awaiting_approval, done, error, cancelled
    status = Varchar(length=32, null=False)
    error_type = Varchar(length=100, null=True, default=None)
    trace_id = Varchar(length=100, null=True, default=None)
    strategy = Varchar(length=16, null=False, default="reject")
    on_disconnect = Varchar(length=16, null=False, default="continue")
    worker = Varchar(length=100, null=True, default=None)  # the worker running it
    lease_until = Timestamptz(null=True, default=None)  # renewed by that worker while it runs
    started_at = Timestamptz(null=True, default=None)
    finished_at = Timestamptz(null=True, default=None)
    last_event = Integer(null=False, default=0)  # the sequence number of its last event, once finished
    surface = Varchar(length=24, null=False, default="chat")  # chat, chat.completions or responses: who asked
    # The conversation's checkpoint once the run ended (responses: what previous_response_id continues from)
    checkpoint_id = Varchar(length=64, null=True, default=None)
    previous_run = UUID(null=True, default=None)  # the response it continued (previous_response_id)
    # The checkpoint it started from: what an edit or a regeneration of its message forks from (its siblings share it)
    start_checkpoint = Varchar(length=64, null=True, default=None)
    resumed = Boolean(null=False, default=False)  # it answered the agent's question (ask_human): no message of its own


class ChatRunEvents(TimestampedTable, tablename="chat_run_events"):
    """A burst of a run's events, for followers on other workers and replicas when no Redis is configured (with
    Redis, a stream per run holds them); deleted once the run has been finished for the events' TTL."""

    run = ForeignKey(ChatTurn, on_delete=OnDelete.cascade, null=False)
    last_seq = Integer(null=False)  # the sequence number of the burst's last event
    events = JSONB(null=False)  # [[seq, kind, data], ...]
