from piccolo.columns import JSONB, UUID, ForeignKey, OnDelete, Timestamptz, Varchar

from server.database.tables import TimestampedTable
from server.users.tables import User


class ApiKey(TimestampedTable, tablename="api_keys"):
    """A user's API key, stored only as the SHA-256 of the key (a 256-bit random secret needs no slow hash: nothing
    can be guessed from it). ``prefix`` is its first characters, for telling keys apart in a list."""

    id = UUID(primary_key=True)
    owner = ForeignKey(User, on_delete=OnDelete.cascade, null=False, index=True)
    name = Varchar(length=100, null=False)
    prefix = Varchar(length=32, null=False)
    secret_hash = Varchar(length=64, null=False, unique=True)
    scopes = JSONB(null=False, default=[])
    expires_at = Timestamptz(null=True, default=None)
    last_used_at = Timestamptz(null=True, default=None)
