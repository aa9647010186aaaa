"""The llm worker: sentence splitting, request format, and answers end to end.

End-to-end tests run the worker as real processes against real Redis, a real hub, and
a fake OpenAI-compatible server written here that speaks the real streaming format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio

from hub import Publisher
from hub.store.keys import Keys
from support.fake_openai import FakeOpenAI, Script
from support.hubs import Backends, RunningHub, StartHub
from support.net import free_port
from support.sse import Event, SSEStream
from support.workers import ROOT, WorkerProcess, redis_env, redis_only
from workers.llm.request import InvalidRequest, parse_request
from workers.llm.sentences import SentenceSplitter

pytestmark = pytest.mark.anyio


# -- the sentence splitter ----------------------------------------------------------------


def split(chunks: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    sentences = [s for chunk in chunks for s in splitter.feed(chunk)]
    return sentences + splitter.flush()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Hello world. How are you? I'm fine! Thanks.",
            ["Hello world.", "How are you?", "I'm fine!", "Thanks."],
        ),
        ("Pi is 3.14 and e is 2.718. Next.", ["Pi is 3.14 and e is 2.718.", "Next."]),
        (
            "Version 1.5x is faster. See example.com for more.",
            ["Version 1.5x is faster.", "See example.com for more."],
        ),
        (
            "Mr. Smith met Mrs. Jones and Dr. Who, e.g. at noon, i.e. late. Then vs. now.",
            ["Mr. Smith met Mrs. Jones and Dr. Who, e.g. at noon, i.e. late.", "Then vs. now."],
        ),
        (
            "Pens, paper, etc. are fine. Apples, pears, etc. The end.",
            ["Pens, paper, etc. are fine.", "Apples, pears, etc.", "The end."],
        ),
        (
            "The U.S. Army grew 2.5% in 2020. It was fine.",
            ["The U.S. Army grew 2.5% in 2020.", "It was fine."],
        ),
        (
            "John F. Kennedy spoke. See No. 5 and Fig. 3 too.",
            ["John F. Kennedy spoke.", "See No. 5 and Fig. 3 too."],
        ),
        ('He said "Stop!" Then he left.', ['He said "Stop!"', "Then he left."]),
        (
            '"Really?" she asked. (It was odd.) Fine.',
            ['"Really?" she asked.', "(It was odd.)", "Fine."],
        ),
        (
            "Wait... what? Well... Then go. Why?! Because…  Right.",
            ["Wait... what?", "Well...", "Then go.", "Why?!", "Because…", "Right."],
        ),
        ("你好。我很好！你呢？好的", ["你好。", "我很好！", "你呢？", "好的"]),  # noqa: RUF001
        ("他说：“你好。”然后走了。", ["他说：“你好。”", "然后走了。"]),  # noqa: RUF001
        (
            "版本3.14发布了。It works. 很好！",  # noqa: RUF001
            ["版本3.14发布了。", "It works.", "很好！"],  # noqa: RUF001
        ),
        (
            "Steps:\n1. Open it.\n2. Close it\n\n## Done\nBye.",
            ["Steps:", "1. Open it.", "2. Close it", "## Done", "Bye."],
        ),
        ("**Note.** This matters.", ["**Note.**", "This matters."]),
        ("  \n\n ", []),
    ],
)
def test_splitter_finds_sentence_boundaries(text: str, expected: list[str]) -> None:
    assert split([text]) == expected


@pytest.mark.parametrize("seed", range(5))
def test_splitter_result_does_not_depend_on_how_the_text_is_chunked(seed: int) -> None:
    text = (
        "Dr. Who paid $3.50, i.e. a lot. Really?! “Yes.” Then 1.5x more… ok. "
        "中文也可以。真的吗？是的！\n- item one\n- item two. Done"  # noqa: RUF001
    )
    expected = split([text])
    assert split(list(text)) == expected
    rng = random.Random(seed)
    chunks, at = [], 0
    while at < len(text):
        size = rng.randint(1, 6)
        chunks.append(text[at : at + size])
        at += size
    assert split(chunks) == expected


MARKDOWN = (
    "Here is code. Look:\n\n```python\nx = 1.5  # Done. Yes!\n\nprint(x)\n```\n"
    "That was it.\n- First item. Two sentences.\n* Second. Also two.\n"
    "12) Numbered. Item.\n| a. B | c. D |\n|---|---|\n~~~\nno. End\n~~~\nFin. Bye."
)


@pytest.mark.parametrize("size", [1, 2, 5, len(MARKDOWN)])
def test_splitter_keeps_code_blocks_list_items_and_table_rows_whole(size: int) -> None:
    chunks = [MARKDOWN[at : at + size] for at in range(0, len(MARKDOWN), size)]
    assert split(chunks) == [
        "Here is code.",
        "Look:",
        "```python\nx = 1.5  # Done. Yes!\n\nprint(x)\n```",
        "That was it.",
        "- First item. Two sentences.",
        "* Second. Also two.",
        "12) Numbered. Item.",
        "| a. B | c. D |",
        "|---|---|",
        "~~~\nno. End\n~~~",
        "Fin.",
        "Bye.",
    ]


def test_splitter_sends_a_code_block_only_once_it_is_closed() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("````\nfirst. Line\n") == []
    assert splitter.feed("```\n") == []  # shorter than the opening fence: still code
    assert splitter.feed("````") == []  # a closing fence, once its line is complete
    assert splitter.feed("\nAfter") == ["````\nfirst. Line\n```\n````"]
    assert splitter.flush() == ["After"]
    assert splitter.feed("```js\nunfinished. Code") == []
    assert splitter.flush() == ["```js\nunfinished. Code"]  # the end of the answer


def test_splitter_waits_for_the_next_character_before_ending_a_sentence() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It costs 3.") == []  # 3.14 or the end of a sentence?
    assert splitter.feed("14 euros.") == []
    assert splitter.feed(" ") == []  # "euros. e.g." would not end it
    assert splitter.feed("Then") == ["It costs 3.14 euros."]
    assert splitter.feed(" more") == []
    assert splitter.flush() == ["Then more"]
    assert splitter.flush() == []


def test_splitter_ends_cjk_sentences_without_waiting_for_a_space() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("你好。") == []  # a closing quote may still follow
    assert splitter.feed("我") == ["你好。"]
    assert splitter.feed("很好！”他") == ["我很好！”"]  # noqa: RUF001


def test_splitter_cuts_a_sentence_without_punctuation_at_max_length() -> None:
    splitter = SentenceSplitter(max_length=20)
    sentences = splitter.feed("word " * 10)
    assert sentences == ["word word word word", "word word word word"]
    assert splitter.flush() == ["word word"]


# -- the request format -------------------------------------------------------------------


def test_request_with_every_field_is_parsed() -> None:
    data = {"prompt": "Why?", "reply_to": "answers.1", "model": "m", "system": "Be brief."}
    request = parse_request("1-0", json.dumps(data).encode(), "llm.requests")
    assert (request.id, request.prompt, request.reply_to) == ("1-0", "Why?", "answers.1")
    assert (request.model, request.system) == ("m", "Be brief.")
    assert parse_request("2-0", json.dumps({"prompt": "x", "reply_to": "a"}), "r").model is None


@pytest.mark.parametrize(
    ("data", "complaint", "reply_to"),
    [
        (b"not json", "JSON object", None),
        (b"\xff\xfe", "JSON object", None),
        (b"[1, 2]", "not list", None),
        (b'{"prompt": "hi"}', "needs reply_to", None),
        (b'{"prompt": "hi", "reply_to": "two words"}', "whitespace", None),
        (b'{"prompt": "hi", "reply_to": "llm.requests"}', "requests channel", None),
        (b'{"reply_to": "a"}', "needs prompt", "a"),
        (b'{"prompt": "  ", "reply_to": "a"}', "needs prompt", "a"),
        (b'{"prompt": "hi", "reply_to": "a", "model": 5}', "model must be", "a"),
        (b'{"prompt": "hi", "reply_to": "a", "sytem": "x"}', "unknown field 'sytem'", "a"),
    ],
)
def test_invalid_request_says_what_is_wrong_and_where_to_reply(
    data: bytes, complaint: str, reply_to: str | None
) -> None:
    with pytest.raises(InvalidRequest, match=complaint) as caught:
        parse_request("1-0", data, "llm.requests")
    assert caught.value.reply_to == reply_to


# -- a fake OpenAI-compatible server ------------------------------------------------------


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# -- running workers ----------------------------------------------------------------------

StartLLM = Callable[..., Awaitable[WorkerProcess]]

#: Fast failures: an error answer is not retried unless a test asks for it.
DEFAULTS = ("--max-retries", "0", "--timeout", "10")


@pytest.fixture
async def start_llm(backends: Backends, fake_openai: FakeOpenAI) -> AsyncIterator[StartLLM]:
    """Start ``python -m workers.llm`` processes on the test's Redis prefix, talking to
    the fake server (``base_url=None``: no endpoint, the demo model). Each one is
    listening when it is returned, and gone after the test."""
    started: list[WorkerProcess] = []

    async def start(
        *args: str, base_url: str | None = fake_openai.url, cli: bool = False
    ) -> WorkerProcess:
        # The test's own variables must not leak in: each test says what it sets.
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "OPENAI_"))}
        environ.update(redis_env(backends))
        if base_url is not None:
            environ["OPENAI_BASE_URL"] = base_url
        module = ["-m", "hub", "worker", "llm"] if cli else ["-m", "workers.llm"]
        process = await asyncio.create_subprocess_exec(
            sys.executable, *module, *DEFAULTS, *args,
            cwd=ROOT, env=environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        worker = WorkerProcess(process)
        started.append(worker)
        await worker.wait_for_log("listening for requests", timeout=20)
        return worker

    yield start
    for worker in started:
        await worker.cleanup()


async def ask(hub: RunningHub, reply_to: str, prompt: str = "Say hello.", **fields: Any) -> str:
    """Publish a request with ``POST /publish``, as a browser's backend would."""
    data = {"prompt": prompt, "reply_to": reply_to, **fields}
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{hub.url}/publish", json={"channel": "llm.requests", "data": data}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def until(
    stream: SSEStream, finished: Callable[[list[Event]], bool], timeout: float = 15
) -> list[Event]:
    """Wait until ``finished(events so far)``; return those events."""
    deadline = time.monotonic() + timeout
    while not finished(stream.events):
        if time.monotonic() > deadline:
            raise AssertionError(f"not finished after {timeout}s: {stream.events}")
        await asyncio.sleep(0.02)
    return list(stream.events)


async def until_finished(stream: SSEStream, timeout: float = 15) -> list[Event]:
    """Wait for ``done`` or ``error`` on a reply channel; return its events so far."""
    return await until(stream, lambda events: bool({"done", "error"} & set(kinds(events))), timeout)


def sentences(events: list[Event]) -> list[str]:
    return [e.data for e in events if e.event == "sentence"]


def kinds(events: list[Event]) -> list[str]:
    return [e.event for e in events]


def data_of(events: list[Event], kind: str) -> dict[str, Any]:
    (event,) = [e for e in events if e.event == kind]
    value = json.loads(event.data)
    assert isinstance(value, dict)
    return value


# -- answers ------------------------------------------------------------------------------


@redis_only
async def test_answer_arrives_sentence_by_sentence_in_order_then_done(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    # Real models split text anywhere: a decimal, an abbreviation and CJK across chunks.
    fake_openai.script = Script(
        tokens=["Pi is", " 3", ".", "14", ", e.", "g. in", " maths.", " Dr", ". Who", " agrees!",
                " 你好", "。", "我很好", "！", "Is it", " over?", " Not yet"],  # noqa: RUF001
    )  # fmt: skip
    hub = await start_hub(backends.settings(), backends.backend())
    worker = await start_llm("--model", "fake-model")
    async with SSEStream(hub.url, ["answer.1"]) as stream:
        request_id = await ask(hub, "answer.1", "Tell me about pi.", system="Be brief.")
        events = await until_finished(stream)
        await asyncio.sleep(0.2)  # nothing comes after done
        assert len(stream.events) == len(events)

    assert sentences(events) == [
        "Pi is 3.14, e.g. in maths.",
        "Dr. Who agrees!",
        "你好。",
        "我很好！",  # noqa: RUF001
        "Is it over?",
        "Not yet",
    ]
    assert kinds(events) == ["question"] + ["sentence"] * 6 + ["done"]
    assert json.loads(events[0].data) == {"request_id": request_id, "prompt": "Tell me about pi."}
    done = data_of(events, "done")
    assert done["request_id"] == request_id
    assert done["model"] == "fake-model"
    assert done["usage"] == {"prompt_tokens": 7, "completion_tokens": 17, "total_tokens": 24}
    assert done["finish_reason"] == "stop"
    assert done["text"] == "".join(fake_openai.script.tokens)
    assert done["sentences"] == 6
    assert 0 <= done["ms_to_first_sentence"] <= done["ms_total"]

    (sent,) = fake_openai.requests
    assert sent["model"] == "fake-model"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about pi."},
    ]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert fake_openai.authorization == ["Bearer no-key"]  # local servers want some key
    assert worker.matching("answered")
    assert "Traceback" not in worker.output


@redis_only
async def test_request_may_choose_the_model(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    await start_llm("--model", "default-model", "--system", "Default system.")
    async with SSEStream(hub.url, ["answer.m"]) as stream:
        await ask(hub, "answer.m", model="other-model")
        events = await until_finished(stream)
    assert data_of(events, "done")["model"] == "other-model"
    (sent,) = fake_openai.requests
    assert sent["model"] == "other-model"
    assert sent["messages"][0] == {"role": "system", "content": "Default system."}


# -- failures become error events ---------------------------------------------------------


@redis_only
@pytest.mark.parametrize(
    ("status", "retries", "attempts", "complaint"),
    [
        (500, "1", 2, "HTTP 500: The server had an error"),  # retried once, then reported
        (401, "2", 1, "HTTP 401: Incorrect API key provided; check OPENAI_API_KEY"),
    ],
    ids=["500-retried", "401-not-retried"],
)
async def test_an_error_answer_from_the_model_becomes_an_error_event(
    backends: Backends,
    start_hub: StartHub,
    start_llm: StartLLM,
    fake_openai: FakeOpenAI,
    status: int,
    retries: str,
    attempts: int,
    complaint: str,
) -> None:
    message = "Incorrect API key provided." if status == 401 else Script().message
    fake_openai.script = Script(status=status, message=message)
    hub = await start_hub(backends.settings(), backends.backend())
    worker = await start_llm("--max-retries", retries)
    async with SSEStream(hub.url, ["answer.e"]) as stream:
        request_id = await ask(hub, "answer.e")
        events = await until_finished(stream)
    assert kinds(events) == ["question", "error"]
    error = data_of(events, "error")
    assert error["request_id"] == request_id
    assert error["reason"] == "upstream"
    assert complaint in error["message"]
    assert len(fake_openai.requests) == attempts
    assert worker.matching("the model failed")
    assert worker.process.returncode is None  # still running


@redis_only
@pytest.mark.parametrize(
    ("script", "said", "complaint"),
    [
        (
            Script(tokens=["One.", " Two.", " Thr", "ee."], drop_after=3),
            ["One.", "Two."],  # "Thr" is not a sentence: it is not sent
            "the connection to the model endpoint broke mid-answer",
        ),
        (
            Script(tokens=["One.", " Two."], finish=False),
            ["One."],
            "the model endpoint ended the stream before the answer was complete",
        ),
    ],
    ids=["connection-cut", "no-finish"],
)
async def test_an_answer_cut_short_gives_the_sentences_so_far_then_an_error(
    backends: Backends,
    start_hub: StartHub,
    start_llm: StartLLM,
    fake_openai: FakeOpenAI,
    script: Script,
    said: list[str],
    complaint: str,
) -> None:
    fake_openai.script = script
    hub = await start_hub(backends.settings(), backends.backend())
    await start_llm()
    async with SSEStream(hub.url, ["answer.cut"]) as stream:
        await ask(hub, "answer.cut")
        events = await until_finished(stream)
    assert kinds(events) == ["question"] + ["sentence"] * len(said) + ["error"]
    assert sentences(events) == said
    error = data_of(events, "error")
    assert error["reason"] == "incomplete"
    assert error["message"] == complaint


@redis_only
async def test_a_model_silent_for_longer_than_the_timeout_gives_an_error_event(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script = Script(tokens=["Too", " late."], delay=3)
    hub = await start_hub(backends.settings(), backends.backend())
    await start_llm("--timeout", "0.5")
    async with SSEStream(hub.url, ["answer.slow"]) as stream:
        await ask(hub, "answer.slow")
        events = await until_finished(stream)
    assert kinds(events) == ["question", "error"]
    error = data_of(events, "error")
    assert error["reason"] == "timeout"
    assert error["message"] == "the model endpoint was silent for more than 0.5 s"


@redis_only
async def test_an_unreachable_endpoint_gives_an_error_event(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    await start_llm(base_url=f"http://127.0.0.1:{free_port()}/v1")
    async with SSEStream(hub.url, ["answer.u"]) as stream:
        await ask(hub, "answer.u")
        events = await until_finished(stream)
    error = data_of(events, "error")
    assert error["reason"] == "unreachable"
    assert error["message"].startswith("could not reach the model endpoint (")
    assert "()" not in error["message"]  # says why


@redis_only
async def test_invalid_requests_get_an_error_event_and_the_worker_carries_on(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    worker = await start_llm()
    async with (
        SSEStream(hub.url, ["answer.bad", "answer.good"]) as stream,
        httpx.AsyncClient() as http,
    ):
        for data in ["not json", {"prompt": "no reply_to"}, {"reply_to": "answer.bad"}]:
            response = await http.post(
                f"{hub.url}/publish", json={"channel": "llm.requests", "data": data}
            )
            assert response.status_code == 201
        await ask(hub, "answer.good")
        events = await until(stream, lambda events: "done" in kinds(events))
    (error,) = [e for e in events if e.event == "error"]
    assert json.loads(error.data)["reason"] == "invalid_request"
    assert "needs prompt" in json.loads(error.data)["message"]
    assert sentences(events) == ["Hello there.", "Bye!"]
    assert len(worker.matching("invalid request")) == 3
    assert len(fake_openai.requests) == 1
    assert "Traceback" not in worker.output


# -- the queue ----------------------------------------------------------------------------


@redis_only
async def test_requests_from_before_the_first_worker_started_are_not_answered(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(hub.url, ["answer.old", "answer.new"]) as stream:
        await ask(hub, "answer.old", "asked before any worker listened")
        await start_llm()
        await ask(hub, "answer.new", "asked later")
        await until_finished(stream)
        await asyncio.sleep(0.3)
        events = list(stream.events)
    assert kinds(events) == ["question", "sentence", "sentence", "done"]
    assert fake_openai.prompts() == ["asked later"]


@redis_only
async def test_a_taken_over_request_that_was_answered_or_trimmed_is_not_answered_again(
    backends: Backends, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    assert backends.url is not None
    client = redis.asyncio.Redis.from_url(backends.url)
    publisher = Publisher(client, backends.settings())
    requests = Keys(backends.prefix).stream("llm.requests")
    try:
        # A worker that read two requests, answered the first and died before its XACK;
        # the second was trimmed from the history meanwhile.
        await client.xgroup_create(requests, "llm", id="$", mkstream=True)
        answered, trimmed = [
            await publisher.publish("llm.requests", {"prompt": "hi", "reply_to": f"answer.{n}"})
            for n in range(2)
        ]
        await client.xreadgroup("llm", "dead-worker", {requests: ">"}, count=2)
        await publisher.publish("answer.0", {"request_id": answered}, event="done")
        await client.xdel(requests, trimmed.partition(".")[0])  # the entry id of the event

        worker = await start_llm("--claim-after", "0.2")
        await worker.wait_for_log("taken-over request was answered")
        await worker.wait_for_log("request trimmed from the history")
        deadline = time.monotonic() + 5
        while (await client.xpending(requests, "llm"))["pending"]:  # both acknowledged
            assert time.monotonic() < deadline, "requests still pending"
            await asyncio.sleep(0.02)
    finally:
        await publisher.aclose()
    assert fake_openai.requests == []


# -- sharing the work ---------------------------------------------------------------------


@redis_only
async def test_requests_are_answered_concurrently_up_to_the_limit(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script = Script(tokens=["Slow", " one.", " Two", " more."], delay=0.15)
    hub = await start_hub(backends.settings(), backends.backend())
    await start_llm("--concurrency", "3")
    channels = [f"answer.c{n}" for n in range(5)]
    streams = [SSEStream(hub.url, [c]) for c in channels]
    async with contextlib.AsyncExitStack() as stack:
        for stream in streams:
            await stack.enter_async_context(stream)
        for channel in channels:
            await ask(hub, channel)
        answers = [await until_finished(s, timeout=20) for s in streams]
    assert fake_openai.max_streaming == 3  # overlapped, and never more than the limit
    for events in answers:
        assert kinds(events) == ["question", "sentence", "sentence", "done"]
        assert sentences(events) == ["Slow one.", "Two more."]


@redis_only
async def test_two_replicas_answer_each_request_exactly_once(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    # Answers (~2.4 s) outlast --claim-after: the replicas must keep their claims fresh,
    # or each would take over the other's requests.
    fake_openai.script = Script(tokens=["A", " b.", " C", " d.", " E", " f."], delay=0.4)
    hub = await start_hub(backends.settings(), backends.backend())
    options = ("--concurrency", "3", "--claim-after", "2")
    replicas = [await start_llm(*options), await start_llm(*options)]
    channels = [f"answer.x{n}" for n in range(10)]
    async with SSEStream(hub.url, channels) as stream:
        ids = [await ask(hub, channel, f"question {n}") for n, channel in enumerate(channels)]
        await until(stream, lambda events: kinds(events).count("done") == 10, timeout=30)
        await asyncio.sleep(1)  # time for a duplicate to show up
        events = list(stream.events)
    dones = [json.loads(e.data) for e in events if e.event == "done"]
    assert sorted(d["request_id"] for d in dones) == sorted(ids)
    assert "restart" not in kinds(events)
    assert sorted(fake_openai.prompts()) == sorted(f"question {n}" for n in range(10))
    answered = [len(r.matching("INFO workers.llm: answered")) for r in replicas]
    assert sum(answered) == 10
    assert all(answered), answered  # both did some of the work


@redis_only
async def test_a_killed_workers_request_is_taken_over_and_restarted(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    answer = ["One", " two.", " Three", " four.", " Five", " six."]
    fake_openai.script = Script(tokens=answer, delay=0.3)
    hub = await start_hub(backends.settings(), backends.backend())
    first = await start_llm("--claim-after", "1")
    async with SSEStream(hub.url, ["answer.k"]) as stream:
        request_id = await ask(hub, "answer.k")
        await stream.wait_for(2)  # the question and a sentence
        first.process.kill()
        await first.wait()
        fake_openai.script = Script(tokens=answer)
        second = await start_llm("--claim-after", "1")
        events = await until_finished(stream)
        await asyncio.sleep(0.3)
        events = list(stream.events)
    partial = kinds(events).index("restart")
    assert partial >= 2  # the question, then a sentence at least
    assert sentences(events[:partial]) == ["One two.", "Three four."][: partial - 1]
    assert kinds(events[partial:]) == ["restart", "sentence", "sentence", "sentence", "done"]
    assert sentences(events[partial:]) == ["One two.", "Three four.", "Five six."]
    assert data_of(events, "restart")["request_id"] == request_id
    assert data_of(events, "done")["request_id"] == request_id
    assert second.matching("took over an unfinished request")


@redis_only
async def test_sigterm_lets_answers_in_flight_finish(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    # The answer outlasts the read in progress (up to 1 s) by far.
    tokens = ["One", " two.", " Three", " four.", " Five", " six.", " Seven", " eight."]
    fake_openai.script = Script(tokens=tokens, delay=0.4)
    hub = await start_hub(backends.settings(), backends.backend())
    worker = await start_llm()
    async with SSEStream(hub.url, ["answer.t"]) as stream:
        await ask(hub, "answer.t")
        await stream.wait_for(2)  # the question and a sentence
        code, _ = await worker.terminate(timeout=10)
        events = list(stream.events)
    assert code == 0, worker.output
    assert kinds(events) == ["question"] + ["sentence"] * 4 + ["done"]
    assert worker.matching("waiting for answers in flight")
    assert "Traceback" not in worker.output


@redis_only
async def test_a_stopping_worker_hands_back_what_it_could_not_finish(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM, fake_openai: FakeOpenAI
) -> None:
    # Far longer than starting the second worker takes, even on a busy machine.
    slow = ["One", " two."] + [" More", " words."] * 10
    fake_openai.script = Script(tokens=slow, delay=0.5)
    hub = await start_hub(backends.settings(), backends.backend())
    leaving = await start_llm("--drain-timeout", "0.2")
    async with SSEStream(hub.url, ["answer.h"]) as stream:
        await ask(hub, "answer.h")
        await stream.wait_for(2)  # the question and a sentence
        fake_openai.script = Script(tokens=["One", " two.", " Three", " four."])
        # The default --claim-after (30 s) would outlast the test: only the hand-back
        # lets this replica take the request over in time.
        staying = await start_llm()
        code, _ = await leaving.terminate(timeout=10)
        events = await until_finished(stream, timeout=10)
    assert code == 0, leaving.output
    assert leaving.matching("handed unfinished requests back")
    partial = kinds(events).index("restart")
    assert partial >= 1
    assert kinds(events[partial:]) == ["restart", "sentence", "sentence", "done"]
    assert sentences(events[partial:]) == ["One two.", "Three four."]
    assert staying.matching("took over an unfinished request")


# -- metrics --------------------------------------------------------------------------------


@redis_only
async def test_a_worker_process_serves_its_metrics(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    port = free_port()
    await start_llm("--metrics-port", str(port))
    async with SSEStream(hub.url, ["answer.metrics"]) as stream:
        await ask(hub, "answer.metrics")
        await until_finished(stream)
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'llm_answers_total{outcome="done"} 1.0' in body
    assert 'llm_first_output_seconds_count{stream="sentence"} 1.0' in body
    assert "llm_tokens_per_second_count 1.0" in body


# -- the offline demo ---------------------------------------------------------------------


@redis_only
async def test_without_an_endpoint_the_demo_model_answers(
    backends: Backends, start_hub: StartHub, start_llm: StartLLM
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    worker = await start_llm("--demo-delay", "0.002", base_url=None, cli=True)
    # As the README's page does: publish, then subscribe from the request's id, so that
    # what the worker sent in between is replayed.
    request_id = await ask(hub, "answer.demo", "What is the hub?")
    await asyncio.sleep(0.5)
    async with SSEStream(hub.url, ["answer.demo"], query_cursor=request_id) as stream:
        events = await until_finished(stream)
    said = sentences(events)
    assert len(said) >= 5
    assert "What is the hub?" in said[0]
    assert kinds(events) == ["question"] + ["sentence"] * len(said) + ["done"]
    assert not [e for e in events if e.event.startswith("hub.")]  # no reset: nothing lost
    done = data_of(events, "done")
    assert done["model"] == "demo"
    assert done["sentences"] == len(said)
    assert done["usage"]["completion_tokens"] > 20
    assert worker.matching("offline demo model")
