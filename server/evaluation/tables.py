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

from server.chat.tables import ChatTurn
from server.database.tables import TimestampedTable


class EvalRun(TimestampedTable, tablename="eval_runs"):
    """One `agentctl eval` invocation: its window and options, and the per-metric summary it ended with."""

    id = UUID(primary_key=True)
    finished_at = Timestamptz(null=True, default=None)
    status = Varchar(length=32, null=False, default="running")  # running, finished, failed
    source = Varchar(length=32, null=False, default="database")
    window_since = Timestamptz(null=True, default=None)
    window_until = Timestamptz(null=True, default=None)
    options = JSONB(default={})
    turns_selected = Integer(default=0)
    # Per metric: n, mean and p10 of the quality, pass rate at its threshold, judge failures, prompt version.
    summary = JSONB(default={})
    gate_passed = Boolean(null=True, default=None)


class EvalScore(TimestampedTable, tablename="eval_scores"):
    """One judgement of one turn by one metric, or a judge failure (score null, error set) — never both."""

    id = UUID(primary_key=True)
    run = ForeignKey(EvalRun, on_delete=OnDelete.cascade, null=False, index=True)
    # Deleting a user deletes their turns, and with them the judge's reasoning about those turns.
    turn = ForeignKey(ChatTurn, on_delete=OnDelete.cascade, null=True, default=None)
    trace_id = Varchar(length=100, null=True, default=None)
    metric = Varchar(length=100, null=False)
    prompt_version = Varchar(length=64, null=False)
    judge_model = Varchar(length=200, null=True, default=None)
    score = DoublePrecision(null=True, default=None)  # the judge's own scale, 0..1
    quality = DoublePrecision(null=True, default=None)  # higher is better, whatever the metric's direction
    reasoning = Text(default="")
    error = Text(null=True, default=None)
    latency_ms = DoublePrecision(default=0.0)
