"""Loopback HTTP and HTTPS servers for the dataset-URL tests: a self-signed certificate for the loopback
names, scripted replies per path, and a record of every TCP connection and request they received."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_NAMES = ("localhost", "data.test")
CERT_ADDRESSES = ("127.0.0.1", "::1")
JSONL_BODY = b'{"text": "one"}\n{"text": "two"}\n'

Reply = Callable[[http.server.BaseHTTPRequestHandler], None]


def write_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate (it is its own CA) for CERT_NAMES and CERT_ADDRESSES: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qlora-bot test server")])
    now = datetime.datetime.now(datetime.UTC)
    alternatives = [x509.DNSName(host) for host in CERT_NAMES]
    alternatives += [x509.IPAddress(ipaddress.ip_address(address)) for address in CERT_ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


# ---------------------------------------------------------------------------------------------
# Replies


def body(data: bytes = JSONL_BODY, content_type: str = "application/octet-stream") -> Reply:
    def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return reply


def redirect(location: str, status: int = 302) -> Reply:
    def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return reply


def truncated(sent: bytes, announced: int) -> Reply:
    """Announces `announced` bytes, sends `sent`, then closes the connection."""

    def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(announced))
        handler.end_headers()
        handler.wfile.write(sent)
        handler.close_connection = True

    return reply


def trickle(in_headers: bool, every_s: float = 0.1, for_s: float = 30.0) -> Reply:
    """One byte every `every_s` for `for_s` seconds: of the header block, or of a 100 kB body."""

    def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-Padding: " + b"p" * 1000 + b"\r\n\r\n"
        if not in_headers:
            handler.wfile.write(head)
        slow = head if in_headers else b"x" * 100_000
        end = time.monotonic() + for_s
        try:
            for byte in slow:
                if time.monotonic() > end:
                    break
                handler.wfile.write(bytes([byte]))
                time.sleep(every_s)
        except OSError:  # the client gave up: what the test waits for
            pass
        handler.close_connection = True

    return reply


# ---------------------------------------------------------------------------------------------
# The server


class LoopbackServer:
    """A threaded HTTP(S) server on a loopback address. `connections` counts TCP connections accepted
    (before any TLS), `requests` the (path with query, Host header, TLS server name) of each request."""

    def __init__(
        self,
        routes: dict[str, Reply],
        *,
        tls: tuple[Path, Path] | None = None,
        address: str = "127.0.0.1",
    ) -> None:
        self.routes = routes
        self.address = address
        self.connections = 0
        self.requests: list[tuple[str, str | None, str | None]] = []
        self._handshake = threading.local()  # the TLS server name, seen by the thread that shakes hands
        context = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = self._sni
        self.scheme = "https" if tls else "http"
        self._httpd = _Server(self, context)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})

    def url(self, path: str, host: str | None = None) -> str:
        host = host or (f"[{self.address}]" if ":" in self.address else self.address)
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _sni(self, _socket: Any, server_name: str | None, _context: Any) -> None:
        self._handshake.server_name = server_name

    def shake_hands(self, sock: ssl.SSLSocket) -> str | None:
        """Complete the TLS handshake; the server name the client sent (SNI)."""
        self._handshake.server_name = None
        sock.do_handshake()
        return self._handshake.server_name


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a trickling reply must not hold the test's teardown

    def __init__(self, owner: LoopbackServer, context: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.context = context
        self.address_family = socket.AF_INET6 if ":" in owner.address else socket.AF_INET
        super().__init__((owner.address, 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, peer = self.socket.accept()
        self.owner.connections += 1
        sock.settimeout(30)
        if self.context is not None:
            # The handshake happens in the request's own thread (on its first read), not in the accept loop.
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, peer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refused the certificate, or gave up on a trickle: expected here


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        self.tls_server_name = None
        if isinstance(self.request, ssl.SSLSocket):
            self.tls_server_name = self.server.owner.shake_hands(self.request)
        super().setup()

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.requests.append((self.path, self.headers.get("Host"), self.tls_server_name))
        reply = owner.routes.get(urllib.parse.urlsplit(self.path).path)
        if reply is None:
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "8")
            self.end_headers()
            self.wfile.write(b"not here")
        else:
            reply(self)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass
