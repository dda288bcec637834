"""Proxy trust decisions and the rewriting of client, scheme and Host from X-Forwarded-* and Forwarded."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.http.errors import BadRequest
from corral.http.proxy import (
    GUNICORN_SECURE_SCHEME_HEADERS,
    PROXY_HEADER_NAMES,
    ProxyHeaderError,
    ProxyTrust,
    apply_proxy_headers,
)

PEER = ("10.0.0.5", 40000)


def trust_of(setting: str = "127.0.0.1,::1,10.0.0.0/8", secure=None) -> ProxyTrust:
    return ProxyTrust.from_setting(setting, GUNICORN_SECURE_SCHEME_HEADERS if secure is None else secure)


def proxied(
    *headers: tuple[bytes, bytes],
    trust: ProxyTrust | None = None,
    scope_type: str = "http",
    host: bytes | None = b"internal:8000",
) -> dict:
    """The scope after apply_proxy_headers, for a request from PEER with these extra headers."""
    base = [(b"host", host)] if host is not None else []
    scope = {
        "type": scope_type,
        "scheme": "ws" if scope_type == "websocket" else "http",
        "client": PEER,
        "server": ("10.0.0.9", 8000),
        "headers": base + list(headers),
    }
    apply_proxy_headers(scope, trust or trust_of())
    return scope


def host_of(scope: dict) -> bytes | None:
    values = [value for name, value in scope["headers"] if name == b"host"]
    assert len(values) <= 1
    return values[0] if values else None


# ------------------------------------------------------------------------------------------- trust


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "10.0.0.5", "10.255.255.255"])
def test_listed_addresses_and_networks_are_trusted(peer):
    assert trust_of().is_trusted(peer)


@pytest.mark.parametrize("peer", ["127.0.0.2", "11.0.0.1", "::2", "192.168.1.1", "2001:db8::1"])
def test_addresses_outside_the_setting_are_not_trusted(peer):
    assert not trust_of().is_trusted(peer)


def test_ipv6_networks_are_matched():
    trust = trust_of("2001:db8::/32, fd00::1")
    assert trust.is_trusted("2001:db8:1::7")
    assert trust.is_trusted("fd00::1")
    assert not trust.is_trusted("2001:db9::1")
    assert not trust.is_trusted("fd00::2")


def test_ipv4_mapped_peer_of_a_dual_stack_listener_matches_ipv4_entries():
    assert trust_of().is_trusted("::ffff:10.1.2.3")
    assert not trust_of().is_trusted("::ffff:11.1.2.3")


def test_star_trusts_every_peer():
    trust = trust_of("*")
    assert trust.is_trusted("203.0.113.7")
    assert trust.is_trusted("2001:db8::1")


def test_unix_socket_peer_is_trusted_because_only_local_processes_can_connect():
    assert trust_of("").is_trusted(None)
    assert trust_of("10.0.0.1").is_trusted(None)


def test_peer_strings_that_are_not_addresses_are_not_trusted():
    trust = trust_of()
    assert not trust.is_trusted("")
    assert not trust.is_trusted("localhost")
    assert not trust.is_trusted("10.0.0.1:80")


def test_empty_setting_trusts_no_tcp_peer():
    assert not trust_of("").is_trusted("127.0.0.1")


def test_trust_decision_is_stable_when_asked_again():
    trust = trust_of()
    assert [trust.is_trusted("10.0.0.1") for _ in range(3)] == [True, True, True]
    assert [trust.is_trusted("8.8.8.8") for _ in range(3)] == [False, False, False]


def test_setting_accepts_a_list_and_surrounding_spaces():
    trust = ProxyTrust.from_setting([" 192.0.2.1 ", "198.51.100.0/24"], {})
    assert trust.is_trusted("192.0.2.1")
    assert trust.is_trusted("198.51.100.77")


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "1.2.3", "unix:/run/app.sock", "**"])
def test_setting_entry_that_is_not_an_address_or_network_is_a_config_error(entry):
    with pytest.raises(ValueError, match="forwarded_allow_ips"):
        trust_of(f"127.0.0.1,{entry}")


def test_header_names_cover_both_families_and_custom_secure_headers():
    assert {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
        b"x-forwarded-protocol",
        b"x-forwarded-ssl",
    } <= PROXY_HEADER_NAMES
    assert all(name == name.lower() for name in PROXY_HEADER_NAMES)
    custom = trust_of(secure={"X-Front-End-Https": "on"})
    assert b"x-front-end-https" in custom.header_names
    assert b"x-forwarded-ssl" not in custom.header_names
    assert b"x-forwarded-for" in custom.header_names


# ------------------------------------------------------------------------------------ X-Forwarded-For


def test_single_forwarded_address_becomes_the_client_with_port_zero():
    assert proxied((b"x-forwarded-for", b"203.0.113.7"))["client"] == ("203.0.113.7", 0)


def test_walk_skips_trusted_proxies_from_the_right():
    scope = proxied((b"x-forwarded-for", b"203.0.113.7, 10.0.0.2, 10.0.0.3"))
    assert scope["client"] == ("203.0.113.7", 0)


def test_spoofed_leftmost_address_is_not_taken():
    # The client sent "X-Forwarded-For: 6.6.6.6"; the trusted proxy appended the real address.
    assert proxied((b"x-forwarded-for", b"6.6.6.6, 203.0.113.7"))["client"] == ("203.0.113.7", 0)


def test_all_hops_trusted_gives_the_leftmost():
    assert proxied((b"x-forwarded-for", b"10.0.0.1, 10.0.0.2"))["client"] == ("10.0.0.1", 0)


@pytest.mark.parametrize(
    ("value", "client"),
    [
        (b"203.0.113.7:4711", ("203.0.113.7", 4711)),
        (b"2001:db8::1", ("2001:db8::1", 0)),
        (b"[2001:db8::1]", ("2001:db8::1", 0)),
        (b"[2001:db8::1]:4711", ("2001:db8::1", 4711)),
        (b"2001:DB8:0:0::1", ("2001:db8::1", 0)),
        (b"  203.0.113.7  ", ("203.0.113.7", 0)),
    ],
)
def test_forwarded_address_forms(value, client):
    assert proxied((b"x-forwarded-for", value))["client"] == client


@pytest.mark.parametrize(
    "value",
    [
        b"unknown",
        b"_hidden",
        b"evil.example",
        b"203.0.113.7:99999",
        b"203.0.113.7:",
        b"256.1.1.1",
        b"01.2.3.4",
        b"fe80::1%eth0",
        b"",
        b"[2001:db8::1",
        b"[203.0.113.7]",
        b"1.2.3.4\r\nX-Injected: 1",
        b"9" * 100,
        b"203.0.113.7:_<script>",
    ],
)
def test_unreadable_hop_leaves_the_client_unchanged(value):
    assert proxied((b"x-forwarded-for", value))["client"] == PEER


def test_unreadable_hop_stops_the_walk_even_with_addresses_left_of_it():
    scope = proxied((b"x-forwarded-for", b"203.0.113.7, unknown, 10.0.0.2"))
    assert scope["client"] == PEER


def test_garbage_left_of_the_client_hop_does_not_matter():
    assert proxied((b"x-forwarded-for", b"garbage, 203.0.113.7"))["client"] == ("203.0.113.7", 0)


def test_repeated_header_lines_are_joined_in_order():
    scope = proxied((b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-for", b"10.0.0.2"))
    assert scope["client"] == ("203.0.113.7", 0)
    scope = proxied((b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-for", b"203.0.113.7"))
    assert scope["client"] == ("203.0.113.7", 0)


def test_same_header_value_gives_the_same_client_on_every_request():
    trust = trust_of()
    clients = {proxied((b"x-forwarded-for", b"203.0.113.7, 10.0.0.2"), trust=trust)["client"] for _ in range(3)}
    assert clients == {("203.0.113.7", 0)}


# ----------------------------------------------------------------------------------------- scheme


@pytest.mark.parametrize(
    ("proto", "scheme"),
    [(b"https", "https"), (b"http", "http"), (b"HTTPS", "https"), (b" https ", "https"), (b"wss", "https")],
)
def test_x_forwarded_proto_sets_the_scheme(proto, scheme):
    assert proxied((b"x-forwarded-proto", proto))["scheme"] == scheme


@pytest.mark.parametrize(("proto", "scheme"), [(b"https", "wss"), (b"http", "ws"), (b"wss", "wss")])
def test_websocket_scope_gets_ws_schemes(proto, scheme):
    assert proxied((b"x-forwarded-proto", proto), scope_type="websocket")["scheme"] == scheme


@pytest.mark.parametrize("proto", [b"ftp", b"javascript", b"", b"https;x", b"htt ps"])
def test_unknown_proto_is_ignored(proto):
    assert proxied((b"x-forwarded-proto", proto))["scheme"] == "http"


@pytest.mark.parametrize(
    ("header", "scheme"),
    [
        ((b"x-forwarded-ssl", b"on"), "https"),
        ((b"x-forwarded-ssl", b"ON"), "https"),
        ((b"x-forwarded-ssl", b"off"), "http"),
        ((b"x-forwarded-ssl", b" on "), "https"),
        ((b"x-forwarded-ssl", b"o n"), "http"),
        ((b"x-forwarded-protocol", b"ssl"), "https"),
        ((b"x-forwarded-protocol", b"plain"), "http"),
    ],
)
def test_gunicorn_secure_scheme_headers(header, scheme):
    assert proxied(header)["scheme"] == scheme


def test_agreeing_scheme_headers_are_accepted():
    scope = proxied((b"x-forwarded-proto", b"https"), (b"x-forwarded-ssl", b"on"), (b"x-forwarded-protocol", b"ssl"))
    assert scope["scheme"] == "https"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-forwarded-proto", b"http"), (b"x-forwarded-ssl", b"on")],
        [(b"x-forwarded-proto", b"https"), (b"x-forwarded-ssl", b"off")],  # Gunicorn's invalid/019
        [(b"x-forwarded-ssl", b"on"), (b"x-forwarded-ssl", b"off")],
        [(b"x-forwarded-protocol", b"ssl"), (b"x-forwarded-ssl", b"off")],
    ],
)
def test_conflicting_scheme_headers_are_a_bad_request(headers):
    with pytest.raises(ProxyHeaderError) as raised:
        proxied(*headers)
    assert isinstance(raised.value, BadRequest)
    assert raised.value.status == 400
    assert "conflicting" in str(raised.value)


def test_conflict_message_names_headers_but_never_echoes_values():
    with pytest.raises(ProxyHeaderError) as raised:
        proxied((b"x-forwarded-proto", b"https"), (b"x-forwarded-protocol", b"<script>"))
    message = str(raised.value)
    assert "x-forwarded-proto" in message
    assert "x-forwarded-protocol" in message
    assert "<script>" not in message


def test_custom_secure_scheme_header():
    trust = trust_of(secure={"X-Front-End-Https": "On"})
    assert proxied((b"x-front-end-https", b"on"), trust=trust)["scheme"] == "https"
    assert proxied((b"x-forwarded-ssl", b"on"), trust=trust)["scheme"] == "http"


def test_custom_value_for_x_forwarded_proto_means_https():
    trust = trust_of(secure={"X-FORWARDED-PROTO": "secure"})
    assert proxied((b"x-forwarded-proto", b"secure"), trust=trust)["scheme"] == "https"
    assert proxied((b"x-forwarded-proto", b"https"), trust=trust)["scheme"] == "https"


def test_proto_list_uses_the_entry_of_the_chosen_hop():
    # Both proxies append: the client spoofed "https" and 6.6.6.6; the edge proxy saw plain http.
    scope = proxied((b"x-forwarded-for", b"6.6.6.6, 203.0.113.7"), (b"x-forwarded-proto", b"https, http"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "http"


def test_proto_list_that_does_not_line_up_with_the_hops_is_ignored():
    scope = proxied((b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https, http"))
    assert scope["scheme"] == "http"
    scope = proxied((b"x-forwarded-proto", b"https, https"))
    assert scope["scheme"] == "http"


# ------------------------------------------------------------------------------------------ host


def test_x_forwarded_host_replaces_the_host_header():
    scope = proxied((b"x-forwarded-host", b"www.example.com"))
    assert host_of(scope) == b"www.example.com"
    assert sum(1 for name, _ in scope["headers"] if name == b"host") == 1


def test_x_forwarded_host_is_added_when_the_request_had_no_host():
    assert host_of(proxied((b"x-forwarded-host", b"www.example.com:8443"), host=None)) == b"www.example.com:8443"


@pytest.mark.parametrize(
    "value",
    [
        b"evil.example/path",
        b"a b",
        b"user@evil.example",
        b"",
        b"[::1",
        b"x.example:port",
        b"a\tb",
        b"\xc3\xa9.example",
    ],
)
def test_invalid_forwarded_host_is_ignored(value):
    assert host_of(proxied((b"x-forwarded-host", value))) == b"internal:8000"


@pytest.mark.parametrize(
    ("headers", "host"),
    [
        ([(b"x-forwarded-port", b"8443")], b"internal:8443"),
        (
            [(b"x-forwarded-host", b"www.example.com"), (b"x-forwarded-port", b"8443")],
            b"www.example.com:8443",
        ),
        (
            [(b"x-forwarded-host", b"www.example.com:80"), (b"x-forwarded-port", b"8443")],
            b"www.example.com:8443",
        ),
        ([(b"x-forwarded-host", b"www.example.com"), (b"x-forwarded-port", b"80")], b"www.example.com"),
        (
            [
                (b"x-forwarded-host", b"www.example.com"),
                (b"x-forwarded-port", b"443"),
                (b"x-forwarded-proto", b"https"),
            ],
            b"www.example.com",
        ),
        ([(b"x-forwarded-host", b"[2001:db8::1]:80"), (b"x-forwarded-port", b"8080")], b"[2001:db8::1]:8080"),
    ],
)
def test_x_forwarded_port_sets_the_host_port_and_drops_the_default(headers, host):
    assert host_of(proxied(*headers)) == host


@pytest.mark.parametrize("port", [b"0", b"65536", b"http", b"-1", b"+80", b"8 0", b""])
def test_invalid_forwarded_port_is_ignored(port):
    assert host_of(proxied((b"x-forwarded-port", port))) == b"internal:8000"


def test_forwarded_port_never_touches_the_listening_address():
    scope = proxied((b"x-forwarded-port", b"443"), (b"x-forwarded-proto", b"https"))
    assert scope["server"] == ("10.0.0.9", 8000)
    assert host_of(scope) == b"internal"


def test_forwarded_port_without_any_host_adds_nothing():
    assert host_of(proxied((b"x-forwarded-port", b"8443"), host=None)) is None


def test_host_list_uses_the_entry_of_the_chosen_hop():
    scope = proxied(
        (b"x-forwarded-for", b"6.6.6.6, 203.0.113.7"), (b"x-forwarded-host", b"evil.example, www.example.com")
    )
    assert host_of(scope) == b"www.example.com"


# ------------------------------------------------------------------------------------- Forwarded


def test_forwarded_sets_client_scheme_and_host():
    scope = proxied((b"forwarded", b"for=203.0.113.7;proto=https;host=www.example.com"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"
    assert host_of(scope) == b"www.example.com"


def test_x_forwarded_family_wins_so_a_client_sent_forwarded_header_cannot_spoof():
    # nginx-style proxy: it sets X-Forwarded-For and passes the client's own Forwarded header through.
    scope = proxied(
        (b"forwarded", b"for=6.6.6.6;proto=https;host=evil.example"),
        (b"x-forwarded-for", b"203.0.113.7"),
    )
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "http"
    assert host_of(scope) == b"internal:8000"


def test_any_secure_scheme_header_selects_the_x_family():
    scope = proxied((b"forwarded", b"for=6.6.6.6"), (b"x-forwarded-ssl", b"on"))
    assert scope["client"] == PEER
    assert scope["scheme"] == "https"


@pytest.mark.parametrize(
    ("value", "client"),
    [
        (b'for="[2001:db8:cafe::17]:4711"', ("2001:db8:cafe::17", 4711)),
        (b'for="[2001:db8:cafe::17]"', ("2001:db8:cafe::17", 0)),
        (b'for="203.0.113.7:4711"', ("203.0.113.7", 4711)),
        (b'for="[2001:db8:cafe::17]:_port"', ("2001:db8:cafe::17", 0)),
        (b"for=[2001:db8::1]:80", ("2001:db8::1", 80)),  # unquoted, as sloppy proxies send it
        (b"For=203.0.113.7", ("203.0.113.7", 0)),
        (b'FOR="203.0.113.7"', ("203.0.113.7", 0)),
        (b'for="\\2\\03.0.113.7"', ("203.0.113.7", 0)),  # quoted-pairs are unescaped
    ],
)
def test_forwarded_node_forms(value, client):
    assert proxied((b"forwarded", value))["client"] == client


@pytest.mark.parametrize("node", [b"unknown", b"_hidden", b"_SEVKISEK", b'"_a.b-c_d"'])
def test_obfuscated_or_unknown_client_leaves_client_but_applies_proto_and_host(node):
    scope = proxied((b"forwarded", b"for=" + node + b";proto=https;host=www.example.com"))
    assert scope["client"] == PEER
    assert scope["scheme"] == "https"
    assert host_of(scope) == b"www.example.com"


def test_forwarded_walk_skips_trusted_proxies_and_uses_that_elements_proto():
    scope = proxied((b"forwarded", b"for=203.0.113.7;proto=https, for=10.0.0.2;proto=http"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


def test_forwarded_spoofed_leftmost_element_is_not_taken():
    scope = proxied((b"forwarded", b"for=6.6.6.6;proto=https, for=203.0.113.7;proto=http"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "http"


def test_forwarded_all_trusted_gives_the_leftmost_element():
    assert proxied((b"forwarded", b"for=10.0.0.1, for=10.0.0.2"))["client"] == ("10.0.0.1", 0)


def test_forwarded_whitespace_around_separators_and_empty_elements():
    scope = proxied((b"forwarded", b" , for=203.0.113.7 ; proto=https ,, "))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


def test_quoted_comma_and_semicolon_do_not_split_elements():
    scope = proxied((b"forwarded", b'for=203.0.113.7;ext="a,b;c";proto=https'))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


def test_repeated_forwarded_lines_are_joined():
    scope = proxied((b"forwarded", b"for=203.0.113.7;proto=https"), (b"forwarded", b"for=10.0.0.2"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


@pytest.mark.parametrize(
    "value",
    [
        b"for=203.0.113.7;for=198.51.100.1",  # a parameter twice in one element
        b"for=203.0.113.7 proto=https",  # pairs without a separator
        b'for="203.0.113.7',  # unterminated quoted-string
        b"for",  # a name without a value
        b"for=",  # an empty value
        b'for=a"b"',
        b"=203.0.113.7",
        b"f\xc3\xb6r=203.0.113.7",
    ],
)
def test_malformed_selected_element_applies_nothing(value):
    scope = proxied((b"forwarded", value + b";proto=https"))
    assert scope["client"] == PEER
    assert scope["scheme"] == "http"


def test_malformed_element_left_of_the_client_does_not_matter():
    scope = proxied((b"forwarded", b"garbage, for=203.0.113.7;proto=https"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


def test_forwarded_invalid_proto_and_host_are_ignored():
    scope = proxied((b"forwarded", b'for=203.0.113.7;proto=javascript;host="evil.example/x"'))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "http"
    assert host_of(scope) == b"internal:8000"


def test_forwarded_proto_on_a_websocket_scope():
    assert proxied((b"forwarded", b"proto=https"), scope_type="websocket")["scheme"] == "wss"


def test_forwarded_element_without_for_applies_proto_but_keeps_client():
    scope = proxied((b"forwarded", b"proto=https;by=10.0.0.2"))
    assert scope["client"] == PEER
    assert scope["scheme"] == "https"


def test_very_long_forwarded_value_is_still_parsed():
    padding = b", ".join(b"for=10.0.0.%d" % (i % 250) for i in range(100))
    scope = proxied((b"forwarded", b"for=203.0.113.7;proto=https, " + padding))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


def test_headers_that_are_not_proxy_headers_are_left_alone():
    scope = proxied((b"x-forwarded-for", b"203.0.113.7"), (b"user-agent", b"curl"))
    assert scope["headers"] == [
        (b"host", b"internal:8000"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"user-agent", b"curl"),
    ]


# ------------------------------------------------------------------------------------------ fuzzing

_header_values = st.binary(max_size=80) | st.text(alphabet='for=_unknown;,"[]:. \\\t1234567890abcdef', max_size=80).map(
    str.encode
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(PROXY_HEADER_NAMES)), _header_values), min_size=1, max_size=3))
def test_any_header_values_yield_a_valid_scope_or_a_bad_request(headers):
    try:
        scope = proxied(*headers)
    except ProxyHeaderError:
        return
    host, port = scope["client"]
    assert scope["client"] == PEER or (ipaddress.ip_address(host) and 0 <= port <= 65535)
    assert scope["scheme"] in ("http", "https")
    assert re.fullmatch(rb"[A-Za-z0-9._~\[\]:-]+", host_of(scope))


def test_remembered_decisions_still_follow_each_scopes_type():
    trust = trust_of()
    header = (b"x-forwarded-proto", b"https")
    assert proxied(header, trust=trust)["scheme"] == "https"
    assert proxied(header, trust=trust, scope_type="websocket")["scheme"] == "wss"
    assert proxied(header, trust=trust)["scheme"] == "https"


def test_conflicts_are_refused_on_every_request():
    trust = trust_of()
    for _ in range(3):
        with pytest.raises(ProxyHeaderError):
            proxied((b"x-forwarded-proto", b"http"), (b"x-forwarded-ssl", b"on"), trust=trust)
