"""What a worker opens when it starts and closes, in reverse order, when it stops: its areas, in this order."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from litestar import Litestar
from loguru import logger

from agentctl.config import Settings
from server.areas import (
    open_conversations,
    open_evaluation_gauges,
    open_memory,
    open_models,
    open_observability,
    open_protection,
    open_redis,
    open_storage,
    readiness_probe,
)
from server.resources import Resources


def build_lifespan(settings: Settings) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            enter = stack.enter_async_context
            observability = await enter(open_observability(settings))
            metrics = observability.metrics
            storage = await enter(open_storage(settings, metrics))
            redis = await enter(open_redis(settings))
            protection = await enter(
                open_protection(settings, redis=redis, notifications=storage.notifications, metrics=metrics)
            )
            llm = await enter(open_models(settings, metrics))
            memory = await enter(open_memory(settings, llm=llm, storage=storage, metrics=metrics))
            conversations = await enter(
                open_conversations(
                    settings, llm=llm, storage=storage, redis=redis, memory=memory, observability=observability
                )
            )
            await enter(open_evaluation_gauges(settings, metrics))
            await enter(storage.notifications.listening())  # every area has subscribed by now

            app.state.resources = Resources(
                settings=settings,
                database=storage.database,
                redis=redis,
                auth=protection.auth,
                limiter=protection.limiter,
                llm=llm,
                chat=conversations.chat,
                memory=memory,
                metrics=metrics,
                readiness=readiness_probe(
                    settings, storage=storage, conversations=conversations, redis=redis, llm=llm, memory=memory
                ),
                trusted_proxies=protection.trusted_proxies,
            )
            # Everything built so far lives as long as the worker: move it out of the collector's sight. A full
            # collection over it paused every thread, the event loop's included, for 70-100 ms.
            gc.collect()
            gc.freeze()
            logger.info("worker ready")
            yield
            logger.info("worker draining: closing connections")

    return lifespan
