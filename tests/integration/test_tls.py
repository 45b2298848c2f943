"""HTTPS with --ssl: a real TLS client verifies the chain (a trustme CA) and the host name (service-identity)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import service_identity.pyopenssl
import trustme
from OpenSSL import SSL

from tests.integration.conftest import echo_app_args, free_port, world_dir


@pytest.fixture
def certificate() -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    folder = world_dir("tls", 0o755)
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    return ca, cert, key


def https_get(ca: trustme.CA, port: int, path: str, hostname: str = "localhost") -> bytes:
    """GET over TLS, the chain checked against the CA and the name checked by service-identity."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    ca_file = world_dir("ca", 0o755) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context.load_verify_locations(str(ca_file))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)  # pyOpenSSL wants a blocking socket (a timeout makes it raise WantReadError)
    connection = SSL.Connection(context, sock)
    connection.set_tlsext_host_name(hostname.encode())
    connection.set_connect_state()
    connection.do_handshake()
    service_identity.pyopenssl.verify_hostname(connection, hostname)
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            break
        if not chunk:
            break
        data += chunk
    connection.close()
    return data


def test_ssl_options_serve_https_with_a_verified_chain_and_name(serve, certificate) -> None:  # type: ignore[no-untyped-def]
    ca, cert, key = certificate
    server = serve(echo_app_args("--ssl", "--ssl-certificate", str(cert), "--ssl-certificate-key", str(key)))
    answer = https_get(ca, server.port, "/echo")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    seen = json.loads(answer.partition(b"\r\n\r\n")[2])
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    with pytest.raises(service_identity.VerificationError):
        https_get(ca, server.port, "/echo", hostname="example.org")


def test_ssl_port_serves_https_beside_http(serve, certificate) -> None:  # type: ignore[no-untyped-def]
    ca, cert, key = certificate
    tls_port = free_port()
    server = serve(echo_app_args("--ssl", "--ssl-certificate", str(cert), "--ssl-certificate-key", str(key),
                                 "--ssl-port", str(tls_port)))
    assert https_get(ca, tls_port, "/pid").startswith(b"HTTP/1.1 200 ")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
        plain.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert plain.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_a_large_body_over_tls_arrives_whole_and_encrypted(serve, certificate) -> None:  # type: ignore[no-untyped-def]
    """Bodies past 64 KiB are spliced between plain sockets; a TLS client's must go through TLS instead."""
    ca, cert, key = certificate
    server = serve(echo_app_args("--ssl", "--ssl-certificate", str(cert), "--ssl-certificate-key", str(key)))
    answer = https_get(ca, server.port, "/lines?n=65536")  # 1 MiB
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert body == b"".join(b"%015x\n" % i for i in range(65536))
