"""The ``llm`` worker's own command line, and the model it makes of it.

Options about requests (which channel, how many at once, when to take one over) and
about the model (``OPENAI_BASE_URL``, ``OPENAI_MODEL``, ``OPENAI_API_KEY``, or the
offline demo). The common worker options come from :mod:`workers.options`.
"""

from __future__ import annotations

import argparse
import os

from ..options import channel_name, non_negative_int, positive_float, positive_int
from .answerer import DEFAULT_CONTEXT_BUDGET, DEFAULT_QUESTIONS_PER_MINUTE
from .models import DemoModel, Model, OpenAIModel
from .request import DEFAULT_MAX_PROMPT

__all__ = ["add_arguments", "model_from"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``requests`` and ``model`` option groups to ``parser``."""
    requests = parser.add_argument_group("requests")
    requests.add_argument(
        "--channel",
        type=channel_name,
        default="llm.requests",
        help="channel requests are published to (default: llm.requests)",
    )
    requests.add_argument(
        "--group", default="llm", help="Redis consumer group the replicas share (default: llm)"
    )
    requests.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="requests answered at once by this process (default: 4)",
    )
    requests.add_argument(
        "--claim-after",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="take over a request another worker left unanswered this long (default: 30)",
    )
    requests.add_argument(
        "--drain-timeout",
        type=positive_float,
        default=20.0,
        metavar="SECONDS",
        help="on SIGTERM, let answers in flight finish this long, then hand them back "
        "(default: 20)",
    )
    requests.add_argument(
        "--max-prompt",
        type=positive_int,
        default=DEFAULT_MAX_PROMPT,
        metavar="CHARS",
        help=f"longest prompt answered, in characters (default: {DEFAULT_MAX_PROMPT})",
    )
    requests.add_argument(
        "--context-budget",
        type=non_negative_int,
        default=DEFAULT_CONTEXT_BUDGET,
        metavar="CHARS",
        help="earlier questions and answers of a conversation given to the model, in "
        f"characters; the oldest drop first (default: {DEFAULT_CONTEXT_BUDGET})",
    )
    requests.add_argument(
        "--questions-per-minute",
        type=non_negative_int,
        default=DEFAULT_QUESTIONS_PER_MINUTE,
        metavar="N",
        help="questions one token subject may ask per minute, when the hub checks "
        f"tokens; beyond it an error event says so (0: no limit; default: "
        f"{DEFAULT_QUESTIONS_PER_MINUTE})",
    )
    requests.add_argument(
        "--turn-timeout",
        type=positive_float,
        default=120.0,
        metavar="SECONDS",
        help="a question waiting for an earlier one of its conversation stops waiting "
        "after this long without any event there; keep it above --claim-after and a "
        "model's thinking time (default: 120)",
    )
    requests.add_argument(
        "--metrics-port",
        type=positive_int,
        metavar="PORT",
        help="serve the worker's Prometheus metrics on this port (default: none)",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL") or None,
        help="OpenAI-compatible API, e.g. http://localhost:11434/v1 (OPENAI_BASE_URL); "
        "the key comes from OPENAI_API_KEY",
    )
    model.add_argument(
        "--model",
        default=os.environ.get("OPENAI_MODEL") or "gpt-4o-mini",
        help="model unless a request names one (OPENAI_MODEL, default: gpt-4o-mini)",
    )
    model.add_argument("--system", help="system prompt unless a request gives one")
    model.add_argument(
        "--max-tokens", type=positive_int, metavar="N", help="cap on each answer's length"
    )
    model.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="longest silence from the endpoint: connecting, or between chunks (default: 60)",
    )
    model.add_argument(
        "--max-retries",
        type=non_negative_int,
        default=2,
        metavar="N",
        help="retries of a request the endpoint refused as busy or failed to connect (default: 2)",
    )
    model.add_argument(
        "--demo",
        action="store_true",
        help="answer with the offline demo model even if an endpoint is configured",
    )
    model.add_argument(
        "--demo-delay",
        type=positive_float,
        default=0.04,
        metavar="SECONDS",
        help="the demo model's mean pause between tokens (default: 0.04)",
    )


def model_from(options: argparse.Namespace) -> Model:
    """The model the options ask for: the demo with ``--demo``, or when neither an
    endpoint nor a key is given; otherwise the OpenAI-compatible endpoint."""
    api_key = os.environ.get("OPENAI_API_KEY") or None
    if options.demo or (options.base_url is None and api_key is None):
        return DemoModel(options.demo_delay)
    return OpenAIModel(
        base_url=options.base_url,
        api_key=api_key,
        max_tokens=options.max_tokens,
        timeout=options.timeout,
        max_retries=options.max_retries,
    )
