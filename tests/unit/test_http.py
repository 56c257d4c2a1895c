"""The address guard: which subscriber URLs and addresses may receive webhooks."""

from __future__ import annotations

import ipaddress

import pytest

from webhooks.http import AddressRefused, Target, check_url, parse_url, refusal_reason

# The reason named, where it matters; "" where Python's tables call it private or reserved.
REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
    ("0.1.2.3", ""),
    ("240.0.0.1", ""),
    ("255.255.255.255", ""),
    ("192.0.2.1", ""),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fe80::1", "link-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", ""),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.1", "private"),
    ("2002:7f00:1::", "loopback"),
    ("2002:a9fe:a9fe::1", "link-local"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "link-local"),
    ("64:ff9b:1::a00:1", ""),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
]

ALLOWED = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",  # just below the carrier-grade NAT block
    "172.32.0.1",  # just above 172.16.0.0/12
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_internal_addresses_are_refused(address, why):
    reason = refusal_reason(ipaddress.ip_address(address))
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address):
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://[64:ff9b::7f00:1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        # Numeric spellings that resolvers turn into 127.0.0.1.
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
    ],
)
def test_check_url_refuses_internal_targets_in_every_spelling(url):
    with pytest.raises(AddressRefused):
        check_url(url, allow_private=False)


def test_check_url_allows_internal_targets_only_when_configured():
    target = check_url("http://127.1:8080/hook", allow_private=True)
    assert target == Target("http", "127.1", 8080, "/hook")


def test_check_url_allows_public_address():
    assert check_url("https://93.184.216.34/h?x=1", allow_private=False) == Target(
        "https", "93.184.216.34", 443, "/h?x=1"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com", Target("http", "example.com", 80, "/")),
        ("https://example.com/a/b?c=d", Target("https", "example.com", 443, "/a/b?c=d")),
        ("https://EXAMPLE.com:8443/x", Target("https", "example.com", 8443, "/x")),
        ("http://[2606:4700::1]:81/", Target("http", "2606:4700::1", 81, "/")),
    ],
)
def test_parse_url_splits_scheme_host_port_and_path(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "example.com/hook",
        "http:///hook",
        "http://user:pass@example.com/",
        "http://user@example.com/",
        "http://example.com:99999/",
        "http://example.com:port/",
        "http://[::1/",
    ],
)
def test_parse_url_refuses_what_cannot_be_a_webhook_target(url):
    with pytest.raises(AddressRefused):
        parse_url(url)
