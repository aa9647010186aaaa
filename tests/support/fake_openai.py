"""A fake OpenAI-compatible chat-completions server for the llm worker's tests.

It speaks the real streaming wire format, can be told to answer slowly, fail, or cut
the stream, and records what it was asked and when each client hung up.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Script:
    """How the fake server answers: tokens, pacing, and which failure to stage."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", " there", ".", " Bye", "!"])
    delay: float = 0.0  # before each token
    status: int = 200  # anything else: an error answer, OpenAI-style
    message: str = "The server had an error while processing your request."
    drop_after: int | None = None  # tokens sent before the connection is cut
    finish: bool = True  # finish_reason, usage and [DONE]; else the stream just ends


class FakeOpenAI:
    """``POST /v1/chat/completions`` with ``stream: true``, in OpenAI's wire format:
    ``data: {chunk}`` lines over chunked HTTP/1.1, then ``data: [DONE]``."""

    def __init__(self) -> None:
        self.script = Script()
        #: Scripts for particular prompts; others get ``script``.
        self.scripts: dict[str, Script] = {}
        self.requests: list[dict[str, Any]] = []
        self.authorization: list[str | None] = []
        self.streaming = 0
        self.max_streaming = 0
        #: ``time.monotonic()`` of each client that hung up before its stream ended.
        self.hangups: list[float] = []
        #: Tokens sent in all, and the prompts of streams that ran to their end.
        self.tokens_sent = 0
        self.completed: list[str] = []
        self._hung_up = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def prompts(self) -> list[str]:
        return [r["messages"][-1]["content"] for r in self.requests]

    async def wait_for_hangup(self, timeout: float) -> float:
        """Wait until a client hangs up mid-stream; return when it did."""
        await asyncio.wait_for(self._hung_up.wait(), timeout)
        return self.hangups[-1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the worker went away (killed, or cancelled the answer)
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        assert request_line.startswith("POST /v1/chat/completions "), request_line
        self.requests.append(body)
        self.authorization.append(headers.get("authorization"))
        script = self.scripts.get(body["messages"][-1]["content"], self.script)
        if script.status != 200:
            error = {"error": {"message": script.message, "type": "server_error", "code": None}}
            content = json.dumps(error).encode()
            writer.write(
                f"HTTP/1.1 {script.status} Oops\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n".encode()
                + content
            )
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        self.streaming += 1
        self.max_streaming = max(self.max_streaming, self.streaming)
        # The client sends nothing more: the read ends when it closes the connection.
        closed = asyncio.create_task(reader.read(1))
        streaming = asyncio.create_task(self._stream(writer, body, script))
        try:
            await asyncio.wait({closed, streaming}, return_when=asyncio.FIRST_COMPLETED)
            if closed.done() and not streaming.done():
                self.hangups.append(time.monotonic())
                self._hung_up.set()
            elif streaming.done() and streaming.exception() is None:
                self.completed.append(body["messages"][-1]["content"])
        finally:
            self.streaming -= 1
            for task in (closed, streaming):
                task.cancel()
            await asyncio.gather(closed, streaming, return_exceptions=True)

    async def _stream(
        self, writer: asyncio.StreamWriter, body: dict[str, Any], script: Script
    ) -> None:
        def send(data: str) -> None:
            payload = f"data: {data}\n\n".encode()
            writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")

        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            return json.dumps({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                "model": body["model"], "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            })  # fmt: skip

        send(chunk({"role": "assistant", "content": ""}))
        for n, token in enumerate(script.tokens):
            if script.drop_after == n:
                await writer.drain()
                writer.transport.abort()
                return
            await asyncio.sleep(script.delay)
            send(chunk({"content": token}))
            await writer.drain()
            self.tokens_sent += 1
        if script.finish:
            send(chunk({}, finish="stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 7, "completion_tokens": len(script.tokens)}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                send(json.dumps({
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk",
                    "created": 1700000000, "model": body["model"], "choices": [], "usage": usage,
                }))  # fmt: skip
            send("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
