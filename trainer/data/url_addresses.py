"""Which addresses a dataset URL may reach: the deny list (loopback, private, link-local, CGNAT,
multicast, reserved, cloud metadata; IPv4 addresses inside IPv6 ones judged as themselves), and the one
normal form of a host (integer, octal and hex IPv4 forms included) that checks and the allow-list compare.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket

from protocol.errors import UserError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Most specific first: the metadata addresses are named apart from the ranges that hold them.
_DENIED_V4 = [
    ("169.254.169.254/32", "the cloud metadata service's address"),
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private network address"),
    ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private network address"),
    ("192.0.0.0/24", "a reserved address (IETF protocol assignments)"),
    ("192.0.2.0/24", "a reserved address (documentation)"),
    ("192.88.99.0/24", "a reserved address (6to4 relay)"),
    ("192.168.0.0/16", "a private network address"),
    ("198.18.0.0/15", "a reserved address (benchmarking)"),
    ("198.51.100.0/24", "a reserved address (documentation)"),
    ("203.0.113.0/24", "a reserved address (documentation)"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),  # 255.255.255.255, the broadcast address, included
]
_DENIED_V6 = [
    ("fd00:ec2::254/128", "the cloud metadata service's address"),
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fc00::/7", "a unique local (private network) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
    ("100::/64", "a reserved address (discard only)"),
    ("2001::/32", "a Teredo tunnel address"),  # it hides an IPv4 address, bit-flipped: never followed
    ("2001:db8::/32", "a reserved address (documentation)"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
]
_DENIED = [(ipaddress.ip_network(net), why) for net, why in _DENIED_V4 + _DENIED_V6]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
# A host whose last label is a number is an IPv4 address in some form (127.1, 2130706433, 0x7f.0.0.1),
# as browsers and inet_aton read it: never a name.
_NUMERIC_LAST_LABEL = re.compile(r"(?:^|\.)(?:0x[0-9a-f]*|[0-9]+)\.?$")


def address_refusal(address: str | IPAddress) -> str | None:
    """Why a connection to `address` is refused ("a loopback address", ...), or None for a public one.
    IPv4 addresses inside IPv6 ones (mapped, translated, NAT64, 6to4) are judged as that IPv4 address."""
    ip = ipaddress.ip_address(address.split("%")[0]) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded, form = _embedded_ipv4(ip)
        if form == "IPv4-compatible":
            return "a deprecated IPv4-compatible IPv6 address"
        if embedded is not None:
            why = address_refusal(embedded)
            return f"{why} ({form})" if why else None
    for network, why in _DENIED:
        if ip.version == network.version and ip in network:
            return why
    return None if ip.is_global else "not a public address"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, str]:
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in _IPV4_TRANSLATED:
        return low32, "IPv4-translated"
    if ip in _NAT64:
        return low32, "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are themselves, not IPv4 addresses
        return low32, "IPv4-compatible"
    return None, ""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver: /etc/hosts, then DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def host_key(host: str) -> str:
    """A host as the allow-list compares it: lower case, no brackets or final dot, an address canonical."""
    host = host.strip().strip("[]").rstrip(".").lower()
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    return host


def normalised_host(hostname: str, shown: str) -> tuple[str, IPAddress | None]:
    """The host as it is looked up and checked (an address in its canonical form, with the address), or
    UserError naming `shown` for a host that is neither a name nor an address."""
    if ":" in hostname:  # urlsplit took it from between [ and ]
        try:
            address = ipaddress.IPv6Address(hostname.split("%")[0])
        except ValueError:
            raise UserError(f"{shown}: {hostname!r} is not a valid IPv6 address", "check the URL") from None
        return str(address), address
    if _NUMERIC_LAST_LABEL.search(hostname):
        try:
            address = ipaddress.IPv4Address(hostname.rstrip("."))
        except ValueError:
            try:  # the short, integer, octal and hex forms, read as inet_aton (and DNS libraries) read them
                address = ipaddress.IPv4Address(socket.inet_aton(hostname.rstrip(".")))
            except OSError:
                raise UserError(
                    f"{shown}: {hostname!r} is not a valid IPv4 address", "write it as four numbers, a.b.c.d"
                ) from None
        return str(address), address
    try:
        return hostname.rstrip(".").encode("idna").decode("ascii"), None
    except UnicodeError:
        raise UserError(f"{shown}: {hostname!r} is not a valid host name", "check the URL") from None
