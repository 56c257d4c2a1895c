"""Signatures made here are the Standard Webhooks signatures a receiver's library accepts."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

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
    signing.verify(secret, BODY, headers)


def test_tampered_body_is_refused():
    secret = signing.generate_secret()
    headers = signing.signature_headers([secret], "msg_1", BODY)
    tampered = BODY.replace(b"42", b"43")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)
    with pytest.raises(signing.SignatureError):
        signing.verify(secret, tampered, headers)


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
    with pytest.raises(signing.SignatureError):
        signing.verify(other, BODY, headers)


def test_stale_timestamp_is_refused():
    secret = signing.generate_secret()
    stale = int(time.time()) - 10 * 60
    headers = signing.signature_headers([secret], "msg_1", BODY, timestamp=stale)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)
    with pytest.raises(signing.SignatureError):
        signing.verify(secret, BODY, headers)
    # The same signature was valid when it was made.
    signing.verify(secret, BODY, headers, now=stale + 1)


def test_rotation_sends_one_signature_per_secret_and_each_verifies():
    new, old = signing.generate_secret(), signing.generate_secret()
    headers = signing.signature_headers([new, old], "msg_1", BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in headers["webhook-signature"].split(" "))
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(BODY, headers)


def test_missing_headers_are_refused_by_our_verifier():
    with pytest.raises(signing.SignatureError):
        signing.verify(signing.generate_secret(), BODY, {"webhook-id": "msg_1"})
