"""Rate limits: a moving window per key, and what happens when the store of limits fails."""

from __future__ import annotations

import pytest

from agentctl.config import Settings
from server.errors import ServiceUnavailableError
from server.ratelimit.service import RateLimiter, RouteClass


async def test_moving_window_counts_and_reports() -> None:
    limiter = RateLimiter(Settings(ratelimit={"register_per_ip": "3/minute"}))
    decisions = [await limiter.hit(RouteClass.REGISTER, "ip:192.0.2.1") for _ in range(4)]
    assert [decision.allowed for decision in decisions] == [True, True, True, False]
    assert [decision.remaining for decision in decisions] == [2, 1, 0, 0]
    assert decisions[-1].headers()["Retry-After"] == str(max(1, decisions[-1].reset_after_seconds))
    assert 0 < decisions[-1].reset_after_seconds <= 60
    assert (await limiter.hit(RouteClass.REGISTER, "ip:192.0.2.2")).allowed  # keys are separate


@pytest.mark.parametrize(("policy", "allowed"), [("allow", True), ("deny", False)])
async def test_limit_store_failure_follows_the_configured_policy(policy: str, allowed: bool) -> None:
    settings = Settings(
        redis={"url": "redis://127.0.0.1:1/0", "timeout_seconds": 0.5}, ratelimit={"on_storage_error": policy}
    )
    limiter = RateLimiter(settings)
    if allowed:
        assert (await limiter.hit(RouteClass.CHAT, "user:x")).allowed
    else:
        with pytest.raises(ServiceUnavailableError):
            await limiter.hit(RouteClass.CHAT, "user:x")
