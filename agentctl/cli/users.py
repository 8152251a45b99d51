"""`agentctl users`: accounts, on the database directly (no HTTP): list, show, disable, enable, delete, set-budget.

What takes effect at once on running servers (a disable, a deletion) goes through the same revocation record and cache
they check, and the same cancellation channel their runs listen to.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from agentctl.cli.context import settings_of
from agentctl.cli.output import operator_database, stdout_console, usage_error
from agentctl.cli.usage import PlainUsageErrors
from agentctl.config import Settings

if TYPE_CHECKING:
    import uuid

    from server.accounts.service import AccountDetails, AccountService

app = typer.Typer(help="Accounts, on the database directly: list, show, disable, enable, delete, budgets.")

T = TypeVar("T")
Account = Annotated[str, typer.Argument(help="The account's email or id.", show_default=False)]
_BUDGET_OPTIONS = {  # option -> (setting name, whole tokens or an amount in USD)
    "--daily-tokens": ("daily_tokens", int),
    "--monthly-tokens": ("monthly_tokens", int),
    "--daily-cost": ("daily_cost_usd", float),
    "--monthly-cost": ("monthly_cost_usd", float),
}


@asynccontextmanager
async def _account_service(settings: Settings) -> AsyncIterator[AccountService]:
    """What a disable or deletion reaches besides the tables: the revocation cache the servers check (Redis, when
    configured) and the conversations' checkpoints."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    from server.accounts.service import AccountService
    from server.areas import open_redis
    from server.auth.revocation import DatabaseRevocationCheck, RedisRevocationCheck, RevocationCheck

    async with AsyncExitStack() as stack:
        database = await stack.enter_async_context(operator_database(settings))
        redis = await stack.enter_async_context(open_redis(settings))
        revocations: RevocationCheck = (
            RedisRevocationCheck(redis, settings.redis.key_prefix) if redis is not None else DatabaseRevocationCheck()
        )
        checkpoints = await stack.enter_async_context(AsyncPostgresSaver.from_conn_string(database.url))

        async def forget_conversation(session_id: uuid.UUID) -> None:
            await checkpoints.adelete_thread(str(session_id))

        yield AccountService(
            settings=settings, database=database, revocations=revocations, forget_conversation=forget_conversation
        )


def _run(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    async def with_database() -> T:
        async with operator_database(settings):
            return await work()

    return asyncio.run(with_database())


def _configured(ctx: typer.Context) -> Settings:
    from server.observability.logging import configure_logging

    settings = settings_of(ctx)
    configure_logging(settings)
    return settings


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


@app.command("list", cls=PlainUsageErrors)
def list_users(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False
) -> None:
    """Every account: email, id, created, disabled, sessions, turns, last active (sign-in, refresh or turn)."""
    from server.accounts.service import list_accounts

    accounts = _run(_configured(ctx), list_accounts)
    if as_json:
        typer.echo(json.dumps([account.as_dict() for account in accounts], indent=2))
        return
    table = Table(title=f"{len(accounts)} account{'' if len(accounts) == 1 else 's'}", title_justify="left")
    for column in ("email", "id", "created", "disabled", "sessions", "turns", "last active"):
        table.add_column(column, justify="right" if column in ("sessions", "turns") else "left")
    for account in accounts:
        table.add_row(
            account.email,
            str(account.id),
            _when(account.created_at),
            _when(account.disabled_at) if account.disabled_at else "no",
            str(account.sessions),
            str(account.turns),
            _when(account.last_active),
        )
    stdout_console().print(table)


@app.command("show", cls=PlainUsageErrors)
def show_user(
    ctx: typer.Context,
    account: Account,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
) -> None:
    """One account: its budget overrides, its usage today and this month against its limits, its API keys."""
    from server.accounts.service import account_details
    from server.users.service import find_user

    settings = _configured(ctx)

    async def details() -> AccountDetails:
        return await account_details(await find_user(account), settings)

    found = _run(settings, details)
    if as_json:
        typer.echo(json.dumps(_details_dict(found), indent=2))
        return
    summary = found.summary
    lines = [
        f"{summary.email}  {summary.id}",
        f"  name: {summary.username or '-'}",
        f"  created: {_when(summary.created_at)}   last active: {_when(summary.last_active)}",
        f"  disabled: {_when(summary.disabled_at) if summary.disabled_at else 'no'}",
        f"  sessions: {summary.sessions}   turns: {summary.turns}",
    ]
    usage, limits = found.usage, found.usage.limits
    for period, spent, tokens, cost in (
        ("today", usage.day, limits.daily_tokens, limits.daily_cost_usd),
        ("this month", usage.month, limits.monthly_tokens, limits.monthly_cost_usd),
    ):
        lines.append(
            f"  {period}: {spent.turns} turns, {spent.tokens:,} tokens of {_limit(tokens)}, "
            f"{spent.cost_usd:.4f} USD of {_limit(cost)}"
        )
    overrides = {name: value for name, value in found.budget_overrides.items() if value is not None}
    lines.append(
        "  budget overrides: "
        + (", ".join(f"{name}={value:g}" for name, value in overrides.items()) if overrides else "none (defaults)")
    )
    lines.append(f"  API keys: {len(found.api_keys)}")
    for key in found.api_keys:
        lines.append(
            f"    {key.prefix}...  {key.name!r}  scopes {','.join(key.scopes)}  created {_when(key.created_at)}  "
            f"last used {_when(key.last_used_at)}  expires {_when(key.expires_at)}"
        )
    typer.echo("\n".join(lines))


def _limit(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:,g}"


def _details_dict(found: AccountDetails) -> dict[str, Any]:
    return {
        **found.summary.as_dict(),
        "budget_overrides": found.budget_overrides,
        "usage": found.usage.as_dict(),
        "api_keys": [
            {
                "id": str(key.id),
                "name": key.name,
                "prefix": key.prefix,
                "scopes": key.scopes,
                "created_at": key.created_at.isoformat(),
                "expires_at": key.expires_at.isoformat() if key.expires_at else None,
                "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
            }
            for key in found.api_keys
        ],
    }


@app.command("disable", cls=PlainUsageErrors)
def disable_user(ctx: typer.Context, account: Account) -> None:
    """Refuse the account's sign-in; its tokens and API keys stop working at once on every server."""
    from server.users.service import find_user

    settings = _configured(ctx)

    async def disable() -> str:
        async with _account_service(settings) as accounts:
            user = await find_user(account)
            since = await accounts.disable(user.id)
            return f"disabled {user.email} ({user.id}) since {since:%Y-%m-%d %H:%M:%S} UTC"

    typer.echo(asyncio.run(disable()))


@app.command("enable", cls=PlainUsageErrors)
def enable_user(ctx: typer.Context, account: Account) -> None:
    """Let a disabled account sign in again (its tokens from before stay revoked; its API keys work again)."""
    from server.accounts.service import enable_account
    from server.users.service import find_user

    async def enable() -> str:
        user = await find_user(account)
        await enable_account(user.id)
        return f"enabled {user.email} ({user.id})"

    typer.echo(_run(_configured(ctx), enable))


@app.command("delete", cls=PlainUsageErrors)
def delete_user(
    ctx: typer.Context,
    account: Account,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the account and everything of it (as DELETE /api/v1/auth/me does); its tokens and keys stop at once."""
    from server.users.service import find_user

    settings = _configured(ctx)

    async def delete() -> str | None:
        async with _account_service(settings) as accounts:
            user = await find_user(account)
            question = f"Delete {user.email} ({user.id}) and everything of it? This cannot be undone."
            if not yes and not await asyncio.to_thread(typer.confirm, question):
                return None
            deleted = await accounts.delete(user.id)
            return (
                f"deleted {deleted.email} ({deleted.user_id}): {deleted.sessions} sessions, {deleted.turns} turns, "
                f"{deleted.memories} memories, {deleted.api_keys} API keys"
            )

    outcome = asyncio.run(delete())
    if outcome is None:
        typer.echo("agentctl: nothing deleted", err=True)
        raise typer.Exit(1)
    typer.echo(outcome)


def _budget_value(option: str, text: str, kind: type) -> int | float | None:
    """An override from the command line: a number of ``kind`` at least 0, or none (the default applies again)."""
    if text.strip().lower() == "none":
        return None
    what = "a whole number of tokens" if kind is int else "an amount in USD"
    try:
        value = kind(text.strip())
    except ValueError:
        usage_error(f"{option}: expected {what} (0 or more) or none, not {text!r}")
    if not math.isfinite(value) or value < 0:
        usage_error(f"{option}: expected {what} (0 or more) or none, not {text!r}")
    return value


@app.command("set-budget", cls=PlainUsageErrors)
def set_budget(
    ctx: typer.Context,
    account: Account,
    daily_tokens: Annotated[str | None, typer.Option("--daily-tokens", help="Tokens a day, or none.")] = None,
    monthly_tokens: Annotated[str | None, typer.Option("--monthly-tokens", help="Tokens a month, or none.")] = None,
    daily_cost: Annotated[str | None, typer.Option("--daily-cost", help="USD a day, or none.")] = None,
    monthly_cost: Annotated[str | None, typer.Option("--monthly-cost", help="USD a month, or none.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every override: the defaults apply.")] = False,
) -> None:
    """Set the account's own budget limits (none: the AGENTCTL_BUDGET__* default applies again)."""
    from server.users.service import BUDGET_OVERRIDES, budget_overrides_of, find_user, set_budget_overrides

    given = dict(zip(_BUDGET_OPTIONS, (daily_tokens, monthly_tokens, daily_cost, monthly_cost), strict=True))
    changes: dict[str, int | float | None] = {
        _BUDGET_OPTIONS[option][0]: _budget_value(option, text, _BUDGET_OPTIONS[option][1])
        for option, text in given.items()
        if text is not None
    }
    if clear and changes:
        usage_error("--clear removes every override: give it alone")
    if clear:
        changes = dict.fromkeys(BUDGET_OVERRIDES)
    if not changes:
        usage_error(f"nothing to set: give {', '.join(_BUDGET_OPTIONS)} or --clear")

    async def write() -> str:
        user = await find_user(account)
        overrides = budget_overrides_of(await set_budget_overrides(user_id=user.id, changes=changes))
        shown = ", ".join(f"{name}={'default' if value is None else f'{value:g}'}" for name, value in overrides.items())
        return f"{user.email}: {shown}"

    typer.echo(_run(_configured(ctx), write))
