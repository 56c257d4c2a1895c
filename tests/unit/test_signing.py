"""Signatures made here are the Standard Webhooks signatures a receiver's library accepts."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.support import verify_v1a
from webhooks import signing

BODY = b'{"id":"evt_1","type":"order.created","data":{"order":42}}'


def test_generated_secret_is_whsec_and_32_random_bytes():
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert signing.generate_secret() != secret


def test_signature_matches_the_standard_webhooks_reference_vector():
    # The example of the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    got = signing.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standardwebhooks_accepts_our_signature():
    secret = signing.generate_secret()
    headers = signing.signature_headers([secret], "msg_1", BODY)
    assert headers["webhook-id"] == "msg_1"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert Webhook(secret).verify(BODY, headers) == {
        "id": "evt_1",
        "type": "order.created",
        "data": {"order": 42},
    }


def test_tampered_body_is_refused():
    secret = signing.generate_secret()
    headers = signing.signature_headers([secret], "msg_1", BODY)
    tampered = BODY.replace(b"42", b"43")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)


def test_changed_webhook_id_is_refused():
    secret = signing.generate_secret()
    headers = signing.signature_headers([secret], "msg_1", BODY) | {"webhook-id": "msg_2"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_wrong_secret_is_refused():
    headers = signing.signature_headers([signing.generate_secret()], "msg_1", BODY)
    other = signing.generate_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)


def test_stale_timestamp_is_refused():
    secret = signing.generate_secret()
    stale = int(time.time()) - 10 * 60
    headers = signing.signature_headers([secret], "msg_1", BODY, timestamp=stale)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_rotation_sends_one_signature_per_secret_and_each_verifies():
    new, old = signing.generate_secret(), signing.generate_secret()
    headers = signing.signature_headers([new, old], "msg_1", BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in headers["webhook-signature"].split(" "))
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(BODY, headers)


# --- Ed25519 (Standard Webhooks v1a) ----------------------------------------------------------

# RFC 8032, section 7.1, TEST 1: the secret key (seed) and its public key.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def test_signing_key_serialization_matches_the_rfc_8032_test_vector():
    key = "whsk_" + base64.b64encode(RFC8032_SEED).decode()
    assert signing.public_key(key) == "whpk_" + base64.b64encode(RFC8032_PUBLIC).decode()


def test_ed25519_signature_is_v1a_and_verifies_under_the_public_key_only():
    key, public = signing.new_key_material(signing.ED25519)
    assert key.startswith("whsk_") and public is not None and public.startswith("whpk_")
    assert len(base64.b64decode(key.removeprefix("whsk_"))) == 32
    headers = signing.signature_headers([key], "msg_1", BODY)
    version, signature = headers["webhook-signature"].split(",")
    assert version == "v1a" and len(base64.b64decode(signature)) == 64
    verify_v1a(public, BODY, headers)
    with pytest.raises(AssertionError):
        verify_v1a(public, BODY.replace(b"42", b"43"), headers)
    with pytest.raises(AssertionError):
        verify_v1a(public, BODY, headers | {"webhook-id": "msg_2"})
    other = signing.new_key_material(signing.ED25519)[1]
    with pytest.raises(AssertionError):
        verify_v1a(other, BODY, headers)  # type: ignore[arg-type]


def test_rotation_across_schemes_sends_one_signature_of_each_kind():
    key, public = signing.new_key_material(signing.ED25519)
    secret = signing.generate_secret()
    headers = signing.signature_headers([key, secret], "msg_1", BODY)
    kinds = [s.split(",")[0] for s in headers["webhook-signature"].split(" ")]
    assert kinds == ["v1a", "v1"]
    verify_v1a(public, BODY, headers)  # type: ignore[arg-type]
    Webhook(secret).verify(BODY, headers)  # the HMAC receiver skips the v1a signature


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError):
        signing.new_key_material("rsa")
