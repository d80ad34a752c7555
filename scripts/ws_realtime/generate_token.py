#!/usr/bin/env python3
"""Print an HS256 JWT for the WebSocket service, as the runbook shows:

    python scripts/ws_realtime/generate_token.py $WS_AUTH_SECRET testing-user

A thin wrapper over wsrt.tokens (standard library only), runnable with a plain
``python`` from a checkout. ``wsrt token`` has more options (--ttl, --aud,
--channels, --claim).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from wsrt.tokens import mint_token


def main() -> None:
    parser = argparse.ArgumentParser(description="Print an HS256 JWT for a wsrt client.")
    parser.add_argument("secret", help="the server's WS_AUTH_SECRET")
    parser.add_argument("subject", help="the sub claim")
    parser.add_argument("--ttl", type=float, default=3600, help="seconds until exp (0: none)")
    args = parser.parse_args()
    print(mint_token(args.secret, args.subject, ttl=args.ttl or None))


if __name__ == "__main__":
    main()
