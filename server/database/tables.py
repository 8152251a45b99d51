"""The base every agentctl table stands on."""

from piccolo.columns import Timestamptz
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class TimestampedTable(Table):
    """Stamps ``created_at`` in UTC when a row is inserted."""

    created_at = Timestamptz(default=TimestamptzNow(), null=False)
