"""trainer.data.url_addresses: every form of a non-public address is refused with its reason, public ones
pass (how URLs reach the checker: tests/test_url_fetch.py)."""

from __future__ import annotations

import pytest

from trainer.data.url_addresses import address_refusal


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private network address"),
        ("172.16.0.1", "a private network address"),
        ("192.168.1.1", "a private network address"),
        ("fd00::1", "a unique local (private network) address"),
        ("fc00::1", "a unique local (private network) address"),
        ("169.254.169.254", "the cloud metadata service's address"),
        ("fd00:ec2::254", "the cloud metadata service's address"),
        ("169.254.10.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("100.64.0.1", "a carrier-grade NAT (shared) address"),
        ("100.127.255.254", "a carrier-grade NAT (shared) address"),
        ("224.0.0.251", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "an unspecified ('this network') address"),
        ("::", "an unspecified address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("198.18.0.1", "a reserved address (benchmarking)"),
        ("::ffff:127.0.0.1", "a loopback address (IPv4-mapped)"),
        ("::ffff:169.254.169.254", "the cloud metadata service's address (IPv4-mapped)"),
        ("::ffff:10.0.0.1", "a private network address (IPv4-mapped)"),
        ("::ffff:0:7f00:1", "a loopback address (IPv4-translated)"),
        ("64:ff9b::a9fe:a9fe", "the cloud metadata service's address (NAT64)"),
        ("64:ff9b::7f00:1", "a loopback address (NAT64)"),
        ("2002:7f00:1::", "a loopback address (6to4)"),
        ("2002:c0a8:101::1", "a private network address (6to4)"),
        ("::127.0.0.1", "a deprecated IPv4-compatible IPv6 address"),
        ("2001::1", "a Teredo tunnel address"),
    ],
)
def test_the_address_checker_refuses_every_non_public_form(address: str, why: str) -> None:
    assert address_refusal(address) == why


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34", "2002:5db8:d822::1"],
)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(address) is None
