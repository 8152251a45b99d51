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
    # A replay's scores (`agentctl eval replay`): the case and which answer (baseline or candidate) was judged.
    # Null for the scores of recorded turns, which only those are reused from.
    case_key = Varchar(length=200, null=True, default=None)
    side = Varchar(length=16, null=True, default=None)


class EvalReplayAnswer(TimestampedTable, tablename="eval_replay_answers"):
    """One side's answer to one case of a replay, kept so that an interrupted replay resumes where it stopped.
    A case from a recorded turn references it: deleting the turn (the user, retention) deletes what it led to."""

    id = UUID(primary_key=True)
    run = ForeignKey(EvalRun, on_delete=OnDelete.cascade, null=False, index=True)
    turn = ForeignKey(ChatTurn, on_delete=OnDelete.cascade, null=True, default=None)
    case_key = Varchar(length=200, null=False)
    side = Varchar(length=16, null=False)  # baseline, candidate
    answer = Text(default="")
    status = Varchar(length=16, null=False)  # done, asked (the agent asked the user), error
    error = Text(null=True, default=None)
    model = Varchar(length=200, null=True, default=None)
    input_tokens = Integer(default=0)
    output_tokens = Integer(default=0)
    cost_usd = DoublePrecision(null=True, default=None)
    latency_ms = DoublePrecision(null=True, default=None)
    tool_calls = JSONB(default=[])


class EvalPairwise(TimestampedTable, tablename="eval_pairwise"):
    """The pairwise judge's verdict on one case in one order (which answer it saw first), or its failure."""

    id = UUID(primary_key=True)
    run = ForeignKey(EvalRun, on_delete=OnDelete.cascade, null=False, index=True)
    turn = ForeignKey(ChatTurn, on_delete=OnDelete.cascade, null=True, default=None)
    case_key = Varchar(length=200, null=False)
    first = Varchar(length=16, null=False)  # the side shown as answer A: baseline or candidate
    winner = Varchar(length=16, null=True, default=None)  # baseline, candidate, tie; null: a judge failure
    prompt_version = Varchar(length=64, null=False)
    judge_model = Varchar(length=200, null=True, default=None)
    reasoning = Text(default="")
    error = Text(null=True, default=None)
    latency_ms = DoublePrecision(default=0.0)
