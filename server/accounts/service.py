"""An account as a whole, across every capability that keeps something of it: its export, its deletion, and what an
operator does to it (list, show, disable, enable, budgets). Each part belongs to its capability's service; what is
here is the order they are called in, shared by the API and `agentctl users`.

The turn records are read here from chat's table (``chat_turns``): chat offers no reading of a user's runs as a
whole, and these are reads and one cancellation of queued runs, the same statement chat's run store uses.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from agentctl.config import Settings
from server.accounts.schemas import (
    AccountExport,
    DailyUsage,
    ExportedAccount,
    ExportedScore,
    ExportedSession,
    ExportedTurn,
)
from server.apikeys.schemas import ApiKeyInfo
from server.apikeys.service import delete_api_keys_of, list_api_keys
from server.auth.revocation import RevocationCheck
from server.auth.service import revoke_every_token_of, session_tokens_outlive_sign_ins
from server.budgets.service import Usage, usage_of, usage_rows
from server.chat.records import turn_count_of, turn_records_of
from server.chat.schemas import ChatMessage
from server.chat.service import stop_runs_of_owner
from server.database.engine import Database
from server.evaluation.service import forget_sessions_in_runs, scores_of_turns
from server.memory.schemas import Memory
from server.memory.service import all_memories_of, erase_memories_of, history_file
from server.sessions.service import sessions_of
from server.users.service import budget_overrides_of, delete_user, get_user, set_disabled
from server.users.tables import User

# A running run stops within milliseconds of its cancellation; one whose worker died ends when its lease lapses,
# and a sweeper (every third of a lease) notices.
_RUN_STOP_LEASES = 2

Conversation = Callable[[uuid.UUID], Awaitable[list[ChatMessage]]]
ForgetConversation = Callable[[uuid.UUID], Awaitable[None]]


@dataclass(frozen=True)
class DeletedAccount:
    """What a deletion removed."""

    user_id: uuid.UUID
    email: str
    sessions: int
    turns: int
    memories: int
    api_keys: int


@dataclass(frozen=True)
class AccountSummary:
    """One account as an operator lists it."""

    id: uuid.UUID
    email: str
    username: str | None
    created_at: datetime.datetime
    disabled_at: datetime.datetime | None
    sessions: int
    turns: int
    last_active: datetime.datetime | None  # the latest sign-in, token refresh or turn

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "username": self.username,
            "created_at": self.created_at.isoformat(),
            "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None,
            "sessions": self.sessions,
            "turns": self.turns,
            "last_active": self.last_active.isoformat() if self.last_active else None,
        }


@dataclass(frozen=True)
class AccountDetails:
    """One account as `agentctl users show` tells it."""

    summary: AccountSummary
    budget_overrides: dict[str, int | float | None]
    usage: Usage
    api_keys: list[ApiKeyInfo]


@dataclass(frozen=True)
class AccountService:
    """What deleting or disabling an account reaches beyond its rows: the revocations every worker checks, and the
    conversations' checkpoints (the server's ChatService.clear, or the CLI's own checkpointer)."""

    settings: Settings
    database: Database
    revocations: RevocationCheck
    forget_conversation: ForgetConversation

    async def delete(self, user_id: uuid.UUID) -> DeletedAccount:
        """Delete the account and everything of it. In this order: no sign-in from now (it is disabled first), every
        key and token refused on every worker and replica, its runs stopped (so none writes afterwards), its memories
        and this host's Mem0 history of them, its conversations' checkpoints, the sessions named in evaluation runs,
        and then the row, which takes every other row of the user with it (sessions, turns and their events and
        scores, refresh tokens, usage counters). Nothing new holds the user's id; revocations hold the revoked ids."""
        user = await get_user(user_id)
        await set_disabled(user_id=user_id, disabled=True)
        api_keys = await delete_api_keys_of(owner_id=user_id)
        sessions = [session.id for session in await sessions_of(owner_id=user_id)]
        await revoke_every_token_of(
            self.revocations, self.settings.auth, user_id=user_id, api_key_ids=api_keys, session_ids=sessions
        )
        await self._stop_runs_of(user_id)
        # A request authenticated before the revocations may have started a session meanwhile.
        late = [session.id for session in await sessions_of(owner_id=user_id) if session.id not in sessions]
        if late:
            await revoke_every_token_of(
                self.revocations, self.settings.auth, user_id=user_id, api_key_ids=[], session_ids=late
            )
            sessions += late
        turns = await turn_count_of(user_id)
        memories = await erase_memories_of(self.database, user_id, history_file(self.settings))
        for session_id in sessions:
            await self.forget_conversation(session_id)
        await forget_sessions_in_runs(sessions)
        await delete_user(user_id)
        logger.info("account {} deleted: {} sessions, {} turns, {} memories", user_id, len(sessions), turns, memories)
        return DeletedAccount(user_id, user.email, len(sessions), turns, memories, len(api_keys))

    async def disable(self, user_id: uuid.UUID) -> datetime.datetime:
        """Refuse the account's sign-in, and every token and API key of it on every worker and replica at once
        (tokens by revocation, keys where each request looks them up). When it was disabled."""
        disabled_at = await set_disabled(user_id=user_id, disabled=True)
        assert disabled_at is not None
        keys = [key.id for key in await list_api_keys(owner_id=user_id)]
        # Session tokens carry their sign-in's family (or their key's), revoked here; the sessions themselves only
        # where a session token can outlive its sign-in's records, since a revoked session takes no new token either.
        sessions = (
            [session.id for session in await sessions_of(owner_id=user_id)]
            if session_tokens_outlive_sign_ins(self.settings.auth)
            else []
        )
        await revoke_every_token_of(
            self.revocations, self.settings.auth, user_id=user_id, api_key_ids=keys, session_ids=sessions
        )
        logger.info("account {} disabled", user_id)
        return disabled_at

    async def _stop_runs_of(self, user_id: uuid.UUID) -> None:
        """The user's runs stopped, wherever they run, and recorded."""
        stopped = await stop_runs_of_owner(
            self.database,
            user_id,
            lease_seconds=self.settings.chat.run_lease_seconds,
            wait_leases=_RUN_STOP_LEASES,
        )
        if not stopped:
            logger.warning("account {}: a run did not stop in time; deleting all the same", user_id)


async def enable_account(user_id: uuid.UUID) -> None:
    """Let the account sign in again; tokens from before the disable stay revoked, its API keys work again."""
    await set_disabled(user_id=user_id, disabled=False)
    logger.info("account {} enabled", user_id)


async def export_account(*, user_id: uuid.UUID, database: Database, conversation: Conversation) -> AccountExport:
    """Everything kept about the user, as one document: the account, each session with its conversation, the turn
    records and their evaluation scores, memories, API keys (what a list shows: never a key or a hash) and daily
    usage. No password hash, no token, no secret."""
    user = await get_user(user_id)
    sessions = [
        ExportedSession(
            session_id=session.id,
            name=session.name,
            created_at=session.created_at,
            updated_at=session.updated_at,
            messages=await conversation(session.id),
        )
        for session in await sessions_of(owner_id=user_id)
    ]
    turns = [_exported_turn(row) for row in await turn_records_of(user_id)]
    scores = [ExportedScore(**row) for row in await scores_of_turns([turn.id for turn in turns])]
    return AccountExport(
        exported_at=datetime.datetime.now(tz=datetime.UTC),
        account=ExportedAccount(id=user.id, email=user.email, username=user.username, created_at=user.created_at),
        sessions=sessions,
        turns=turns,
        scores=scores,
        memories=[Memory.of(item) for item in await all_memories_of(database, user_id)],
        api_keys=[ApiKeyInfo.of(row) for row in await list_api_keys(owner_id=user_id)],
        usage=[DailyUsage(**row) for row in await usage_rows(user_id)],
    )


def _exported_turn(row: dict[str, Any]) -> ExportedTurn:
    tool_calls = row["tool_calls"]
    return ExportedTurn(**{**row, "tool_calls": json.loads(tool_calls) if isinstance(tool_calls, str) else tool_calls})


# Per account: its sessions and turns, and when it was last active (its latest sign-in, token refresh or turn). Each
# count is an indexed lookup by owner.
_ACCOUNT_SUMMARY = (
    "SELECT u.id, u.email, u.username, u.created_at, u.disabled_at, "
    "(SELECT count(*) FROM chat_sessions s WHERE s.owner = u.id) AS sessions, "
    "(SELECT count(*) FROM chat_turns t WHERE t.owner = u.id) AS turns, "
    "GREATEST((SELECT max(t.created_at) FROM chat_turns t WHERE t.owner = u.id), "
    "(SELECT max(r.created_at) FROM refresh_tokens r WHERE r.owner = u.id)) AS last_active "
    "FROM users u"
)


async def list_accounts() -> list[AccountSummary]:
    """Every account, oldest first."""
    return [AccountSummary(**row) for row in await User.raw(_ACCOUNT_SUMMARY + " ORDER BY u.created_at, u.id")]


async def account_details(user: User, settings: Settings) -> AccountDetails:
    """The account, its budget overrides, its spending today and this month against its limits, its keys."""
    rows = await User.raw(_ACCOUNT_SUMMARY + " WHERE u.id = {}", user.id)
    return AccountDetails(
        summary=AccountSummary(**rows[0]),
        budget_overrides=budget_overrides_of(user),
        usage=await usage_of(user.id, settings.budget),
        api_keys=[ApiKeyInfo.of(row) for row in await list_api_keys(owner_id=user.id)],
    )
