from piccolo.columns import UUID, Text, Varchar

from server.database.tables import TimestampedTable


class User(TimestampedTable, tablename="users"):
    """An account. Emails are stored normalised (lower case), so the unique index is case-insensitive in effect."""

    id = UUID(primary_key=True)
    email = Varchar(length=320, unique=True, null=False)
    password_hash = Text(null=False)
    username = Varchar(length=64, null=True, default=None)
