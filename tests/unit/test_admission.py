from __future__ import annotations

import pytest

from wsrt.auth import Verifier, mint_token
from wsrt.gateway.admission import (
    DRAINING,
    NOT_FOUND,
    ORIGIN,
    Admit,
    Endpoint,
    Reject,
    Target,
    admit,
)

SECRET = "unit-test-secret-0123456789abcdef0123"
VERIFIER = Verifier(SECRET)
GOOD = mint_token(SECRET, "alice")


def decide(target: str, headers: dict[str, str] | None = None, **kwargs: object):
    options = {"draining": False, "allowed_origins": (), "verifier": VERIFIER, **kwargs}
    return admit(target, (headers or {}), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_probe_endpoints_ignore_query_and_auth(endpoint: Endpoint) -> None:
    assert decide(endpoint.value + "?x=1") is endpoint
    assert decide(endpoint.value, draining=True) is endpoint  # /healthz must answer while draining


def test_unknown_paths_are_not_found() -> None:
    assert decide("/") is NOT_FOUND and decide("/wss") is NOT_FOUND


def test_token_from_bearer_header_or_query() -> None:
    by_header = decide("/ws", {"Authorization": f"Bearer {GOOD}"})
    by_query = decide(f"/ws?token={GOOD}")
    for decision in (by_header, by_query):
        assert isinstance(decision, Admit) and decision.claims.subject == "alice"


def test_channels_at_connect() -> None:
    decision = decide(f"/ws?token={GOOD}&channels=lines,order_book:BTC&channels=analytics")
    assert isinstance(decision, Admit)
    assert decision.channels == ["lines", "order_book:BTC", "analytics"]


@pytest.mark.parametrize(
    ("token", "reason"), [("", "missing"), ("not-a-jwt", "malformed"),
                          (mint_token("another-secret-0123456789abcdef", "x"), "bad_signature")],
)  # fmt: skip
def test_bad_tokens_are_401_with_the_reason(token: str, reason: str) -> None:
    decision = decide(f"/ws?token={token}")
    assert isinstance(decision, Reject)
    assert (decision.status, decision.reason) == (401, reason)
    assert decision.body == f"unauthorized: {reason}"
    assert not token or token not in f"{decision.body} {decision.log}"


def test_checks_run_in_order_draining_origin_token() -> None:
    bad_origin = {"Origin": "https://evil.example"}
    allowed = ("https://app.example.com",)
    assert decide("/ws", bad_origin, draining=True, allowed_origins=allowed) is DRAINING
    assert decide("/ws", bad_origin, allowed_origins=allowed) is ORIGIN  # before the token
    ok = decide(f"/ws?token={GOOD}", {"Origin": "https://app.example.com"}, allowed_origins=allowed)
    assert isinstance(ok, Admit)
    assert isinstance(decide(f"/ws?token={GOOD}", allowed_origins=allowed), Admit)  # no Origin


def test_draining_is_counted_but_not_logged() -> None:
    assert DRAINING.status == 503 and DRAINING.reason == "draining" and DRAINING.log is None


def test_check_and_channels_take_the_upgrade_checks_without_upgrading() -> None:
    for target in (Target.CHECK, Target.CHANNELS):
        ok = decide(f"{target.value}?token={GOOD}")
        assert isinstance(ok, Admit) and ok.target is target and ok.claims.subject == "alice"
        assert decide(target.value, draining=True) is DRAINING
        refused = decide(f"{target.value}?token=nope")
        assert isinstance(refused, Reject) and refused.body.startswith("unauthorized: malformed")
    # /ws/check is asked by a person's tool: the code, then plain words; the others answer the code.
    assert decide("/ws/check?token=nope").body == (  # type: ignore[union-attr]
        "unauthorized: malformed\nThe token is not a JWT (three base64url parts joined by dots)."
    )
    assert decide("/console/channels?token=nope").body == "unauthorized: malformed"  # type: ignore[union-attr]
    assert decide(f"/ws?token={GOOD}").target is Target.UPGRADE  # type: ignore[union-attr]


def test_check_takes_the_pages_origin_when_the_browser_sends_none() -> None:
    """A same-origin fetch() carries no Origin; the upgrade it asks about does."""
    allowed = ("https://app.example.com",)
    good, bad = "origin=https://app.example.com", "origin=https://evil.example"
    assert decide(f"/ws/check?token={GOOD}&{bad}", allowed_origins=allowed) is ORIGIN
    assert isinstance(decide(f"/ws/check?token={GOOD}&{good}", allowed_origins=allowed), Admit)
    # The header, when there is one, wins; the upgrade itself never reads the parameter.
    header = {"Origin": "https://evil.example"}
    assert decide(f"/ws/check?token={GOOD}&{good}", header, allowed_origins=allowed) is ORIGIN
    assert isinstance(decide(f"/ws?token={GOOD}&{bad}", allowed_origins=allowed), Admit)
