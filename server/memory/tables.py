from piccolo.columns import ForeignKey, OnDelete, Timestamptz

from server.database.tables import TimestampedTable
from server.users.tables import User


class MemoryErasure(TimestampedTable, tablename="memory_erasures"):
    """When a user last asked to forget everything. Every worker's memory writers read it: a turn queued before
    it is never written, and one written while it happened is deleted again, whichever worker or replica forgot."""

    owner = ForeignKey(User, on_delete=OnDelete.cascade, null=False, unique=True)
    erased_at = Timestamptz(null=False)
