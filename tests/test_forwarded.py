"""Tests for selserve.forwarded: trusted peers, Forwarded (RFC 7239) and X-Forwarded-*.

Most tests call `resolve` with a peer from `PROXY` (trusted by `TRUSTED`) and a list of
(name, value) header pairs, as the parser hands them over.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selserve.forwarded import (
    FORWARDED,
    MAX_ELEMENT_LENGTH,
    MAX_ELEMENTS,
    MAX_VERDICTS,
    SOURCES,
    UNTRUSTED_HEADERS,
    X_FORWARDED,
    Forwarding,
    TrustedPeers,
    resolve,
)
from selserve.http.parser import Request, RequestParser

TRUSTED = TrustedPeers.parse("127.0.0.1, ::1, 10.0.0.0/8")
PROXY = "10.0.0.1"
CLIENT = "203.0.113.7"
SPOOF = "6.6.6.6"


def forwarded(*values: str, peer: str = PROXY, trusted: TrustedPeers = TRUSTED) -> Forwarding:
    return resolve(peer, [("forwarded", v) for v in values], trusted, FORWARDED)


def xff(*values: str, peer: str = PROXY, trusted: TrustedPeers = TRUSTED) -> Forwarding:
    return resolve(peer, [("x-forwarded-for", v) for v in values], trusted)


# --- TrustedPeers.parse ------------------------------------------------------------------


def test_listed_addresses_are_trusted_and_others_not():
    peers = TrustedPeers.parse("127.0.0.1, 192.0.2.5")
    assert [peers.trusts(h) for h in ("127.0.0.1", "192.0.2.5", "192.0.2.6")] == [
        True,
        True,
        False,
    ]


def test_spaces_and_empty_items_are_ignored():
    assert TrustedPeers.parse(" 127.0.0.1 ,, ::1 ,").spec == "127.0.0.1, ::1"


def test_ipv4_network_trusts_its_addresses_only():
    peers = TrustedPeers.parse("10.0.0.0/8")
    assert "10.255.0.3" in peers and "11.0.0.1" not in peers


def test_ipv6_network_trusts_its_addresses_only():
    peers = TrustedPeers.parse("2001:db8::/32")
    assert "2001:db8:1::5" in peers and "2001:db9::5" not in peers


def test_ipv6_address_matches_however_the_peer_spells_it():
    peers = TrustedPeers.parse("2001:db8::1")
    assert peers.trusts("2001:DB8:0:0::1")


def test_bracketed_ipv6_item_is_accepted():
    assert TrustedPeers.parse("[::1]").trusts("::1")


def test_star_trusts_every_peer():
    peers = TrustedPeers.parse("*")
    assert all(peers.trusts(h) for h in ("198.51.100.1", "2001:db8::9", "", "/run/s.sock"))


def test_ipv4_mapped_peer_matches_ipv4_address():
    assert TrustedPeers.parse("10.0.0.1").trusts("::ffff:10.0.0.1")


def test_ipv4_mapped_peer_matches_ipv4_network():
    assert TrustedPeers.parse("10.0.0.0/8").trusts("::ffff:10.1.2.3")


def test_ipv4_mapped_entry_matches_plain_ipv4_peer():
    assert TrustedPeers.parse("::ffff:10.0.0.1, ::ffff:192.0.2.0/120").trusts("192.0.2.77")


def test_ipv4_mapped_peer_of_an_untrusted_address_is_not_trusted():
    assert not TrustedPeers.parse("10.0.0.0/8").trusts("::ffff:11.0.0.1")


def test_zoned_link_local_peer_matches_its_network():
    assert TrustedPeers.parse("fe80::/10").trusts("fe80::1%eth0")


@pytest.mark.parametrize("host", ["", "/run/selserve.sock"])
def test_unix_socket_peers_are_trusted_by_default(host):
    assert TrustedPeers.parse("127.0.0.1").trusts(host)


@pytest.mark.parametrize("host", ["", "/run/selserve.sock"])
def test_unix_socket_peers_can_be_refused(host):
    assert not TrustedPeers.parse("127.0.0.1", unix=False).trusts(host)


def test_empty_list_trusts_no_address():
    assert not TrustedPeers.parse("").trusts("127.0.0.1")


def test_verdict_cache_stays_bounded():
    peers = TrustedPeers.parse("10.0.0.0/8")
    for i in range(3 * MAX_VERDICTS):
        peers.trusts(f"192.0.{i // 256 % 256}.{i % 256}")
    assert len(peers._verdicts) <= MAX_VERDICTS


def test_repr_shows_the_trusted_entries():
    assert repr(TRUSTED) == "<TrustedPeers 127.0.0.1, ::1, 10.0.0.0/8>"


@pytest.mark.parametrize("item", ["localhost", "1.2.3", "10.0.0.0/33", "::1::2", "010.0.0.1"])
def test_bad_item_is_refused_by_name_with_an_example(item):
    with pytest.raises(ValueError) as excinfo:
        TrustedPeers.parse(f"127.0.0.1, {item}")
    message = str(excinfo.value)
    assert repr(item) in message and '"127.0.0.1, ::1, 10.0.0.0/8"' in message


def test_network_with_host_bits_suggests_the_network():
    with pytest.raises(
        ValueError, match=r"'10\.0\.0\.1/8' has host bits set: did you mean 10\.0\.0\.0/8\?"
    ):
        TrustedPeers.parse("10.0.0.1/8")


# --- resolve: who is believed ----------------------------------------------------------


def test_untrusted_peer_headers_are_ignored():
    headers = [
        ("forwarded", f"for={SPOOF};proto=https;host=evil.example"),
        ("x-forwarded-for", SPOOF),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
    ]
    assert resolve(CLIENT, headers, TRUSTED) == Forwarding(None, None, None, 0, False)


def test_trusted_peer_without_proxy_headers_changes_nothing():
    headers = [("host", "example.com"), ("user-agent", "t")]
    assert resolve(PROXY, headers, TRUSTED) == Forwarding(None, None, None, 0, True)


def test_unix_socket_peer_is_believed():
    assert xff(CLIENT, peer="").client == (CLIENT, None)


def test_headers_as_the_parser_makes_them_are_read():
    parser = RequestParser()
    parser.feed(
        b"GET / HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\n\r\n"
    )
    request = parser.next_event()
    assert isinstance(request, Request)
    assert resolve(PROXY, request.headers, TRUSTED) == Forwarding(
        (CLIENT, None), "https", "example.com", 0, True
    )


def test_untrusted_headers_list_names_the_forwarding_fields_in_lower_case():
    assert {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-real-ip"} <= UNTRUSTED_HEADERS
    assert all(name == name.lower() for name in UNTRUSTED_HEADERS)


# --- Forwarded -------------------------------------------------------------------------


def test_forwarded_gives_client_scheme_and_host():
    assert forwarded(f"for={CLIENT};proto=https;host=example.com") == Forwarding(
        (CLIENT, None), "https", "example.com", 0, True
    )


def test_forwarded_parameter_names_and_proto_are_case_insensitive():
    result = forwarded(f"For={CLIENT};PROTO=HTTPS;Host=example.com")
    assert (result.client, result.scheme, result.host) == ((CLIENT, None), "https", "example.com")


def test_forwarded_quoted_ipv6_with_port():
    assert forwarded('for="[2001:db8:cafe::17]:4711"').client == ("2001:db8:cafe::17", 4711)


def test_forwarded_quoted_ipv4_with_port():
    assert forwarded(f'for="{CLIENT}:8080"').client == (CLIENT, 8080)


def test_forwarded_quoted_host_with_port():
    assert forwarded('for=192.0.2.1;host="example.com:8443"').host == "example.com:8443"


def test_forwarded_escaped_characters_are_unescaped():
    assert forwarded(r'for=192.0.2.1;host="exa\mple.com"').host == "example.com"


def test_forwarded_comma_inside_quoted_string_does_not_split_elements():
    result = forwarded(f'for={CLIENT};ext="x, for={SPOOF}; y"')
    assert (result.client, result.malformed) == ((CLIENT, None), 0)


def test_forwarded_spaces_around_semicolons_are_accepted():
    result = forwarded(f"for={CLIENT} ; proto=https")
    assert (result.client, result.scheme) == ((CLIENT, None), "https")


def test_forwarded_unknown_parameters_are_ignored():
    assert forwarded(f"for={CLIENT};by=10.0.0.1;secret=x").client == (CLIENT, None)


def test_forwarded_rightmost_untrusted_element_is_the_client():
    assert forwarded(f"for={SPOOF}, for={CLIENT}").client == (CLIENT, None)


def test_forwarded_trusted_hops_are_skipped_and_their_element_describes_the_client():
    result = forwarded(
        f"for={SPOOF};proto=http, for={CLIENT};proto=https;host=example.com, "
        "for=10.0.0.2;proto=http;host=internal"
    )
    assert result == Forwarding((CLIENT, None), "https", "example.com", 0, True)


def test_forwarded_all_trusted_gives_the_leftmost():
    assert forwarded("for=10.0.0.3, for=10.0.0.2").client == ("10.0.0.3", None)


def test_forwarded_fields_are_one_list_in_order():
    assert forwarded(f"for={SPOOF}", f"for={CLIENT}, for=10.0.0.2").client == (CLIENT, None)


def test_forwarded_empty_elements_are_skipped():
    assert forwarded(f"for={CLIENT}, , ").client == (CLIENT, None)


@pytest.mark.parametrize("node", ["unknown", "UNKNOWN", "_hidden", '"_hidden:_port"'])
def test_forwarded_unnamed_client_keeps_the_peer_but_gives_proto_and_host(node):
    result = forwarded(f"for={SPOOF}, for={node};proto=https;host=example.com")
    assert result == Forwarding(None, "https", "example.com", 0, True)


def test_forwarded_element_without_for_gives_proto():
    result = forwarded(f"for={SPOOF}, proto=https")
    assert (result.client, result.scheme) == (None, "https")


@pytest.mark.parametrize("proto", ["ftp", "ws", '"https "', '"http/1.1"'])
def test_forwarded_bad_proto_is_counted_and_ignored(proto):
    result = forwarded(f"for={CLIENT};proto={proto}")
    assert (result.client, result.scheme, result.malformed) == ((CLIENT, None), None, 1)


@pytest.mark.parametrize(
    "host", ['"a b"', '"a/b"', '"a@b"', '""', '"[zz::1]"', '"example.com:99999"', '"ex\xe9.com"']
)
def test_forwarded_bad_host_is_counted_and_ignored(host):
    result = forwarded(f"for={CLIENT};host={host}")
    assert (result.client, result.host, result.malformed) == ((CLIENT, None), None, 1)


def test_forwarded_ipv6_host_literal_is_accepted():
    assert forwarded('for=192.0.2.1;host="[2001:db8::1]:8080"').host == "[2001:db8::1]:8080"


@pytest.mark.parametrize(
    "node", ["999.0.0.1", "010.0.0.1", '"[2001:db8::zz]"', '"[fe80::1%eth0]"', '"1.2.3.4:70000"']
)
def test_forwarded_invalid_for_stops_the_walk_and_is_counted(node):
    result = forwarded(f"for={SPOOF}, for={node};proto=https")
    assert (result.client, result.scheme, result.malformed) == (None, "https", 1)


def test_forwarded_bare_ipv6_must_be_quoted_and_bracketed():
    result = forwarded(f"for={SPOOF}, for=2001:db8::1")
    assert (result.client, result.malformed) == (None, 1)


def test_forwarded_repeated_parameter_refuses_the_element():
    result = forwarded(f"for={SPOOF}, for={CLIENT};for=192.0.2.9")
    assert (result.client, result.malformed) == (None, 1)


def test_forwarded_unterminated_quote_does_not_hide_the_proxys_element():
    assert forwarded(f'for="{SPOOF}', f"for={CLIENT}").client == (CLIENT, None)


def test_forwarded_client_text_glued_to_a_quoted_proxy_element_is_not_believed():
    # The client's open quote is closed by the proxy's: the glued element is refused.
    result = forwarded(f'for={SPOOF};x="', 'for="[2001:db8::1]"')
    assert result.client == ("2001:db8::1", None)


@pytest.mark.parametrize(
    "bad", ["host=a/b", 'host="a\x01b"', "proto=h\\ttp", "for", "for=1.2.3.4 x"]
)
def test_forwarded_syntax_error_refuses_the_whole_element(bad):
    result = forwarded(f"for={CLIENT};{bad};proto=https")
    assert result == Forwarding(None, None, None, 1, True)


def test_forwarded_unreadable_element_right_of_the_client_stops_the_walk():
    result = forwarded(f"for={SPOOF}, for=192.0.2.1;;=x")
    assert (result.client, result.malformed) == (None, 1)


@pytest.mark.parametrize("source", [X_FORWARDED, FORWARDED])
def test_only_the_family_of_headers_chosen_is_read(source):
    # A proxy writes one family and passes the other on from the client untouched.
    headers = [
        ("x-forwarded-for", SPOOF if source == FORWARDED else CLIENT),
        ("x-forwarded-proto", "http" if source == FORWARDED else "https"),
        ("forwarded", f"for={CLIENT};proto=https" if source == FORWARDED else f"for={SPOOF}"),
    ]
    result = resolve(PROXY, headers, TRUSTED, source)
    assert (result.client, result.scheme) == ((CLIENT, None), "https")


def test_unreadable_forwarded_does_not_fall_back_to_x_forwarded():
    headers = [("forwarded", "garbage"), ("x-forwarded-for", SPOOF)]
    assert resolve(PROXY, headers, TRUSTED, FORWARDED) == Forwarding(None, None, None, 1, True)


def test_forwarded_elements_past_the_cap_are_not_read():
    chain = [f"for={SPOOF}"] + ["for=10.0.0.9"] * (MAX_ELEMENTS + 10)
    assert forwarded(", ".join(chain)).client == ("10.0.0.9", None)


def test_forwarded_element_with_too_many_pairs_is_refused():
    params = ";".join(f"p{i}=x" for i in range(100))
    result = forwarded(f"for={CLIENT};{params}")
    assert (result.client, result.malformed) == (None, 1)


# --- X-Forwarded-* ---------------------------------------------------------------------


def test_one_hop_xff_gives_the_client():
    assert xff(CLIENT) == Forwarding((CLIENT, None), None, None, 0, True)


def test_xff_rightmost_untrusted_address_is_the_client():
    assert xff(f"{SPOOF}, {CLIENT}").client == (CLIENT, None)


def test_xff_trusted_hops_are_skipped():
    assert xff(f"{SPOOF}, {CLIENT}, 10.0.0.2, ::1").client == (CLIENT, None)


def test_xff_all_trusted_gives_the_leftmost():
    assert xff("10.0.0.3, 10.0.0.2").client == ("10.0.0.3", None)


def test_xff_fields_are_one_list_in_order():
    assert xff(SPOOF, f"{CLIENT}, 10.0.0.2").client == (CLIENT, None)


def test_xff_mapped_trusted_hop_is_skipped():
    assert xff(f"{CLIENT}, ::ffff:10.0.0.2").client == (CLIENT, None)


@pytest.mark.parametrize(
    "entry, client",
    [
        ("2001:db8::1", ("2001:db8::1", None)),
        ("2001:DB8::1", ("2001:db8::1", None)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("203.0.113.7:8080", (CLIENT, 8080)),
    ],
)
def test_xff_address_forms(entry, client):
    assert xff(entry).client == client


@pytest.mark.parametrize(
    "entry", ["999.0.0.1", "203.0.113.7:99999", "[2001:db8::1", "host.example", "_hidden"]
)
def test_xff_invalid_entry_stops_the_walk_and_is_counted(entry):
    result = xff(f"{SPOOF}, {entry}")
    assert (result.client, result.malformed) == (None, 1)


def test_xff_unknown_stops_the_walk_without_counting():
    assert xff(f"{SPOOF}, unknown") == Forwarding(None, None, None, 0, True)


def test_xff_empty_entries_are_skipped():
    assert xff(f" ,{CLIENT},, ").client == (CLIENT, None)


def test_xff_addresses_past_the_cap_are_not_read():
    chain = [SPOOF] + ["10.0.0.9"] * (MAX_ELEMENTS + 10)
    assert xff(", ".join(chain)).client == ("10.0.0.9", None)


def test_xff_proto_last_value_counts():
    headers = [("x-forwarded-proto", "http"), ("x-forwarded-proto", "http, HTTPS ,")]
    assert resolve(PROXY, headers, TRUSTED).scheme == "https"


def test_xff_proto_invalid_is_counted_and_ignored():
    result = resolve(PROXY, [("x-forwarded-proto", "https, gopher")], TRUSTED)
    assert (result.scheme, result.malformed) == (None, 1)


def test_xff_host_last_value_counts():
    headers = [("x-forwarded-host", "a.example, b.example:8443")]
    assert resolve(PROXY, headers, TRUSTED).host == "b.example:8443"


@pytest.mark.parametrize("host", ["a b", "a/b", "a\x7fb", "[::1", "a@b"])
def test_xff_host_invalid_is_counted_and_ignored(host):
    result = resolve(PROXY, [("x-forwarded-host", host)], TRUSTED)
    assert (result.host, result.malformed) == (None, 1)


def test_xff_port_is_not_the_client_port():
    headers = [("x-forwarded-for", CLIENT), ("x-forwarded-port", "443")]
    assert resolve(PROXY, headers, TRUSTED).client == (CLIENT, None)


def test_xff_bad_proto_does_not_lose_the_client():
    headers = [("x-forwarded-for", CLIENT), ("x-forwarded-proto", "nope")]
    assert resolve(PROXY, headers, TRUSTED) == Forwarding((CLIENT, None), None, None, 1, True)


# --- bounded work -----------------------------------------------------------------------


class CountingPeers:
    """A TrustedPeers stand-in that counts trust checks (and trusts only 10.0.0.0/8)."""

    def __init__(self) -> None:
        self.peers = TrustedPeers.parse("10.0.0.0/8")
        self.checks = 0

    def trusts(self, host: str) -> bool:
        self.checks += 1
        return self.peers.trusts(host)


@pytest.mark.parametrize(
    "name, hop", [("x-forwarded-for", "10.0.0.9"), ("forwarded", "for=10.0.0.9")]
)
def test_a_huge_chain_costs_at_most_the_cap_in_trust_checks(name, hop):
    counting = CountingPeers()
    value = ", ".join([hop] * 10_000)  # about 60 KB
    source = FORWARDED if name == "forwarded" else X_FORWARDED
    resolve(PROXY, [(name, value)], counting, source)  # type: ignore[arg-type]
    assert counting.checks <= MAX_ELEMENTS + 1  # the elements read, and the peer


def test_forwarded_element_longer_than_the_limit_is_refused():
    padding = "x" * MAX_ELEMENT_LENGTH
    result = forwarded(f"for={SPOOF}, for={CLIENT};pad={padding}")
    assert (result.client, result.malformed) == (None, 1)


def test_forwarded_element_at_the_limit_is_read():
    element = f"for={CLIENT};pad="
    element += "x" * (MAX_ELEMENT_LENGTH - len(element))
    assert forwarded(f"{element}, for=10.0.0.2").client == (CLIENT, None)


def test_xff_entry_longer_than_the_limit_is_refused():
    result = xff(f"{SPOOF}, {' ' * MAX_ELEMENT_LENGTH}{CLIENT}")
    assert (result.client, result.malformed) == (None, 1)


def test_xff_host_longer_than_the_limit_is_refused():
    host = "a" * (MAX_ELEMENT_LENGTH + 1)
    result = resolve(PROXY, [("x-forwarded-host", host)], TRUSTED)
    assert (result.host, result.malformed) == (None, 1)


# --- properties ---------------------------------------------------------------------------

NAMES = st.sampled_from(sorted(UNTRUSTED_HEADERS | {"host"}))
# Characters the grammars care about, so that generated values get past the first check.
GRAMMAR_TEXT = st.text(alphabet='"\\,;=[]:._- \tforunkwpthsxy0123456789abcdef', max_size=80)
ANY_TEXT = st.one_of(st.text(max_size=80), GRAMMAR_TEXT)


@given(st.lists(st.tuples(NAMES, ANY_TEXT), max_size=6), st.sampled_from(SOURCES))
def test_arbitrary_header_values_never_raise(headers, source):
    result = resolve(PROXY, headers, TRUSTED, source)
    assert isinstance(result, Forwarding) and result.used and result.malformed >= 0


@given(GRAMMAR_TEXT, st.booleans())
def test_client_text_left_of_the_proxys_forwarded_element_is_never_believed(prefix, one_line):
    element = f"for={CLIENT};proto=https"
    lines = [f"{prefix}, {element}"] if one_line else [prefix, element]
    result = forwarded(*lines)
    assert (result.client, result.scheme) == ((CLIENT, None), "https")


@given(GRAMMAR_TEXT)
def test_client_text_left_of_a_quoted_proxy_element_is_never_believed(prefix):
    assert forwarded(prefix, 'for="[2001:db8::9]:80"').client == ("2001:db8::9", 80)


@given(GRAMMAR_TEXT)
def test_client_text_left_of_the_proxys_xff_entry_is_never_believed(prefix):
    assert xff(prefix, CLIENT).client == (CLIENT, None)


@given(st.lists(st.tuples(NAMES, ANY_TEXT), max_size=6), st.sampled_from(SOURCES))
def test_untrusted_peer_is_never_believed(headers, source):
    assert resolve(CLIENT, headers, TRUSTED, source) == Forwarding(None, None, None, 0, False)
