"""A worker's command line: the option types workers use, and the options they all share.

The shared ones say where the hub's Redis is and how to log and retry; settings left out
come from ``HUB_*`` variables, as for ``hub serve`` (:meth:`hub.Settings.from_env`).
Option types check a value before anything runs, so that a typo is a usage error
(exit 2) rather than a crash later.
"""

from __future__ import annotations

import argparse
import os

from hub.errors import BadRequest
from hub.store import check_channel

__all__ = [
    "add_common_options",
    "channel_name",
    "env_flag",
    "non_negative_int",
    "positive_float",
    "positive_int",
]


def positive_float(text: str) -> float:
    """``argparse`` type: a number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number greater than 0")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """``argparse`` type: a whole number of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def channel_name(text: str) -> str:
    """``argparse`` type: a channel name the hub accepts (checked before anything runs)."""
    try:
        return check_channel(text)
    except BadRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` says yes (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every worker has, as their own group (after the worker's own)."""
    common = parser.add_argument_group("common worker options")
    common.add_argument(
        "--redis-url", help="redis://HOST:PORT/DB the hub nodes use (HUB_REDIS_URL); required"
    )
    common.add_argument("--key-prefix", help="prefix of the hub's Redis keys (HUB_KEY_PREFIX)")
    common.add_argument(
        "--history-size", type=positive_int, help="events kept per channel (HUB_HISTORY_SIZE)"
    )
    common.add_argument("--log-level", help="debug, info, warning, error (HUB_LOG_LEVEL)")
    common.add_argument(
        "--log-json",
        action="store_true",
        default=env_flag("HUB_LOG_JSON"),
        help="log one JSON object per line (HUB_LOG_JSON=1)",
    )
    common.add_argument(
        "--retry-min",
        type=positive_float,
        default=0.5,
        metavar="SECONDS",
        help="first back-off after a failed publish (default 0.5)",
    )
    common.add_argument(
        "--retry-max",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="longest back-off between publish attempts (default 30)",
    )
