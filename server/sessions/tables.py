import datetime

from piccolo.columns import UUID, ForeignKey, OnDelete, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow

from server.database.tables import TimestampedTable
from server.users.tables import User


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


class ChatSession(TimestampedTable, tablename="chat_sessions"):
    """A conversation owned by one user; deleting the user deletes their sessions."""

    id = UUID(primary_key=True)
    # Indexed together with updated_at by the migration (listing newest first).
    owner = ForeignKey(User, on_delete=OnDelete.cascade, null=False)
    name = Varchar(length=200, default="", null=False)
    updated_at = Timestamptz(default=TimestamptzNow(), auto_update=_utc_now, null=False)
