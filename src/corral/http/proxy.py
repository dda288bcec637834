"""Which peers are trusted reverse proxies, and how their headers rewrite a request's client, scheme and
Host header.

The protocol decides once per connection whether the peer is trusted (`ProxyTrust.is_trusted`) and, for a
trusted peer, calls `apply_proxy_headers` only for requests that carry one of `ProxyTrust.header_names`.
Decisions:

* Two header families exist. If a request carries any X-Forwarded-For/-Proto/-Host/-Port header or any of
  the `secure_scheme_headers`, only that family is used; RFC 7239 `Forwarded` is used only when none of them
  is present. The families are never mixed field by field, and X-Forwarded-* wins, because almost every proxy
  in use (nginx, HAProxy's `forwardfor`, AWS/GCP load balancers, Cloudflare, Traefik, Envoy) writes
  X-Forwarded-For and passes a client's own `Forwarded` header through untouched: preferring `Forwarded`
  would let any client choose its address and scheme behind the most common deployments. Whichever family a
  proxy writes, it must also set or strip the headers of that family it does not use.
* Client: walk the hop list from the right, skip hops that are themselves trusted proxies, take the first
  untrusted one (the leftmost if all are trusted). A hop that is not an address (`unknown`, an obfuscated
  `_name`, garbage) stops the walk and leaves `client` as it was: nothing left of it can be trusted.
* Scheme: X-Forwarded-Proto (http, https, ws, wss) and every `secure_scheme_headers` entry (Gunicorn's
  meaning: the configured value, compared ignoring case, means https; any other value means http) each give
  a verdict; verdicts that disagree raise `ProxyHeaderError` (answered 400, like Gunicorn's
  InvalidSchemeHeaders). An X-Forwarded-Proto value that is not a known scheme is ignored. A websocket scope
  gets ws/wss. X-Forwarded-Proto is honoured even if removed from `secure_scheme_headers` (as uvicorn does).
* X-Forwarded-Proto and X-Forwarded-Host may be lists when proxies append: a single value is used; a list
  is used only when it has one entry per X-Forwarded-For hop, and then the entry of the chosen hop; otherwise
  it is ignored as ambiguous. X-Forwarded-Port is handled the same way.
* X-Forwarded-Host / `Forwarded: host=` replace the Host header (frameworks build URLs from it); invalid hosts
  are ignored. X-Forwarded-Port (1-65535) replaces the port in the resulting Host, left out when it is the
  scheme's default port; `scope["server"]` stays the listening address, as the ASGI spec defines it.
* Repeated header lines are joined with "," in order, as HTTP defines for list-valued fields.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping

from corral.http.errors import BadRequest

__all__ = [
    "GUNICORN_SECURE_SCHEME_HEADERS",
    "PROXY_HEADER_NAMES",
    "ProxyHeaderError",
    "ProxyTrust",
    "apply_proxy_headers",
]

GUNICORN_SECURE_SCHEME_HEADERS: Mapping[str, str] = {
    "X-FORWARDED-PROTOCOL": "ssl",
    "X-FORWARDED-PROTO": "https",
    "X-FORWARDED-SSL": "on",
}

_FORWARDED = b"forwarded"
_X_FORWARDED_FOR = b"x-forwarded-for"
_X_FORWARDED_PROTO = b"x-forwarded-proto"
_X_FORWARDED_HOST = b"x-forwarded-host"
_X_FORWARDED_PORT = b"x-forwarded-port"
_X_FORWARDED_NAMES = frozenset({_X_FORWARDED_FOR, _X_FORWARDED_PROTO, _X_FORWARDED_HOST, _X_FORWARDED_PORT})

# The names for Gunicorn's default secure_scheme_headers; `ProxyTrust.header_names` is the exact set for a
# configuration (it adds any custom secure scheme header names).
PROXY_HEADER_NAMES: frozenset[bytes] = (
    _X_FORWARDED_NAMES | {_FORWARDED} | {name.lower().encode("latin-1") for name in GUNICORN_SECURE_SCHEME_HEADERS}
)

_SCHEME_IS_SECURE = {"http": False, "https": True, "ws": False, "wss": True}
_DEFAULT_PORT = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# reg-name restricted to the characters real host names use, or a bracketed IPv6 literal; optional port.
_VALID_HOST = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_VALID_PORT = re.compile(r"[0-9]{1,5}")
_OBFUSCATED_PORT = re.compile(r"_[A-Za-z0-9._-]+")  # RFC 7239 obfport
# The longest address node: "[" + 45-character IPv6 + "]:65535". Longer text is garbage and is not cached.
_MAX_NODE_LENGTH = 56
_CACHE_LIMIT = 4096
_MAX_CACHED_VALUE = 512

# What a set of proxy header values means: (client, secure, host, port); None where they say nothing.
_Outcome = tuple["tuple[str, int] | None", "bool | None", "str | None", "int | None"]
_NO_OUTCOME: _Outcome = (None, None, None, None)


class ProxyHeaderError(BadRequest):
    """A trusted proxy's headers contradict each other, so the request's scheme cannot be known (400)."""


class ProxyTrust:
    """The addresses whose proxy headers are believed, and the secure scheme headers they may send."""

    __slots__ = (
        "_decisions",
        "_networks",
        "_outcomes",
        "_secure_values",
        "_x_family_names",
        "header_names",
        "trust_all",
    )

    def __init__(
        self,
        networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
        *,
        trust_all: bool = False,
        secure_scheme_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.trust_all = trust_all
        self._networks = tuple(networks)
        headers = GUNICORN_SECURE_SCHEME_HEADERS if secure_scheme_headers is None else secure_scheme_headers
        self._secure_values = {
            name.strip().lower().encode("latin-1"): value.strip().lower() for name, value in headers.items()
        }
        self._x_family_names = _X_FORWARDED_NAMES | frozenset(self._secure_values)
        self.header_names: frozenset[bytes] = self._x_family_names | {_FORWARDED}
        # Bounded caches, cleared when full: the same few proxies and clients repeat request after request.
        self._decisions: dict[str, bool] = {}
        self._outcomes: dict[tuple[tuple[bytes, bytes], ...], _Outcome] = {}

    @classmethod
    def from_setting(
        cls, forwarded_allow_ips: str | Iterable[str], secure_scheme_headers: Mapping[str, str]
    ) -> ProxyTrust:
        """Parse Gunicorn's comma-separated `forwarded_allow_ips` ("*", addresses, CIDR networks)."""
        entries = forwarded_allow_ips.split(",") if isinstance(forwarded_allow_ips, str) else forwarded_allow_ips
        networks = []
        trust_all = False
        for entry in (text.strip() for text in entries):
            if entry == "*":
                trust_all = True
            elif entry:
                networks.append(_parse_network(entry))
        return cls(networks, trust_all=trust_all, secure_scheme_headers=secure_scheme_headers)

    def is_trusted(self, peer_host: str | None) -> bool:
        """Whether a peer (an address string; None for a unix-socket peer) may send proxy headers."""
        # A unix socket can only be reached by processes on this host that may open the socket file, which
        # is how a local proxy (nginx, a sidecar) talks to us; Gunicorn trusts such peers the same way.
        if peer_host is None or self.trust_all:
            return True
        decision = self._decisions.get(peer_host)
        if decision is None:
            decision = self._match(peer_host)
            if len(self._decisions) >= _CACHE_LIMIT:
                self._decisions.clear()
            self._decisions[peer_host] = decision
        return decision

    def _match(self, peer_host: str) -> bool:
        try:
            address = ipaddress.ip_address(peer_host)
        except ValueError:
            return False
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; IPv4 networks must still match them.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def _parse_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"forwarded_allow_ips: {entry!r} is not '*', an IP address or a network (CIDR)") from None


def apply_proxy_headers(scope: dict, trust: ProxyTrust) -> None:
    """Rewrite `client`, `scheme` and the Host header from a trusted proxy's headers (see module doc).

    Raises ProxyHeaderError when the scheme headers contradict each other.
    """
    found = _collect(scope["headers"], trust.header_names)
    # The same proxy sends the same header values for a client request after request: decide once.
    key = tuple(found.items())
    outcome = trust._outcomes.get(key)
    if outcome is None:
        outcome = _decide(found, trust)
        if sum(len(value) for value in found.values()) <= _MAX_CACHED_VALUE:
            if len(trust._outcomes) >= _CACHE_LIMIT:
                trust._outcomes.clear()
            trust._outcomes[key] = outcome
    client, secure, host, port = outcome
    if client is not None:
        scope["client"] = client
    if secure is not None:
        scope["scheme"] = _scheme(scope, secure)
    if host is not None or port is not None:
        _rewrite_host(scope, host, port)


def _collect(headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes]) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in names:
            found[name] = found[name] + b"," + value if name in found else value
    return found


def _decide(found: dict[bytes, bytes], trust: ProxyTrust) -> _Outcome:
    if not found.keys().isdisjoint(trust._x_family_names):
        return _decide_x_forwarded(found, trust)
    if _FORWARDED in found:
        return _decide_forwarded(found[_FORWARDED], trust)
    return _NO_OUTCOME


def _decide_x_forwarded(found: dict[bytes, bytes], trust: ProxyTrust) -> _Outcome:
    hop_index: int | None = None
    hop_count = 0
    client = None
    forwarded_for = found.get(_X_FORWARDED_FOR)
    if forwarded_for is not None:
        hops = [hop.strip() for hop in forwarded_for.decode("latin-1").split(",")]
        hop_count = len(hops)
        hop_index, client = _select_hop(hops, trust)
    secure = _secure_verdict(found, trust, hop_index, hop_count)
    host = _entry_for_hop(found.get(_X_FORWARDED_HOST), hop_index, hop_count)
    if host is not None and not _VALID_HOST.fullmatch(host):
        host = None
    port_text = _entry_for_hop(found.get(_X_FORWARDED_PORT), hop_index, hop_count)
    port = _parse_port(port_text) if port_text is not None else None
    return client, secure, host, port or None  # port 0 is not a port a client can have used


def _select_hop(hops: list[str], trust: ProxyTrust) -> tuple[int, tuple[str, int] | None]:
    """The hop the client is, from the right past trusted proxies, and its (address, port) if readable."""
    for index in range(len(hops) - 1, -1, -1):
        node = _parse_node(hops[index]) if len(hops[index]) <= _MAX_NODE_LENGTH else None
        if node is None or index == 0 or not trust.is_trusted(node[0]):
            return index, node
    raise AssertionError("unreachable: the loop returns at index 0")


def _entry_for_hop(value: bytes | None, hop_index: int | None, hop_count: int) -> str | None:
    """A single value, or the entry of a per-hop list that lines up with the chosen X-Forwarded-For hop."""
    if value is None:
        return None
    entries = value.decode("latin-1").split(",")
    if len(entries) == 1:
        return entries[0].strip()
    if hop_index is not None and len(entries) == hop_count:
        return entries[hop_index].strip()
    return None


def _secure_verdict(found: dict[bytes, bytes], trust: ProxyTrust, hop_index: int | None, hop_count: int) -> bool | None:
    """https (True) or http (False) as the scheme headers say, None if they say nothing usable."""
    verdict: bool | None = None
    decided_by = b""
    secure_values = trust._secure_values
    for name, value in found.items():
        if name == _X_FORWARDED_PROTO:
            says = (_proto_verdict(value, secure_values.get(name), hop_index, hop_count),)
        elif name in secure_values:
            expected = secure_values[name]
            says = tuple(element == expected for element in _lower_elements(value))
        else:
            continue
        for secure in says:
            if secure is None:
                continue
            if verdict is None:
                verdict, decided_by = secure, name
            elif secure != verdict:
                raise ProxyHeaderError(
                    f"conflicting secure scheme headers ({_says(decided_by, verdict)}, {_says(name, secure)})"
                )
    return verdict


def _proto_verdict(value: bytes, configured: str | None, hop_index: int | None, hop_count: int) -> bool | None:
    proto = _entry_for_hop(value, hop_index, hop_count)
    if proto is None:
        return None
    proto = proto.lower()
    return True if proto == configured else _SCHEME_IS_SECURE.get(proto)


def _lower_elements(value: bytes) -> list[str]:
    elements = (element.strip(" \t") for element in value.decode("latin-1").lower().split(","))
    return [element for element in elements if element]


def _says(name: bytes, secure: bool) -> str:
    return f"{name.decode('latin-1')} says {'https' if secure else 'http'}"


def _scheme(scope: dict, secure: bool) -> str:
    if scope.get("type") == "websocket":
        return "wss" if secure else "ws"
    return "https" if secure else "http"


def _rewrite_host(scope: dict, host: str | None, port: int | None) -> None:
    headers = scope["headers"]
    if not isinstance(headers, list):
        headers = scope["headers"] = list(headers)
    index: int | None = None
    for position, (name, _) in enumerate(headers):
        if name == b"host":
            index = position
            break
    if host is None:
        if index is None:
            return  # a port alone has no Host to attach to
        host = headers[index][1].decode("latin-1")
    if port is not None:
        host = _strip_port(host)
        if port != _DEFAULT_PORT.get(scope.get("scheme", "http")):
            host = f"{host}:{port}"
    value = host.encode("latin-1")
    if index is None:
        headers.append((b"host", value))
    else:
        headers[index] = (b"host", value)


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]


def _parse_port(text: str) -> int | None:
    if not _VALID_PORT.fullmatch(text):
        return None
    port = int(text)
    return port if port <= 65535 else None


@functools.lru_cache(maxsize=4096)
def _parse_node(text: str) -> tuple[str, int] | None:
    """(address, port) from "a.b.c.d", "a.b.c.d:p", "[v6]", "[v6]:p" (or a bare v6); None if not an address.

    Port 0 stands for "no port given" and for an RFC 7239 obfuscated port ("_x"); `unknown` and obfuscated
    node names ("_hidden") are not addresses. Cached: the same few proxy and client addresses repeat.
    """
    if text.startswith("["):
        address_text, bracket, rest = text[1:].partition("]")
        address = _parse_address(address_text) if bracket else None
        if address is None or address.version != 6:
            return None
    else:
        address = _parse_address(text)
        rest = ""
        if address is None:
            address_text, _, port_text = text.partition(":")
            address = _parse_address(address_text)
            if address is None or address.version != 4:
                return None
            rest = ":" + port_text
    if not rest:
        return str(address), 0
    if rest[0] != ":":
        return None
    if _OBFUSCATED_PORT.fullmatch(rest, 1):
        return str(address), 0
    port = _parse_port(rest[1:])
    return None if port is None else (str(address), port)


def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:  # a zone id means nothing to this host and would carry arbitrary text into logs
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# One token of a Forwarded header: a pair (quoted-string or, leniently, any bare run without separators,
# quotes or spaces, so unquoted "for=[::1]:80" from sloppy proxies still parses), a separator, or junk.
_FORWARDED_TOKEN = re.compile(
    r"""[ \t]*(?:
        (?P<name>[!#$%&'*+.^_`|~0-9A-Za-z-]+)=(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s;,"]+))
      | (?P<separator>[;,])
      | (?P<junk>(?:"(?:[^"\\]|\\.)*"?|[^;,"])+)
    )[ \t]*""",
    re.VERBOSE,
)
_QUOTED_PAIR = re.compile(r"\\(.)")


def _parse_forwarded(text: str) -> list[dict[str, str] | None]:
    """RFC 7239 elements in order, each a dict keyed by lower-cased parameter name; None if malformed."""
    elements: list[dict[str, str] | None] = []
    pairs: dict[str, str] | None = {}
    after_pair = False
    for token in _FORWARDED_TOKEN.finditer(text):
        separator = token["separator"]
        if separator == ",":
            if pairs is None or pairs:  # empty list elements are allowed by the list syntax and skipped
                elements.append(pairs)
            pairs, after_pair = {}, False
        elif separator == ";":
            after_pair = False
        elif token["name"] is not None and pairs is not None and not after_pair:
            name = token["name"].lower()
            quoted = token["quoted"]
            value = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else token["bare"]
            if name in pairs:  # RFC 7239: a parameter MUST NOT occur more than once per element
                pairs = None
            else:
                pairs[name] = value
                after_pair = True
        else:
            pairs = None  # junk, or two pairs without a separator
    if pairs is None or pairs:
        elements.append(pairs)
    return elements


def _decide_forwarded(value: bytes, trust: ProxyTrust) -> _Outcome:
    element, client = _select_forwarded_element(_parse_forwarded(value.decode("latin-1")), trust)
    if element is None:
        return _NO_OUTCOME
    secure = _SCHEME_IS_SECURE.get(element.get("proto", "").lower())
    host = element.get("host")
    if host is not None and not _VALID_HOST.fullmatch(host):
        host = None
    return client, secure, host, None


def _select_forwarded_element(
    elements: list[dict[str, str] | None], trust: ProxyTrust
) -> tuple[dict[str, str] | None, tuple[str, int] | None]:
    """The element written by the outermost trusted proxy, and the client it names if that is an address."""
    for index in range(len(elements) - 1, -1, -1):
        element = elements[index]
        if element is None:
            return None, None
        node_text = element.get("for", "")
        node = _parse_node(node_text) if len(node_text) <= _MAX_NODE_LENGTH else None
        if node is None or index == 0 or not trust.is_trusted(node[0]):
            return element, node
    return None, None
