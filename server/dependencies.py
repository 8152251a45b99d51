"""The worker's services, as Litestar dependencies: a route names what it uses, by name and type, and never
reaches into the app's state (litestar-fullstack's service providers are the model)."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide

from agentctl.config import AgentSettings, BudgetSettings
from server.accounts.service import AccountService
from server.auth.service import AuthService
from server.chat.service import ChatService
from server.database.engine import Database
from server.errors import ServiceUnavailableError
from server.health.service import ReadinessProbe
from server.memory.service import MemoryService
from server.observability.metrics import AppMetrics
from server.resources import resources_of


def provide_auth(state: State) -> AuthService:
    return resources_of(state).auth


def provide_chat(state: State) -> ChatService:
    return resources_of(state).chat


def provide_memories(state: State) -> MemoryService:
    memory = resources_of(state).memory
    if memory is None:
        raise ServiceUnavailableError("long-term memory is off on this server (AGENTCTL_MEMORY__ENABLED)")
    return memory


def provide_metrics(state: State) -> AppMetrics:
    return resources_of(state).metrics


def provide_agent_settings(state: State) -> AgentSettings:
    return resources_of(state).settings.agent


def provide_budget_settings(state: State) -> BudgetSettings:
    return resources_of(state).settings.budget


def provide_database(state: State) -> Database:
    return resources_of(state).database


def provide_accounts(state: State) -> AccountService:
    resources = resources_of(state)
    return AccountService(
        settings=resources.settings,
        database=resources.database,
        revocations=resources.auth.revocations,
        forget_conversation=resources.chat.clear,
    )


def provide_readiness_probe(state: State) -> ReadinessProbe:
    return resources_of(state).readiness


SERVICES: dict[str, Provide] = {
    "auth": Provide(provide_auth, sync_to_thread=False),
    "chat": Provide(provide_chat, sync_to_thread=False),
    "memories": Provide(provide_memories, sync_to_thread=False),
    "metrics": Provide(provide_metrics, sync_to_thread=False),
    "agent_settings": Provide(provide_agent_settings, sync_to_thread=False),
    "budget_settings": Provide(provide_budget_settings, sync_to_thread=False),
    "readiness_probe": Provide(provide_readiness_probe, sync_to_thread=False),
    "database": Provide(provide_database, sync_to_thread=False),
    "accounts": Provide(provide_accounts, sync_to_thread=False),
}
