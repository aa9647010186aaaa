"""The exactly-once checker: what each client received, per channel, against what the
publishers had acknowledged.

Pure logic on recorded sequences, so it is tested on synthetic ones
(tests/test_chaos_checker.py). An event is identified by the *token* its publisher put
in its data (``channel|publisher|n``), so one that came twice, under any id, is seen
twice. Its *order* is a tuple that sorts events as the hub must deliver them: the
parsed hub id (``<ms>-<n>``), or, against a hub whose ids do not sort (Mercure's
``urn:uuid``), the publish's sequence number from the one sequential publisher.

The rules (docs/guarantees.md):

- Every acknowledged event on a channel, later than where the client joined it, is
  delivered once; none twice; in order.
- A hole is allowed only inside a ``hub.reset`` that names the channel: from the cursor
  the client resumed with, up to the id the reset moved it to (or, from a hub that gives
  no such id, up to the next event delivered after it).
- A reset itself must be explained by the Guarantees table: ``expired`` only when more
  than the history's size of events were published on the channel after the cursor,
  ``history_lost``/``unknown`` only after a fault that lost Redis data, ``invalid``
  never (the clients send only ids the hub gave them). ``policy`` decides.
- An event that was published but not acknowledged (an error or a timeout answer) may
  come or not; if it comes, it counts like any other for duplicates and order.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Order = tuple[int, ...]


_BASE36 = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")


def parse_hub_id(event_id: str | None) -> Order | None:
    """``"<ms>-<seq>.<h>"`` (``h`` in base 36; the layout before it, ``"<ms>-<n>"``, as
    ``h`` 0) as a sortable tuple; ``None`` for anything else."""
    if not event_id:
        return None
    ms, sep, rest = event_id.partition("-")
    seq, dot, h = rest.partition(".")
    if not sep or not ms.isdigit() or not seq.isdigit():
        return None
    if not dot:
        return (int(ms), int(seq), 0)
    if not h or not set(h) <= _BASE36:
        return None
    return (int(ms), int(seq), int(h, 36))


@dataclass
class Published:
    channel: str
    token: str
    #: Known for an acknowledged event; ``None`` until seen for an unacknowledged one.
    order: Order | None
    acked: bool


class Ledger:
    """Every publish attempt: acknowledged ones with their order, uncertain ones (a
    timeout or error answer: published or not) without."""

    def __init__(self) -> None:
        self.events: dict[str, Published] = {}
        self._acked_orders: dict[str, list[Order]] = {}

    def acked(self, channel: str, token: str, order: Order) -> None:
        self.events[token] = Published(channel, token, order, True)
        bisect.insort(self._acked_orders.setdefault(channel, []), order)

    def uncertain(self, channel: str, token: str, order: Order | None = None) -> None:
        self.events[token] = Published(channel, token, order, False)

    @property
    def acknowledged(self) -> int:
        return sum(1 for e in self.events.values() if e.acked)

    def uncertain_on(self, channel: str) -> int:
        return sum(1 for e in self.events.values() if not e.acked and e.channel == channel)

    def acked_after(self, channel: str, after: Order) -> int:
        """How many acknowledged events on ``channel`` are later than ``after``."""
        orders = self._acked_orders.get(channel, [])
        return len(orders) - bisect.bisect_right(orders, after)

    def acked_on(self, channel: str) -> list[Published]:
        return [e for e in self.events.values() if e.acked and e.channel == channel]


@dataclass(frozen=True)
class Opened:
    """A stream opened, resuming from ``cursor`` (``None``: live from now)."""

    cursor: Order | None


@dataclass(frozen=True)
class Got:
    channel: str
    token: str
    #: The order the client saw (parsed from the event's id, or the ledger's).
    order: Order | None


@dataclass(frozen=True)
class Reset:
    reason: str
    channels: tuple[str, ...]
    #: Where the reset moved the cursor; ``None`` when the hub did not say.
    to: Order | None


@dataclass
class ClientLog:
    """What one client did and received, in arrival order."""

    name: str
    channels: tuple[str, ...]
    #: Where it joined: events later than this are owed to it.
    start: Order
    records: list[Opened | Got | Reset] = field(default_factory=list)


#: policy(reset, cursor, channel) -> why the reset is not explained, or None if it is.
Policy = Callable[[Reset, Order | None, str], str | None]


def hub_policy(ledger: Ledger, history_size: int, data_lost: Callable[[], bool]) -> Policy:
    """The Guarantees table for a hub this run started (it knows the history size and
    whether a fault lost Redis data)."""

    def explain(reset: Reset, cursor: Order | None, channel: str) -> str | None:
        if reset.reason == "expired":
            after = cursor or (0, 0)
            could = ledger.acked_after(channel, after) + ledger.uncertain_on(channel)
            # History keeps the last ``history_size`` events (XADD MAXLEN, exact): it
            # reaches back to the cursor unless more than that came after it.
            if could > history_size:
                return None
            return (
                f"only {could} events on {channel!r} after the cursor {after}, not more "
                f"than the history size {history_size}: history still covered it"
            )
        if reset.reason in ("history_lost", "unknown"):
            return None if data_lost() else "Redis lost no data in this run (AOF, fsync always)"
        return f"reason {reset.reason!r} cannot happen to a client that sends the hub's own ids"

    return explain


def any_reset_policy(reset: Reset, cursor: Order | None, channel: str) -> str | None:
    """For a hub we know nothing about: any reset explains its gap."""
    return None


@dataclass
class Violation:
    kind: str  # lost duplicated reordered unexplained_reset unknown_event wrong_id
    client: str
    channel: str
    detail: str


@dataclass
class Report:
    acknowledged: int = 0
    uncertain: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    skipped_by_reset: int = 0
    resets: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def check(
    ledger: Ledger, clients: Iterable[ClientLog], policy: Policy, *, examples: int = 20
) -> Report:
    """Every client's sequences against the ledger; see the module's rules."""
    report = Report(
        acknowledged=ledger.acknowledged, uncertain=len(ledger.events) - ledger.acknowledged
    )
    kept: Counter[str] = Counter()

    def violation(v: Violation) -> None:
        report.violations.append(v)
        kept[v.kind] += 1

    for client in clients:
        for channel in client.channels:
            _check_channel(ledger, client, channel, policy, report, violation)
    # Keep the report readable: the counts say how many, a few examples say what.
    by_kind: Counter[str] = Counter()
    shown = []
    for v in report.violations:
        by_kind[v.kind] += 1
        if by_kind[v.kind] <= examples:
            shown.append(v)
    report.violations = shown + [
        Violation(kind, "-", "-", f"... and {n - examples} more")
        for kind, n in by_kind.items()
        if n > examples
    ]
    return report


def _check_channel(
    ledger: Ledger,
    client: ClientLog,
    channel: str,
    policy: Policy,
    report: Report,
    violation: Callable[[Violation], None],
) -> None:
    seen: set[str] = set()
    last: Order | None = None
    # The cursor the current stream resumed from: a reset on that stream covers from
    # there, whatever it delivered before the reset (the other channels' replay).
    resumed_from: Order | None = client.start
    # (after, upto) orders a reset allowed to be missing; upto None: until the next event
    allowed: list[tuple[Order | None, Order | None]] = []
    open_gap: int | None = None  # index in allowed of a reset without an end yet
    for record in client.records:
        if isinstance(record, Opened):
            resumed_from = record.cursor
            continue
        if isinstance(record, Reset):
            if channel not in record.channels:
                continue
            report.resets[record.reason] += 1
            why = policy(record, resumed_from, channel)
            if why is not None:
                violation(
                    Violation("unexplained_reset", client.name, channel, f"{record.reason}: {why}")
                )
            allowed.append((resumed_from, record.to))
            open_gap = len(allowed) - 1 if record.to is None else None
            continue
        if record.channel != channel:
            continue
        published = ledger.events.get(record.token)
        if published is None or published.channel != channel:
            violation(Violation("unknown_event", client.name, channel, record.token))
            continue
        order = record.order if record.order is not None else published.order
        if published.acked and record.order is not None and record.order != published.order:
            violation(
                Violation(
                    "wrong_id",
                    client.name,
                    channel,
                    f"{record.token} came with id {record.order}, acknowledged as "
                    f"{published.order}",
                )
            )
        if record.token in seen:
            report.duplicated += 1
            violation(Violation("duplicated", client.name, channel, f"{record.token} again"))
            continue
        seen.add(record.token)
        report.delivered += 1
        if open_gap is not None:
            after, _ = allowed[open_gap]
            allowed[open_gap] = (after, order)
            open_gap = None
        if order is not None and last is not None and order <= last:
            report.reordered += 1
            violation(
                Violation(
                    "reordered", client.name, channel, f"{record.token} at {order} after {last}"
                )
            )
        if order is not None:
            last = order if last is None else max(last, order)
    for published in ledger.acked_on(channel):
        order = published.order
        assert order is not None
        if order <= client.start or published.token in seen:
            continue
        if any(_inside(order, gap) for gap in allowed):
            report.skipped_by_reset += 1
            continue
        report.lost += 1
        violation(Violation("lost", client.name, channel, f"{published.token} ({order})"))


def _inside(order: Order, gap: tuple[Order | None, Order | None]) -> bool:
    after, upto = gap
    return (after is None or order > after) and (upto is None or order <= upto)
