"""Sample messages for the demo feed and ``wsrt produce``: realistic, small, pure.

Each sample carries ``ts`` (milliseconds since the epoch at generation), so a
client can see end-to-end delay, and a Kafka key that the ``topic:key``
channels can filter on.
"""

from __future__ import annotations

import random
import time

import orjson

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD")
EVENTS = ("EVT-1001", "EVT-1002", "EVT-1003")
METRICS = ("active_users", "orders_per_min", "p99_latency_ms", "error_rate")
_MID = {"BTC-USD": 97000.0, "ETH-USD": 3400.0, "SOL-USD": 180.0, "ADA-USD": 0.9}


def sample(topic: str, seq: int, rng: random.Random) -> tuple[bytes | None, bytes]:
    """``(key, value)`` for message number ``seq`` of ``topic``."""
    ts = int(time.time() * 1000)
    if topic.startswith("order_book"):
        symbol = SYMBOLS[seq % len(SYMBOLS)]
        mid = _MID[symbol] * (1 + rng.uniform(-0.001, 0.001))
        tick = mid * 0.0001
        bids = [[round(mid - tick * (i + 1), 4), round(rng.uniform(0.01, 5), 4)] for i in range(3)]
        asks = [[round(mid + tick * (i + 1), 4), round(rng.uniform(0.01, 5), 4)] for i in range(3)]
        obj: dict[str, object] = {
            "symbol": symbol,
            "seq": seq,
            "bids": bids,
            "asks": asks,
            "ts": ts,
        }
        return symbol.encode(), orjson.dumps(obj)
    if topic.startswith("lines"):
        event = EVENTS[seq % len(EVENTS)]
        obj = {
            "event_id": event,
            "market": rng.choice(("moneyline", "spread", "total")),
            "selection": rng.choice(("home", "away")),
            "line": round(rng.uniform(-7.5, 7.5) * 2) / 2,
            "price": rng.choice((-120, -115, -110, -105, 100, 105, 110)),
            "seq": seq,
            "ts": ts,
        }
        return event.encode(), orjson.dumps(obj)
    if topic.startswith("analytics"):
        metric = METRICS[seq % len(METRICS)]
        obj = {
            "metric": metric,
            "value": round(rng.uniform(0, 1000), 2),
            "window": "1m",
            "seq": seq,
            "ts": ts,
        }
        return metric.encode(), orjson.dumps(obj)
    return None, orjson.dumps({"seq": seq, "ts": ts})
