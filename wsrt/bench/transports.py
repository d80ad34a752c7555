"""The same stream over WebSocket and Server-Sent Events (``wsrt bench -s sse``).

The latency scenario (clients at the scale's rate, a separate producer, the
delay from the broker's timestamp to each sampling client's receipt), run with
every client on ``/ws`` and then on ``/sse``, alternating over rounds so that a
drift of the shared machine falls on both alike. Figures: p50/p99, server CPU
and CPU per delivered frame of each, and the SSE figures over the WebSocket ones
of the same round.
"""

from __future__ import annotations

from wsrt.bench.handshakes import HandshakeBench
from wsrt.bench.run import Result

TRANSPORTS = {"websocket": "WebSocket", "sse": "SSE"}


class TransportBench(HandshakeBench):
    def sse(self) -> list[Result]:
        results: list[Result] = []
        rounds = self.scale.transport_rounds
        for n in range(1, rounds + 1):
            suffix = f", round {n}" if rounds > 1 else ""
            ws = self.latency(False, name=f"transports: WebSocket{suffix}")
            sse = self.latency(
                False, name=f"transports: SSE{suffix}", load=lambda topic: {"sse": True}
            )
            results += [ws, sse, _against(ws, sse, f"transports: SSE against WebSocket{suffix}")]
        return results


def _against(ws: Result, sse: Result, name: str) -> Result:
    """SSE's p50, p99 and CPU per frame over WebSocket's, measured in the same round."""
    figures: dict[str, object] = {}
    for figure in ("p50 ms", "p99 ms", "server CPU µs/frame", "bytes/frame"):
        mine, base = sse.figures.get(figure), ws.figures.get(figure)
        if isinstance(mine, int | float) and isinstance(base, int | float) and base:
            figures[f"{figure}: SSE / WebSocket"] = f"{mine / base:.2f}x"
    return Result(name, figures, {"both runs measured": len(figures) == 4})
