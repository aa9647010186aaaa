"""``/openapi.json`` describes the real API, and fuzzing the hub against it finds no 5xx,
no hang, and no response the document does not describe.

The hub runs as a subprocess (``python -m hub serve``) on real Redis under a key prefix
of its own, started once for this module: schemathesis' pytest integration is
synchronous, and a separate process also shows what a real deployment logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import Case, CheckContext, Response
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Err
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import negative_data_rejection
from starlette.routing import Route

from hub import Settings, create_app
from hub.doors.mercure.subscriptions import PATH as SUBSCRIPTIONS_PATH
from hub.openapi import openapi_spec
from support.hubs import Backends
from support.net import free_port

#: Kept small so that fuzzing reaches the limit (the default is 100).
MAX_CHANNELS = 8


class HubProcess:
    """A hub in a subprocess; its log goes to a file the tests read."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="hub-openapi-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env["HUB_MAX_CHANNELS"] = str(MAX_CHANNELS)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hub",
                "serve",
                "--port",
                str(self.port),
                "--redis-url",
                redis_url,
                "--key-prefix",
                prefix,
                "--log-level",
                "warning",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while True:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    raise RuntimeError(f"the hub exited with {code}:\n{self.log}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the hub did not get ready:\n{self.log}")
                time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_no_unhandled_errors(self) -> None:
        """An exception inside a stream that has started cannot turn into a 500: the log
        is the only place it shows."""
        log = self.log
        assert "Traceback" not in log, log
        assert self.process.poll() is None, f"the hub exited:\n{log}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def hub(redis_url: str) -> Iterator[HubProcess]:
    backends = Backends("redis", redis_url)
    process = HubProcess(redis_url, backends.prefix)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
        backends.cleanup()


#: What the fuzz run sends and checks. Each operation gets the document's examples,
#: boundary and invalid values (coverage phase), then up to ``max-examples`` random valid
#: and invalid requests (fuzzing phase). Every response must be no 5xx, have a documented
#: status code, content type, headers and body, and invalid requests must get a 4xx.
#:
#: ``GET /events`` answers a valid request with an endless stream. Schemathesis (4.x)
#: reads a ``text/event-stream`` body only until the request timeout, or until
#: ``max-stream-events`` events have come, then checks the events it got against the
#: document: a stream that stays open passes. Hence the short timeout for ``/events``
#: (each valid subscription costs that much), and fewer examples there. Its headers come
#: at once; a stream that does not even send them in time fails with a read timeout, and
#: a real hang anywhere is cut off by pytest-timeout.
#:
#: Not checked: ``positive_data_acceptance``. The document is looser than the hub where
#: JSON Schema cannot say the rule (``maxLength`` counts characters, the hub's limit is
#: bytes; the hub refuses every unprintable character, the pattern only ASCII controls),
#: so some schema-valid names rightly get 400.
FUZZ_CONFIG: dict[str, Any] = {
    "request-timeout": 5,
    "generation": {
        "mode": "all",
        "max-examples": 150,
        # No example database in the work tree; every run explores afresh.
        "database": "none",
    },
    "phases": {"stateful": {"enabled": False}},
    "checks": {
        "enabled": False,
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
        "response_headers_conformance": {"enabled": True},
        "unsupported_method": {"enabled": True},
        "allow_header_conformance": {"enabled": True},
        # Run through the wrapper below instead; off here, its settings still apply.
        "negative_data_rejection": {"enabled": False},
    },
    "operations": [
        {
            "include-path": "/events",
            "request-timeout": 0.5,
            "max-stream-events": 1,
            "generation": {"max-examples": 50},
        },
        {
            # The Mercure subscription is an endless stream too.
            "include-path": "/.well-known/mercure",
            "include-method": "GET",
            "request-timeout": 0.5,
            "max-stream-events": 1,
            "generation": {"max-examples": 50},
        },
    ],
}


def _more_names_than_allowed_only_by_repeating_them(case: Case[Any]) -> bool:
    """``maxItems`` counts every channel name; the hub counts distinct names. A request
    over ``maxItems`` with few enough distinct names is schema-invalid yet served."""
    lists: list[object] = []
    if isinstance(case.query, dict):
        lists.append(case.query.get("channel"))
    # A batch (a list of publish objects) counts each of its events' names.
    bodies = case.body if isinstance(case.body, list) else [case.body]
    lists += [body.get("channels") for body in bodies if isinstance(body, dict)]
    for names in lists:
        if not isinstance(names, list):
            continue
        # A query sends every value as text; a body with a non-string name gets a 400 anyway.
        distinct = {n if isinstance(n, str) else json.dumps(n) for n in names}
        if len(names) > MAX_CHANNELS >= len(distinct):
            return True
    return False


def negative_data_rejection_counting_distinct_names(
    ctx: CheckContext, response: Response, case: Case[Any]
) -> bool | None:
    """Schemathesis' ``negative_data_rejection``, counting channel names as the hub does."""
    if _more_names_than_allowed_only_by_repeating_them(case):
        return None
    return negative_data_rejection(ctx, response, case)


# A batch as NDJSON is documented as text: send what is generated as it is.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")


@pytest.fixture(scope="module")
def api_schema(hub: HubProcess) -> BaseSchema:
    """The document as the hub serves it, loaded (and validated) by schemathesis."""
    config = SchemathesisConfig.from_dict({"base-url": hub.url, **FUZZ_CONFIG})
    return schemathesis.openapi.from_url(f"{hub.url}/openapi.json", config=config)


def test_openapi_json_is_served_and_matches_the_settings(hub: HubProcess) -> None:
    response = httpx.get(f"{hub.url}/openapi.json", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["openapi"] == "3.0.3"
    assert document == openapi_spec(Settings(max_channels=MAX_CHANNELS))
    assert document["components"]["schemas"]["Channels"]["maxItems"] == MAX_CHANNELS


def test_document_names_exactly_the_apps_routes(api_schema: BaseSchema) -> None:
    unreadable = [r.err() for r in api_schema.get_all_operations() if isinstance(r, Err)]
    assert not unreadable
    documented = {
        (method.upper(), path)
        for path, item in api_schema.raw_schema["paths"].items()
        for method in item
    }
    routes: set[tuple[str, str]] = set()
    for route in create_app(Settings()).routes:
        assert isinstance(route, Route)
        routes.update((method, route.path) for method in route.methods or () if method != "HEAD")
    # Served by the app ahead of its router (their parts are URL-encoded, see hub/app.py).
    routes |= {
        ("GET", SUBSCRIPTIONS_PATH),
        ("GET", SUBSCRIPTIONS_PATH + "/{topic}"),
        ("GET", SUBSCRIPTIONS_PATH + "/{topic}/{subscriber}"),
    }
    assert documented == routes


#: The document the hub serves (the first test checks that), loaded at import because
#: schemathesis parametrizes at collection time; the hub's address comes per call.
#: (``schemathesis.pytest.from_fixture`` would load it from the running hub, but does not
#: work with pytest 9.2: it sets ``Function._nodeid``, which pytest no longer has.)
fuzzed = schemathesis.openapi.from_dict(
    openapi_spec(Settings(max_channels=MAX_CHANNELS)),
    config=SchemathesisConfig.from_dict(FUZZ_CONFIG),
)


@fuzzed.parametrize()
@pytest.mark.timeout(120)
def test_fuzzing_finds_no_server_error_hang_or_undocumented_response(
    case: Case[Any], hub: HubProcess
) -> None:
    case.call_and_validate(
        base_url=hub.url, additional_checks=[negative_data_rejection_counting_distinct_names]
    )
    hub.assert_no_unhandled_errors()


def test_limits_answer_as_documented_at_their_edges(hub: HubProcess) -> None:
    """The limits random inputs rarely reach: distinct channel names, data and body size."""
    events = fuzzed["/events"]["GET"]
    names = [f"c{i}" for i in range(MAX_CHANNELS + 1)]
    case = events.Case(query={"channel": names[:MAX_CHANNELS]})
    assert case.call_and_validate(base_url=hub.url).status_code == 200
    case = events.Case(query={"channel": names})
    assert case.call_and_validate(base_url=hub.url).status_code == 400

    publish = fuzzed["/publish"]["POST"]
    limit = Settings().max_payload
    for data in ("x" * limit, "x" * (limit + 1), "x" * (limit + 100_000)):
        case = publish.Case(body={"channel": "big", "data": data}, media_type="application/json")
        response = case.call_and_validate(base_url=hub.url)
        assert response.status_code == (201 if len(data) == limit else 413)
