"""The chaos run's exactly-once checker (bench/chaos/checker.py), on synthetic sequences:
what it must call lost, duplicated, reordered or an unexplained reset, and what it must
let pass."""

from __future__ import annotations

from bench.chaos.checker import (
    ClientLog,
    Got,
    Ledger,
    Opened,
    Reset,
    any_reset_policy,
    check,
    hub_policy,
    parse_hub_id,
)


def _ledger(channel: str = "a", count: int = 6) -> Ledger:
    ledger = Ledger()
    for n in range(1, count + 1):
        ledger.acked(channel, f"{channel}:p:{n}", (100, n))
    return ledger


def _got(n: int, channel: str = "a") -> Got:
    return Got(channel, f"{channel}:p:{n}", (100, n))


def _strict(ledger: Ledger, history_size: int = 1000) -> object:
    return hub_policy(ledger, history_size, lambda: False)


def test_everything_once_in_order_passes() -> None:
    ledger = _ledger()
    client = ClientLog("c", ("a",), (0, 0), [_got(n) for n in range(1, 7)])
    report = check(ledger, [client], _strict(ledger))  # type: ignore[arg-type]
    assert report.ok, report.violations
    assert (report.acknowledged, report.delivered, report.lost) == (6, 6, 0)


def test_only_events_after_the_join_are_owed() -> None:
    ledger = _ledger()
    client = ClientLog("c", ("a",), (100, 3), [_got(4), _got(5), _got(6)])
    assert check(ledger, [client], _strict(ledger)).ok  # type: ignore[arg-type]


def test_a_hole_without_a_reset_is_a_loss() -> None:
    ledger = _ledger()
    client = ClientLog("c", ("a",), (0, 0), [_got(1), _got(2), _got(5), _got(6)])
    report = check(ledger, [client], _strict(ledger))  # type: ignore[arg-type]
    assert report.lost == 2
    assert [v.kind for v in report.violations] == ["lost", "lost"]
    assert "a:p:3" in report.violations[0].detail


def test_an_event_missing_at_the_end_is_a_loss() -> None:
    ledger = _ledger()
    client = ClientLog("c", ("a",), (0, 0), [_got(n) for n in range(1, 6)])
    assert check(ledger, [client], _strict(ledger)).lost == 1  # type: ignore[arg-type]


def test_a_duplicate_across_a_reconnect_is_a_violation() -> None:
    ledger = _ledger(count=3)
    records = [_got(1), _got(2), Opened((100, 1)), _got(2), _got(3)]
    report = check(ledger, [ClientLog("c", ("a",), (0, 0), records)], _strict(ledger))  # type: ignore[arg-type]
    assert (report.duplicated, report.delivered, report.lost) == (1, 3, 0)
    assert [v.kind for v in report.violations] == ["duplicated"]


def test_a_reorder_is_a_violation() -> None:
    ledger = _ledger(count=3)
    client = ClientLog("c", ("a",), (0, 0), [_got(1), _got(3), _got(2)])
    report = check(ledger, [client], _strict(ledger))  # type: ignore[arg-type]
    assert report.reordered == 1
    assert [v.kind for v in report.violations] == ["reordered"]


def test_an_event_under_another_id_than_acknowledged_is_a_violation() -> None:
    ledger = _ledger(count=1)
    client = ClientLog("c", ("a",), (0, 0), [Got("a", "a:p:1", (100, 9))])
    report = check(ledger, [client], _strict(ledger))  # type: ignore[arg-type]
    assert [v.kind for v in report.violations] == ["wrong_id"]


def test_an_event_nobody_published_is_a_violation() -> None:
    ledger = _ledger(count=1)
    client = ClientLog("c", ("a",), (0, 0), [_got(1), Got("a", "a:q:1", (100, 2))])
    report = check(ledger, [client], _strict(ledger))  # type: ignore[arg-type]
    assert [v.kind for v in report.violations] == ["unknown_event"]


def test_an_expired_reset_covers_its_gap_when_history_really_was_exceeded() -> None:
    ledger = _ledger(count=8)
    # Resumed from 2 with history size 3: 6 events after it, so history could not cover.
    records = [_got(1), _got(2), Opened((100, 2)), Reset("expired", ("a",), (100, 6))]
    records += [_got(7), _got(8)]
    client = ClientLog("c", ("a",), (0, 0), records)
    report = check(ledger, [client], _strict(ledger, history_size=3))  # type: ignore[arg-type]
    assert report.ok, report.violations
    assert (report.skipped_by_reset, report.resets["expired"], report.lost) == (4, 1, 0)


def test_an_expired_reset_while_history_still_covered_the_cursor_is_unexplained() -> None:
    ledger = _ledger(count=4)
    records = [_got(1), _got(2), Opened((100, 2)), Reset("expired", ("a",), (100, 4))]
    client = ClientLog("c", ("a",), (0, 0), records)
    # History keeps the last 2 events: exactly the 2 after the cursor, so it reached back.
    report = check(ledger, [client], _strict(ledger, history_size=2))  # type: ignore[arg-type]
    assert [v.kind for v in report.violations] == ["unexplained_reset"]
    assert report.lost == 0  # the gap itself was announced


def test_unacknowledged_events_count_towards_what_history_may_have_dropped() -> None:
    ledger = _ledger(count=4)
    ledger.uncertain("a", "a:p:x1")
    ledger.uncertain("a", "a:p:x2")
    records = [_got(1), _got(2), Opened((100, 2)), Reset("expired", ("a",), (100, 4))]
    client = ClientLog("c", ("a",), (0, 0), records)
    # 2 acknowledged + 2 maybe published after the cursor: more than 3 may have come.
    assert check(ledger, [client], _strict(ledger, history_size=3)).ok  # type: ignore[arg-type]


def test_history_lost_is_unexplained_when_redis_lost_nothing() -> None:
    ledger = _ledger(count=3)
    records = [_got(1), Opened((100, 1)), Reset("history_lost", ("a",), (100, 3))]
    client = ClientLog("c", ("a",), (0, 0), records)
    assert not check(ledger, [client], _strict(ledger)).ok  # type: ignore[arg-type]
    lost_data = hub_policy(ledger, 1000, lambda: True)
    assert check(ledger, [client], lost_data).ok


def test_a_reset_covers_only_the_channels_it_names() -> None:
    ledger = Ledger()
    for n in range(1, 5):
        ledger.acked("b", f"b:p:{n}", (100, 10 + n))
        ledger.acked("a", f"a:p:{n}", (100, 20 + n))
    records = [Got("b", "b:p:1", (100, 11)), Opened((100, 11))]
    records += [Reset("expired", ("a",), (100, 24))]
    client = ClientLog("c", ("a", "b"), (0, 0), records)
    report = check(ledger, [client], _strict(ledger, history_size=1))  # type: ignore[arg-type]
    # a's gap is announced; b's three events after the cursor are silently gone.
    assert (report.skipped_by_reset, report.lost) == (4, 3)
    assert {v.channel for v in report.violations} == {"b"}


def test_without_an_id_a_reset_covers_up_to_the_next_event() -> None:
    # A Mercure hub says "earliest" and gives no id: the gap ends at the next event.
    ledger = _ledger(count=6)
    records = [_got(1), Opened((100, 1)), Reset("earliest", ("a",), None), _got(4), _got(6)]
    client = ClientLog("c", ("a",), (0, 0), records)
    report = check(ledger, [client], any_reset_policy)
    assert report.skipped_by_reset == 2
    assert [v.detail for v in report.violations] == ["a:p:5 ((100, 5))"]


def test_unacknowledged_events_may_come_or_not_but_only_once_and_in_order() -> None:
    ledger = _ledger(count=2)
    ledger.uncertain("a", "a:p:u")
    fine = ClientLog("c", ("a",), (0, 0), [_got(1), Got("a", "a:p:u", (100, 1, 5)), _got(2)])
    assert check(ledger, [fine], _strict(ledger)).ok  # type: ignore[arg-type]
    twice = ClientLog("d", ("a",), (0, 0), [_got(1), Got("a", "a:p:u", (100, 1, 5))] * 2)
    kinds = {v.kind for v in check(ledger, [twice], _strict(ledger)).violations}  # type: ignore[arg-type]
    assert kinds == {"duplicated", "lost"}


def test_hub_ids_parse_into_sortable_orders() -> None:
    assert parse_hub_id("1700000000000-2.k2x9") == (1700000000000, 2, int("k2x9", 36))
    assert parse_hub_id("1700000000000-2") == (1700000000000, 2, 0)  # the layout before
    later, earlier = parse_hub_id("1700000000000-10.a"), parse_hub_id("1700000000000-9.z")
    assert later is not None
    assert earlier is not None
    assert later > earlier
    for bad in (None, "", "urn:uuid:1234", "12-x", "-1", "1-2.UPPER"):
        assert parse_hub_id(bad) is None


def test_a_reset_after_the_other_channels_replay_covers_from_the_streams_cursor() -> None:
    # The hub replays the channels whose history reaches back, then resets the trimmed
    # one: its gap starts at the cursor the stream resumed from, not at the replay's end.
    ledger = Ledger()
    for n in range(1, 5):
        ledger.acked("a", f"a:p:{n}", (100, 2 * n))
        ledger.acked("b", f"b:p:{n}", (100, 2 * n + 1))
    records: list[Opened | Got | Reset] = [Got("a", "a:p:1", (100, 2)), Opened((100, 2))]
    records += [Got("b", f"b:p:{n}", (100, 2 * n + 1)) for n in range(1, 5)]
    records += [Reset("expired", ("a",), (100, 9))]
    client = ClientLog("c", ("a", "b"), (0, 0), records)
    report = check(ledger, [client], _strict(ledger, history_size=2))  # type: ignore[arg-type]
    assert report.ok, report.violations
    assert (report.skipped_by_reset, report.delivered) == (3, 5)
