"""TLS end to end: real corral processes serving HTTPS on 127.0.0.1 to httpx and to raw ssl sockets.

Certificates come from trustme and live in tmp_path. Each test proves one thing an operator relies on:
https in the scope, keep-alive, client certificates, one-line startup errors with nothing bound, certificates
re-read on HUP (and a broken one not taking the pool down), the ssl_context hook, and the handshake bound.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from websockets.sync.client import connect

from tests.integration.conftest import (
    READ_TIMEOUT,
    REPO_ROOT,
    Server,
    ServerFactory,
    child_pids,
    parse_responses,
    wait_for_ready_workers,
    wait_until,
)

EXIT_CONFIG = 2
FAILED_START_TIMEOUT = 30

TLS_APP = textwrap.dedent(
    """
    import json


    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = json.dumps(
            {"scheme": scope["scheme"], "client": scope["client"], "tls": scope["extensions"].get("tls")}
        ).encode()
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": body.decode()})
            await send({"type": "websocket.close", "code": 1000})
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    """
)


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    server_cert: trustme.LeafCert

    def issue_server_cert(self) -> trustme.LeafCert:
        """A fresh certificate for 127.0.0.1 written over cert_file and key_file (as a renewal would)."""
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        self.key_file.write_bytes(leaf.private_key_pem.bytes())
        self.server_cert = leaf
        return leaf

    def client_context(self, *, client_cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if client_cert is not None:
            client_cert.configure_cert(context)
        return context

    def server_args(self, *more: str) -> tuple[str, ...]:
        return ("--certfile", str(self.cert_file), "--keyfile", str(self.key_file), *more)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pki = Pki(ca, ca_file, tmp_path / "cert.pem", tmp_path / "key.pem", server_cert=None)  # type: ignore[arg-type]
    pki.issue_server_cert()
    return pki


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "tls_app.py").write_text(TLS_APP)
    return directory


def serve_tls(serve: ServerFactory, app_dir: Path, pki: Pki, *args: str) -> Server:
    return serve("tls_app:app", *pki.server_args(*args), app_dir=app_dir)


def https_get(server: Server, context: ssl.SSLContext, path: str = "/") -> tuple[dict[str, Any], str, bytes]:
    """One GET over a fresh TLS connection: the app's JSON, the TLS version and the server's certificate (DER)."""
    raw = socket.create_connection((server.host, server.port), timeout=READ_TIMEOUT)
    with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        version, peer = tls.version(), tls.getpeercert(binary_form=True)
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        for _ in range(1000):
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError("the server closed the connection without a response")
    (response,) = parse_responses(data)
    assert response.status == 200, response
    return json.loads(response.body), version or "", peer or b""


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode("ascii"))


def start_failure(serve: ServerFactory, tmp_path: Path, *args: str) -> tuple[str, Path]:
    """Start corral with `args` and a unix listener too; its stderr lines and that socket's path."""
    unix_path = tmp_path / "never-bound.sock"
    server = serve("tests.apps.echo:app", "--bind", f"unix:{unix_path}", *args, wait_ready=False)
    assert server.wait(FAILED_START_TIMEOUT) == EXIT_CONFIG, server.stderr_text()
    return server.stderr_text(), unix_path


# --------------------------------------------------------------------------------------------------
# Serving


def test_httpx_over_tls_sees_https_scheme_and_the_tls_extension(serve: ServerFactory, app_dir: Path, pki: Pki) -> None:
    server = serve_tls(serve, app_dir, pki)
    with httpx.Client(verify=pki.client_context(), timeout=READ_TIMEOUT) as client:
        response = client.get(f"https://127.0.0.1:{server.port}/hello")
    assert response.status_code == 200
    seen = response.json()
    assert seen["scheme"] == "https"
    assert seen["tls"]["tls_version"] in (0x0303, 0x0304)
    assert isinstance(seen["tls"]["cipher_suite"], int)
    assert seen["tls"]["client_cert_chain"] == []


def test_plain_http_scope_has_no_tls_extension(serve: ServerFactory, app_dir: Path) -> None:
    server = serve("tls_app:app", app_dir=app_dir)
    with httpx.Client(timeout=READ_TIMEOUT) as client:
        seen = client.get(f"http://127.0.0.1:{server.port}/").json()
    assert seen["scheme"] == "http"
    assert seen["tls"] is None


def test_keep_alive_over_tls_serves_several_requests_on_one_connection(
    serve: ServerFactory, app_dir: Path, pki: Pki
) -> None:
    server = serve_tls(serve, app_dir, pki)
    with httpx.Client(verify=pki.client_context(), timeout=READ_TIMEOUT) as client:
        clients = [tuple(client.get(f"https://127.0.0.1:{server.port}/{n}").json()["client"]) for n in range(3)]
    assert len(set(clients)) == 1, f"each request came from a new connection: {clients}"


def test_proxy_headers_from_a_trusted_peer_still_apply_over_tls(serve: ServerFactory, app_dir: Path, pki: Pki) -> None:
    server = serve_tls(serve, app_dir, pki, "--forwarded-allow-ips", "127.0.0.1")
    with httpx.Client(verify=pki.client_context(), timeout=READ_TIMEOUT) as client:
        seen = client.get(f"https://127.0.0.1:{server.port}/", headers={"X-Forwarded-For": "203.0.113.7"}).json()
    assert seen["client"][0] == "203.0.113.7"
    assert seen["scheme"] == "https"


def test_websocket_over_tls_has_wss_scheme_and_the_tls_extension(serve: ServerFactory, app_dir: Path, pki: Pki) -> None:
    server = serve_tls(serve, app_dir, pki)
    uri = f"wss://127.0.0.1:{server.port}/ws"
    with connect(uri, ssl=pki.client_context(), open_timeout=READ_TIMEOUT, close_timeout=READ_TIMEOUT) as websocket:
        seen = json.loads(websocket.recv(timeout=READ_TIMEOUT))
    assert seen["scheme"] == "wss"
    assert seen["tls"]["tls_version"] in (0x0303, 0x0304)


def test_required_client_certificate_refuses_a_client_without_one_and_serves_one_with_it(
    serve: ServerFactory, app_dir: Path, pki: Pki
) -> None:
    server = serve_tls(serve, app_dir, pki, "--cert-reqs", "2", "--ca-certs", str(pki.ca_file))
    # With TLS 1.3 the client may finish its side of the handshake before the server's refusal arrives, so
    # the refusal shows on the first read at the latest.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(server, pki.client_context())
    alice = pki.ca.issue_cert("alice@example.org", common_name="alice")
    seen, _, _ = https_get(server, pki.client_context(client_cert=alice))
    assert seen["tls"]["client_cert_name"].startswith("CN=alice,")
    assert seen["tls"]["client_cert_chain"] == [alice.cert_chain_pems[0].bytes().decode("ascii")]
    assert server.proc.poll() is None


def test_client_that_never_finishes_the_handshake_is_cut_off_after_header_timeout(
    serve: ServerFactory, app_dir: Path, pki: Pki
) -> None:
    server = serve_tls(serve, app_dir, pki, "--header-timeout", "1")
    with socket.create_connection((server.host, server.port), timeout=READ_TIMEOUT) as silent:
        silent.settimeout(READ_TIMEOUT * 2)
        try:
            data = silent.recv(4096)  # never sends a ClientHello: the server must give up and close
        except ConnectionResetError:
            data = b""
    assert data == b""
    https_get(server, pki.client_context())  # and the worker serves others as before


# --------------------------------------------------------------------------------------------------
# Startup errors: one line, exit 2, nothing bound


def test_missing_certfile_exits_2_with_one_line_and_nothing_bound(
    serve: ServerFactory, pki: Pki, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    stderr, unix_path = start_failure(serve, tmp_path, "--certfile", str(missing), "--keyfile", str(pki.key_file))
    assert stderr.strip().splitlines() == [f"corral: error: certfile: {missing}: No such file or directory"]
    assert not unix_path.exists()


def test_mismatched_keyfile_exits_2_with_one_line_and_nothing_bound(
    serve: ServerFactory, pki: Pki, tmp_path: Path
) -> None:
    other_key = tmp_path / "other-key.pem"
    pki.ca.issue_cert("other.example").private_key_pem.write_to_path(str(other_key))
    stderr, unix_path = start_failure(serve, tmp_path, "--certfile", str(pki.cert_file), "--keyfile", str(other_key))
    assert stderr.strip().splitlines() == [
        f"corral: error: keyfile: {other_key} does not match certfile {pki.cert_file}"
    ]
    assert not unix_path.exists()


# --------------------------------------------------------------------------------------------------
# Reloading certificates


def test_hup_after_a_certificate_renewal_makes_new_connections_see_the_new_certificate(
    serve: ServerFactory, app_dir: Path, pki: Pki
) -> None:
    old_cert = pki.server_cert
    server = serve_tls(serve, app_dir, pki)
    old_workers = wait_for_ready_workers(server, 1)
    assert https_get(server, pki.client_context())[2] == der(old_cert)
    new_cert = pki.issue_server_cert()
    server.signal(signal.SIGHUP)
    assert server.wait_for_stderr("Reload complete", 20), server.stderr_text()
    assert wait_until(lambda: not child_pids(server.proc.pid) & old_workers, 15), "the old worker did not exit"
    assert https_get(server, pki.client_context())[2] == der(new_cert)


def test_hup_with_a_broken_certificate_keeps_the_old_certificate_and_workers(
    serve: ServerFactory, app_dir: Path, pki: Pki
) -> None:
    old_cert = pki.server_cert
    server = serve_tls(serve, app_dir, pki)
    old_workers = wait_for_ready_workers(server, 1)
    pki.cert_file.write_text("not a certificate\n")
    server.signal(signal.SIGHUP)
    assert server.wait_for_stderr("Reload aborted: certfile:", 20), server.stderr_text()
    assert "holds no PEM certificate" in server.stderr_text()
    assert child_pids(server.proc.pid) == old_workers
    assert https_get(server, pki.client_context())[2] == der(old_cert)
    assert server.proc.poll() is None


# --------------------------------------------------------------------------------------------------
# The ssl_context hook


def test_ssl_context_hook_from_the_config_file_shapes_the_context(
    serve: ServerFactory, app_dir: Path, pki: Pki, tmp_path: Path
) -> None:
    config_file = tmp_path / "gunicorn_tls.conf.py"
    config_file.write_text(
        textwrap.dedent(
            """
            import ssl


            def ssl_context(conf, default_ssl_context_factory):
                context = default_ssl_context_factory()
                context.maximum_version = ssl.TLSVersion.TLSv1_2
                return context
            """
        )
    )
    server = serve_tls(serve, app_dir, pki, "-c", str(config_file))
    seen, version, _ = https_get(server, pki.client_context())
    assert version == "TLSv1.2"  # without the hook, TLS 1.3 would be negotiated
    assert seen["tls"]["tls_version"] == 0x0303


# --------------------------------------------------------------------------------------------------
# Privileges


def _nobody_can_run_the_echo_app(nobody: pwd.struct_passwd) -> bool:
    def become_nobody() -> None:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import ssl, asyncio, tests.apps.echo"],
            cwd=REPO_ROOT, preexec_fn=become_nobody, capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_key_readable_only_by_root_works_when_workers_run_as_another_user(serve: ServerFactory, pki: Pki) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")
    if not _nobody_can_run_the_echo_app(nobody):
        pytest.skip("this Python installation is not usable by 'nobody'")
    pki.key_file.chmod(0o600)
    server = serve("tests.apps.echo:app", *pki.server_args("--user", "nobody"))
    wait_for_ready_workers(server, 1)
    seen, _, _ = https_get(server, pki.client_context())
    assert seen["scheme"] == "https"


def test_graceful_shutdown_does_not_wait_for_a_handshake_that_never_comes(
    serve: ServerFactory, app_dir: Path, pki: Pki
) -> None:
    # Both bounds far above the wait below: only the drain's short grace for unstarted connections can end it.
    server = serve_tls(serve, app_dir, pki, "--header-timeout", "120", "--graceful-timeout", "120")
    wait_for_ready_workers(server, 1)
    with socket.create_connection((server.host, server.port), timeout=READ_TIMEOUT):  # a TCP health check
        https_get(server, pki.client_context())
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0, server.stderr_text()
