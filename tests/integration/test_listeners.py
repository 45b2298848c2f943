"""--listen endpoints other than plain TCP: TLS (with ALPN, as browsers and curl use) and Unix sockets."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.conftest import echo_app_args, free_port


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp / "key.pem", tmp / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _headers_seen_by_app(raw: bytes) -> dict[str, str]:
    body = raw.split(b"\r\n\r\n", 1)[1]
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_tls_listener_negotiates_http11_and_reports_https(serve, tmp_path: Path) -> None:
    key, cert = _self_signed(tmp_path)
    port = free_port()
    serve(echo_app_args("--listen", f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1"))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])  # what curl and browsers offer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            tls.sendall(b"GET /echo HTTP/1.1\r\nHost: secure.example\r\n\r\n")
            headers = _headers_seen_by_app(_read_response(tls))
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "secure.example"
    assert headers["x-forwarded-for"] == "127.0.0.1"


def test_unix_listener(serve, tmp_path: Path) -> None:
    path = tmp_path / "front.sock"
    serve(echo_app_args("--listen", f"unix:{path}"))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: local\r\n\r\n")
        raw = _read_response(sock)
    assert raw.startswith(b"HTTP/1.1 200 ")
    headers = _headers_seen_by_app(raw)
    assert headers["x-forwarded-proto"] == "http"
    assert "x-forwarded-for" not in headers  # no IP peer on a Unix socket


def test_systemd_socket_activation(tmp_path: Path) -> None:
    """systemd passes the listening socket as fd 3, with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID=<our pid>."""
    import os
    import subprocess
    import urllib.request

    from tests.integration.conftest import TWISTD, wait_for

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    log = tmp_path / "systemd.log"
    args = echo_app_args("--listen", "systemd:domain=INET:index=0")
    # The shell sets LISTEN_PID to its own pid, which twistd keeps when it execs.
    command = ('LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec "$0" -n --pidfile "" --logfile "$1" passenger "${@:2}"')

    def as_fd_3() -> None:
        if listener.fileno() == 3:
            os.set_inheritable(3, True)  # dup2(3, 3) would leave close-on-exec set
        else:
            os.dup2(listener.fileno(), 3)

    proc = subprocess.Popen(["/bin/bash", "-c", command, TWISTD, str(log), *args], close_fds=False, preexec_fn=as_fd_3)
    try:
        wait_for(lambda: "is ready" in (log.read_text() if log.exists() else ""), 20, what="the app to be ready")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/pid", timeout=10) as response:
            assert response.status == 200
            assert int(response.read()) > 0
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
