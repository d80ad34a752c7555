"""Handshakes by token algorithm (``wsrt bench -s handshakes``).

One server verifies HS256 tokens with its secret and RS256 and ES256 tokens
with keys from a JWKS endpoint the scenario serves itself (and counts the
fetches of). For each algorithm the load client opens connections, each with a
token of its own, as fast as ``concurrency`` lets it; the legs alternate over
rounds so that a drift of the shared machine falls on every algorithm alike.
Figures: handshakes per second, server CPU per connection (accept, upgrade,
verification, register and close, from the server's own CPU time), the ratio
against HS256 in the same run, and how many JWKS fetches the handshakes caused
(the key cache keeps the endpoint out of the hot path: none).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from wsrt.bench.run import SECRET, Bench, Result, _cpu_seconds
from wsrt.metrics import total
from wsrt.tokens import mint_token
from wsrt.tools.server import ServerProcess

ALGORITHMS = ("HS256", "RS256", "ES256")


class _Keys:
    """An RSA and a P-256 key, their JWKS, and tokens signed with them (HS256: the secret)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> bytes:
        from jwt.algorithms import ECAlgorithm, RSAAlgorithm

        keys = [
            {**RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True),
             "kid": "bench-RS256", "use": "sig"},
            {**ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True),
             "kid": "bench-ES256", "use": "sig"},
        ]  # fmt: skip
        return json.dumps({"keys": keys}).encode()

    def tokens(self, algorithm: str, count: int, secret: str) -> list[str]:
        import jwt

        expires = int(time.time()) + 24 * 3600
        if algorithm == "HS256":
            return [mint_token(secret, f"bench-{n}", ttl=24 * 3600) for n in range(count)]
        key = self.rsa if algorithm == "RS256" else self.ec
        kid = f"bench-{algorithm}"
        return [
            jwt.encode({"sub": f"bench-{n}", "exp": expires}, key, algorithm, {"kid": kid})
            for n in range(count)
        ]


@contextmanager
def jwks_endpoint(document: bytes) -> Iterator[tuple[str, list[float]]]:
    """An HTTP server answering ``document`` on 127.0.0.1; its URL and the times of its GETs."""
    fetches: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(time.monotonic())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks", fetches
    finally:
        server.shutdown()
        server.server_close()


class HandshakeBench(Bench):
    def handshakes(self) -> list[Result]:
        s = self.scale
        keys = _Keys()
        files: dict[str, list[Path]] = {a: [] for a in ALGORITHMS}
        for algorithm in ALGORITHMS:
            for round_ in range(s.handshake_rounds):
                path = self.workdir / f"tokens-{algorithm}-{round_}.txt"
                tokens = keys.tokens(algorithm, s.handshake_count, SECRET)
                path.write_text("\n".join(tokens) + "\n")
                files[algorithm].append(path)
        topic = self.new_topic("handshakes")
        legs: dict[str, list[dict[str, float]]] = {a: [] for a in ALGORITHMS}
        with jwks_endpoint(keys.jwks()) as (url, fetches):
            env = {"WS_AUTH_ALGORITHMS": ",".join(ALGORITHMS), "WS_AUTH_JWKS_URL": url}
            with self.server(topic, env) as server:
                at_start = len(fetches)
                for round_ in range(s.handshake_rounds):
                    for n, algorithm in enumerate(ALGORITHMS):
                        source = f"127.0.0.{2 + (round_ * len(ALGORITHMS) + n) % 200}"
                        legs[algorithm].append(
                            self._leg(server, topic, files[algorithm][round_], source)
                        )
                during = len(fetches) - at_start
        return [self._result(legs, at_start, during)]

    def _leg(
        self, server: ServerProcess, topic: str, tokens: Path, source: str
    ) -> dict[str, float]:
        """One algorithm's connections opened and closed; client and server figures."""
        before = _cpu_seconds(server.pid)
        params = {
            "mode": "handshakes", "url": server.url, "channel": topic, "tokens": str(tokens),
            "concurrency": self.scale.handshake_concurrency, "source": source,
        }  # fmt: skip
        with self.client(params) as client:
            result = self.line(client, 600)
        # Every connection closed again: its whole cost is in the CPU figure.
        self._sample_until(server, lambda m: total(m, "wsrt_connections") == 0)
        spent = _cpu_seconds(server.pid) - before
        return {
            "upgraded": result["upgraded"], "failed": result["failed"],
            "per_s": result["upgraded"] / result["seconds"] if result["seconds"] else 0.0,
            "cpu_us": spent / max(1, result["upgraded"]) * 1e6, "errors": result["errors"],
        }  # fmt: skip

    def _result(self, legs: dict[str, list[dict[str, Any]]], at_start: int, during: int) -> Result:
        s = self.scale

        def median(algorithm: str, name: str) -> float:
            values = sorted(leg[name] for leg in legs[algorithm])
            return float(values[len(values) // 2])

        figures: dict[str, Any] = {
            "connections per leg": s.handshake_count, "rounds": s.handshake_rounds,
            "concurrency": s.handshake_concurrency,
        }  # fmt: skip
        for algorithm in ALGORITHMS:
            figures[f"{algorithm} handshakes/s"] = median(algorithm, "per_s")
            figures[f"{algorithm} server CPU µs/conn"] = median(algorithm, "cpu_us")
        base = median("HS256", "cpu_us")
        for algorithm in ALGORITHMS[1:]:
            ratio = median(algorithm, "cpu_us") / base if base else 0.0
            figures[f"{algorithm} CPU/conn vs HS256"] = f"{ratio:.2f}x"
        figures["JWKS fetches: at start, during handshakes"] = f"{at_start}, {during}"
        errors = sorted({e for legs_ in legs.values() for leg in legs_ for e in leg["errors"]})
        if errors:
            figures["errors"] = "; ".join(errors[:3])
        every = [leg for legs_ in legs.values() for leg in legs_]
        return Result(
            "handshakes by algorithm",
            figures,
            {
                "every handshake upgraded": all(
                    leg["upgraded"] == s.handshake_count and leg["failed"] == 0 for leg in every
                ),
                "the JWKS was fetched at start and not per handshake": (at_start, during) == (1, 0),
            },
        )
