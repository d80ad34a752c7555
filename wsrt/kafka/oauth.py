"""OAUTHBEARER for Kafka: tokens from an OAuth token endpoint (docs/design.md, "Kafka security").

wsrt asks the endpoint for a token with the client credentials grant
(RFC 6749 section 4.4, the client authenticated with HTTP Basic), keeps it,
and asks for the next one once 80 % of its lifetime has passed, so a new
connection to a broker never presents an expired token (a broker that
re-authenticates its connections closes them when their token expires; the
client then connects again with the newer one). Every wsrt Kafka client of
one process shares one :class:`TokenEndpoint` per configuration.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaConnectionError

from wsrt.errors import unreachable_words

#: A token is renewed once this share of its lifetime has passed.
RENEW_AT = 0.8
#: A token without ``expires_in`` is renewed after this many seconds.
DEFAULT_LIFETIME = 300.0


class TokenEndpointError(KafkaConnectionError):  # type: ignore[misc]  # untyped in aiokafka
    """No token: the endpoint is unreachable or refused the client (words for an operator).

    A connection error to aiokafka, which then retries the connection as it
    does when a broker cannot be reached.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TokenEndpoint(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka is untyped there
    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        *,
        timeout: float = 10.0,
        cafile: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=cafile) if cafile else None
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock: asyncio.Lock | None = None
        #: Tokens fetched so far (a metric for the tests and the logs).
        self.fetched = 0

    async def token(self) -> str:
        """The current token, fetched first when there is none or it is due for renewal."""
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                started = self._clock()
                token, lifetime = await asyncio.to_thread(self._fetch)
                self._token, self._renew_at = token, started + lifetime * RENEW_AT
                self.fetched += 1
            return self._token

    def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        basic = f"{_quote(self.client_id)}:{_quote(self._secret)}".encode()
        request = urllib.request.Request(
            self.url,
            data=urllib.parse.urlencode(form).encode(),
            headers={
                "Authorization": "Basic " + base64.b64encode(basic).decode(),
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise TokenEndpointError(self._refused(exc)) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = unreachable_words(exc)
            raise TokenEndpointError(
                f"cannot reach the OAuth token endpoint {self.url}: {reason}"
            ) from None
        except ValueError:
            raise TokenEndpointError(
                f"the OAuth token endpoint {self.url} answered something that is not JSON"
            ) from None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenEndpointError(f"the OAuth token endpoint {self.url} gave no access_token")
        lifetime = answer.get("expires_in")
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_LIFETIME
        return token, float(lifetime)

    def _refused(self, exc: urllib.error.HTTPError) -> str:
        said = ""
        try:
            body = json.loads(exc.read())
            said = ": " + ", ".join(
                str(body[k]) for k in ("error", "error_description") if body.get(k)
            )
        except (ValueError, OSError, AttributeError):
            pass
        return (
            f"the OAuth token endpoint {self.url} refused client {self.client_id} "
            f"(HTTP {exc.code}{said})"
        )


def _quote(text: str) -> str:
    """RFC 6749 section 2.3.1: client credentials are form-encoded inside Basic."""
    return urllib.parse.quote(text, safe="")


@functools.cache
def shared(
    url: str, client_id: str, client_secret: str, scope: str | None, timeout: float,
    cafile: str | None,
) -> TokenEndpoint:  # fmt: skip
    """One provider per configuration, so every client of a process reuses its token."""
    return TokenEndpoint(url, client_id, client_secret, scope, timeout=timeout, cafile=cafile)
