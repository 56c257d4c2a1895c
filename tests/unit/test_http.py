"""The address guard: which subscriber URLs and addresses may receive webhooks."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest

from webhooks import http
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


# --- the IANA special-purpose registries, range by range -------------------------------------


def _edges(network: str) -> list[str]:
    net = ipaddress.ip_network(network)
    middle = net[net.num_addresses // 2]
    return [str(net[0]), str(middle), str(net[-1])]


@pytest.mark.parametrize(("network", "why"), [*http.SPECIAL_PURPOSE_V4, *http.SPECIAL_PURPOSE_V6])
def test_every_special_purpose_range_is_refused_from_first_to_last_address(network, why):
    assert why
    for address in _edges(network):
        reason = refusal_reason(ipaddress.ip_address(address))
        assert reason is not None, address


@pytest.mark.parametrize(
    "address",
    [
        "192.0.0.192",  # Oracle Cloud metadata, inside 192.0.0.0/24
        "192.0.0.8",
        "192.0.0.9",
        "192.0.0.255",
        "192.88.99.1",
        "192.31.196.1",
        "192.52.193.1",
        "192.175.48.1",
        "198.18.0.1",
        "198.19.255.254",
        "3fff::1",
        "3fff:fff:ffff::1",
        "5f00::1",
        "100::1",
        "2001:2::1",
        "2001:1::1",
        "2001:4:112::1",
        "2001:20::1",
        "2620:4f:8000::1",
        "::ffff:192.0.0.192",
        "64:ff9b::c000:c0",  # NAT64 form of 192.0.0.192
        "2002:c000:c0::1",  # 6to4 form of 192.0.0.192
        "::127.0.0.1",  # IPv4-compatible (deprecated) forms
        "::8.8.8.8",
        "::ffff:0:7f00:1",  # IPv4-translated (deprecated) form of 127.0.0.1
    ],
)
def test_special_purpose_addresses_pythons_tables_miss_are_refused(address):
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["192.0.1.1", "192.88.98.255", "192.88.100.1", "3fff:1000::1", "2001:200::1"]
)
def test_addresses_just_outside_the_special_ranges_are_allowed(address):
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_port_zero_is_refused_not_sent_to_port_80():
    with pytest.raises(AddressRefused, match="port"):
        parse_url("http://1.1.1.1:0/")
    assert parse_url("http://1.1.1.1:1/").port == 1


def test_international_host_names_are_idna_encoded():
    assert parse_url("http://пример.рф/hook") == Target(
        "http", "xn--e1afmkfd.xn--p1ai", 80, "/hook"
    )
    with pytest.raises(AddressRefused, match="international"):
        parse_url("http://" + "é" * 70 + ".com/")


# --- what a tenant learns from a refusal -------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://10.9.8.7/", "http://[fe80::1]/"])
def test_refusal_names_no_address_and_logs_the_detail(url, caplog):
    with pytest.raises(AddressRefused) as info:
        check_url(url, allow_private=False)
    assert str(info.value) == http.NOT_PUBLIC
    host = parse_url(url).host
    assert host not in str(info.value)
    assert host in info.value.detail
    assert f"target refused: {info.value.detail}" in caplog.text


def test_a_name_that_does_not_resolve_is_refused_in_the_same_words(caplog):
    with pytest.raises(AddressRefused) as info:
        check_url("http://does-not-exist.invalid/", allow_private=False)
    assert str(info.value) == http.NOT_PUBLIC
    assert "does-not-exist.invalid does not resolve" in caplog.text


# --- DNS within a time budget ------------------------------------------------------------------


@pytest.fixture
def silent_dns(monkeypatch):
    """A resolver that never answers for `*.silent.test` (until the test ends)."""
    real = socket.getaddrinfo
    released = threading.Event()

    def getaddrinfo(host, *args, **kwargs):
        if str(host).endswith(".silent.test"):
            released.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    released.set()


def test_a_resolver_that_never_answers_is_given_up_on_within_the_budget(silent_dns):
    started = time.monotonic()
    with pytest.raises(AddressRefused, match=r"did not resolve within 0\.5 s"):
        check_url("https://hook.silent.test/", allow_private=False, dns_timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 1.5


def test_many_silent_lookups_at_once_each_end_within_the_budget(silent_dns):
    # More than the resolver threads: those that wait for a thread time out too.
    errors: list[float] = []

    def one(i: int) -> None:
        started = time.monotonic()
        with pytest.raises(AddressRefused):
            check_url(f"https://h{i}.silent.test/", allow_private=False, dns_timeout=0.5)
        errors.append(time.monotonic() - started)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 40
    assert max(errors) < 1.5
