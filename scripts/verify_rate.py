"""Token verifications per second on one core, per algorithm (docs/performance.md).

Run from the repository: ``.venv-test/bin/python scripts/verify_rate.py``. Each
token is verified as a handshake verifies it (``auth.Verifier.verify``: the
header, the key by ``kid`` from the held key set, the signature, the claims);
the key set is never fetched on this path (``fetches`` stays 0).
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import cryptography
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsrt.auth import Verifier
from wsrt.jwks import KeySet

ROUNDS, COUNT = 3, 5000
SECRET = "s" * 40


def rate(verifier: Verifier, token: str) -> float:
    best = 0.0
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(COUNT):
            verifier.verify(token)
        best = max(best, COUNT / (time.process_time() - started))
    return best


def main() -> None:
    private = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    keys = KeySet("http://127.0.0.1:9/jwks")  # never asked: the keys are held
    keys.fetched = {alg: key.public_key() for alg, key in private.items()}
    verifier = Verifier(SECRET, algorithms=["HS256", *private], keys=keys, issuer="https://idp")
    claims = {"sub": "user-42", "iss": "https://idp", "exp": int(time.time()) + 3600}
    tokens = {"HS256": jwt.encode({"sub": "user-42", "exp": claims["exp"]}, SECRET)}
    for alg, key in private.items():
        tokens[alg] = jwt.encode(claims, key, algorithm=alg, headers={"kid": alg})
    versions = f"PyJWT {jwt.__version__}, cryptography {cryptography.__version__}"
    print(f"{platform.machine()}, Python {platform.python_version()}, {versions}; "
          f"best of {ROUNDS} rounds of {COUNT:,}, one core")  # fmt: skip
    base = rate(verifier, tokens["HS256"])
    print(f"{'algorithm':<10}{'verifications/s':>17}{'µs each':>10}{'/ HS256':>9}")
    for alg, token in tokens.items():
        per_second = base if alg == "HS256" else rate(verifier, token)
        print(f"{alg:<10}{per_second:>17,.0f}{1e6 / per_second:>10.1f}{base / per_second:>8.1f}x")
    print(f"JWKS fetches while verifying: {keys.fetches}")


if __name__ == "__main__":
    main()
