"""Fetching a dataset URL without letting it reach this machine or its private network (SSRF).

Owns resolving a host once and connecting to the checked address itself (trainer/data/url_addresses.py says
which addresses pass), https only (never downgraded) across a bounded number of redirects, and one
deadline for the whole download.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from protocol.errors import UserError
from protocol.job_spec import Limits
from protocol.sources import redact_url
from trainer.data.url_addresses import IPAddress, address_refusal, host_key, normalised_host, system_resolver

MAX_REDIRECTS = 5
CHUNK_BYTES = 1 << 16
REDIRECTS = (301, 302, 303, 307, 308)
# (host, port) -> the addresses it resolves to; tests pass their own to play a DNS answer.
Resolver = Callable[[str, int], list[str]]

_URL_HINT = "use a public https:// URL, or upload the file instead"
_ALLOW_HINT = f"{_URL_HINT} (an admin can allow a trusted host in defaults.limits.allowed_url_hosts)"


@dataclass(frozen=True)
class FetchPolicy:
    allowed_hosts: frozenset[str] = frozenset()  # normalised with host_key
    timeout_s: float = 600.0
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def from_limits(cls, limits: Limits) -> FetchPolicy:
        return cls(frozenset(map(host_key, limits.allowed_url_hosts)), limits.download_timeout_s)


# ---------------------------------------------------------------------------------------------
# A URL's parts, checked before anything is looked up


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # an ASCII name, or the canonical form of an address
    port: int
    request_path: str  # path and query, as sent to the server (never shown)
    address: IPAddress | None  # when the URL names an address rather than a name
    via: str | None = None  # the URL (as shown) whose redirect led here

    @property
    def shown(self) -> str:
        """How messages name it: without its secrets, and saying which URL redirected to it."""
        return _named(self.url, self.via)


def _named(url: str, via: str | None) -> str:
    return f"{redact_url(url)} (redirected from {via})" if via else redact_url(url)


def parse_target(url: str, policy: FetchPolicy, via: str | None = None) -> Target:
    """The URL's scheme, host, port and path; UserError for anything refused without a lookup."""
    shown = _named(url, via)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        hostname = parts.hostname
    except ValueError as error:  # an unclosed [ of an IPv6 host, a port that is not a number
        raise UserError(f"{shown}: not a valid URL ({error})", "check the URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        hint = f"{_URL_HINT}, or give a Hub dataset id"
        raise UserError(f"{shown}: unsupported URL scheme {scheme!r}", hint)
    if parts.username is not None or parts.password is not None:
        raise UserError(
            f"{shown}: URLs with a user name or password (user:password@) are refused",
            "use a public or pre-signed https:// link to the file, or upload it",
        )
    if not hostname:
        raise UserError(f"{shown}: the URL has no host", "check the URL")
    host, address = normalised_host(hostname, shown)
    if scheme == "http" and host_key(host) not in policy.allowed_hosts:
        raise UserError(f"{shown}: plain http:// URLs are refused", "use the https:// address of the file")
    path = parts.path or "/"
    request_path = f"{path}?{parts.query}" if parts.query else path
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80), request_path, address, via)


# ---------------------------------------------------------------------------------------------
# Fetching


class Download:
    """An open 200 response: its content type and announced length, and its body in chunks."""

    def __init__(self, response: http.client.HTTPResponse, target: Target, deadline: _Deadline) -> None:
        self._response = response
        self._deadline = deadline
        self.target = target
        self.content_type = response.headers.get_content_type()
        declared = (response.getheader("Content-Length") or "").strip()
        self.length = int(declared) if declared.isdigit() else None

    def chunks(self) -> Iterator[bytes]:
        """The body; UserError when the deadline passes or the body ends short of its Content-Length."""
        received = 0
        with _failures_explained(self.target.shown, self._deadline):
            try:
                while chunk := self._response.read(CHUNK_BYTES):
                    received += len(chunk)
                    yield chunk
            except http.client.IncompleteRead:  # a chunked body cut off mid-chunk
                raise _truncated(self.target.shown, received, self.length) from None
        if self.length is not None and received < self.length:
            # http.client returns a short body without complaint once the server closes the connection.
            raise _truncated(self.target.shown, received, self.length)


@contextlib.contextmanager
def open_url(
    url: str,
    policy: FetchPolicy,
    *,
    resolver: Resolver = system_resolver,
) -> Iterator[Download]:
    """GET `url`, following at most policy.max_redirects redirects, each target checked as the first was;
    every error a person can act on is a UserError that shows URLs without their query or credentials."""
    deadline = _Deadline(policy.timeout_s, redact_url(url))
    context = ssl.create_default_context()  # the system's CAs (SSL_CERT_FILE, where set)
    target = parse_target(url, policy)
    for redirects in range(policy.max_redirects + 1):
        connection = _connect(target, policy, resolver, context, deadline)
        try:
            with _failures_explained(target.shown, deadline):
                connection.request(
                    "GET", target.request_path, headers={"User-Agent": "qlora-bot", "Connection": "close"}
                )
                response = connection.getresponse()
            if response.status == 200:
                yield Download(response, target, deadline)
                return
            if response.status not in REDIRECTS:
                status = f"HTTP {response.status} {_printable(response.reason)}"
                raise UserError(
                    f"{target.shown}: download failed with {status}",
                    "check the URL; a private file needs a public or pre-signed link",
                )
            target = _redirected(target, response.getheader("Location"), redirects, policy)
        finally:
            connection.close()
    raise AssertionError("unreachable: _redirected refuses one redirect too many")


def _redirected(target: Target, location: str | None, redirects: int, policy: FetchPolicy) -> Target:
    if not location:
        raise UserError(f"{target.shown}: a redirect without a Location", "check the URL with its server")
    if redirects == policy.max_redirects:
        raise UserError(
            f"{target.shown}: more than {policy.max_redirects} redirects", "give the file's final address"
        )
    new_url = urllib.parse.urljoin(target.url, location.strip())
    new = parse_target(new_url, policy, via=redact_url(target.url))
    if target.scheme == "https" and new.scheme != "https":
        raise UserError(
            f"{target.shown}: redirected from https to plain http ({redact_url(new.url)}), which is refused",
            "give the file's https:// address",
        )
    return new


def _connect(
    target: Target, policy: FetchPolicy, resolver: Resolver, context: ssl.SSLContext, deadline: _Deadline
) -> _PinnedConnection:
    """A connection to an address checked here: http.client's own connect would look the name up again,
    and a second DNS answer may differ from the checked one (DNS rebinding)."""
    allowed = host_key(target.host) in policy.allowed_hosts
    addresses = [target.address] if target.address is not None else _resolve(target, resolver)
    for address in addresses:
        why = None if allowed else address_refusal(address)
        if why is not None:
            named = f"{target.host} is" if target.address is not None else f"{target.host} resolves to"
            # The address a name resolves to stays unsaid: it would map this network's names for anyone.
            raise UserError(
                f"{target.shown}: {named} {why}; dataset URLs may not reach this server or its network",
                _ALLOW_HINT,
            )
    last_error: OSError | None = None
    for address in addresses:
        try:
            return _PinnedConnection(target, address, context, deadline)
        except TimeoutError:
            raise deadline.passed() from None
        except OSError as error:  # refused or unreachable: the host's next address may answer
            last_error = error
    raise UserError(
        f"{target.shown}: download failed ({_reason(last_error)})",
        "check the URL and that its server is reachable",
    )


def _resolve(target: Target, resolver: Resolver) -> list[IPAddress]:
    # The system resolver has no timeout of its own; the data check's deadline and the worker's wall
    # time bound a lookup that hangs.
    try:
        found = resolver(target.host, target.port)
    except (OSError, UnicodeError) as error:
        raise UserError(
            f"{target.shown}: cannot resolve {target.host} ({_reason(error)})",
            "check the host name in the URL",
        ) from None
    if not found:
        raise UserError(f"{target.shown}: {target.host} has no address", "check the host name in the URL")
    return [ipaddress.ip_address(address.split("%")[0]) for address in found]


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP or HTTPS to one given address; the Host header and TLS (SNI, certificate) use the URL's host."""

    def __init__(
        self, target: Target, address: IPAddress, context: ssl.SSLContext, deadline: _Deadline
    ) -> None:
        super().__init__(target.host, target.port)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_STREAM)
        try:
            raw.settimeout(deadline.remaining())
            raw.connect((str(address), target.port))
            if target.scheme == "https":
                raw = context.wrap_socket(raw, server_hostname=target.host)
        except BaseException:
            raw.close()
            raise
        self.sock = _DeadlineSocket(raw, deadline)

    def connect(self) -> None:  # never a second connection (and so never a second lookup)
        raise http.client.NotConnected("the pinned connection is closed")


class _DeadlineSocket:
    """The calls http.client makes on its socket, each given only the time left to the download. As with
    socket.makefile, the socket closes once the connection and every reader of it have let go: http.client
    hands a `Connection: close` response the socket and closes its own end at once."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline
        self._holders = 1  # the connection

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.remaining())
        self._sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        self._holders += 1
        return io.BufferedReader(_DeadlineReader(self))

    def recv_into(self, buffer: Any) -> int:
        self._sock.settimeout(self._deadline.remaining())
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            self._sock.close()


class _DeadlineReader(io.RawIOBase):
    """Every receive waits only for what is left of the deadline, so a trickle of bytes cannot stretch
    the download (a timeout per read would start again with each byte)."""

    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._sock.close()


class _Deadline:
    def __init__(self, seconds: float, shown: str) -> None:
        self.seconds = seconds
        self.shown = shown
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:  # settimeout(0) would mean "do not wait", not "time is up"
            raise self.passed()
        return left

    def passed(self) -> UserError:
        return UserError(
            f"{self.shown}: the download took longer than {self.seconds:g} s "
            "(defaults.limits.download_timeout_s)",
            "use a faster server or a smaller file, or ask an admin to raise the limit",
        )


@contextlib.contextmanager
def _failures_explained(shown: str, deadline: _Deadline) -> Iterator[None]:
    try:
        yield
    except TimeoutError:  # every timeout set on the socket is the time left to the deadline
        raise deadline.passed() from None
    except (OSError, http.client.HTTPException) as error:
        raise UserError(
            f"{shown}: download failed ({_reason(error)})", "check the URL and that its server is reachable"
        ) from None


def _truncated(shown: str, received: int, length: int | None) -> UserError:
    announced = f" of the {length} it announced" if length is not None else ""
    return UserError(
        f"{shown}: the download was cut short ({received} bytes{announced})",
        "try again; if it keeps happening, check the file's server",
    )


def _reason(error: BaseException | None) -> str:
    text = str(error) or type(error).__name__
    return _printable(text)


def _printable(text: str) -> str:
    # Whatever a remote server sent (a reason phrase) is shown short and without control characters.
    return "".join(char for char in text if char.isprintable())[:120]
