"""A local JWKS endpoint that rotates its keys, and the signing keys behind it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa


class SigningKey:
    """A private key with a ``kid``: signs tokens; its public half goes in the JWKS."""

    def __init__(self, algorithm: str = "RS256", kid: str | None = None) -> None:
        self.algorithm = algorithm
        self.kid = kid or f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
        self.private: Any
        if algorithm == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self._jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif algorithm == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self._jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            raise ValueError(f"no test keys for {algorithm}")

    def jwk(self) -> dict[str, Any]:
        return {**self._jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def sign(self, claims: dict[str, Any], *, kid: str | None = None, **headers: Any) -> str:
        """A token of ``claims`` (an hour's ``exp`` added), with this key's ``kid`` unless
        ``kid`` names another."""
        payload = {"exp": int(time.time()) + 3600, **claims}
        return jwt.encode(
            payload,
            self.private,
            algorithm=self.algorithm,
            headers={"kid": kid or self.kid, **headers},
        )


class JWKSServer:
    """Serves ``/jwks.json`` on a loopback port, from a thread (the hub fetches it
    without blocking its loop; the test's loop must not have to serve it either)."""

    def __init__(self, *keys: SigningKey, port: int = 0) -> None:
        self.keys = list(keys)
        #: The status it answers with; set it to 503 to take the endpoint "down".
        self.status = 200
        #: The body it answers with, when a test wants it to say something else.
        self.body: bytes | None = None
        #: Seconds it waits before answering (a stalled endpoint).
        self.delay = 0.0
        #: Requests answered so far.
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                time.sleep(server.delay)
                body = server.body
                if body is None:
                    body = json.dumps({"keys": [k.jwk() for k in server.keys]}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def rotate(self, new: SigningKey, *, keep: int = 0) -> None:
        """Publish ``new``; keep only the newest ``keep`` of the old keys."""
        self.keys = [*self.keys[len(self.keys) - keep :], new] if keep else [new]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
