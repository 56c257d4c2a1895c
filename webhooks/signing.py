"""Standard Webhooks signatures: HMAC-SHA256 over "{id}.{timestamp}.{body}"."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
TOLERANCE_SECONDS = 5 * 60


class SignatureError(ValueError):
    """A payload's signature or timestamp does not verify."""


def generate_secret() -> str:
    """Return a new signing secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return one `v1,<base64>` signature of the body."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    secrets_: Iterable[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Return the `webhook-*` headers, with one signature per secret (several during rotation)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(s, msg_id, ts, body) for s in secrets_),
    }


def verify(secret: str, body: bytes, headers: Mapping[str, str], now: float | None = None) -> None:
    """Raise SignatureError unless one of the signatures is the secret's and the time is fresh."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        signatures = lower["webhook-signature"].split()
    except (KeyError, ValueError):
        raise SignatureError("missing or malformed webhook headers") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > TOLERANCE_SECONDS:
        raise SignatureError("timestamp outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body).encode()
    # Constant-time comparison against every signature offered.
    if not any(hmac.compare_digest(expected, s.encode()) for s in signatures):
        raise SignatureError("no matching signature")
