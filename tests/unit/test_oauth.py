"""The OAUTHBEARER token source's renewal rule (the endpoint itself: tests/integration)."""

from __future__ import annotations

import asyncio

import pytest

from wsrt.kafka.oauth import TokenEndpoint, TokenEndpointError


class Counted(TokenEndpoint):
    """The rule alone: each fetch answers the next token, valid ``lifetime`` seconds."""

    def __init__(self, lifetime: float) -> None:
        self.now = 0.0
        super().__init__("http://idp/token", "wsrt", "s", clock=lambda: self.now)
        self.lifetime = lifetime

    def _fetch(self) -> tuple[str, float]:
        return f"token-{self.fetched + 1}", self.lifetime


async def test_a_token_is_reused_until_most_of_its_life_has_passed() -> None:
    source = Counted(lifetime=100)
    assert await source.token() == "token-1"
    source.now = 79.9
    assert await source.token() == "token-1"
    source.now = 80.0  # 80 %: renewed before it expires
    assert await source.token() == "token-2"
    # Connections opening at once share one fetch.
    source.now = 161.0
    assert set(await asyncio.gather(*(source.token() for _ in range(5)))) == {"token-3"}
    assert source.fetched == 3


async def test_an_endpoint_that_cannot_be_reached_is_named() -> None:
    source = TokenEndpoint("http://127.0.0.1:9/token", "wsrt", "s", timeout=2)
    with pytest.raises(TokenEndpointError) as refused:
        await source.token()
    assert str(refused.value) == (
        "cannot reach the OAuth token endpoint http://127.0.0.1:9/token: connection refused"
    )
