"""Secrets at rest: AES-256-GCM under WEBHOOKS_SECRET_KEY, bound to their subscription.

Signing secrets, Ed25519 signing keys and custom headers are stored this way. A blob is
`0x02 || key id (4 bytes) || nonce (12) || ciphertext+tag`; the key id names the key that sealed
it, so that during a key rotation (WEBHOOKS_PREVIOUS_SECRET_KEYS) each blob is opened by its own
key. Blobs of format `0x01` (no key id, written before rotation existed) are tried under every
configured key; rotate-secret-key rewrites them in the new format.
"""

from __future__ import annotations

import hashlib
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from config import get_settings

_V1 = b"\x01"
_V2 = b"\x02"
_ID = 4
_NONCE = 12
# Custom headers are sealed with their own associated data, so that a header blob copied into a
# secret column (or back) does not open.
_HEADERS = b"|headers"
# What the API shows in place of a custom header's value.
REDACTED = "********"


def key_id(key: bytes) -> bytes:
    """Return the 4-byte ID of a key: it names the key and says nothing about it."""
    return hashlib.sha256(b"webhooks-secret-key-id:" + key).digest()[:_ID]


def current_key_id() -> str:
    """Return the hex ID of WEBHOOKS_SECRET_KEY (for the operator's messages)."""
    return key_id(get_settings().secret_key).hex()


def seal(plain: bytes, associated: bytes) -> bytes:
    """Encrypt bytes under the current key; `associated` must be given again to decrypt."""
    key = get_settings().secret_key
    nonce = os.urandom(_NONCE)
    return _V2 + key_id(key) + nonce + AESGCM(key).encrypt(nonce, plain, associated)


def unseal(blob: bytes, associated: bytes) -> bytes:
    """Decrypt a blob made by seal; raise ValueError if no configured key opens it."""
    settings = get_settings()
    keys = (settings.secret_key, *settings.previous_secret_keys)
    if blob[:1] == _V2 and len(blob) > 1 + _ID + _NONCE:
        wanted = blob[1 : 1 + _ID]
        key = next((k for k in keys if key_id(k) == wanted), None)
        if key is None:
            raise ValueError(
                f"secret was encrypted under key {wanted.hex()}, which is neither "
                "WEBHOOKS_SECRET_KEY nor in WEBHOOKS_PREVIOUS_SECRET_KEYS"
            )
        start = 1 + _ID
        try:
            return AESGCM(key).decrypt(
                blob[start : start + _NONCE], blob[start + _NONCE :], associated
            )
        except InvalidTag:
            raise ValueError("secret does not decrypt: it was changed or moved") from None
    if blob[:1] == _V1 and len(blob) > 1 + _NONCE:
        for key in keys:
            try:
                return AESGCM(key).decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], associated)
            except InvalidTag:
                continue
        raise ValueError("secret does not decrypt under WEBHOOKS_SECRET_KEY") from None
    raise ValueError("unknown secret format")


def needs_reencryption(blob: bytes) -> bool:
    """Say whether a blob is sealed by anything but the current key in the current format."""
    return blob[:1] != _V2 or blob[1 : 1 + _ID] != key_id(get_settings().secret_key)


def encrypt_secret(secret: str, associated: bytes) -> bytes:
    """Encrypt a secret; `associated` (the subscription ID) must be given again to decrypt."""
    return seal(secret.encode(), associated)


def decrypt_secret(blob: bytes, associated: bytes) -> str:
    """Decrypt a secret sealed by encrypt_secret; raise ValueError if it was tampered with."""
    return unseal(blob, associated).decode()


def encrypt_headers(headers: dict[str, str], associated: bytes) -> bytes | None:
    """Encrypt a subscription's custom headers (None when there are none)."""
    if not headers:
        return None
    return seal(json.dumps(headers, separators=(",", ":")).encode(), associated + _HEADERS)


def decrypt_headers(blob: bytes | None, associated: bytes) -> dict[str, str]:
    """Decrypt custom headers sealed by encrypt_headers ({} for None)."""
    if blob is None:
        return {}
    headers: dict[str, str] = json.loads(unseal(blob, associated + _HEADERS))
    return headers


def headers_associated(associated: bytes) -> bytes:
    """The associated data custom headers are sealed with, for code that re-encrypts blobs."""
    return associated + _HEADERS


def redacted(headers: dict[str, str]) -> dict[str, str]:
    """Return the header names, each with the same redacted value."""
    return dict.fromkeys(headers, REDACTED)
