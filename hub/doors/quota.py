"""``HUB_PUBLISH_RATE``: publishes per token subject, or per client address for a
publisher without one, counted across every node in Redis (:mod:`hub.store.rates`).

Both doors spend one unit per publish request once the token is verified and before
the body is read, and a batch one more per further event once it is parsed; a request
beyond the allowance gets ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request

from hub.delivery.broker import Broker
from hub.doors.auth import Claims
from hub.errors import BadRequest, RateLimited

__all__ = ["spend_publish"]

#: Longer subjects are hashed, so a key stays small whatever the token says.
_MAX_WHO = 200


async def spend_publish(
    broker: Broker, request: Request, claims: Claims | None, *, units: int = 1, spent: int = 0
) -> None:
    """Spend ``units`` publishes of this client's allowance, or raise
    :class:`RateLimited` (nothing spent then). ``spent``: units this request spent
    already (a batch's first, spent before its body was read)."""
    settings = broker.settings
    if not settings.publish_rate or units < 1:
        return
    limit = settings.publish_limit()
    assert limit is not None
    count, period = limit
    if units + spent > count:
        # Waiting would never help: more than the whole allowance at once.
        raise BadRequest(
            f"this batch holds more events than HUB_PUBLISH_RATE={settings.publish_rate} "
            f"allows at once; split it into batches of at most {count}"
        )
    who = publisher_of(request, claims)
    wait = await broker.store.rates.spend(who, count, period, units)
    if wait > 0:
        broker.stats.rate_limited += 1
        raise RateLimited(
            f"{who[:80]} is over HUB_PUBLISH_RATE={settings.publish_rate}; retry in {wait:.1f} s",
            retry_after=wait,
        )


def publisher_of(request: Request, claims: Claims | None) -> str:
    """Whom a publish counts against: ``sub:<subject>``, else ``addr:<address>``."""
    if claims is not None and claims.subject:
        who = f"sub:{claims.subject}"
    else:
        who = f"addr:{request.client.host if request.client else 'unknown'}"
    if len(who) > _MAX_WHO:
        who = f"sub#{hashlib.sha256(who.encode('utf-8', 'surrogatepass')).hexdigest()}"
    return who
