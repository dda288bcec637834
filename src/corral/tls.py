"""TLS: the server-side SSLContext built from Gunicorn's TLS settings (or the ssl_context hook), and the ASGI
"tls" scope extension of one connection.

The master builds the context before it binds anything and the workers inherit it across fork: a bad
certificate stops the start with one line, and key files only root can read still work when workers run as
another `user`.
"""

from __future__ import annotations

import functools
import logging
import re
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.core.settings import TlsSettings

if TYPE_CHECKING:
    from corral.config import Config

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "TLSConfigError",
    "default_context",
    "minimum_version",
    "server_context",
    "serving_options",
    "tls_extension",
]

# How long a client may take over the TLS handshake when header_timeout is 0 (off): asyncio needs a bound,
# and an unbounded handshake would let a client hold a connection without ever sending a byte of HTTP.
HANDSHAKE_TIMEOUT = 60.0

_LEGACY_VERSIONS = frozenset({"SSLv2", "SSLv3", "TLSv1", "TLSv1_1"})
_CERTIFICATE_PEM = re.compile(rb"-----BEGIN (?:TRUSTED )?CERTIFICATE-----")
_PRIVATE_KEY_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_CLIENT_CERTS = {0: "0 (not asked)", 1: "1 (optional)", 2: "2 (required)"}
_NEED_CERTFILE = ("ca_certs", "cert_reqs", "ciphers", "ssl_version", "ssl_context")


class TLSConfigError(Exception):
    """A TLS setting that cannot work; str(error) is one line: "<setting>: <problem>"."""


def minimum_version(ssl_version: str | None) -> tuple[ssl.TLSVersion, str | None]:
    """The lowest TLS version to accept for an ssl_version setting, and a warning line when it was raised.

    `ssl_version` is the setting as config.py normalised it: None, "TLS" (negotiate), "TLSv1_2", "TLSv1_3",
    or one of the legacy names. Legacy versions are raised to TLS 1.2 rather than refused: Gunicorn has
    ignored ssl_version since 21.0, so a config file that still names TLSv1 runs on modern TLS there too.
    """
    if ssl_version == "TLSv1_3":
        return ssl.TLSVersion.TLSv1_3, None
    if ssl_version in _LEGACY_VERSIONS:
        return ssl.TLSVersion.TLSv1_2, (
            f"ssl_version: {ssl_version} is insecure and no longer offered; accepting TLS 1.2 and 1.3 instead"
        )
    return ssl.TLSVersion.TLSv1_2, None


def server_context(cfg: Config) -> ssl.SSLContext | None:
    """The SSLContext for every listener, or None for plain HTTP (certfile unset).

    Reads the certificate, key and CA files now. Raises TLSConfigError (one line) for anything that cannot
    work; logs a warning (one line each) for a setting that has no effect, as Gunicorn would ignore it.
    The ssl_context hook gets `cfg` itself, as Gunicorn's gets its config.
    """
    tls = cfg.settings.tls
    warnings = _check_pairs(tls)
    if tls.certfile:
        warnings.append(minimum_version(tls.ssl_version)[1])
    for warning in warnings:
        if warning is not None:
            logging.getLogger("corral.error").warning("%s", warning)
    if not tls.certfile:
        return None
    if tls.ssl_context is None:
        return default_context(tls)
    return _context_from_hook(tls.ssl_context, cfg)


def _check_pairs(tls: TlsSettings) -> list[str | None]:
    """Settings that only make sense together: an error for what cannot work, warnings for what does nothing."""
    if not tls.certfile:
        if tls.keyfile:
            raise TLSConfigError("keyfile: set, but certfile is not; set both to serve TLS")
        given = [name for name in _NEED_CERTFILE if getattr(tls, name) not in (None, 0)]
        return [f"{name}: ignored: TLS is served only when certfile is set" for name in given]
    if tls.ssl_context is not None:
        return []  # the hook may load CA certificates or change verify_mode itself
    if tls.cert_reqs and not tls.ca_certs:
        raise TLSConfigError(
            f"cert_reqs: client certificates are {_CLIENT_CERTS[tls.cert_reqs]}, but no ca_certs is set to verify "
            "them against"
        )
    if tls.ca_certs and not tls.cert_reqs:
        # As in Gunicorn; often meant to send intermediates, which belong in certfile after the certificate.
        return [
            "ca_certs: ignored: cert_reqs is 0, so clients are never asked for a certificate (intermediate "
            "certificates for clients belong in certfile, after the certificate)"
        ]
    return []


def default_context(tls: TlsSettings) -> ssl.SSLContext:
    """corral's context from the settings (certfile set); also the zero-argument factory handed to the
    ssl_context hook."""
    if tls.certfile is None:
        raise TLSConfigError("certfile: not set; a TLS context needs a certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version, _ = minimum_version(tls.ssl_version)
    # Compression leaks secrets (CRIME); client-initiated renegotiation is a cheap CPU attack on TLS 1.2; the
    # server's cipher order (Python's, or `ciphers`) rather than the client's picks the TLS 1.2 suite.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_alpn_protocols(["http/1.1"])
    _load_chain(context, tls.certfile, tls.keyfile, tls.keyfile_password)
    # Deliberately not create_default_context(): for client authentication it would also trust every CA of
    # the system store, so any publicly issued client certificate would pass cert_reqs.
    context.verify_mode = ssl.VerifyMode(tls.cert_reqs)
    if tls.ca_certs:
        _load_ca_certs(context, tls.ca_certs)
    if tls.ciphers:
        try:
            context.set_ciphers(tls.ciphers)
        except ssl.SSLError:
            raise TLSConfigError(f"ciphers: no cipher matches {tls.ciphers!r}") from None
    return context


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TLSConfigError(f"{setting}: {path}: {exc.strerror or exc}") from None


def _load_chain(context: ssl.SSLContext, certfile: str, keyfile: str | None, password: str | None = None) -> None:
    # Read both files first so each problem names the setting at fault; OpenSSL only says "PEM lib".
    if not _CERTIFICATE_PEM.search(_read("certfile", certfile)):
        raise TLSConfigError(f"certfile: {certfile} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    key_setting, key_path = ("keyfile", keyfile) if keyfile else ("certfile", certfile)
    if not _PRIVATE_KEY_PEM.search(_read(key_setting, key_path)):
        if keyfile:
            raise TLSConfigError(f"keyfile: {keyfile} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
        raise TLSConfigError(f"certfile: {certfile} holds no private key; set keyfile to the file that does")

    def refuse_password() -> str:
        # Without a callback OpenSSL would prompt on the terminal, and a daemon would hang there.
        raise TLSConfigError(
            f"{key_setting}: {key_path} is encrypted and corral cannot ask for its password; "
            "decrypt it, or give keyfile_password (--ssl-keyfile-password)"
        )

    try:
        context.load_cert_chain(certfile, keyfile, password=password if password is not None else refuse_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"{key_setting}: {key_path} does not match certfile {certfile}") from None
        raise TLSConfigError(f"certfile: cannot load {certfile} with its key {key_path}: {_reason(exc)}") from None
    except OSError as exc:  # replaced between our read and OpenSSL's
        raise TLSConfigError(f"certfile: {exc.filename or certfile}: {exc.strerror or exc}") from None


def _load_ca_certs(context: ssl.SSLContext, ca_certs: str) -> None:
    if not _CERTIFICATE_PEM.search(_read("ca_certs", ca_certs)):
        raise TLSConfigError(f"ca_certs: {ca_certs} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        context.load_verify_locations(cafile=ca_certs)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"ca_certs: cannot load {ca_certs}: {_reason(exc)}") from None
    except OSError as exc:
        raise TLSConfigError(f"ca_certs: {ca_certs}: {exc.strerror or exc}") from None


def _reason(exc: ssl.SSLError) -> str:
    return (exc.reason or str(exc)).replace("_", " ").lower()


def _context_from_hook(hook: Callable[..., Any], cfg: Config) -> ssl.SSLContext:
    """Gunicorn's ssl_context(config, default_ssl_context_factory) -> SSLContext."""
    try:
        context = hook(cfg, functools.partial(default_context, cfg.settings.tls))
    except TLSConfigError:
        raise  # the default factory's own error already names its setting
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise TLSConfigError(f"ssl_context: the hook raised {problem}") from None
    if not isinstance(context, ssl.SSLContext):
        raise TLSConfigError(f"ssl_context: the hook returned {type(context).__name__}, not an ssl.SSLContext")
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise TLSConfigError("ssl_context: the hook returned a client context (PROTOCOL_TLS_CLIENT); a server "
                             "needs ssl.PROTOCOL_TLS_SERVER")  # fmt: skip
    return context


def serving_options(context: ssl.SSLContext | None, header_timeout: float) -> dict[str, Any]:
    """Keyword arguments for loop.create_server() and connect_accepted_socket(): none for plain HTTP.

    The handshake must finish within header_timeout: it is the same slow-client budget, spent earlier.
    """
    if context is None:
        return {}
    return {"ssl": context, "ssl_handshake_timeout": header_timeout or HANDSHAKE_TIMEOUT}


# --------------------------------------------------------------------------------------------------
# The ASGI "tls" extension (asgiref specs/tls.rst), computed once per connection.
# --------------------------------------------------------------------------------------------------

_TLS_VERSION_NUMBERS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
# RFC 4514 short names for the attributes Python reports by their OpenSSL long names.
_RFC4514_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_RFC4514_SPECIAL = re.compile(r'([\\"+,;<>])')


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """scope["extensions"]["tls"] for a connection whose handshake is complete.

    Python's ssl module shows only the client's own certificate, not the intermediates it sent, so
    client_cert_chain holds at most one certificate.
    """
    der = ssl_object.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": _rfc4514_name(ssl_object.getpeercert()) if der else None,
        "client_cert_error": None,  # a certificate that fails verification fails the handshake
        "tls_version": _TLS_VERSION_NUMBERS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_ids(ssl_object.context).get(cipher[0]) if cipher else None,
    }


@functools.lru_cache(maxsize=8)
def _cipher_ids(context: ssl.SSLContext) -> dict[str, int]:
    """OpenSSL cipher name -> IANA cipher suite number (the low 16 bits of OpenSSL's id); once per context."""
    return {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}


def _rfc4514_name(peercert: Any) -> str | None:
    """The subject as an RFC 4514 string (most specific RDN first), from getpeercert()'s parsed form."""
    subject = peercert.get("subject") if isinstance(peercert, dict) else None
    if not subject:
        return None
    rdns = ["+".join(f"{_RFC4514_NAMES.get(name, name)}={_rfc4514_escape(value)}" for name, value in rdn)
            for rdn in subject]  # fmt: skip
    return ",".join(reversed(rdns))


def _rfc4514_escape(value: str) -> str:
    escaped = _RFC4514_SPECIAL.sub(r"\\\1", value).replace("\x00", "\\00")
    if escaped[:1] in ("#", " "):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped
