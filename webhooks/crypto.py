"""Signing secrets at rest: AES-256-GCM under WEBHOOKS_SECRET_KEY, bound to their subscription."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from config import get_settings

_VERSION = b"\x01"


def encrypt_secret(secret: str, associated: bytes) -> bytes:
    """Encrypt a secret; `associated` (the subscription ID) must be given again to decrypt."""
    nonce = os.urandom(12)
    sealed = AESGCM(get_settings().secret_key).encrypt(nonce, secret.encode(), associated)
    return _VERSION + nonce + sealed


def decrypt_secret(blob: bytes, associated: bytes) -> str:
    """Decrypt a secret sealed by encrypt_secret; raise ValueError if it was tampered with."""
    if not blob or blob[:1] != _VERSION:
        raise ValueError("unknown secret format")
    try:
        plain = AESGCM(get_settings().secret_key).decrypt(blob[1:13], blob[13:], associated)
    except InvalidTag:
        raise ValueError("secret does not decrypt under WEBHOOKS_SECRET_KEY") from None
    return plain.decode()
