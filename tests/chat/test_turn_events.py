"""How a running turn hands its numbered events to whoever follows it in this worker."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from server.chat.events import RunLog


def _tokens(log: RunLog, *texts: str) -> None:
    for text in texts:
        log.append("token", {"content": text, "done": False})


async def test_events_waiting_together_come_as_one_batch_with_their_numbers() -> None:
    """A fast model's tokens arrive in bursts: a stream sends each burst in one write."""
    log = RunLog(uuid.uuid4())
    _tokens(log, "a", "b", "c")
    batches = log.follow()
    assert [(event.seq, event.data["content"]) for event in await anext(batches)] == [(1, "a"), (2, "b"), (3, "c")]
    _tokens(log, "d")
    log.append("done", {"content": "", "done": True})
    log.end()
    batch = await anext(batches)
    assert [(event.seq, event.kind) for event in batch] == [(4, "token"), (5, "done")]
    assert batch[-1].final
    with pytest.raises(StopAsyncIteration):
        await anext(batches)


async def test_a_follower_that_rejoins_gets_what_came_after_its_last_event_then_live_ones() -> None:
    log = RunLog(uuid.uuid4())
    _tokens(log, "a", "b", "c")
    rejoined = log.follow(after=2)
    assert [event.data["content"] for event in await anext(rejoined)] == ["c"]
    waiting = asyncio.ensure_future(anext(rejoined))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # an id beyond the last event waits for it
    _tokens(log, "d")
    assert [event.seq for event in await waiting] == [4]


async def test_followers_leaving_do_not_touch_the_run_and_heartbeats_keep_idle_streams_alive() -> None:
    log = RunLog(uuid.uuid4())
    first, second = log.follow(), log.follow(heartbeat_seconds=0.02)
    _tokens(log, "a")
    assert [event.seq for event in await anext(first)] == [1]
    await first.aclose()
    assert [event.seq for event in await anext(second)] == [1]
    assert [event.kind for event in await anext(second)] == ["heartbeat"]
    await second.aclose()
    assert not log.ended


async def test_wait_beyond_returns_on_a_new_event_or_the_end() -> None:
    log = RunLog(uuid.uuid4())
    waiting = asyncio.ensure_future(log.wait_beyond(0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    _tokens(log, "a")
    await asyncio.wait_for(waiting, 1)
    ended = asyncio.ensure_future(log.wait_beyond(1))
    log.end()
    await asyncio.wait_for(ended, 1)
