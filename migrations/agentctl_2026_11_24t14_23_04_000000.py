"""Indexes of the evaluation tables: a rerun looks up the scores of a window's turns by turn (or trace) and
metric; the server's gauges read the latest finished run.

Piccolo runs a migration's raw steps before its table steps, so these live in a migration of their own.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-24T14:23:04:000000"
VERSION = "1.38.0"
DESCRIPTION = "evaluation indexes"


async def add_evaluation_indexes():
    engine = engine_finder()
    await engine.run_ddl("CREATE INDEX eval_scores_turn_metric ON eval_scores (turn, metric)")
    await engine.run_ddl("CREATE INDEX eval_scores_trace_metric ON eval_scores (trace_id, metric) WHERE turn IS NULL")
    await engine.run_ddl("CREATE INDEX eval_runs_finished_at ON eval_runs (finished_at) WHERE status = 'finished'")


async def drop_evaluation_indexes():
    engine = engine_finder()
    await engine.run_ddl("DROP INDEX IF EXISTS eval_scores_turn_metric")
    await engine.run_ddl("DROP INDEX IF EXISTS eval_scores_trace_metric")
    await engine.run_ddl("DROP INDEX IF EXISTS eval_runs_finished_at")


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="agentctl", description=DESCRIPTION)
    manager.add_raw(add_evaluation_indexes)
    manager.add_raw_backwards(drop_evaluation_indexes)
    return manager
