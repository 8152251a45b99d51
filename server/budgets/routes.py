from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.di import NamedDependency

from agentctl.config import BudgetSettings
from server.apikeys.service import ApiKeyScope
from server.auth.dependencies import USER_TOKEN, user_or_api_key
from server.auth.tokens import TokenClaims
from server.budgets.service import usage_of
from server.errors import problem_responses


class UsageController(Controller):
    """What the signed-in user spent, against their budget."""

    path = "/api/v1/auth/me/usage"
    tags = ["budgets"]
    security = USER_TOKEN
    dependencies = {"user": user_or_api_key(ApiKeyScope.CHAT)}

    @get("/", responses=problem_responses(401, 403, 429))
    async def my_usage(
        self, user: NamedDependency[TokenClaims], budget_settings: NamedDependency[BudgetSettings]
    ) -> dict[str, Any]:
        """Tokens, cost and turns today and this month (UTC), each budget (null: unlimited) and when it refills."""
        return (await usage_of(user.subject, budget_settings)).as_dict()
