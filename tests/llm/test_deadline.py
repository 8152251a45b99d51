"""StreamDeadline: one timer over a stream's waits, with asyncio.timeout's rules for the wait it interrupts."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from server.llm.deadline import StreamDeadline


def _in(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_wait_past_the_deadline_is_a_timeout() -> None:
    with StreamDeadline(_in(0.05)) as deadline:
        assert await deadline.wait(asyncio.sleep(0.01, "early")) == "early"
        with pytest.raises(TimeoutError):
            await deadline.wait(asyncio.sleep(5))
    assert deadline.expired


async def test_a_deadline_passed_between_waits_never_touches_the_work_done_between_them() -> None:
    with StreamDeadline(_in(0.02)) as deadline:
        await asyncio.sleep(0.05)  # the consumer's own await, past the deadline: not interrupted
        with pytest.raises(TimeoutError):
            await deadline.wait(asyncio.sleep(0))  # the next wait for the stream says it


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def waiting() -> None:
        with StreamDeadline(_in(10)) as deadline:
            await deadline.wait(asyncio.sleep(5))

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_from_elsewhere_as_the_deadline_passes_is_a_cancellation() -> None:
    deadline = StreamDeadline(_in(10))
    started = asyncio.Event()

    async def waiting() -> None:
        with deadline:
            started.set()
            await deadline.wait(asyncio.sleep(5))

    task = asyncio.create_task(waiting())
    await started.wait()
    await asyncio.sleep(0)
    deadline._expire()  # the timer firing, and another cancellation, in the same tick
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_result_arriving_with_the_deadline_leaves_no_cancellation_behind() -> None:
    loop = asyncio.get_running_loop()
    with StreamDeadline(_in(10)) as deadline:
        arrived: asyncio.Future[str] = loop.create_future()

        async def result_then_deadline() -> None:
            arrived.set_result("late")
            deadline._expire()  # the timer firing in the same tick as the result

        helper = asyncio.create_task(result_then_deadline())
        with pytest.raises(TimeoutError):
            await deadline.wait(arrived)
        await helper
    await asyncio.sleep(0.01)  # no cancellation left pending for the consumer's next await
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_no_timer_outlives_the_stream() -> None:
    with StreamDeadline(_in(0.02)) as deadline:
        await deadline.wait(asyncio.sleep(0))
    await asyncio.sleep(0.05)
    assert not deadline.expired
    with contextlib.suppress(TimeoutError):
        await deadline.wait(asyncio.sleep(0))
