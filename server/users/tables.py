from piccolo.columns import UUID, BigInt, DoublePrecision, Text, Timestamptz, Varchar

from server.database.tables import TimestampedTable


class User(TimestampedTable, tablename="users"):
    """An account. Emails are stored normalised (lower case), so the unique index is case-insensitive in effect."""

    id = UUID(primary_key=True)
    email = Varchar(length=320, unique=True, null=False)
    password_hash = Text(null=False)
    username = Varchar(length=64, null=True, default=None)
    # Set by `agentctl users disable`: sign-in, tokens and API keys stop working.
    disabled_at = Timestamptz(null=True, default=None)
    # Per-user budget overrides (None: the settings' default, AGENTCTL_BUDGET__*); see server/budgets.
    budget_daily_tokens = BigInt(null=True, default=None)
    budget_monthly_tokens = BigInt(null=True, default=None)
    budget_daily_cost_usd = DoublePrecision(null=True, default=None)
    budget_monthly_cost_usd = DoublePrecision(null=True, default=None)
