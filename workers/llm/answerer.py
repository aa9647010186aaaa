"""Answering one request: read it, stream the model's answer into its conversation
channel (``reply_to``), end with ``done`` or ``error``, then acknowledge it.

What goes to ``reply_to``, in order: ``question`` (``{"request_id", "prompt"}``), once;
``restart`` when the request was taken over from another worker part-way (the answer
so far was partial); then ``sentence`` events (or ``delta`` ones with ``"stream":
"delta"``) as the model writes; then ``done`` with the whole ``text`` and the figures
of the answer, or ``error`` with a reason and a message fit for the person who asked.

A conversation answers one question at a time, in order: a request waits until every
question asked before it in the channel is closed, then gets the earlier turns as
context (:mod:`workers.llm.conversation`). A ``stop`` event for the request, published
to the channel by anyone, closes the model request at once and ends the answer with
``done`` and ``finish_reason: "stopped"``; a stopped answer is never started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError

from hub.logs import log_fields
from hub.store import Keys

from ..base import Worker
from ..run import Stopped
from .conversation import Conversation, context_messages
from .limits import QuestionLimit
from .metrics import LLMMetrics
from .models import Completion, Model, ModelError
from .output import output_for
from .queue import Delivery, RequestQueue
from .request import DEFAULT_MAX_PROMPT, InvalidRequest, LLMRequest, parse_request

__all__ = ["POLL", "Answerer", "Policy"]

#: Seconds between looks at a conversation for a stop, or for the turn to come. A stop
#: closes the model request within about this long.
POLL = 0.2
#: Context kept by default, in characters of earlier questions and answers.
DEFAULT_CONTEXT_BUDGET = 12000
#: Questions a token subject may ask per minute, by default.
DEFAULT_QUESTIONS_PER_MINUTE = 10

_END = object()
_STOPPED = object()


@dataclass(frozen=True)
class Policy:
    """How requests are answered: defaults and limits."""

    requests_channel: str = "llm.requests"
    default_model: str = "gpt-4o-mini"
    system: str | None = None
    max_prompt: int = DEFAULT_MAX_PROMPT
    context_budget: int = DEFAULT_CONTEXT_BUDGET
    #: Questions one token subject may ask per minute (0: no limit).
    questions_per_minute: int = DEFAULT_QUESTIONS_PER_MINUTE
    #: Seconds a conversation may be silent before a question waiting for an earlier
    #: one stops waiting (a live answer publishes, a taken-over one restarts).
    turn_timeout: float = 120.0


class Answerer:
    """Answers the requests ``worker`` hands it, publishing through ``worker`` (which
    retries while Redis is unavailable) and logging as ``worker``.

    ``answered`` counts the requests answered; ``abandoned`` holds the ids of those given
    up on mid-way (Redis failed, or a stop cut a retry short), which stay pending in the
    queue for this or another worker to answer again.
    """

    def __init__(
        self,
        worker: Worker,
        queue: RequestQueue,
        model: Model,
        client: redis.asyncio.Redis,
        keys: Keys,
        policy: Policy,
        metrics: LLMMetrics | None = None,
    ) -> None:
        self.worker = worker
        self.queue = queue
        self.model = model
        self.client = client
        self.keys = keys
        self.policy = policy
        self.metrics = metrics or LLMMetrics()
        self.limit = QuestionLimit(client, keys, policy.questions_per_minute)
        self.answered = 0
        self.abandoned: set[str] = set()

    async def handle(self, delivery: Delivery) -> None:
        """Answer one request, then acknowledge it; never raises (but for cancellation)."""
        request: LLMRequest | None = None
        try:
            request = self._accept(delivery)
            refusal = None
            if request is not None and not delivery.claimed:
                refusal = await self.limit.refuse(delivery.subject)
            if request is not None and refusal is not None:
                self.worker.log(
                    logging.INFO, "question refused", request=request.id, reason=refusal
                )
                await self._error(request.id, request.reply_to, "rate_limited", refusal)
            elif request is not None:
                await self._answer(request)
                self.answered += 1
            await self.queue.ack(delivery.id)
        except (Stopped, RedisError) as exc:
            # Left pending: handed back when this worker stops, or taken over after
            # --claim-after; a done that went out is not sent again.
            self.abandoned.add(delivery.id)
            self.worker.log(
                logging.WARNING, "answer abandoned", request=delivery.event_id, error=str(exc)
            )
        except InvalidRequest as exc:
            self.worker.log(
                logging.WARNING, "invalid request", request=delivery.event_id, error=str(exc)
            )
            with contextlib.suppress(Exception):
                if exc.reply_to is not None:
                    await self._error(delivery.event_id, exc.reply_to, "invalid_request", str(exc))
                await self.queue.ack(delivery.id)
        except Exception:
            self.metrics.finished("failed")
            self.worker.logger.error(
                "answering failed", exc_info=True, extra=log_fields(request=delivery.event_id)
            )
            try:
                if request is not None:
                    message = "the worker failed; try again"
                    await self._error(delivery.event_id, request.reply_to, "internal", message)
                await self.queue.ack(delivery.id)
            except Exception as exc:
                self.worker.log(logging.WARNING, "could not report the failure", error=str(exc))

    def _accept(self, delivery: Delivery) -> LLMRequest | None:
        """The request to answer, or ``None`` when there is nothing to answer."""
        if delivery.data is None:
            self.worker.log(
                logging.WARNING,
                "request trimmed from the history before it was answered; dropped "
                "(raise HUB_HISTORY_SIZE)",
                request=delivery.event_id,
            )
            return None
        return parse_request(
            delivery.event_id, delivery.data, self.policy.requests_channel, self.policy.max_prompt
        )

    async def _error(self, request_id: str, reply_to: str, reason: str, message: str) -> None:
        data = {"request_id": request_id, "reason": reason, "message": message}
        await self.worker.publish(reply_to, data, event="error")

    async def _answer(self, request: LLMRequest) -> None:
        """Publish the question (or a restart), wait for the turn, then stream the answer.

        Whether the request was answered, stopped or started before comes from the
        conversation's history, not from who read it first: a worker taking it over
        after a crash sees the same."""
        conversation = await Conversation(self.client, self.keys, request.reply_to).load()
        if request.id in conversation.finished:
            self.worker.log(logging.INFO, "taken-over request was answered", request=request.id)
            return
        turn = conversation.turns.get(request.id)
        if turn is None:
            data = {"request_id": request.id, "prompt": request.prompt}
            await self.worker.publish(request.reply_to, data, event="question")
        elif turn.stop_requested:
            # Stopped, then its worker died before saying so: finish it, never restart it.
            await self._stopped(request, turn.text_so_far(), "taken over after a stop")
            return
        else:
            self.worker.log(logging.INFO, "took over an unfinished request", request=request.id)
            message = "the worker answering this request stopped; answering again from the start"
            data = {"request_id": request.id, "reason": "taken_over", "message": message}
            await self.worker.publish(request.reply_to, data, event="restart")
        await self._wait_for_turn(request, conversation)
        if request.id in conversation.stops:
            await self._stopped(request, "", "stopped before it started")
            return
        earlier = context_messages(conversation.history(request.id), self.policy.context_budget)
        system = request.system or self.policy.system
        messages = [{"role": "system", "content": system}] if system else []
        messages += [*earlier, {"role": "user", "content": request.prompt}]
        await self._stream(request, messages, conversation)

    async def _wait_for_turn(self, request: LLMRequest, conversation: Conversation) -> None:
        """Until every question asked before this one in the conversation is closed (one
        answer at a time, in order), or this one is stopped.

        An earlier question with no event at all in the conversation for
        ``policy.turn_timeout`` seconds is given up on, with an ``error`` event (reason
        ``unanswered``) that closes it for every reader: nobody is answering it (a
        question event published by hand, a request lost with the embedded backend),
        and it must not block the conversation for good.
        """
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            if await conversation.follow():
                quiet_since = loop.time()
            if request.id in conversation.stops:
                return
            earlier = conversation.waiting_for(request.id)
            if request.id in conversation.turns and earlier is None:
                return
            if earlier is not None and loop.time() - quiet_since > self.policy.turn_timeout:
                self.worker.log(
                    logging.WARNING,
                    "nobody answers an earlier question of the conversation; not waiting",
                    request=request.id,
                    earlier=earlier,
                )
                # Closed for every reader of the conversation, pages included.
                message = "nobody answered this question; ask it again"
                await self._error(earlier, request.reply_to, "unanswered", message)
                continue
            await asyncio.sleep(POLL)

    async def _stopped(self, request: LLMRequest, text: str, why: str) -> None:
        done = {"request_id": request.id, "finish_reason": "stopped", "text": text}
        await self.worker.publish(request.reply_to, done, event="done")
        self.metrics.finished("stopped")
        self.worker.log(logging.INFO, "answer stopped", request=request.id, why=why)

    async def _stream(
        self, request: LLMRequest, messages: list[dict[str, str]], conversation: Conversation
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        model = request.model or self.policy.default_model
        completion = Completion(model)
        output = output_for(request.stream)
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        self.worker.log(
            logging.DEBUG,
            "answering",
            request=request.id,
            reply_to=request.reply_to,
            context_turns=(len(messages) - 1) // 2,
        )

        async def pump() -> None:
            """Read the model into ``pieces``; cancelled, it closes the model request."""
            try:
                async with aclosing(self.model.stream(messages, model, completion)) as stream:
                    async for piece in stream:
                        pieces.put_nowait(piece)
            except ModelError as exc:
                pieces.put_nowait(exc)
            finally:
                pieces.put_nowait(_END)

        reading = asyncio.create_task(pump())
        ended = asyncio.Event()
        watching = asyncio.create_task(
            self._watch_for_stop(conversation, request.id, reading, pieces, ended)
        )
        first: float | None = None
        tokens = 0
        failure: ModelError | None = None
        stopped = False
        try:
            while True:
                wait = output.due_in(loop.time())
                try:
                    piece = await asyncio.wait_for(pieces.get(), wait)
                except asyncio.TimeoutError:
                    piece = ""
                if piece is _STOPPED:
                    stopped = True
                    break
                if piece is _END:
                    break
                if isinstance(piece, ModelError):
                    failure = piece
                    continue
                tokens += 1 if piece else 0
                sent = output.feed(piece, loop.time()) if piece else output.ready(loop.time())
                for data in sent:
                    await self.worker.publish(request.reply_to, data, event=output.event)
                    output.events += 1
                    first = first or loop.time()
        finally:
            ended.set()
            await _cancel(reading)
            await _cancel(watching)
        if not reading.cancelled() and reading.exception() is not None:
            raise reading.exception()  # type: ignore[misc]  # a bug, not a model failure
        if failure is not None and not stopped:
            self.metrics.finished("failed")
            self.worker.log(
                logging.WARNING,
                "the model failed",
                request=request.id,
                reason=failure.reason,
                error=str(failure),
                events=output.events,
            )
            await self._error(request.id, request.reply_to, failure.reason, str(failure))
            return
        for data in output.flush():
            await self.worker.publish(request.reply_to, data, event=output.event)
            output.events += 1
            first = first or loop.time()
        total = loop.time() - started
        generated = (completion.usage or {}).get("completion_tokens") or tokens
        outcome = "stopped" if stopped else "done"
        done = {
            "request_id": request.id,
            "model": completion.model,
            "usage": completion.usage,
            "finish_reason": "stopped" if stopped else completion.finish_reason,
            "text": output.text,
            f"{output.event}s": output.events,
            f"ms_to_first_{output.event}": None
            if first is None
            else round((first - started) * 1000),
            "ms_total": round(total * 1000),
        }
        await self.worker.publish(request.reply_to, done, event="done")
        self.metrics.finished(outcome)
        self.metrics.observe(
            None if first is None else first - started, generated, total, output.event
        )
        self.worker.log(
            logging.INFO,
            "answered" if not stopped else "answer stopped",
            request=request.id,
            events=output.events,
            seconds=round(total, 3),
            model=completion.model,
            tokens_per_second=round(generated / total, 1) if total > 0 else None,
        )

    async def _watch_for_stop(
        self,
        conversation: Conversation,
        request_id: str,
        reading: asyncio.Task[None],
        pieces: asyncio.Queue[Any],
        ended: asyncio.Event,
    ) -> None:
        """Until ``ended``, look for a ``stop`` of ``request_id``; on one, cancel
        ``reading`` (which closes the model request) and tell the answer so."""
        failures = 0
        while request_id not in conversation.stops:
            # Ends by itself too: a cancellation can be swallowed by a Redis client's
            # wait_for before Python 3.12, and the answer must not wait for this forever.
            if await _wait(ended, POLL):
                return
            try:
                await conversation.follow()
            except RedisError as exc:
                failures += 1
                if failures == 1:
                    self.worker.log(
                        logging.WARNING,
                        "cannot look for a stop; retrying",
                        request=request_id,
                        error=str(exc),
                    )
                continue
            failures = 0
        reading.cancel()
        pieces.put_nowait(_STOPPED)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; return whether it is set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again if a cancellation was
    swallowed on the way (asyncio.wait_for before Python 3.12 can do that)."""
    task.cancel()
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if not task.done():
            task.cancel()
