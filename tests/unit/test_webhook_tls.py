"""Deliveries over https connect to the address the SSRF guard resolved, yet check the certificate
against the URL's host name (SNI), with a real TLS server and a CA made for the test."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from dispatcher.http import http_client, post
from latentq.ssrf import Target

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """A CA, and a certificate it signed for ``localhost``."""
    folder = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=latentq test CA",
            "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", str(folder / "server.key"), "-out", str(folder / "server.csr"))  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", str(folder / "server.csr"), "-CA", str(folder / "ca.pem"),
            "-CAkey", str(folder / "ca.key"), "-CAcreateserial", "-days", "1",
            "-extfile", str(folder / "ext.cnf"), "-out", str(folder / "server.pem"))  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def tls_server(certificates) -> Iterator[tuple[int, list[dict]]]:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(
                {"host": self.headers["Host"], "body": self.rfile.read(int(self.headers["Content-Length"]))}
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "server.pem", certificates / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()


def test_https_delivery_checks_the_certificate_of_the_host_it_names(certificates, tls_server):
    port, received = tls_server
    target = Target("https", "localhost", port, "/hook?x=1", ("127.0.0.1",))
    with http_client(5, certificates / "ca.pem") as http:
        assert post(http, target, b"{}", {"webhook-id": "msg_1"}) == 204
    assert received[-1] == {"host": f"localhost:{port}", "body": b"{}"}
    # The same address under a name the certificate does not carry: refused.
    with (
        http_client(5, certificates / "ca.pem") as http,
        pytest.raises(httpx.ConnectError, match="certificate"),
    ):
        post(http, Target("https", "other.example", port, "/", ("127.0.0.1",)), b"{}", {})
    # A CA the dispatcher was not told to trust: refused.
    with http_client(5) as http, pytest.raises(httpx.ConnectError, match="certificate"):
        post(http, target, b"{}", {})


def test_a_refused_connection_falls_through_to_the_next_resolved_address(tls_server, certificates):
    port, received = tls_server
    target = Target("https", "localhost", port, "/", ("127.0.0.2", "127.0.0.1"))
    with http_client(5, certificates / "ca.pem") as http:
        assert post(http, target, b"[]", {}) == 204
    assert received[-1]["body"] == b"[]"
