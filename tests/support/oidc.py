"""A real OAuth token issuer on loopback: ``oidc-provider`` from npm, run with Node.js.

The package is installed once with npm into the cache directory that keeps
Kafka's jars (``WSRT_CACHE_DIR``), then reused. :class:`Issuer` starts
``oidc_issuer.mjs`` there on a free port: one client with the client
credentials grant, RS256 JWT access tokens for the audience ``kafka``, the
signing keys at ``/jwks`` and the tokens at ``/token``. Each token it grants
is a ``{"event":"token"}`` line, so a test can count them.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from wsrt.brokers import BrokerError, free_port
from wsrt.brokers.apache import cache_dir
from wsrt.process import Child

PACKAGE = "oidc-provider@9.13.3"
CLIENT_ID, CLIENT_SECRET = "wsrt", "wsrt-oauth-client-secret-0123"
AUDIENCE = "kafka"


def install() -> Path:
    """The directory with ``node_modules/oidc-provider`` (npm install on first use)."""
    target = cache_dir().parent / PACKAGE.replace("@", "-")
    if (target / ".complete").exists():
        return target
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise BrokerError("the OAuth issuer of the tests needs Node.js and npm on PATH")
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            result = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(target), PACKAGE],
                capture_output=True, text=True,
            )  # fmt: skip
            if result.returncode != 0:
                raise BrokerError(f"npm could not install {PACKAGE}:\n{result.stderr[-3000:]}")
            (target / ".complete").write_text(PACKAGE + "\n")
    return target


def _event(line: str) -> dict[str, Any]:
    try:
        parsed = json.loads(line)
    except ValueError:
        return {"event": "raw", "message": line.rstrip()}
    return parsed if isinstance(parsed, dict) else {"event": "raw", "message": line.rstrip()}


def signing_key(kid: str) -> dict[str, Any]:
    """A new RSA private key as a JWK with ``kid`` (for :attr:`Issuer.keys`)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


class Issuer:
    """oidc-provider on ``127.0.0.1:port``, its tokens valid ``ttl`` seconds; ``keys``
    (private JWKs, the first signing) replace its development key; set it again and
    restart to rotate; ``claims`` go into every access token."""

    def __init__(
        self,
        ttl: int = 300,
        keys: list[dict[str, Any]] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> None:
        self.port = free_port()
        self.ttl = ttl
        self.keys = keys
        self.claims = claims
        self.child: Child[dict[str, Any]] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def start(self, timeout: float = 60) -> Issuer:
        home = install()
        script = home / "oidc_issuer.mjs"  # beside node_modules, where its import resolves
        shutil.copyfile(Path(__file__).with_name("oidc_issuer.mjs"), script)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "PORT": str(self.port),
            "TOKEN_TTL": str(self.ttl), "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET,
            "AUDIENCE": AUDIENCE,
        }  # fmt: skip
        if self.keys:
            env["JWKS"] = json.dumps({"keys": self.keys})
        if self.claims:
            env["CLAIMS"] = json.dumps(self.claims)
        node = shutil.which("node")
        assert node is not None
        self.child = Child([node, str(script)], parse=_event, env=env, cwd=home, merge_stderr=True)
        self.child.start()
        if self.child.wait_for(lambda e: e.get("event") == "listening", timeout) is None:
            lines = [e.get("message", e) for e in self.child.items]
            self.stop()
            raise BrokerError(f"the OAuth issuer did not start: {lines[-20:]}")
        return self

    def token(self) -> str:
        """An access token the way an app gets one: client credentials at ``/token``."""
        import base64
        import urllib.request

        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        request = urllib.request.Request(
            self.token_url, data=b"grant_type=client_credentials",
            headers={"Authorization": f"Basic {basic}",
                     "Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            token: str = json.load(answer)["access_token"]
        return token

    def tokens(self) -> int:
        """Tokens granted so far."""
        assert self.child is not None
        return sum(1 for e in self.child.items if e.get("event") == "token")

    def wait_tokens(self, count: int, timeout: float) -> bool:
        """Until the issuer has granted ``count`` tokens in all (False after ``timeout``)."""
        assert self.child is not None
        granted = 0

        def nth(event: dict[str, Any]) -> bool:
            nonlocal granted
            granted += event.get("event") == "token"
            return granted >= count

        return self.child.wait_for(nth, timeout) is not None

    def stop(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.stop(timeout=10)

    def __enter__(self) -> Issuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
