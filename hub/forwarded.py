"""The client's address and scheme as a trusted proxy gives them, without a frame.

uvicorn's ``ProxyHeadersMiddleware`` (``X-Forwarded-For``, ``X-Forwarded-Proto`` from
the addresses of ``FORWARDED_ALLOW_IPS``) wraps the app, so its coroutine frame stays
under every request for as long as the request lasts: about 0.3 KiB on every idle
stream. :class:`Forwarded` runs the same middleware to its end before the app starts,
then hands uvicorn the app's own coroutine.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import NoReturn

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

__all__ = ["Forwarded"]


async def _done(scope: Scope, receive: Receive, send: Send) -> None:
    return None


class Forwarded:
    """``app`` with uvicorn's proxy headers applied to each scope first."""

    def __init__(self, app: ASGIApp, trusted_hosts: list[str] | str) -> None:
        self.app = app
        self._rewrite = ProxyHeadersMiddleware(_done, trusted_hosts)  # type: ignore[arg-type]

    @classmethod
    def install(cls, config: uvicorn.Config) -> None:
        """Serve ``config``'s app so, instead of under uvicorn's middleware (same
        ``FORWARDED_ALLOW_IPS``)."""
        if config.proxy_headers:
            config.proxy_headers = False
            config.interface = "asgi3"  # (uvicorn cannot tell from a plain __call__)
            config.app = cls(config.app, config.forwarded_allow_ips)  # type: ignore[arg-type]

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        self.rewrite(scope)
        return self.app(scope, receive, send)

    def rewrite(self, scope: Scope) -> None:
        """Set ``scope``'s client and scheme from the proxy headers, as uvicorn would."""
        for name, _ in scope.get("headers", ()):  # (a lifespan scope has none)
            if name.startswith(b"x-forwarded-"):
                break
        else:
            return  # none to apply: what the middleware would conclude, at more cost
        step = self._rewrite(scope, _never, _never)  # type: ignore[arg-type]
        try:
            step.send(None)
        except StopIteration:
            pass  # done, as it always is: nothing in it waits
        else:
            step.close()
            raise RuntimeError("uvicorn's proxy headers middleware waited on something")


async def _never(*args: object) -> NoReturn:
    raise RuntimeError("uvicorn's proxy headers middleware used receive or send")
