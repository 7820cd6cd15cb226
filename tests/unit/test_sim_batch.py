import asyncio

import pytest

from router.sim.batch import BatchSlots


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_get_slots_in_arrival_order():
    slots = BatchSlots(1)
    await slots.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await slots.acquire()
        order.append(i)

    tasks = [asyncio.create_task(take(i)) for i in range(5)]
    await settle()
    for _ in range(5):
        slots.release()
        await settle()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_a_newcomer_cannot_overtake_a_waiter_handed_a_slot():
    slots = BatchSlots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    await settle()
    slots.release()
    late = asyncio.create_task(slots.acquire())
    await settle()
    assert first.done() and not late.done()
    assert (slots.running, slots.waiting) == (1, 1)
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    assert slots.waiting == 0


async def test_never_more_holders_than_the_limit():
    slots = BatchSlots(2)
    peak = 0

    async def hold() -> None:
        nonlocal peak
        await slots.acquire()
        peak = max(peak, slots.running)
        await asyncio.sleep(0.001)
        slots.release()

    tasks = [asyncio.create_task(hold()) for _ in range(8)]
    await settle()
    assert (slots.running, slots.waiting) == (2, 6)
    await asyncio.gather(*tasks)
    assert peak == 2
    assert (slots.running, slots.waiting) == (0, 0)


async def test_zero_limit_never_waits():
    slots = BatchSlots(0)
    for _ in range(100):
        await asyncio.wait_for(slots.acquire(), timeout=1)
    assert (slots.running, slots.waiting) == (100, 0)


async def test_cancelled_waiter_leaves_the_queue_and_the_next_one_gets_the_slot():
    slots = BatchSlots(1)
    await slots.acquire()
    gone = asyncio.create_task(slots.acquire())
    kept = asyncio.create_task(slots.acquire())
    await settle()
    assert slots.waiting == 2
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert slots.waiting == 1
    slots.release()
    await asyncio.wait_for(kept, timeout=1)
    assert (slots.running, slots.waiting) == (1, 0)


async def test_cancelled_waiters_do_not_pile_up_while_the_slot_is_held():
    slots = BatchSlots(1)
    await slots.acquire()
    for _ in range(3):
        gone = asyncio.create_task(slots.acquire())
        await settle()
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
    assert len(slots._waiters) == 0


async def test_waiter_cancelled_before_release_reaches_it_is_skipped():
    slots = BatchSlots(1)
    await slots.acquire()
    gone = asyncio.create_task(slots.acquire())
    kept = asyncio.create_task(slots.acquire())
    await settle()
    gone.cancel()
    slots.release()
    await asyncio.gather(gone, return_exceptions=True)
    await asyncio.wait_for(kept, timeout=1)
    assert (slots.running, slots.waiting) == (1, 0)


async def test_waiter_cancelled_just_after_being_handed_a_slot_passes_it_on():
    slots = BatchSlots(1)
    await slots.acquire()
    unlucky = asyncio.create_task(slots.acquire())
    kept = asyncio.create_task(slots.acquire())
    await settle()
    slots.release()
    unlucky.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    await asyncio.wait_for(kept, timeout=1)
    assert (slots.running, slots.waiting) == (1, 0)


def test_negative_limit_is_refused():
    with pytest.raises(ValueError):
        BatchSlots(-1)
