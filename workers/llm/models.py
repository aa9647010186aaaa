"""Where the ``llm`` worker's answers come from: an OpenAI-compatible endpoint, or the
offline demo model. Both stream text; :class:`ModelError` carries a message fit for the
person who asked."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from hub.store.backend import redact

__all__ = [
    "DEMO_ANSWER",
    "OPENAI_URL",
    "Completion",
    "DemoModel",
    "Model",
    "ModelError",
    "OpenAIModel",
]

#: Where answers come from when no base URL is given (empty counts as not given).
OPENAI_URL = "https://api.openai.com/v1"


@dataclass
class Completion:
    """What a model reports beside the text, filled in as its stream goes."""

    model: str
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None


class ModelError(Exception):
    """The model failed; the message is fit for the person who asked. ``reason`` is a
    short code: ``upstream`` (an error answer), ``timeout``, ``unreachable``,
    ``incomplete`` (the stream ended early)."""

    def __init__(self, message: str, reason: str = "upstream") -> None:
        super().__init__(message)
        self.reason = reason


class Model(Protocol):
    """A source of answer text: an OpenAI-compatible endpoint, or the demo."""

    #: Where answers come from, for logs (no credentials).
    endpoint: str

    def stream(
        self, messages: list[dict[str, str]], model: str, completion: Completion
    ) -> AsyncGenerator[str, None]:
        """Yield the answer's text as it comes; raise :class:`ModelError` on failure."""
        ...

    async def aclose(self) -> None: ...


class OpenAIModel:
    """Streams chat completions from an OpenAI-compatible endpoint with ``openai``.

    The client retries connection failures and 408/409/429/5xx answers ``max_retries``
    times with back-off, before the first token only: a broken stream is an error.
    """

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        # Never None: the client would then read OPENAI_BASE_URL itself, and compose
        # passes an unset variable as an empty string, which it takes for a URL.
        base_url = base_url or OPENAI_URL
        self.endpoint = redact(base_url)
        self.timeout = timeout
        self.max_tokens = max_tokens
        # Local servers (vLLM, Ollama, llama.cpp) ignore the key, but the client wants one.
        self.client = openai.AsyncOpenAI(
            api_key=api_key or "no-key",
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    async def stream(
        self, messages: list[dict[str, str]], model: str, completion: Completion
    ) -> AsyncGenerator[str, None]:
        extra: dict[str, Any] = {}
        if self.max_tokens is not None:
            extra["max_tokens"] = self.max_tokens
        received = False
        try:
            chunks = await self.client.chat.completions.create(
                model=model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            )
            async with chunks:
                async for chunk in chunks:
                    received = True
                    completion.model = chunk.model or completion.model
                    if chunk.usage is not None:
                        completion.usage = chunk.usage.model_dump(mode="json", exclude_none=True)
                    for choice in chunk.choices:
                        if choice.index != 0:
                            continue
                        if choice.finish_reason:
                            completion.finish_reason = choice.finish_reason
                        if choice.delta is not None and choice.delta.content:
                            yield choice.delta.content
        except openai.APIStatusError as exc:
            raise ModelError(_status_message(exc)) from exc
        except openai.APITimeoutError as exc:
            raise ModelError(
                f"the model endpoint was silent for more than {self.timeout:g} s", "timeout"
            ) from exc
        except openai.APIConnectionError as exc:
            if received:
                raise ModelError(
                    "the connection to the model endpoint broke mid-answer", "incomplete"
                ) from exc
            cause = exc.__cause__ or exc
            detail = str(cause) or type(cause).__name__
            raise ModelError(
                f"could not reach the model endpoint ({detail})", "unreachable"
            ) from exc
        except openai.OpenAIError as exc:
            raise ModelError(f"the model endpoint failed: {exc}") from exc
        if completion.finish_reason is None:
            raise ModelError(
                "the model endpoint ended the stream before the answer was complete", "incomplete"
            )

    async def aclose(self) -> None:
        await self.client.close()


def _status_message(exc: openai.APIStatusError) -> str:
    """``the model endpoint answered HTTP 401: <its message>; <what to check>``."""
    status = exc.response.status_code
    body = exc.body
    detail: object = body.get("message") if isinstance(body, dict) else body
    text = f"the model endpoint answered HTTP {status}"
    if isinstance(detail, str) and detail.strip():
        text += f": {' '.join(detail.split())[:300].rstrip('.')}"
    hints = {
        401: "check OPENAI_API_KEY",
        403: "check OPENAI_API_KEY",
        404: "check the model name, and that OPENAI_BASE_URL ends in /v1",
        429: "it is busy or over quota; try again later",
    }
    if status in hints:
        text += f"; {hints[status]}"
    return text


DEMO_ANSWER = (
    "This is the offline demo model, so it did not really read your question "
    "(“{question}”). It streams a canned answer token by token, the way a real model "
    "does, and each sentence reaches your page as soon as it is complete. Numbers such "
    "as 3.14 and abbreviations such as e.g. and Dr. do not end a sentence early! "
    "Chinese works too: 每个句子一完整就会发送。不需要空格！"  # noqa: RUF001
    "To talk to a real model, set OPENAI_BASE_URL (and OPENAI_API_KEY): OpenAI, vLLM, "
    "Ollama and llama.cpp servers all work. "
    "Have fun?"
)

_DEMO_TOKENS = re.compile(r"\s*\S{1,4}")


class DemoModel:
    """Streams :data:`DEMO_ANSWER` at about ``1 / delay`` tokens a second, offline."""

    endpoint = "offline demo"

    def __init__(self, delay: float = 0.04) -> None:
        self.delay = delay

    async def stream(
        self, messages: list[dict[str, str]], model: str, completion: Completion
    ) -> AsyncGenerator[str, None]:
        question = " ".join(messages[-1]["content"].split())
        if len(question) > 80:
            question = question[:79] + "…"
        tokens = _DEMO_TOKENS.findall(DEMO_ANSWER.format(question=question))
        completion.model = "demo"
        # A real model takes a moment before its first token.
        await asyncio.sleep(self.delay * 5)
        for token in tokens:
            await asyncio.sleep(self.delay * random.uniform(0.5, 1.5))
            yield token
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        completion.usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        completion.finish_reason = "stop"

    async def aclose(self) -> None:
        pass
