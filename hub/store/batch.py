"""Publish objects: ``{"channel": "news", "data": ..., "event": "update"}``, read and
checked in one place for every way in (one HTTP publish, a batch as a JSON array or
NDJSON, ``hub publish`` reading stdin, :meth:`hub.Publisher.publish_many`).

A batch is checked whole before anything of it is published: a bad item is refused
with its index and what is wrong with it, and the others are not published either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hub.errors import BadRequest, HubError

__all__ = [
    "PUBLISH_FIELDS",
    "PublishItem",
    "at_index",
    "of_event",
    "parse_json",
    "read_item",
    "read_items",
]

#: The fields a publish object may have.
PUBLISH_FIELDS = frozenset({"channel", "channels", "data", "event", "private"})


@dataclass(slots=True)
class PublishItem:
    """One event to publish: what a publish object says, its shape checked (names,
    type and size are checked by the publisher, which knows the limits).

    Not frozen: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, and one is built for every event of a batch."""

    channels: list[Any]
    data: Any
    event: str | None = None
    private: bool = False


def read_item(body: object) -> PublishItem:
    """A publish object (a mapping, as JSON gives it) as a :class:`PublishItem`."""
    if isinstance(body, PublishItem):
        return body
    # (A dict, as JSON gives, first: isinstance against an ABC is slow, once per event.)
    if type(body) is not dict and not isinstance(body, Mapping):
        raise BadRequest(
            'a publish object must be a JSON object like {"channel": "news", "data": "hi"}'
        )
    if not PUBLISH_FIELDS.issuperset(body):
        unknown = set(body) - PUBLISH_FIELDS
        raise BadRequest(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(PUBLISH_FIELDS)}")
    if ("channel" in body) == ("channels" in body):
        raise BadRequest('give either "channel": "name" or "channels": ["a", "b"]')
    if "channel" in body:
        channels = [body["channel"]]
    else:
        channels = body["channels"]
        if not isinstance(channels, list):
            raise BadRequest('"channels" must be a list of channel names')
    if "data" not in body:
        raise BadRequest('"data" is required (a string is sent as-is, other JSON as JSON)')
    private = body.get("private", False)
    if not isinstance(private, bool):
        raise BadRequest('"private" must be true or false')
    return PublishItem(channels, body["data"], body.get("event"), private)


def read_items(bodies: Iterable[object], limit: int) -> list[PublishItem]:
    """Every publish object of a batch, or :class:`BadRequest` naming the first bad one
    by its index (from 0). More than ``limit`` of them is refused too."""
    items: list[PublishItem] = []
    for index, body in enumerate(bodies):
        if index >= limit:
            raise BadRequest(
                f"a batch holds at most {limit} events (HUB_MAX_BATCH); split it into "
                "several requests"
            )
        try:
            items.append(read_item(body))
        except HubError as exc:
            raise of_event(index, exc) from None
    if not items:
        raise BadRequest("the batch is empty; send at least one publish object")
    return items


def of_event(index: int, exc: HubError) -> HubError:
    """``exc`` as said of event ``index`` of a batch: its message prefixed with
    ``event 3: ``, its class (and so its HTTP status) kept. Loops over a batch's events
    catch and raise this rather than enter :class:`at_index` for each: a ``try`` costs
    nothing until something is raised, and the ``with`` was a tenth of the hub's CPU
    under batch publishes (py-spy)."""
    return type(exc)(f"event {index}: {exc}")


class at_index:
    """``with at_index(3): ...`` prefixes the message of a hub error raised inside with
    ``event 3: ``, keeping its class (and so its HTTP status)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, HubError):
            raise of_event(self.index, exc) from None


def parse_json(raw: bytes | str, what: str = "the body") -> Any:
    """``raw`` as JSON, or :class:`BadRequest` saying what is wrong with it."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    except ValueError:
        # Python's own limit on integer digits (4300): not the client's JSON being wrong.
        raise BadRequest(f"a number in {what} has too many digits; send it as a string") from None
    except RecursionError:
        raise BadRequest(
            f"{what}'s JSON is nested too deeply; flatten data, or send it as a string"
        ) from None
