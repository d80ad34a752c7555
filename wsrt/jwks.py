"""An identity provider's public keys: a JWKS by ``kid``, and PEM files.

:class:`KeySet` answers :meth:`KeySet.key` (``kid`` and algorithm → a
public key, or ``None``) without I/O, so verification stays Sans-I/O. The
keys come from ``WS_AUTH_PUBLIC_KEY_FILES`` (PEM, read at start; a file's
``kid`` is its name without the extension) and from ``WS_AUTH_JWKS_URL``,
fetched by :meth:`KeySet.refresh` at start, every
``WS_AUTH_JWKS_REFRESH_SECONDS``, and when a token names a ``kid`` the set
does not hold (at most once per ``WS_AUTH_JWKS_MIN_REFRESH_SECONDS``, so a
flood of made-up ``kid`` values costs the provider one request). A fetch
that fails keeps the keys already held and is reported (:attr:`problem`):
tokens signed with them keep working while the provider is away.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from wsrt.errors import unreachable_words

#: Algorithm families and the key types that may verify them (never one for another).
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
ASYMMETRIC_ALGORITHMS = (*RSA_ALGORITHMS, *EC_ALGORITHMS, "EdDSA")
#: A key set larger than this is not a key set.
MAX_KEYS = 64
MAX_JWKS_BYTES = 1 << 20


def fits(key: Any, algorithm: str) -> bool:
    """May ``key`` verify a token of ``algorithm`` (right family, right curve)?"""
    if algorithm in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in EC_ALGORITHMS:
        return isinstance(key, ec.EllipticCurvePublicKey) and (
            key.curve.name == EC_ALGORITHMS[algorithm]
        )
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def parse_jwks(text: bytes) -> dict[str, Any]:
    """``kid`` → public key of a JWKS document (keys for signing, with a ``kid``)."""
    document = json.loads(text)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS (an object with a 'keys' list)")
    found: dict[str, Any] = {}
    for entry in document["keys"][:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        if any(name in entry for name in ("d", "p", "q", "k")):
            continue  # a private or symmetric key is never a verification key here
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue  # a key type this library does not read: its tokens are unknown kid
        found[kid] = key
    return found


def read_pem_files(paths: Iterable[str]) -> dict[str, Any]:
    """``kid`` (the file name without extension) → public key; raises ``ValueError``."""
    found: dict[str, Any] = {}
    for name in paths:
        path = Path(name)
        try:
            found[path.stem] = load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read {name}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} is not a PEM public key ({exc})") from None
    return found


class KeySet:
    """The public keys tokens may be signed with, by ``kid``."""

    def __init__(
        self,
        url: str | None = None,
        files: Iterable[str] = (),
        *,
        min_refresh: float = 10.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.min_refresh = min_refresh
        self.timeout = timeout
        self.clock = clock
        self.pinned = read_pem_files(files)
        self.fetched: dict[str, Any] = {}
        #: Why the last fetch failed (``None``: it did not, or none was needed).
        self.problem: str | None = None
        #: Told each change of :attr:`problem` (the server logs it).
        self.changed: Callable[[str | None], None] | None = None
        self.fetches = 0
        #: When a token with an unknown kid last made the set fetch (the periodic
        #: fetches do not count: a key rotated in just after one is asked for at once).
        self._last_asked: float | None = None
        self._fetching: asyncio.Task[None] | None = None

    def key(self, kid: str | None, algorithm: str) -> Any:
        """The key for a token's ``kid`` and ``alg``, if one is held and fits."""
        if kid is None:
            keys = [*self.pinned.values(), *self.fetched.values()]
            key = keys[0] if len(keys) == 1 else None  # no kid: only a set of one is clear
        else:
            key = self.fetched.get(kid) or self.pinned.get(kid)
        return key if key is not None and fits(key, algorithm) else None

    def may_refresh(self) -> bool:
        """Would a token with an unknown ``kid`` make :meth:`refresh` fetch now?"""
        if self.url is None:
            return False
        last = self._last_asked
        return last is None or self.clock() - last >= self.min_refresh

    async def refresh(self, asked: bool = False) -> None:
        """Fetch the JWKS (concurrent callers share one fetch); failures keep the keys.
        ``asked``: for a token with an unknown kid (counted by :meth:`may_refresh`)."""
        if self.url is None:
            return
        if asked:
            self._last_asked = self.clock()
            if self._fetching is not None and not self._fetching.done():
                # Begun before this token came: its answer may predate the key.
                await asyncio.shield(self._fetching)
            self._fetching = None
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.ensure_future(self._fetch())
        await asyncio.shield(self._fetching)

    async def _fetch(self) -> None:
        assert self.url is not None
        self.fetches += 1
        before = self.problem
        try:
            text = await asyncio.to_thread(self._get, self.url)
            self.fetched = parse_jwks(text)
            self.problem = None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            self.problem = f"cannot reach the JWKS at {self.url}: {unreachable_words(exc)}"
        except ValueError as exc:
            self.problem = f"the JWKS at {self.url} is not usable: {exc}"
        if self.problem != before and self.changed is not None:
            self.changed(self.problem)

    def _get(self, url: str) -> bytes:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            data: bytes = answer.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
        return data

    async def run(self, every: float) -> None:
        """Fetch now, then every ``every`` seconds (the task of a server)."""
        while True:
            await self.refresh()
            await asyncio.sleep(every)  # pacing the periodic refresh
