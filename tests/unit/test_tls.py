"""TLS: the server context built from the settings or the ssl_context hook, its one-line errors, the TLS
settings' validators, and the ASGI "tls" extension. Handshakes run in memory (MemoryBIO), without sockets."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from corral.config import Config, ConfigError, load_config
from corral.tls import (
    HANDSHAKE_TIMEOUT,
    TLSConfigError,
    minimum_version,
    server_context,
    serving_options,
    tls_extension,
)


@dataclass
class Pki:
    """A CA and files for a server certificate, its key, a client certificate and a key that matches neither."""

    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert
    ca_file: Path
    cert_file: Path
    key_file: Path
    combined_file: Path  # key and certificate in one file
    other_key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("alice@example.org", common_name="Doe, Jane")
    other = ca.issue_cert("someone-else.example")
    pki = Pki(
        ca, server, client,
        directory / "ca.pem", directory / "cert.pem", directory / "key.pem", directory / "combined.pem",
        directory / "other-key.pem",
    )  # fmt: skip
    ca.cert_pem.write_to_path(str(pki.ca_file))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(pki.cert_file), append=True)
    server.private_key_pem.write_to_path(str(pki.key_file))
    server.private_key_and_cert_chain_pem.write_to_path(str(pki.combined_file))
    other.private_key_pem.write_to_path(str(pki.other_key_file))
    return pki


def config(*args: str, **overrides: Any) -> Config:
    cfg = load_config(["tests.apps.echo:app", *args], environ={}, cwd=str(Path.cwd()))
    return cfg.replace(**overrides) if overrides else cfg


def tls_config(pki: Pki, *args: str, **overrides: Any) -> Config:
    return config("--certfile", str(pki.cert_file), "--keyfile", str(pki.key_file), *args, **overrides)


def client_context(pki: Pki, *, with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if with_certificate:
        pki.client.configure_cert(context)
    return context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A complete handshake between the two contexts through memory buffers: (server side, client side).

    Raises the ssl.SSLError of whichever side refuses.
    """
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(client_in, client_out, server_hostname="localhost")
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(20):
        finished = 0
        for side in (client_side, server_side):
            try:
                side.do_handshake()
                finished += 1
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if finished == 2:
            # TLS 1.3 lets the client finish first: a server that refuses its certificate says so in a
            # message that only a read shows.
            with pytest.raises(ssl.SSLWantReadError):
                client_side.read()
            return server_side, client_side
    raise AssertionError("the handshake did not finish in 20 rounds")


def built_with_warnings(cfg: Config) -> tuple[ssl.SSLContext | None, list[str]]:
    """server_context(cfg) and the warning lines it logged."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("corral.error")
    level = logger.level  # another test may have set up the error log with a quieter level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        context = server_context(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return context, [record.getMessage() for record in records if record.levelno == logging.WARNING]


def error_line(cfg: Config) -> str:
    with pytest.raises(TLSConfigError) as caught:
        server_context(cfg)
    line = str(caught.value)
    assert "\n" not in line
    return line


# --------------------------------------------------------------------------------------------------
# The default context


def test_no_certfile_means_plain_http() -> None:
    assert server_context(config()) is None
    assert serving_options(None, 10.0) == {}


def test_default_context_is_server_side_tls_1_2_and_up_without_compression(pki: Pki) -> None:
    context = server_context(tls_config(pki))
    assert context is not None
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert context.options & ssl.OP_NO_COMPRESSION


def test_default_context_negotiates_http_1_1_by_alpn_even_when_the_client_prefers_h2(pki: Pki) -> None:
    context = server_context(tls_config(pki))
    assert context is not None
    server_side, client_side = handshake(context, client_context(pki))
    assert client_side.selected_alpn_protocol() == "http/1.1"
    assert server_side.version() == "TLSv1.3"


def test_key_inside_certfile_needs_no_keyfile(pki: Pki) -> None:
    context = server_context(config("--certfile", str(pki.combined_file)))
    assert context is not None
    handshake(context, client_context(pki))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_client_limited_to_tls_1_1_is_refused(pki: Pki) -> None:
    context = server_context(tls_config(pki))
    assert context is not None
    old_client = client_context(pki)
    old_client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old_client.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(context, old_client)


def test_ssl_version_tlsv1_3_refuses_tls_1_2_clients(pki: Pki) -> None:
    context = server_context(tls_config(pki, "--ssl-version", "TLSv1_3"))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    tls12_client = client_context(pki)
    tls12_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(context, tls12_client)


def test_ciphers_restrict_tls_1_2_suites(pki: Pki) -> None:
    context = server_context(tls_config(pki, "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"))
    assert context is not None
    tls12_client = client_context(pki)
    tls12_client.maximum_version = ssl.TLSVersion.TLSv1_2
    server_side, _ = handshake(context, tls12_client)
    assert server_side.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"


# --------------------------------------------------------------------------------------------------
# Client certificates


def test_required_client_certificate_refuses_a_client_without_one(pki: Pki) -> None:
    context = server_context(tls_config(pki, "--cert-reqs", "2", "--ca-certs", str(pki.ca_file)))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ssl.SSLError):
        handshake(context, client_context(pki))


def test_required_client_certificate_accepts_one_signed_by_ca_certs(pki: Pki) -> None:
    context = server_context(tls_config(pki, "--cert-reqs", "2", "--ca-certs", str(pki.ca_file)))
    assert context is not None
    server_side, _ = handshake(context, client_context(pki, with_certificate=True))
    extension = tls_extension(server_side)
    assert extension["client_cert_chain"] == [pki.client.cert_chain_pems[0].bytes().decode("ascii")]
    assert extension["client_cert_name"].startswith("CN=Doe\\, Jane,")
    assert extension["client_cert_error"] is None


def test_optional_client_certificate_lets_a_client_without_one_in(pki: Pki) -> None:
    context = server_context(tls_config(pki, "--cert-reqs", "1", "--ca-certs", str(pki.ca_file)))
    assert context is not None
    server_side, _ = handshake(context, client_context(pki))
    assert tls_extension(server_side)["client_cert_chain"] == []
    assert tls_extension(server_side)["client_cert_name"] is None


def test_system_cas_are_not_trusted_for_client_certificates(pki: Pki) -> None:
    context = server_context(tls_config(pki, "--cert-reqs", "2", "--ca-certs", str(pki.ca_file)))
    assert context is not None
    # Only ca_certs: a client certificate from any other CA (a public one included) must not pass.
    assert context.cert_store_stats()["x509_ca"] == 1


# --------------------------------------------------------------------------------------------------
# The ASGI "tls" extension


def test_tls_extension_reports_version_and_iana_cipher_suite_number(pki: Pki) -> None:
    context = server_context(tls_config(pki))
    assert context is not None
    server_side, _ = handshake(context, client_context(pki))
    extension = tls_extension(server_side)
    assert extension["tls_version"] == 0x0304
    # TLS 1.3 suite numbers are 0x13XX (RFC 8446 B.4); the name tells which one.
    names = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384", 0x1303: "TLS_CHACHA20_POLY1305_SHA256"}
    assert names[extension["cipher_suite"]] == server_side.cipher()[0]
    assert extension["server_cert"] is None
    assert extension["client_cert_chain"] == []


def test_tls_extension_reports_tls_1_2_as_0x0303(pki: Pki) -> None:
    context = server_context(tls_config(pki))
    assert context is not None
    tls12_client = client_context(pki)
    tls12_client.maximum_version = ssl.TLSVersion.TLSv1_2
    server_side, _ = handshake(context, tls12_client)
    extension = tls_extension(server_side)
    assert extension["tls_version"] == 0x0303
    assert isinstance(extension["cipher_suite"], int) and 0 < extension["cipher_suite"] <= 0xFFFF


# --------------------------------------------------------------------------------------------------
# One line per problem


def test_missing_certfile_names_the_setting_and_the_path(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    line = error_line(config("--certfile", str(missing), "--keyfile", str(pki.key_file)))
    assert line == f"certfile: {missing}: No such file or directory"


def test_missing_keyfile_names_the_setting_and_the_path(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    line = error_line(config("--certfile", str(pki.cert_file), "--keyfile", str(missing)))
    assert line == f"keyfile: {missing}: No such file or directory"


def test_certfile_that_is_a_directory(tmp_path: Path) -> None:
    assert error_line(config("--certfile", str(tmp_path))) == f"certfile: {tmp_path}: Is a directory"


def test_certfile_without_a_certificate(pki: Pki) -> None:
    line = error_line(config("--certfile", str(pki.key_file), "--keyfile", str(pki.key_file)))
    assert line.startswith(f"certfile: {pki.key_file} holds no PEM certificate")


def test_certfile_without_a_key_and_no_keyfile(pki: Pki) -> None:
    line = error_line(config("--certfile", str(pki.cert_file)))
    assert line == f"certfile: {pki.cert_file} holds no private key; set keyfile to the file that does"


def test_keyfile_without_a_key(pki: Pki) -> None:
    line = error_line(config("--certfile", str(pki.cert_file), "--keyfile", str(pki.ca_file)))
    assert line.startswith(f"keyfile: {pki.ca_file} holds no PEM private key")


def test_keyfile_that_does_not_match_the_certificate(pki: Pki) -> None:
    line = error_line(config("--certfile", str(pki.cert_file), "--keyfile", str(pki.other_key_file)))
    assert line == f"keyfile: {pki.other_key_file} does not match certfile {pki.cert_file}"


def test_encrypted_keyfile_is_refused_instead_of_prompting_for_a_password(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.server.private_key_pem.bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    line = error_line(config("--certfile", str(pki.cert_file), "--keyfile", str(encrypted)))
    assert line.startswith(f"keyfile: {encrypted} is encrypted and corral cannot ask for its password")


def test_encrypted_keyfile_loads_with_uvicorns_ssl_keyfile_password(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.server.private_key_pem.bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encryption = serialization.BestAvailableEncryption(b"secret")
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    flags = ("--ssl-certfile", str(pki.cert_file), "--ssl-keyfile", str(encrypted))
    assert server_context(config(*flags, "--ssl-keyfile-password", "secret")) is not None
    assert error_line(config(*flags, "--ssl-keyfile-password", "wrong")).startswith("certfile: cannot load")


def test_ca_certs_without_a_certificate(pki: Pki) -> None:
    line = error_line(tls_config(pki, "--cert-reqs", "2", "--ca-certs", str(pki.key_file)))
    assert line.startswith(f"ca_certs: {pki.key_file} holds no PEM certificate")


def test_cert_reqs_without_ca_certs(pki: Pki) -> None:
    line = error_line(tls_config(pki, "--cert-reqs", "2"))
    assert line.startswith("cert_reqs: client certificates are 2 (required), but no ca_certs")


def test_ca_certs_without_cert_reqs_verifies_nothing_and_says_so(pki: Pki) -> None:
    context, warnings = built_with_warnings(tls_config(pki, "--ca-certs", str(pki.ca_file)))
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    assert warnings == [
        "ca_certs: ignored: cert_reqs is 0, so clients are never asked for a certificate (intermediate "
        "certificates for clients belong in certfile, after the certificate)"
    ]


def test_ciphers_that_match_nothing(pki: Pki) -> None:
    assert error_line(tls_config(pki, "--ciphers", "NO-SUCH-CIPHER")) == "ciphers: no cipher matches 'NO-SUCH-CIPHER'"


def test_keyfile_without_certfile_is_refused(pki: Pki) -> None:
    assert error_line(config("--keyfile", str(pki.key_file))) == (
        "keyfile: set, but certfile is not; set both to serve TLS"
    )


@pytest.mark.parametrize("name", ["ca_certs", "cert_reqs", "ciphers", "ssl_version", "ssl_context"])
def test_tls_settings_without_certfile_serve_plain_http_with_a_warning(pki: Pki, name: str) -> None:
    def ssl_context(conf: Any, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return factory()

    values = {"ca_certs": str(pki.ca_file), "cert_reqs": 2, "ciphers": "HIGH", "ssl_version": "TLSv1_3",
              "ssl_context": ssl_context}  # fmt: skip
    context, warnings = built_with_warnings(config(**{name: values[name]}))
    assert context is None
    assert warnings == [f"{name}: ignored: TLS is served only when certfile is set"]


# --------------------------------------------------------------------------------------------------
# The ssl_context hook


def test_ssl_context_hook_gets_the_config_and_a_zero_argument_default_factory(pki: Pki) -> None:
    seen: list[Any] = []

    def ssl_context(conf: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default_ssl_context_factory()
        seen.extend([conf.certfile, context])
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    context = server_context(tls_config(pki, ssl_context=ssl_context))
    assert seen == [str(pki.cert_file), context]
    assert context is not None
    server_side, _ = handshake(context, client_context(pki))
    assert server_side.version() == "TLSv1.2"


def test_ssl_context_hook_may_load_its_own_ca_for_required_client_certificates(pki: Pki) -> None:
    def ssl_context(conf: Any, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = factory()
        context.load_verify_locations(cafile=str(pki.ca_file))
        return context

    context = server_context(tls_config(pki, "--cert-reqs", "2", ssl_context=ssl_context))
    assert context is not None
    handshake(context, client_context(pki, with_certificate=True))


def test_ssl_context_hook_errors_are_one_line(pki: Pki) -> None:
    def raising(conf: Any, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        raise RuntimeError("vault\nunreachable")

    def returns_none(conf: Any, factory: Callable[[], ssl.SSLContext]) -> None:
        return None

    def client_side(conf: Any, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    assert error_line(tls_config(pki, ssl_context=raising)) == (
        "ssl_context: the hook raised RuntimeError: vault unreachable"
    )
    assert error_line(tls_config(pki, ssl_context=returns_none)) == (
        "ssl_context: the hook returned NoneType, not an ssl.SSLContext"
    )
    assert error_line(tls_config(pki, ssl_context=client_side)).startswith(
        "ssl_context: the hook returned a client context"
    )


def test_default_factory_errors_inside_the_hook_keep_their_own_line(pki: Pki, tmp_path: Path) -> None:
    def ssl_context(conf: Any, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return factory()

    missing = tmp_path / "gone.pem"
    cfg = config("--certfile", str(missing), ssl_context=ssl_context)
    assert error_line(cfg) == f"certfile: {missing}: No such file or directory"


# --------------------------------------------------------------------------------------------------
# ssl_version, cert_reqs and the asyncio options


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("TLSv1_2", "TLSv1_2"),
        ("TLSv1.3", "TLSv1_3"),
        ("tls1.2", "TLSv1_2"),
        ("PROTOCOL_TLS_SERVER", "TLS"),
        ("SSLv23", "TLS"),
        ("TLS", "TLS"),
        ("TLSv1", "TLSv1"),
        (ssl.PROTOCOL_TLS_SERVER, "TLS"),
        (ssl.PROTOCOL_TLS, "TLS"),
        (5, "TLSv1_2"),  # Gunicorn's number for PROTOCOL_TLSv1_2
        (ssl.TLSVersion.TLSv1_3, "TLSv1_3"),
    ],
)
def test_ssl_version_accepts_gunicorn_names_and_numbers(raw: Any, expected: str) -> None:
    assert config(ssl_version=raw).ssl_version == expected


@pytest.mark.parametrize("raw", ["TLSv9", 16, "PROTOCOL_TLS_CLIENT"])
def test_ssl_version_refuses_what_is_no_server_protocol(raw: Any) -> None:
    with pytest.raises(ConfigError, match=r"^ssl_version: expected TLSv1_2 or TLSv1_3"):
        config(ssl_version=raw)


@pytest.mark.parametrize(
    ("ssl_version", "expected"),
    [(None, ssl.TLSVersion.TLSv1_2), ("TLS", ssl.TLSVersion.TLSv1_2), ("TLSv1_2", ssl.TLSVersion.TLSv1_2),
     ("TLSv1_3", ssl.TLSVersion.TLSv1_3)],
)  # fmt: skip
def test_minimum_version_is_tls_1_2_unless_1_3_is_asked_for(ssl_version: str | None, expected: ssl.TLSVersion) -> None:
    assert minimum_version(ssl_version) == (expected, None)


@pytest.mark.parametrize("legacy", ["SSLv2", "SSLv3", "TLSv1", "TLSv1_1"])
def test_legacy_ssl_versions_are_raised_to_tls_1_2_with_a_warning(legacy: str) -> None:
    version, warning = minimum_version(legacy)
    assert version == ssl.TLSVersion.TLSv1_2
    assert warning == f"ssl_version: {legacy} is insecure and no longer offered; accepting TLS 1.2 and 1.3 instead"


def test_legacy_ssl_version_warning_goes_to_the_error_log(pki: Pki) -> None:
    context, warnings = built_with_warnings(tls_config(pki, "--ssl-version", "TLSv1"))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert warnings == ["ssl_version: TLSv1 is insecure and no longer offered; accepting TLS 1.2 and 1.3 instead"]


def test_a_complete_tls_configuration_warns_about_nothing(pki: Pki) -> None:
    cfg = tls_config(pki, "--cert-reqs", "2", "--ca-certs", str(pki.ca_file), "--ssl-version", "TLSv1_2")
    assert built_with_warnings(cfg)[1] == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(ssl.CERT_REQUIRED, 2), (ssl.CERT_OPTIONAL, 1), ("CERT_NONE", 0), ("required", 2), ("1", 1), (2, 2)],
)
def test_cert_reqs_accepts_numbers_and_ssl_cert_constants(raw: Any, expected: int) -> None:
    value = config(cert_reqs=raw).cert_reqs
    assert value == expected and type(value) is int


def test_cert_reqs_above_2_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^cert_reqs: must be <= 2"):
        config("--cert-reqs", "3")


def test_handshake_must_finish_within_header_timeout(pki: Pki) -> None:
    context = server_context(tls_config(pki))
    assert serving_options(context, 7.0) == {"ssl": context, "ssl_handshake_timeout": 7.0}
    # header_timeout 0 turns the header bound off, but a handshake always needs one.
    assert serving_options(context, 0.0) == {"ssl": context, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}


def test_suppress_ragged_eofs_false_is_accepted_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "gunicorn_tls.py").write_text("suppress_ragged_eofs = False\n")
    cfg = load_config(["tests.apps.echo:app", "-c", "gunicorn_tls.py"], environ={}, cwd=str(tmp_path))
    assert [w for w in cfg.warnings if w.startswith("suppress_ragged_eofs: ignored")], cfg.warnings
