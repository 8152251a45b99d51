from piccolo.columns import UUID, Boolean, ForeignKey, OnDelete, Timestamptz, Varchar

from server.database.tables import TimestampedTable
from server.users.tables import User


class RefreshToken(TimestampedTable, tablename="refresh_tokens"):
    """One issued refresh token, keyed by its jti. Single use: ``used_at`` is set when it is exchanged; a second
    use is theft."""

    id = UUID(primary_key=True)
    family_id = UUID(null=False, index=True)
    owner = ForeignKey(User, on_delete=OnDelete.cascade, null=False, index=True)
    expires_at = Timestamptz(null=False, index=True)
    used_at = Timestamptz(null=True, default=None)


class RevokedToken(TimestampedTable, tablename="revoked_tokens"):
    """A revoked identifier: a token's jti, a refresh family, or a chat session (all of its tokens).

    Kept until the longest-lived token it could match has expired, then purged. ``cached`` is false while the
    shared cache (Redis) has not taken it yet: it was down when the revocation was made.
    """

    id = UUID(primary_key=True)
    kind = Varchar(length=16, null=False)
    expires_at = Timestamptz(null=False, index=True)
    cached = Boolean(default=True, null=False)
