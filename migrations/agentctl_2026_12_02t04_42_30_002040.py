from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Boolean
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-02T04:42:30:002040"
VERSION = "1.38.0"
DESCRIPTION = "revocations not yet in the shared cache"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="agentctl", description=DESCRIPTION)

    manager.add_column(
        table_class_name="RevokedToken",
        tablename="revoked_tokens",
        column_name="cached",
        db_column_name="cached",
        column_class_name="Boolean",
        column_class=Boolean,
        params={
            "default": True,
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
