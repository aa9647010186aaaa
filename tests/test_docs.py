"""Docs that cannot go stale: every shell and Python block of README.md and docs/*.md
runs here against a live hub, the settings table is the one ``hub.config`` gives, and
every repository file the docs name exists.

Each ```sh, ```bash, ```shell, ```console and ```python block is run: a shell block with
``bash -euo pipefail``, a ``console`` block's ``$`` lines likewise, a Python block as a
script (``python -W error``), all from the repository's root with ``.venv/bin`` first on
``PATH``. Before it runs, a block is pointed at the test's own hub, on the Redis the
suite uses, under a key prefix of this run: ``127.0.0.1:8000`` and ``localhost:8000``
become the hub's port, ``redis://127.0.0.1:6379/0`` the test's Redis, ``hub:`` keys
the run's prefix (also in ``HUB_KEY_PREFIX``), ``redis-cli`` gets ``-u <redis>``, and
``HUB_URL`` names the hub (the default of ``hub publish`` and ``hub tail``). curl runs
with ``--fail-with-body``: an error status fails the block. A block passes when it exits
0 within BLOCK_TIMEOUT seconds; a failing block fails its own test, named
``page:line``, with its output and the hub's log.

An HTML comment on the line right before a block (blank lines between are allowed)
says how to run it; nothing else may stand there:

    <!-- not run: REASON -->
        the block is not run; REASON, which says why, is required.
    <!-- run: DIRECTIVE; DIRECTIVE ... -->
        background      the block runs while the next run block of the page runs, then
                        is stopped; the pair is one test
        ready `TEXT`    (with background) the next block starts once TEXT is in this
                        one's output; without it, once the hub counts one more open stream
        expect `TEXT`   the output must contain TEXT (repeatable); a block that has not
                        ended by then is stopped once it does (a stream, a worker)
        hub `VAR=value ...`
                        run against a hub started with these extra variables

Regenerate the settings table of docs/configuration.md with
``.venv/bin/python scripts/settings_table.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO

import httpx
import pytest
import redis

from hub.config import Settings
from support.net import free_port

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "shell", "console"}
RUN = {*SHELLS, "python"}
#: Seconds a block that ends by itself may take.
BLOCK_TIMEOUT = 20.0
#: Seconds a block that runs until stopped has to print what is expected of it.
STREAM_TIMEOUT = 15.0

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_COMMENT = re.compile(r"<!--(?P<body>.*?)-->")
_DIRECTIVE = re.compile(r"^(?:(?P<flag>background)|(?P<name>ready|expect|hub) `(?P<text>[^`]+)`)$")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    #: ``not run`` reason, or None.
    skip: str | None = None
    background: bool = False
    ready: str | None = None
    expect: list[str] = field(default_factory=list)
    hub_env: tuple[tuple[str, str], ...] = ()
    #: The file this block quotes (``excerpt``), or None.
    excerpt: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _apply_marker(block: Block, text: str, problems: list[str]) -> None:
    kind, colon, body = text.partition(":")
    kind, body = kind.strip(), body.strip()
    if not colon or kind not in ("not run", "run", "excerpt"):
        problems.append(
            f"{block.where}: the comment before the block must be `<!-- not run: REASON -->`, "
            f"`<!-- run: DIRECTIVES -->` or `<!-- excerpt: PATH -->`, not {text!r}"
        )
        return
    if kind == "excerpt":
        if block.lang in RUN:
            problems.append(f"{block.where}: an excerpt is never run: not ```{block.lang}")
        block.excerpt = body
        return
    if block.lang not in RUN:
        problems.append(
            f"{block.where}: `{kind}` on a ```{block.lang or '(no language)'} block, "
            "which is never run"
        )
        return
    if kind == "not run":
        if not body:
            problems.append(f"{block.where}: `<!-- not run: REASON -->` needs its reason")
        block.skip = body or "(no reason)"
        return
    for part in re.findall(r"(?:[^;`]|`[^`]*`)+", body):
        directive = _DIRECTIVE.match(part.strip())
        if directive is None:
            problems.append(f"{block.where}: unknown run directive {part.strip()!r}")
        elif directive["flag"]:
            block.background = True
        elif directive["name"] == "ready":
            block.ready = directive["text"]
        elif directive["name"] == "expect":
            block.expect.append(directive["text"])
        else:
            pairs = [item.partition("=") for item in shlex.split(directive["text"])]
            if not all(name.startswith("HUB_") and eq for name, eq, _ in pairs):
                problems.append(f"{block.where}: `hub` takes HUB_NAME=value pairs")
            block.hub_env = tuple((name, value) for name, _, value in pairs)
    if block.ready and not block.background:
        problems.append(f"{block.where}: `ready` only means something with `background`")


def parse(path: Path, page: str | None = None) -> tuple[list[Block], list[str]]:
    """The fenced blocks of one page, with their markers; and what is wrong with them."""
    page = page or path.relative_to(REPO).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    last_text: int | None = None  # the last non-blank line seen
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            if lines[i].strip():
                last_text = i
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.fullmatch(
            rf" *{re.escape(fence[0])}{{{len(fence)},}} *", lines[i]
        ):
            body.append(lines[i].removeprefix(indent))
            i += 1
        if i == len(lines):
            problems.append(f"{page}:{start + 1}: the block is never closed")
        block = Block(page, start + 1, info.split()[0].lower() if info else "", "\n".join(body))
        before = lines[last_text].strip() if last_text is not None else ""
        comment = _COMMENT.fullmatch(before)
        if comment is not None:
            _apply_marker(block, comment["body"].strip(), problems)
        blocks.append(block)
        last_text = i
        i += 1
    return blocks, problems


@dataclass
class Unit:
    """One test: a block, or a background block and the block it runs beside."""

    blocks: list[Block]

    @property
    def id(self) -> str:
        return self.blocks[0].where


def collect() -> tuple[list[Unit], list[str]]:
    units: list[Unit] = []
    problems: list[str] = []
    for path in PAGES:
        blocks, found = parse(path)
        problems += found
        runnable = [b for b in blocks if b.lang in RUN and b.skip is None and not b.excerpt]
        i = 0
        while i < len(runnable):
            block = runnable[i]
            if not block.background:
                units.append(Unit([block]))
                i += 1
                continue
            partner = runnable[i + 1] if i + 1 < len(runnable) else None
            if partner is None or partner.background or partner.hub_env:
                problems.append(
                    f"{block.where}: a `background` block needs a next run block, "
                    "itself neither `background` nor with a `hub` of its own"
                )
                i += 1
                continue
            units.append(Unit([block, partner]))
            i += 2
    return units, problems


UNITS, PROBLEMS = collect()


# -- the hubs the blocks run against ------------------------------------------------------


class DocsHub:
    """``python -m hub serve`` on a free port, on the test's Redis and prefix."""

    def __init__(self, redis_url: str, prefix: str, extra: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "OPENAI_"))}
        env.update(HUB_REDIS_URL=redis_url, HUB_KEY_PREFIX=prefix, HUB_LOG_LEVEL="warning", **extra)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve", "--port", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the docs' hub did not get ready:\n{self.log()}", pytrace=False)
            time.sleep(0.05)

    def connections(self) -> int:
        """Open native streams, as ``/readyz`` counts them."""
        count = httpx.get(f"{self.url}/readyz", timeout=5).json().get("connections", 0)
        return int(count)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Hubs:
    """The hubs of this module, one per set of extra variables, started when first asked."""

    def __init__(self, redis_url: str, logs: Path) -> None:
        self.redis_url = redis_url
        self.prefix = f"docs:{uuid.uuid4().hex[:10]}:"
        self._logs = logs
        self._made: dict[tuple[tuple[str, str], ...], DocsHub] = {}

    def get(self, extra: tuple[tuple[str, str], ...]) -> DocsHub:
        if extra not in self._made:
            log = self._logs / f"hub-{len(self._made)}.log"
            self._made[extra] = DocsHub(self.redis_url, self.prefix, dict(extra), log)
        return self._made[extra]

    def close(self) -> None:
        for hub in self._made.values():
            hub.stop()
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@pytest.fixture(scope="module")
def hubs(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hubs]:
    made = Hubs(redis_url, tmp_path_factory.mktemp("docs-hubs"))
    try:
        yield made
    finally:
        made.close()


# -- running blocks -----------------------------------------------------------------------


def rewrite(code: str, hub: DocsHub, hubs: Hubs) -> str:
    """Point a block at the test's hub, Redis and key prefix (see the module docstring)."""
    code = re.sub(r"\b(?:127\.0\.0\.1|localhost):8000\b", f"127.0.0.1:{hub.port}", code)
    code = code.replace("redis://127.0.0.1:6379/0", hubs.redis_url)
    code = re.sub(r"\bhub:(?=[A-Za-z_{])", hubs.prefix, code)
    return re.sub(r"\bredis-cli\b", f"redis-cli -u {hubs.redis_url}", code)


def console_commands(code: str) -> str:
    """The commands of a ``console`` block: its ``$`` lines and their continuations."""
    commands: list[str] = []
    continued = False
    for line in code.splitlines():
        if continued or line.startswith("$ "):
            commands.append(line if continued else line[2:])
            continued = line.endswith("\\")
    return "\n".join(commands)


class Running:
    """One block running in its own process group; its output (stdout and stderr) in a file."""

    def __init__(self, block: Block, hub: DocsHub, hubs: Hubs, tmp: Path) -> None:
        self.block = block
        self.code = code = rewrite(block.code, hub, hubs)
        if block.lang == "python":
            script = tmp / f"block-{block.line}.py"
            script.write_text(code + "\n", encoding="utf-8")
            argv = [sys.executable, "-W", "error", str(script)]
        else:
            if block.lang == "console":
                code = console_commands(code)
            argv = ["bash", "-euo", "pipefail", "-c", code]
        (tmp / ".curlrc").write_text("--silent\n--show-error\n--fail-with-body\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "OPENAI_"))}
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            HUB_KEY_PREFIX=hubs.prefix,
            HUB_URL=hub.url,
            CURL_HOME=str(tmp),
            PYTHONUNBUFFERED="1",
        )
        self.out_path = tmp / f"block-{block.line}.out"
        self._out: IO[bytes] = self.out_path.open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def ended(self) -> bool:
        return self.process.poll() is not None

    def wait_for(self, texts: list[str], timeout: float) -> bool:
        """True once every text is in the output; False if the block ended or time ran out."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.ended()  # before reading: output written before the end counts
            if all(text in self.output() for text in texts):
                return True
            if ended or time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def stop(self) -> None:
        """End the block and whatever it started (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything it left behind
        self._out.close()


def fail(running: Running, hub: DocsHub, why: str) -> None:
    block = running.block
    pytest.fail(
        f"{block.where} (```{block.lang}) {why}\n"
        f"--- the block, as run ---\n{running.code}\n"
        f"--- its output ---\n{running.output()[-4000:]}\n"
        f"--- the hub's log ---\n{hub.log()[-2000:]}",
        pytrace=False,
    )


def run_to_end(running: Running, hub: DocsHub) -> None:
    """Wait for a block in the foreground: it ends with 0, or prints what it must."""
    block = running.block
    if block.expect:
        found = running.wait_for(block.expect, STREAM_TIMEOUT)
        if not found:
            if not running.ended():
                fail(running, hub, f"did not print {block.expect} within {STREAM_TIMEOUT}s")
            fail(running, hub, f"ended ({running.process.returncode}) without {block.expect}")
        if running.ended() and running.process.returncode != 0:
            fail(running, hub, f"exited with {running.process.returncode}")
        return
    try:
        code = running.process.wait(BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        fail(
            running,
            hub,
            f"still running after {BLOCK_TIMEOUT}s; a block that runs until stopped needs "
            "`<!-- run: expect `TEXT` -->` or `background`",
        )
    if code != 0:
        fail(running, hub, f"exited with {code}")


@pytest.mark.parametrize("unit", UNITS, ids=[unit.id for unit in UNITS])
def test_block(unit: Unit, hubs: Hubs, tmp_path: Path) -> None:
    hub = hubs.get(unit.blocks[0].hub_env)
    started: list[Running] = []
    try:
        if len(unit.blocks) == 1:
            started.append(Running(unit.blocks[0], hub, hubs, tmp_path))
            run_to_end(started[0], hub)
            return
        first, second = unit.blocks
        streams = hub.connections()
        background = Running(first, hub, hubs, tmp_path)
        started.append(background)
        if first.ready is not None:
            if not background.wait_for([first.ready], STREAM_TIMEOUT):
                fail(background, hub, f"did not print {first.ready!r} (its `ready`)")
        else:
            deadline = time.monotonic() + STREAM_TIMEOUT
            while hub.connections() <= streams:
                if background.ended() or time.monotonic() > deadline:
                    fail(background, hub, "opened no stream on the hub (give it a `ready`)")
                time.sleep(0.05)
        started.append(Running(second, hub, hubs, tmp_path))
        run_to_end(started[1], hub)
        if not background.wait_for(first.expect, STREAM_TIMEOUT):
            fail(background, hub, f"did not print {first.expect} while the next block ran")
        if background.ended() and background.process.returncode != 0:
            fail(background, hub, f"exited with {background.process.returncode}")
    finally:
        for running in reversed(started):
            running.stop()


def test_markers() -> None:
    """Every marker is one the runner knows, every `not run` says why."""
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert UNITS, "no runnable blocks found"


def test_marker_mistakes_are_reported(tmp_path: Path) -> None:
    """The runner's own check: a marker it cannot honour is a problem, not a skip."""
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not run: -->\n```sh\ntrue\n```\n\n"
        "<!-- run: expect `x`; frobnicate -->\n```python\npass\n```\n\n"
        "<!-- not run: a reason -->\n```js\n1\n```\n\n"
        "<!-- todo -->\n```sh\ntrue\n```\n\n"
        "<!-- run: background; ready `: connected` -->\n```console\n$ echo a \\\n"
        "  b\nan output line\n```\n",
        encoding="utf-8",
    )
    blocks, problems = parse(page, "page.md")
    assert [b.line for b in blocks] == [2, 7, 12, 17, 22]
    assert len(problems) == 4, problems
    assert "needs its reason" in problems[0]
    assert "frobnicate" in problems[1]
    assert "never run" in problems[2]
    assert "todo" in problems[3]
    assert blocks[4].background
    assert blocks[4].ready == ": connected"
    assert console_commands(blocks[4].code) == "echo a \\\n  b"


def test_excerpts() -> None:
    """A block marked as an excerpt of a file has only lines of that file."""
    checked = 0
    for path in PAGES:
        for block in parse(path)[0]:
            if block.excerpt is None:
                continue
            source = REPO / block.excerpt
            assert source.is_file(), f"{block.where}: no file {block.excerpt}"
            lines = {line.strip() for line in source.read_text(encoding="utf-8").splitlines()}
            stale = [line for line in block.code.splitlines() if line.strip() not in lines]
            assert not stale, f"{block.where}: not lines of {block.excerpt}: {stale}"
            checked += 1
    assert checked, "no excerpts found"


def test_metrics_table(hubs: Hubs) -> None:
    """The metrics table of docs/production.md lists what /metrics serves, with types."""
    page = (REPO / "docs" / "production.md").read_text(encoding="utf-8")
    row = re.compile(r"^\| `(hub_\w+)(?:\{\w+\})?` \| (\w+) \|", re.MULTILINE)
    documented = set(row.findall(page))
    text = httpx.get(f"{hubs.get(()).url}/metrics", timeout=10).text
    served = {
        (name, kind)
        for name, kind in re.findall(r"^# TYPE (hub_\w+) (\w+)$", text, re.MULTILINE)
        if not name.endswith("_created")
    }
    assert documented == served, (
        f"documented, not served: {sorted(documented - served)}; "
        f"served, not documented: {sorted(served - documented)}"
    )


# -- the settings table -------------------------------------------------------------------


def _settings_table() -> ModuleType:
    path = REPO / "scripts" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("settings_table", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_table_is_current() -> None:
    generator = _settings_table()
    page = generator.PAGE.read_text(encoding="utf-8")
    assert generator.render(page) == page, (
        "the settings table of docs/configuration.md differs from hub.config.Settings; "
        "regenerate it with: .venv/bin/python scripts/settings_table.py"
    )


def test_settings_flags_exist() -> None:
    """The table's flags are the ones ``hub serve`` takes."""
    generator = _settings_table()
    help_text = subprocess.run(
        [sys.executable, "-m", "hub", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    missing = [
        generator.flag(f) for f in generator.settings() if generator.flag(f) not in help_text
    ]
    assert not missing, f"hub serve --help has no {missing}"
    assert {f.name for f in generator.settings()} == set(Settings.__dataclass_fields__)


# -- files the docs name ------------------------------------------------------------------

_ROOTS = ("hub/", "workers/", "tests/", "bench/", "deploy/", "scripts/", "docs/", ".ci/")
_ROOT_FILES = {
    "Dockerfile",
    "docker-compose.yml",
    "docker-compose.cluster.yml",
    "pyproject.toml",
    "mkdocs.yml",
    "README.md",
}


def named_paths(text: str) -> set[str]:
    """Repository paths in code spans and link targets (no wildcards or placeholders)."""
    found = set()
    for candidate in re.findall(r"`([^`\s]+)`|\]\(([^)\s#]+)", text):
        path = next(c for c in candidate if c).removeprefix("../")
        if re.search(r"[*{}<>$]|://", path):
            continue
        if path in _ROOT_FILES or path.startswith(_ROOTS):
            found.add(path.rstrip("/"))
    return found


CHECKED = PAGES


@pytest.mark.parametrize("page", CHECKED, ids=[p.relative_to(REPO).as_posix() for p in CHECKED])
def test_named_files_exist(page: Path) -> None:
    base = REPO if page.parent == REPO else page.parent
    missing = sorted(
        p
        for p in named_paths(page.read_text(encoding="utf-8"))
        if not (REPO / p).exists() and not (base / p).exists()
    )
    assert not missing, f"{page.relative_to(REPO)} names files that do not exist: {missing}"
