"""Revocations (wsrt/revocation.py): what a record revokes, for how long, and for whom."""

from __future__ import annotations

import json

from wsrt.revocation import Revocations


def test_a_subject_is_revoked_up_to_the_record_and_until_its_exp() -> None:
    now = [1000.0]
    revocations = Revocations(clock=lambda: now[0])
    assert revocations.add(json.dumps({"sub": "alice", "exp": 2000}).encode(), 990_000)
    assert revocations.revoked("alice", None, 989.0)  # issued before the record
    assert revocations.revoked("alice", "any", 990.0)
    assert not revocations.revoked("alice", None, 991.0)  # issued since: signs in again
    assert revocations.revoked("alice", None, None)  # no iat: cannot tell, refused
    assert not revocations.revoked("bob", None, 500.0)
    now[0] = 2000.0  # the tokens would have expired anyway
    assert not revocations.revoked("alice", None, 989.0)
    revocations.prune()
    assert revocations.subjects == {}


def test_a_token_id_is_revoked_alone_and_bad_records_revoke_nothing() -> None:
    revocations = Revocations(clock=lambda: 1000.0)
    assert revocations.add(b'{"jti": "t-1", "exp": 5000}', 0)
    assert revocations.revoked("bob", "t-1", 999.0)
    assert not revocations.revoked("bob", "t-2", 999.0)
    for bad in (b"", b"[]", b"not json", b'{"sub": "x"}', b'{"sub": "x", "exp": true}',
                b'{"sub": "", "exp": 5000}', b'{"sub": "x", "exp": 900}', b'{"exp": 5000}', None):  # fmt: skip
        assert not revocations.add(bad, 0), bad
    assert revocations.subjects == {}
