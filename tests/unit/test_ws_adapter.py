"""The websockets internals that wsrt.gateway.ws_adapter relies on, against the installed version."""

from __future__ import annotations

from importlib.metadata import version

from websockets.asyncio.server import ServerConnection
from websockets.protocol import Protocol, State

from wsrt.gateway.ws_adapter import SUPPORTED_MAJOR_VERSIONS, Connection


def test_installed_websockets_is_a_supported_version() -> None:
    major = int(version("websockets").split(".")[0])
    assert major in SUPPORTED_MAJOR_VERSIONS


def test_the_internals_used_exist() -> None:
    for name in (
        "pause_writing",
        "resume_writing",
        "connection_made",
        "send_context",
        "ping",
        "drain",
        "handshake",
        "data_received",
        "eof_received",
        "close",
    ):
        assert callable(getattr(ServerConnection, name))
    assert issubclass(Connection, ServerConnection)
    assert State.OPEN.name == "OPEN"
    # Set in Protocol.__init__: check on a real instance.
    from websockets.asyncio.server import Server
    from websockets.server import ServerProtocol

    assert "all_connections" in Server.__init__.__code__.co_names
    p: Protocol = ServerProtocol()
    for name in ("close_sent", "close_rcvd", "close_rcvd_then_sent", "state"):
        assert hasattr(p, name), name
    assert callable(p.fail)
    # An event stream (/sse) is opened by Connection.handshake: the request as websockets
    # parsed it, its own rejection, and the protocol's state set by hand.
    assert callable(p.reject) and callable(p.send_response)
    assert Protocol.__dict__["state"].fset is not None
    for name in ("request_rcvd", "connection_lost_waiter", "request"):
        assert name in ServerConnection.__init__.__code__.co_names or name in (
            ServerConnection.__mro__[1].__init__.__code__.co_names
        ), name
