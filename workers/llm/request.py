"""The request format of the ``llm`` worker: what a question published to it looks like.

A request is an event on the requests channel whose data is the JSON object
``{"prompt": "...", "reply_to": "<channel>", "model": "...", "system": "...",
"stream": "sentence"}`` (``model``, ``system`` and ``stream`` optional; ``stream`` is
``"sentence"``, the default, or ``"delta"``). :func:`parse_request` reads one, and says what to
change in one it cannot answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hub.errors import BadRequest
from hub.store import check_channel

__all__ = ["DEFAULT_MAX_PROMPT", "STREAM_MODES", "InvalidRequest", "LLMRequest", "parse_request"]

_FIELDS = ("prompt", "reply_to", "model", "system", "stream")
#: How an answer may be streamed: whole sentences, or the raw text as it comes.
STREAM_MODES = ("sentence", "delta")
#: Longest prompt accepted by default, in characters (``--max-prompt``).
DEFAULT_MAX_PROMPT = 8000


@dataclass(frozen=True)
class LLMRequest:
    """One question. ``id`` is the request event's id, which names it in logs and replies."""

    id: str
    prompt: str
    reply_to: str
    model: str | None = None
    system: str | None = None
    #: ``"sentence"`` or ``"delta"``.
    stream: str = "sentence"


class InvalidRequest(Exception):
    """A request that cannot be answered; ``reply_to`` is where to say so, if known."""

    def __init__(self, message: str, reply_to: str | None = None) -> None:
        super().__init__(message)
        self.reply_to = reply_to


def parse_request(
    request_id: str,
    data: bytes | str,
    requests_channel: str,
    max_prompt: int = DEFAULT_MAX_PROMPT,
) -> LLMRequest:
    """Read a request's data: JSON ``{"prompt", "reply_to", "model"?, "system"?,
    "stream"?}``; a prompt longer than ``max_prompt`` characters is refused.

    Raises :class:`InvalidRequest` with a message that says what to change.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        body = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest(
            'a request must be a JSON object {"prompt": "...", "reply_to": "<channel>"}'
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"a request must be a JSON object, not {type(body).__name__}")
    reply_to = body.get("reply_to")
    try:
        reply_to = check_channel(reply_to) if reply_to is not None else None
    except BadRequest as exc:
        raise InvalidRequest(f"reply_to is not a usable channel: {exc}") from None
    if reply_to == requests_channel:
        # Replies there would be read back as requests.
        raise InvalidRequest(f"reply_to must not be the requests channel {requests_channel!r}")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise InvalidRequest(
            f"unknown field {unknown[0]!r}; a request has {', '.join(_FIELDS)}", reply_to
        )
    if reply_to is None:
        raise InvalidRequest("a request needs reply_to: the channel to stream the answer to")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("a request needs prompt: a non-empty string", reply_to)
    if len(prompt) > max_prompt:
        raise InvalidRequest(
            f"the prompt is {len(prompt)} characters long; at most {max_prompt} are accepted",
            reply_to,
        )
    stream = body.get("stream", "sentence")
    if stream not in STREAM_MODES:
        raise InvalidRequest(f"stream must be {' or '.join(map(repr, STREAM_MODES))}", reply_to)
    optional: dict[str, str | None] = {}
    for name in ("model", "system"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InvalidRequest(f"{name} must be a non-empty string when given", reply_to)
        optional[name] = value
    return LLMRequest(
        request_id, prompt, reply_to, optional["model"], optional["system"], str(stream)
    )
