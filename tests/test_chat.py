"""Conversations with the llm worker: Stop, context from the channel's history, one
answer at a time, delta mode, and answers that outlive the page that asked.

The worker runs inside the hub's process (``hub serve --worker``, on the embedded
backend), talking to a fake OpenAI-compatible server that streams slowly and records
when its client hangs up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest

from hub import Settings
from hub.errors import ConfigError
from hub.inprocess import parse_worker_specs
from hub.server import serve
from hub.store import Keys
from support.fake_openai import FakeOpenAI, Script
from support.hubs import Backends, RunningHub, StartHub
from support.mercure import KEY
from support.sse import Event, SSEStream
from workers.llm.conversation import Turn, context_messages
from workers.llm.models import OpenAIModel

pytestmark = pytest.mark.anyio

#: The worker runs inside the hub: the embedded backend is enough (test_llm.py runs
#: worker processes on Redis).
embedded = pytest.mark.parametrize("backends", ["embedded"], indirect=True)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def hub(backends: Backends, start_hub: StartHub, fake_openai: FakeOpenAI) -> RunningHub:
    """A hub with the llm worker inside, listening for requests."""
    worker = f"llm --base-url {fake_openai.url} --max-retries 0 --timeout 10"
    running = await start_hub(backends.settings(), backends.backend(), workers=(worker,))
    await listening(backends)
    return running


async def listening(backends: Backends) -> None:
    """Wait until the worker made its group (and so reads what is published now)."""
    client = backends.backend().command_client()
    requests = Keys(backends.prefix).stream("llm.requests")
    deadline = time.monotonic() + 10
    while not await client.exists(requests):
        assert time.monotonic() < deadline, "the worker did not start listening"
        await asyncio.sleep(0.02)


async def publish(hub: RunningHub, channel: str, data: Any, event: str | None = None) -> str:
    body: dict[str, Any] = {"channel": channel, "data": data}
    if event:
        body["event"] = event
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{hub.url}/publish", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def ask(hub: RunningHub, channel: str, prompt: str, **fields: Any) -> str:
    return await publish(hub, "llm.requests", {"prompt": prompt, "reply_to": channel, **fields})


async def until(
    stream: SSEStream, finished: Callable[[list[Event]], bool], timeout: float = 15
) -> list[Event]:
    deadline = time.monotonic() + timeout
    while not finished(stream.events):
        if time.monotonic() > deadline:
            raise AssertionError(f"not finished after {timeout}s: {stream.events}")
        await asyncio.sleep(0.02)
    return list(stream.events)


def dones(events: list[Event]) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in events if e.event == "done"]


def of(events: list[Event], kind: str) -> list[str]:
    return [e.data for e in events if e.event == kind]


@embedded
async def test_stop_closes_the_model_request_within_a_second_and_ends_with_the_text_so_far(
    hub: RunningHub, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script = Script(tokens=[f" Word{n}." for n in range(40)], delay=0.15)
    async with SSEStream(hub.url, ["chat.stop"]) as stream:
        request_id = await ask(hub, "chat.stop", "Talk for a long time.")
        await until(stream, lambda events: len(of(events, "sentence")) >= 2)
        await publish(hub, "chat.stop", {"request_id": request_id}, event="stop")
        stopped_at = time.monotonic()
        hung_up_at = await fake_openai.wait_for_hangup(timeout=5)
        events = await until(stream, lambda events: bool(dones(events)))
        await asyncio.sleep(0.5)  # nothing after done, and no second attempt
        assert len(stream.events) == len(events)
    assert hung_up_at - stopped_at < 1.0  # the bound: no more tokens billed
    (done,) = dones(events)
    assert done["request_id"] == request_id
    assert done["finish_reason"] == "stopped"
    # The text so far: what the worker had read when it stopped (the server may have
    # sent a token or two more, unread, before the connection closed).
    said = done["text"].count("Word")
    assert 2 <= said <= fake_openai.tokens_sent < 40
    assert done["text"] == "".join(f" Word{n}." for n in range(said))
    assert " ".join(of(events, "sentence")) == done["text"].strip()
    assert len(fake_openai.requests) == 1
    assert fake_openai.completed == []
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{hub.url}/metrics")).text
    assert 'llm_answers_total{outcome="stopped"} 1.0' in metrics
    assert "llm_first_output_seconds_count" in metrics


@embedded
async def test_a_second_question_waits_its_turn_and_carries_the_first_as_context(
    hub: RunningHub, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script = Script(tokens=["Paris", " it", " is."], delay=0.1)
    async with SSEStream(hub.url, ["chat.two"]) as stream:
        first = await ask(hub, "chat.two", "Capital of France?", system="Be brief.")
        second = await ask(hub, "chat.two", "And its population?")
        events = await until(stream, lambda events: len(dones(events)) == 2)
    assert fake_openai.max_streaming == 1  # one answer at a time in a conversation
    assert [e.event for e in events] == ["question", "question"] + ["sentence", "done"] * 2
    assert [d["request_id"] for d in dones(events)] == [first, second]
    assert [d["text"] for d in dones(events)] == ["Paris it is."] * 2
    assert fake_openai.requests[1]["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris it is."},
        {"role": "user", "content": "And its population?"},
    ]
    # A stop for an answer already done changes nothing.
    await publish(hub, "chat.two", {"request_id": first}, event="stop")
    await asyncio.sleep(0.5)
    assert len(fake_openai.requests) == 2


@embedded
async def test_a_question_stopped_while_it_waits_is_never_sent_to_the_model(
    hub: RunningHub, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script = Script(tokens=["Slow", " answer", " here."], delay=0.3)
    async with SSEStream(hub.url, ["chat.wait"]) as stream:
        await ask(hub, "chat.wait", "First?")
        waiting = await ask(hub, "chat.wait", "Second?")
        await until(stream, lambda events: len(of(events, "question")) == 2)
        await publish(hub, "chat.wait", {"request_id": waiting}, event="stop")
        events = await until(stream, lambda events: len(dones(events)) == 2)
    by_id = {d["request_id"]: d for d in dones(events)}
    assert by_id[waiting]["finish_reason"] == "stopped"
    assert by_id[waiting]["text"] == ""
    assert fake_openai.prompts() == ["First?"]


def test_context_keeps_the_newest_turns_within_the_budget() -> None:
    turns = [Turn(f"r{n}", f"question {n}", answer=f"answer {n}", closed=True) for n in range(4)]
    each = len("question 0") + len("answer 0")
    kept = context_messages(turns, budget=2 * each + 1)
    assert [m["content"] for m in kept] == ["question 2", "answer 2", "question 3", "answer 3"]
    assert context_messages(turns, budget=0) == []


@embedded
async def test_a_stopped_answer_whose_worker_died_is_finished_not_restarted(
    backends: Backends, start_hub: StartHub, fake_openai: FakeOpenAI
) -> None:
    backend = backends.backend()
    plain = await start_hub(backends.settings(), backend)  # no worker inside
    client = backend.command_client()
    requests = Keys(backends.prefix).stream("llm.requests")
    # A worker read the request, said part of the answer, was asked to stop, and died.
    await client.xgroup_create(requests, "llm", id="$", mkstream=True)
    request_id = await ask(plain, "chat.dead", "Go on.")
    await client.xreadgroup("llm", "dead-worker", {requests: ">"}, count=1)
    await publish(plain, "chat.dead", {"request_id": request_id, "prompt": "Go on."}, "question")
    await publish(plain, "chat.dead", "One two.", "sentence")
    await publish(plain, "chat.dead", {"request_id": request_id}, "stop")

    worker = f"llm --base-url {fake_openai.url} --claim-after 0.2"
    await start_hub(backends.settings(), backend, workers=(worker,))
    async with SSEStream(plain.url, ["chat.dead"], query_cursor="earliest") as stream:
        events = await until(stream, lambda events: bool(dones(events)))
        await asyncio.sleep(0.5)
        assert len(stream.events) == len(events)
    (done,) = dones(events)
    assert done == {"request_id": request_id, "finish_reason": "stopped", "text": "One two."}
    assert "restart" not in [e.event for e in events]
    assert fake_openai.requests == []
    deadline = time.monotonic() + 5
    while (await client.xpending(requests, "llm"))["pending"]:  # acknowledged
        assert time.monotonic() < deadline, "the request is still pending"
        await asyncio.sleep(0.02)


@embedded
async def test_a_question_nobody_answers_does_not_block_the_conversation(
    backends: Backends, start_hub: StartHub, fake_openai: FakeOpenAI
) -> None:
    worker = f"llm --base-url {fake_openai.url} --turn-timeout 0.5"
    hub = await start_hub(backends.settings(), backends.backend(), workers=(worker,))
    await listening(backends)
    # A question event published by hand: no request behind it, nobody answers it.
    await publish(hub, "chat.stuck", {"request_id": "1-0", "prompt": "Hello?"}, "question")
    async with SSEStream(hub.url, ["chat.stuck"]) as stream:
        request_id = await ask(hub, "chat.stuck", "Anyone?")
        events = await until(stream, lambda events: bool(dones(events)))
    error = json.loads(of(events, "error")[0])
    assert (error["request_id"], error["reason"]) == ("1-0", "unanswered")
    assert dones(events)[0]["request_id"] == request_id
    assert fake_openai.requests[0]["messages"] == [{"role": "user", "content": "Anyone?"}]


@embedded
async def test_the_chat_page_and_its_libraries_are_served(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as client:
        page = await client.get("/chat")
        assert page.status_code == 200
        assert "static/chat.js" in page.text
        for name in ("chat.js", "chat.css", "vendor/marked.umd.js", "vendor/purify.min.js"):
            response = await client.get(f"/static/{name}")
            assert response.status_code == 200, name
        assert (await client.get("/static/vendor/nothing.js")).status_code == 404
        assert (await client.get("/static/vendor/README.md")).status_code == 404


@embedded
async def test_delta_mode_coalesces_the_raw_text(hub: RunningHub, fake_openai: FakeOpenAI) -> None:
    tokens = [f"t{n} " for n in range(60)] + ["\n\n```py\nx = 1\n```"]
    fake_openai.script = Script(tokens=tokens, delay=0.005)
    async with SSEStream(hub.url, ["chat.delta"]) as stream:
        await ask(hub, "chat.delta", "Stream raw text.", stream="delta")
        events = await until(stream, lambda events: bool(dones(events)))
    deltas = of(events, "delta")
    (done,) = dones(events)
    assert "".join(deltas) == done["text"] == "".join(tokens)
    assert of(events, "sentence") == []
    assert len(deltas) < len(tokens) / 2  # coalesced, not one event per token
    assert done["deltas"] == len(deltas)


@embedded
async def test_closing_the_page_does_not_stop_the_answer(
    hub: RunningHub, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script = Script(tokens=["One.", " Two.", " Three.", " Four."], delay=0.15)
    async with SSEStream(hub.url, ["chat.gone"]) as stream:
        request_id = await ask(hub, "chat.gone", "Go on.")
        await until(stream, lambda events: bool(of(events, "sentence")))
    # The page is gone; come back later from the start of the conversation.
    await asyncio.sleep(1.0)
    async with SSEStream(hub.url, ["chat.gone"], query_cursor="earliest") as again:
        events = await until(again, lambda events: bool(dones(events)))
    (done,) = dones(events)
    assert done["request_id"] == request_id
    assert done["finish_reason"] == "stop"
    assert of(events, "sentence") == ["One.", "Two.", "Three.", "Four."]
    assert fake_openai.hangups == []


@embedded
async def test_a_prompt_over_the_limit_gets_an_error_event(
    hub: RunningHub, fake_openai: FakeOpenAI
) -> None:
    async with SSEStream(hub.url, ["chat.long"]) as stream:
        await ask(hub, "chat.long", "x" * 8001)
        events = await until(stream, lambda events: bool(of(events, "error")))
    error = json.loads(of(events, "error")[0])
    assert error["reason"] == "invalid_request"
    assert "8001 characters" in error["message"]
    assert fake_openai.requests == []


@embedded
async def test_with_authorization_a_subject_asking_too_often_gets_an_error_event(
    backends: Backends, start_hub: StartHub, fake_openai: FakeOpenAI
) -> None:
    worker = f"llm --base-url {fake_openai.url} --questions-per-minute 2"
    settings = backends.settings(jwt_key=KEY, anonymous=True)
    hub = await start_hub(settings, backends.backend(), workers=(worker,))
    await listening(backends)

    async def ask_as(subject: str, channel: str) -> str:
        bearer = jwt.encode({"sub": subject, "mercure": {"publish": ["*"]}}, KEY)
        request = {"prompt": f"From {subject}", "reply_to": channel}
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{hub.url}/publish",
                json={"channel": "llm.requests", "data": request},
                headers={"Authorization": f"Bearer {bearer}"},
            )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async with SSEStream(hub.url, ["chat.alice", "chat.bob", "chat.carol"]) as stream:
        for _ in range(3):
            refused = await ask_as("alice", "chat.alice")
        await ask_as("bob", "chat.bob")
        # A batch is counted too: it is no way around the limit.
        bearer = jwt.encode({"sub": "carol", "mercure": {"publish": ["*"]}}, KEY)
        request = {"prompt": "From carol", "reply_to": "chat.carol"}
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{hub.url}/publish",
                json=[{"channel": "llm.requests", "data": request}] * 3,
                headers={"Authorization": f"Bearer {bearer}"},
            )
        assert response.status_code == 201, response.text
        events = await until(stream, lambda e: len(dones(e)) + len(of(e, "error")) == 7)
    errors = [json.loads(data) for data in of(events, "error")]
    assert [e["request_id"] for e in errors] == [refused, response.json()["ids"][2]]
    assert {e["reason"] for e in errors} == {"rate_limited"}
    assert "at most 2 a minute" in errors[0]["message"]
    assert sorted(fake_openai.prompts()) == ["From alice"] * 2 + ["From bob"] + ["From carol"] * 2


def test_workers_inside_need_a_single_hub_process() -> None:
    with pytest.raises(ConfigError, match="single hub process"):
        serve(Settings(workers=2), workers=["ticker"])


def test_an_empty_openai_base_url_means_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # What compose passes for an unset ${OPENAI_BASE_URL:-}.
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    model = OpenAIModel(base_url=None, api_key="sk-test")
    assert str(model.client.base_url) == "https://api.openai.com/v1/"
    assert model.endpoint == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [("nope", "no such worker"), ("ticker --interval x", "not a number"), ("", "needs")],
)
def test_a_bad_worker_for_hub_serve_says_what_to_fix(spec: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_worker_specs([spec])
