from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Boolean
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-03T08:12:45:020622"
VERSION = "1.38.0"
DESCRIPTION = "runs that answered the agent question"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="agentctl", description=DESCRIPTION)

    manager.add_column(
        table_class_name="ChatTurn",
        tablename="chat_turns",
        column_name="resumed",
        db_column_name="resumed",
        column_class_name="Boolean",
        column_class=Boolean,
        params={
            "default": False,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
