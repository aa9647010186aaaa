"""Key order for streams on several channels (hub/delivery/order.py), on its own: no
Redis, the shards' safe times moved by hand as live messages and probes would."""

from __future__ import annotations

import asyncio

import pytest

from hub.delivery.order import Order

pytestmark = pytest.mark.anyio


class Shards:
    """Records what an Order releases and which shards it asks to probe."""

    def __init__(self) -> None:
        self.released: list[str] = []
        self.probed: list[str] = []
        self.order = Order(self.released.append, self.probed.append)


async def test_an_event_waits_until_every_needed_shard_has_passed_its_millisecond() -> None:
    shards = Shards()
    order = shards.order
    order.need("a", +1)
    order.need("b", +1)
    order.add((10, 0, 5), "a at 10")
    order.add((9, 0, 7), "b at 9")
    order.advance("a", 11)
    assert shards.released == []  # b may still send something before 10
    assert "b" in shards.probed
    order.advance("b", 11)
    assert shards.released == ["b at 9", "a at 10"]
    order.close()


async def test_an_event_in_the_millisecond_a_shard_has_reached_is_held() -> None:
    # Another channel may still stamp that same millisecond with a smaller key.
    shards = Shards()
    order = shards.order
    order.need("a", +1)
    order.advance("a", 10)
    order.add((10, 0, 9), "late in 10")
    assert shards.released == []
    order.advance("a", 11)
    assert shards.released == ["late in 10"]
    order.close()


async def test_events_of_one_millisecond_go_out_in_key_order() -> None:
    shards = Shards()
    order = shards.order
    order.need("a", +1)
    for key, name in [((7, 1, 3), "third"), ((7, 0, 9), "second"), ((7, 0, 2), "first")]:
        order.add(key, name)
    order.advance("a", 8)
    assert shards.released == ["first", "second", "third"]
    order.close()


async def test_passed_returns_only_once_held_events_up_to_then_are_released() -> None:
    shards = Shards()
    order = shards.order
    order.need("a", +1)
    order.need("b", +1)
    order.add((5, 0, 1), "a at 5")
    waiting = asyncio.ensure_future(order.passed(5, ["a"]))
    order.advance("a", 6)
    await asyncio.sleep(0)
    # Shard a has passed 5, but the event is held for b: a replay that went on now
    # would write later history before it.
    assert not waiting.done()
    order.advance("b", 6)
    await asyncio.wait_for(waiting, 1)
    assert shards.released == ["a at 5"]
    order.close()


async def test_with_no_stream_on_several_channels_nothing_is_held() -> None:
    shards = Shards()
    shards.order.add((5, 0, 1), "at once")
    assert shards.released == ["at once"]
    await asyncio.wait_for(shards.order.passed(5, []), 1)
    shards.order.close()


async def test_a_shard_whose_connection_went_starts_over_and_holds_events_again() -> None:
    shards = Shards()
    order = shards.order
    order.need("a", +1)
    order.advance("a", 20)
    order.forget("a")
    order.add((15, 0, 1), "after the reconnect")
    assert shards.released == []
    assert shards.probed[-1] == "a"
    order.advance("a", 16)
    assert shards.released == ["after the reconnect"]
    order.close()


async def test_a_shard_no_stream_needs_any_more_holds_nothing_back() -> None:
    shards = Shards()
    order = shards.order
    order.need("a", +1)
    order.need("b", +1)
    order.advance("a", 30)
    order.add((25, 0, 1), "held for b")
    order.need("b", -1)
    assert shards.released == ["held for b"]
    order.close()


async def test_close_cancels_whoever_waits() -> None:
    shards = Shards()
    order = shards.order
    order.need("a", +1)
    waiting = asyncio.ensure_future(order.passed(5, ["a"]))
    await asyncio.sleep(0)
    order.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
