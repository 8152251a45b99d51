"""How a running turn hands its events to whoever watches it."""

from __future__ import annotations

import asyncio

import pytest

from server.chat.service import Turn, TurnEvent


def _token(text: str) -> TurnEvent:
    return TurnEvent("token", {"content": text, "done": False})


async def test_events_waiting_together_come_as_one_batch() -> None:
    """A fast model's tokens arrive in bursts: a stream sends each burst in one write."""
    queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
    turn = Turn(asyncio.create_task(asyncio.sleep(0)), queue)
    for text in ("a", "b", "c"):
        queue.put_nowait(_token(text))
    batches = turn.event_batches()
    assert [event.data["content"] for event in await anext(batches)] == ["a", "b", "c"]
    queue.put_nowait(_token("d"))
    queue.put_nowait(TurnEvent("done", {"content": "", "done": True}))
    queue.put_nowait(None)
    assert [event.kind for event in await anext(batches)] == ["token", "done"]
    with pytest.raises(StopAsyncIteration):
        await anext(batches)


async def test_a_watcher_that_leaves_cancels_the_turn() -> None:
    queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
    running = asyncio.create_task(asyncio.sleep(60))
    queue.put_nowait(_token("a"))
    events = Turn(running, queue).events()
    assert (await anext(events)).data["content"] == "a"
    await events.aclose()
    assert running.cancelled()
