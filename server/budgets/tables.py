from piccolo.columns import BigInt, Date, DoublePrecision, ForeignKey, Integer, OnDelete

from server.database.tables import TimestampedTable
from server.users.tables import User


class UserUsage(TimestampedTable, tablename="user_usage"):
    """What a user spent on one UTC day: counted when each turn is recorded, read before each turn (a budget check
    reads a month's rows, at most 31). Kept apart from the turn records, which retention may delete."""

    owner = ForeignKey(User, on_delete=OnDelete.cascade, null=False)  # unique with day (the migration)
    day = Date(null=False)
    turns = Integer(null=False, default=0)
    input_tokens = BigInt(null=False, default=0)
    output_tokens = BigInt(null=False, default=0)
    cost_usd = DoublePrecision(null=False, default=0.0)
