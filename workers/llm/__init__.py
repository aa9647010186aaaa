"""The ``llm`` worker: answers questions over the hub, one sentence at a time.

    hub worker llm [--channel llm.requests] [--model NAME] [--concurrency 4] ...
    python -m workers.llm --demo

A request is an event on the requests channel (``llm.requests``) whose data is JSON
``{"prompt": "...", "reply_to": "<channel>", "model": "...", "system": "...",
"stream": "sentence"}`` (model, system and stream optional). ``reply_to`` is the
conversation: later questions there are answered with the earlier turns as context,
one at a time. The worker streams the answer from an OpenAI-compatible
chat-completions endpoint (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``: OpenAI, vLLM,
Ollama, llama.cpp) and publishes to ``reply_to``:

- ``event: question``, data JSON ``{"request_id", "prompt"}``, first;
- ``event: sentence``, data the sentence text, each as soon as it is complete (or
  ``event: delta``, the raw text added, at most every 50 ms, with ``"stream":
  "delta"``);
- then ``event: done``, data JSON ``{"request_id", "model", "usage", "finish_reason",
  "text", "sentences", "ms_to_first_sentence", "ms_total"}``; ``finish_reason`` is
  ``"stopped"`` after an ``event: stop`` with data ``{"request_id"}`` on the channel;
- or, when the model endpoint fails or the request is invalid, ``event: error``, data
  JSON ``{"request_id", "reason", "message"}``;
- ``event: restart`` (data JSON ``{"request_id", "reason", "message"}``) before the
  first sentence when a worker takes over a request another worker left unfinished:
  the sentences before it were a partial answer, which the client should clear.

With neither ``OPENAI_BASE_URL`` nor ``OPENAI_API_KEY`` (or with ``--demo``) it answers
with an offline demo model.

The package, one module per part:

- :mod:`workers.llm.worker`: :class:`LLMWorker`, which takes requests from the queue
  and answers several at a time, and :func:`main`;
- :mod:`workers.llm.answerer`: answering one request;
- :mod:`workers.llm.conversation`: a conversation's turns, from its channel's history;
- :mod:`workers.llm.output`: sentences or coalesced deltas;
- :mod:`workers.llm.limits`: questions per minute per token subject;
- :mod:`workers.llm.metrics`: the worker's Prometheus metrics;
- :mod:`workers.llm.request`: the request format;
- :mod:`workers.llm.queue`: the request queue, and how replicas share it;
- :mod:`workers.llm.models`: the model clients (OpenAI-compatible, and the demo);
- :mod:`workers.llm.sentences`: the sentence splitter;
- :mod:`workers.llm.options`: the worker's own options.
"""

from __future__ import annotations

from .answerer import Answerer
from .models import Completion, DemoModel, Model, ModelError, OpenAIModel
from .queue import Delivery, RequestQueue
from .request import InvalidRequest, LLMRequest, parse_request
from .sentences import SentenceSplitter
from .worker import LLMWorker, main

__all__ = [
    "Answerer",
    "Completion",
    "Delivery",
    "DemoModel",
    "InvalidRequest",
    "LLMRequest",
    "LLMWorker",
    "Model",
    "ModelError",
    "OpenAIModel",
    "RequestQueue",
    "SentenceSplitter",
    "main",
    "parse_request",
]
