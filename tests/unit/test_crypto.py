"""Signing secrets at rest: AES-GCM bound to their subscription and to WEBHOOKS_SECRET_KEY."""

from __future__ import annotations

import base64

import pytest

from webhooks.crypto import decrypt_secret, encrypt_secret
from webhooks.signing import generate_secret

SUBSCRIPTION = b"0190f0e2-0000-7000-8000-000000000001"


def test_secret_round_trips_and_is_not_stored_in_clear():
    secret = generate_secret()
    blob = encrypt_secret(secret, SUBSCRIPTION)
    assert secret.encode() not in blob
    assert base64.b64decode(secret.removeprefix("whsec_")) not in blob
    assert decrypt_secret(blob, SUBSCRIPTION) == secret


def test_same_secret_encrypts_differently_each_time():
    secret = generate_secret()
    assert encrypt_secret(secret, SUBSCRIPTION) != encrypt_secret(secret, SUBSCRIPTION)


@pytest.mark.parametrize("position", [0, 1, 12, 13, -1])
def test_any_changed_byte_is_detected(position):
    blob = bytearray(encrypt_secret(generate_secret(), SUBSCRIPTION))
    blob[position] ^= 0x01
    with pytest.raises(ValueError):
        decrypt_secret(bytes(blob), SUBSCRIPTION)


def test_secret_of_another_subscription_does_not_decrypt():
    blob = encrypt_secret(generate_secret(), SUBSCRIPTION)
    with pytest.raises(ValueError):
        decrypt_secret(blob, SUBSCRIPTION[:-1] + b"2")


def test_truncated_or_empty_blob_is_refused():
    blob = encrypt_secret(generate_secret(), SUBSCRIPTION)
    for broken in (b"", blob[:1], blob[:20], blob[:-1]):
        with pytest.raises(ValueError):
            decrypt_secret(broken, SUBSCRIPTION)


def test_another_key_does_not_decrypt(setenv):
    blob = encrypt_secret(generate_secret(), SUBSCRIPTION)
    setenv(WEBHOOKS_SECRET_KEY=base64.urlsafe_b64encode(b"z" * 32).decode())
    with pytest.raises(ValueError):
        decrypt_secret(blob, SUBSCRIPTION)
