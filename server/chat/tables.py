from piccolo.columns import JSONB, UUID, DoublePrecision, ForeignKey, Integer, OnDelete, Text, Varchar

from server.database.tables import TimestampedTable
from server.sessions.tables import ChatSession
from server.users.tables import User


class ChatTurn(TimestampedTable, tablename="chat_turns"):
    """One finished or failed turn: the source for evaluation and analytics, queried by time range."""

    id = UUID(primary_key=True)
    session = ForeignKey(ChatSession, on_delete=OnDelete.cascade, null=False)
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
    status = Varchar(length=32, null=False)
    error_type = Varchar(length=100, null=True, default=None)
    trace_id = Varchar(length=100, null=True, default=None)
