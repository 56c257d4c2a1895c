"""Standard Webhooks signatures over "{id}.{timestamp}.{body}".

Two schemes, chosen per subscription:
- `hmac-sha256`: a shared `whsec_` secret; signatures `v1,<base64 HMAC-SHA256>`.
- `ed25519`: a `whsk_` signing key kept by the service (encrypted at rest) and its `whpk_` public
  key given to the receiver; signatures `v1a,<base64 Ed25519 signature>`.
The stored secret's prefix says its scheme, so a delivery during a rotation from one scheme to
the other carries one signature of each kind.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SIGNING_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"
HMAC_SHA256 = "hmac-sha256"
ED25519 = "ed25519"
SCHEMES = (HMAC_SHA256, ED25519)


def generate_secret() -> str:
    """Return a new signing secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def generate_signing_key() -> str:
    """Return a new Ed25519 signing key: `whsk_` and its 32-byte seed in base64."""
    return SIGNING_KEY_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_key_material(scheme: str) -> tuple[str, str | None]:
    """Return (what to store encrypted, the public key or None) for a new key of `scheme`."""
    if scheme == ED25519:
        key = generate_signing_key()
        return key, public_key(key)
    if scheme == HMAC_SHA256:
        return generate_secret(), None
    raise ValueError(f"unknown signature scheme {scheme!r}")


def _signing_key(key: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        base64.b64decode(key.removeprefix(SIGNING_KEY_PREFIX))
    )


def public_key(signing_key: str) -> str:
    """Return the `whpk_` public key of a `whsk_` signing key."""
    raw = _signing_key(signing_key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def _content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return one signature of the body: `v1,…` for a whsec_ secret, `v1a,…` for a whsk_ key."""
    content = _content(msg_id, timestamp, body)
    if secret.startswith(SIGNING_KEY_PREFIX):
        return "v1a," + base64.b64encode(_signing_key(secret).sign(content)).decode()
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    secrets_: Iterable[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Return the `webhook-*` headers, with one signature per secret or signing key (several
    during rotation), each of its own scheme."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(s, msg_id, ts, body) for s in secrets_),
    }
