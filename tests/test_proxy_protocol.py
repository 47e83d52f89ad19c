"""Tests for selserve.proxy_protocol: the sans-I/O PROXY protocol header parser.

Everything here passes bytes to `parse`. Accepted headers go through `parsed()`, which
also feeds every shorter prefix (each must ask for more) and the same bytes as a
bytearray and a memoryview; refusals go through `refused()`, which insists that no
prefix gives a different verdict, so every rule is also a split-invariance check.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selserve.proxy_protocol import (
    MAX_V2_LENGTH,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    V1_MAX_LENGTH,
    V1_SIGNATURE,
    V2_HEADER_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse,
)

# --- helpers ------------------------------------------------------------------------------

HTTP = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"

PROXY_CMD = 0x21  # version 2, PROXY
LOCAL_CMD = 0x20  # version 2, LOCAL
TCP4 = 0x11
TCP6 = 0x21
UNIX_STREAM = 0x31
PP2_TYPE_ALPN = 0x01
PP2_TYPE_NOOP = 0x04
PP2_TYPE_SSL = 0x20


def v2(block: bytes = b"", fam: int = TCP4, ver_cmd: int = PROXY_CMD, length=None) -> bytes:
    """A version 2 header around `block`; `length` overrides the length field."""
    length = len(block) if length is None else length
    return V2_SIGNATURE + bytes((ver_cmd, fam)) + struct.pack(">H", length) + block


def inet(src="192.0.2.1", dst="198.51.100.2", sport=56324, dport=443) -> bytes:
    pack = socket.inet_pton
    return pack(socket.AF_INET, src) + pack(socket.AF_INET, dst) + struct.pack(">HH", sport, dport)


def inet6(src="2001:db8::1", dst="2001:db8::2", sport=56324, dport=443) -> bytes:
    pack = socket.inet_pton
    return (
        pack(socket.AF_INET6, src) + pack(socket.AF_INET6, dst) + struct.pack(">HH", sport, dport)
    )


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\x00") + dst.ljust(108, b"\x00")


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack(">BH", kind, len(value)) + value


def parsed(data: bytes) -> ProxyHeader:
    """The header at the start of data. Every shorter prefix must ask for more, and a
    bytearray or memoryview of the same bytes must give the same header."""
    header = parse(data)
    assert header is not None, "the whole header must parse"
    for cut in range(header.length):
        assert parse(data[:cut]) is None, f"prefix of {cut} bytes"
    assert parse(bytearray(data)) == header
    assert parse(memoryview(data)) == header
    return header


def reason_of(data: bytes) -> str | None:
    """The reason parse refuses data with, or None if it does not refuse it."""
    try:
        parse(data)
    except ProxyProtocolError as exc:
        return exc.reason
    return None


def refused(data: bytes) -> str:
    """The reason data is refused with; every prefix must wait or give the same one."""
    reason = reason_of(data)
    assert reason is not None, "the whole input must be refused"
    for cut in range(len(data)):
        assert reason_of(data[:cut]) in (None, reason), f"prefix of {cut} bytes"
    return reason


def shortest_refused(data: bytes) -> int:
    """The length of the shortest prefix of data that is refused."""
    for cut in range(len(data) + 1):
        if reason_of(data[:cut]) is not None:
            return cut
    raise AssertionError("never refused")


# --- detection ----------------------------------------------------------------------------


def test_empty_input_asks_for_more():
    assert parse(b"") is None


@pytest.mark.parametrize(
    ("data", "cut"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1),
        (b"\x16\x03\x01\x02\x00\x01\x00", 1),  # a TLS ClientHello
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", len(b"PRI")),
        (b"PROPFIND / HTTP/1.1\r\n", len(b"PROP")),
        (b"\r\n\r\nGET / HTTP/1.1\r\n", len(b"\r\n\r\nG")),
    ],
    ids=["http", "tls", "h2-preface", "propfind", "empty-lines"],
)
def test_other_protocols_are_refused_once_they_leave_both_signatures(data, cut):
    assert shortest_refused(data) == cut and refused(data) == "bad-signature"


def test_v1_signature_needs_its_space():
    assert reason_of(b"PROXY\tTCP4") == "bad-signature"


def test_v2_signature_with_one_byte_wrong_is_refused():
    assert reason_of(V2_SIGNATURE[:11] + b"X") == "bad-signature"


def test_error_is_a_value_error_with_a_reason():
    with pytest.raises(ValueError) as info:
        parse(b"GET /")
    assert info.value.reason == "bad-signature" and "bad-signature" in str(info.value)


# --- version 1 ----------------------------------------------------------------------------

V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


def test_v1_tcp4_gives_both_addresses():
    header = parsed(V1_TCP4)
    assert header == ProxyHeader(
        1, False, ("192.168.0.1", 56324), ("192.168.0.11", 443), len(V1_TCP4)
    )


def test_v1_leaves_the_http_bytes_that_follow():
    data = V1_TCP4 + HTTP
    assert data[parsed(data).length :] == HTTP


def test_v1_tcp4_extremes_are_accepted():
    line = b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"
    assert parsed(line).source == ("255.255.255.255", 65535)


def test_v1_tcp6_gives_addresses_in_inet_ntop_form():
    header = parsed(b"PROXY TCP6 2001:DB8:0:0::1 ::1 56324 443\r\n")
    assert (header.source, header.destination) == (("2001:db8::1", 56324), ("::1", 443))


def test_v1_tcp6_accepts_ipv4_mapped_form():
    header = parsed(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n")
    assert header.source == ("::ffff:192.0.2.1", 1)


def test_v1_tcp6_longest_line_fits():
    full = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = b"PROXY TCP6 %s %s 65535 65535\r\n" % (full, full)
    assert len(line) == 104 and parsed(line).length == 104


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN 192.0.2.1 192.0.2.2 1 2\r\n",
        b"PROXY UNKNOWN whatever \x00\xff follows\r\n",
    ],
)
def test_v1_unknown_keeps_the_socket_addresses(line):
    assert parsed(line + HTTP) == ProxyHeader(1, True, None, None, len(line))


def test_v1_longest_unknown_line_is_accepted():
    full = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = b"PROXY UNKNOWN %s %s 65535 65535\r\n" % (full, full)
    assert len(line) == V1_MAX_LENGTH and parsed(line).local


def test_v1_line_without_crlf_in_107_bytes_is_too_long():
    data = b"PROXY UNKNOWN " + b"x" * 200
    assert refused(data) == "too-long" and shortest_refused(data) == V1_MAX_LENGTH


def test_v1_crlf_just_past_107_bytes_is_too_long():
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - len(b"PROXY UNKNOWN ") - 1) + b"\r\n"
    assert len(line) == V1_MAX_LENGTH + 1 and refused(line) == "too-long"


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n",  # bare LF ends it
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\r\n",
        b"PROXY TCP4 192.0.2.1\r192.0.2.2 1 2\r\n",
        b"PROXY UNKNOWN a\nb\r\n",
        b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n",  # trailing space
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",  # one too many
        b"PROXY TCP4\r\n",
        b"PROXY \r\n",
    ],
)
def test_v1_malformed_line_is_refused(line):
    assert refused(line + HTTP) == "bad-line"


def test_v1_lone_lf_is_refused_before_the_line_ends():
    assert reason_of(b"PROXY TCP4 192.0.2.1\n") == "bad-line"


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
        b"PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n",
        b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
    ],
)
def test_v1_unknown_protocol_is_refused(line):
    assert refused(line) == "bad-protocol"


@pytest.mark.parametrize(
    "address",
    [
        b"01.2.3.4",  # leading zero: octal to some readers
        b"1.2.3.04",
        b"256.1.1.1",
        b"1.2.3",
        b"1.2.3.4.5",
        b"0x7f.0.0.1",
        b"localhost",
        b"\xff\xfe",
        b"\xd9\xa1.2.3.4",  # a non-ASCII digit
    ],
)
def test_v1_bad_ipv4_address_is_refused(address):
    line = b"PROXY TCP4 %s 192.0.2.2 1 2\r\n" % address
    assert refused(line) == "bad-address"


@pytest.mark.parametrize(
    "address",
    [b"2001:db8:::1", b"2001:db8::1::2", b"12345::", b"fe80::1%eth0", b"g::1", b":"],
)
def test_v1_bad_ipv6_address_is_refused(address):
    assert refused(b"PROXY TCP6 ::1 %s 1 2\r\n" % address) == "bad-address"


def test_v1_ipv6_address_after_tcp4_is_a_family_mismatch():
    assert refused(b"PROXY TCP4 192.0.2.1 2001:db8::1 1 2\r\n") == "family-mismatch"


def test_v1_ipv4_address_after_tcp6_is_a_family_mismatch():
    assert refused(b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n") == "family-mismatch"


@pytest.mark.parametrize("port", [b"65536", b"99999", b"080", b"00", b"+80", b"-1", b"0x50", b"8a"])
def test_v1_bad_port_is_refused(port):
    assert refused(b"PROXY TCP4 192.0.2.1 192.0.2.2 %s 443\r\n" % port) == "bad-port"


def test_v1_bad_port_is_refused_after_tcp6_too():
    assert refused(b"PROXY TCP6 ::1 ::2 1 123456\r\n") == "bad-port"


# --- version 2 ----------------------------------------------------------------------------


def test_v2_inet_gives_both_addresses():
    data = v2(inet())
    assert parsed(data) == ProxyHeader(
        2, False, ("192.0.2.1", 56324), ("198.51.100.2", 443), V2_HEADER_LENGTH + 12
    )


def test_v2_leaves_the_http_bytes_that_follow():
    data = v2(inet() + tlv(PP2_TYPE_NOOP, b"pad")) + HTTP
    assert data[parsed(data).length :] == HTTP


def test_v2_inet6_gives_addresses_in_inet_ntop_form():
    header = parsed(v2(inet6("2001:db8::1", "::ffff:192.0.2.1", 1, 65535), fam=TCP6))
    assert (header.source, header.destination) == (("2001:db8::1", 1), ("::ffff:192.0.2.1", 65535))


def test_v2_unix_gives_paths():
    header = parsed(v2(unix(b"/run/client.sock", b"/run/selserve.sock"), fam=UNIX_STREAM))
    assert (header.source, header.destination) == ("/run/client.sock", "/run/selserve.sock")


def test_v2_unix_abstract_name_keeps_its_leading_nul():
    header = parsed(v2(unix(b"\x00client", b""), fam=UNIX_STREAM))
    assert (header.source, header.destination) == ("\x00client", "")


def test_v2_unix_path_ignores_bytes_after_its_nul():
    src = b"/a.sock\x00garbage".ljust(108, b"\x00")
    assert parsed(v2(src + bytes(108), fam=UNIX_STREAM)).source == "/a.sock"


def test_v2_unix_path_keeps_undecodable_bytes():
    path = parsed(v2(unix(b"/tmp/\xff.sock", b""), fam=UNIX_STREAM)).source
    assert path.encode("utf-8", "surrogateescape") == b"/tmp/\xff.sock"


def test_v2_proxy_with_unspec_family_keeps_the_socket_addresses():
    header = parsed(v2(b"", fam=0x00))
    assert header == ProxyHeader(2, True, None, None, V2_HEADER_LENGTH)


@pytest.mark.parametrize("fam", [0x01, 0x10, 0x20, 0x30])
def test_v2_half_unspecified_family_skips_its_block(fam):
    header = parsed(v2(b"\x99" * 40, fam=fam))
    assert header == ProxyHeader(2, True, None, None, V2_HEADER_LENGTH + 40)


def test_v2_local_keeps_the_socket_addresses():
    assert parsed(v2(b"", fam=0x00, ver_cmd=LOCAL_CMD)) == ProxyHeader(
        2, True, None, None, V2_HEADER_LENGTH
    )


def test_v2_local_skips_its_whole_block_whatever_the_family():
    # The spec has the receiver ignore a LOCAL block's family byte, DGRAM included.
    data = v2(inet() + b"\x01", fam=0x12, ver_cmd=LOCAL_CMD)
    assert parsed(data + HTTP).length == len(data)


def test_v2_truncated_at_every_cut_asks_for_more():
    data = v2(inet() + tlv(PP2_TYPE_AUTHORITY, b"example.org") + tlv(PP2_TYPE_NOOP, b""))
    assert all(parse(data[:cut]) is None for cut in range(len(data)))


def test_v2_length_over_the_bound_is_refused_from_the_fixed_header():
    head = v2(fam=TCP4, length=MAX_V2_LENGTH - V2_HEADER_LENGTH + 1)
    assert len(head) == V2_HEADER_LENGTH and reason_of(head) == "too-long"


def test_v2_length_at_the_bound_is_accepted():
    block = inet() + tlv(PP2_TYPE_NOOP, bytes(MAX_V2_LENGTH - V2_HEADER_LENGTH - 12 - 3))
    assert parsed(v2(block)).length == MAX_V2_LENGTH


@pytest.mark.parametrize("ver_cmd", [0x11, 0x31, 0x01, 0xF1])
def test_v2_other_version_is_refused(ver_cmd):
    assert refused(v2(inet(), ver_cmd=ver_cmd)) == "bad-version"


@pytest.mark.parametrize("ver_cmd", [0x22, 0x2F])
def test_v2_other_command_is_refused(ver_cmd):
    assert refused(v2(inet(), ver_cmd=ver_cmd)) == "bad-command"


@pytest.mark.parametrize("fam", [0x12, 0x22, 0x32, 0x02])
def test_v2_dgram_is_refused(fam):
    assert refused(v2(bytes(216), fam=fam)) == "bad-transport"


@pytest.mark.parametrize("fam", [0x13, 0x1F])
def test_v2_unknown_transport_is_refused(fam):
    assert refused(v2(inet(), fam=fam)) == "bad-transport"


@pytest.mark.parametrize("fam", [0x41, 0xF1, 0x40])
def test_v2_unknown_family_is_refused(fam):
    assert refused(v2(inet(), fam=fam)) == "bad-family"


@pytest.mark.parametrize(
    ("fam", "size"), [(TCP4, 12), (TCP6, 36), (UNIX_STREAM, 216)], ids=["inet", "inet6", "unix"]
)
def test_v2_length_short_of_the_family_addresses_is_refused_at_once(fam, size):
    head = v2(fam=fam, length=size - 1)
    assert reason_of(head) == "short-addresses"


def test_v2_refusals_need_only_the_fixed_header():
    assert shortest_refused(v2(bytes(100), fam=0x12)) == V2_HEADER_LENGTH


# --- version 2 TLVs -----------------------------------------------------------------------


def test_v2_tlvs_are_exposed_in_order():
    tlvs = ((PP2_TYPE_ALPN, b"h2"), (0xE0, b"\x00\x01"), (PP2_TYPE_NOOP, b""))
    header = parsed(v2(inet() + b"".join(tlv(k, v) for k, v in tlvs)))
    assert header.tlvs == tlvs


def test_v2_authority_is_decoded():
    header = parsed(v2(inet() + tlv(PP2_TYPE_AUTHORITY, "bücher.de".encode())))
    assert header.authority == "bücher.de"


def test_v2_authority_is_also_a_tlv():
    header = parsed(v2(inet() + tlv(PP2_TYPE_AUTHORITY, b"example.org")))
    assert header.tlvs == ((PP2_TYPE_AUTHORITY, b"example.org"),)


def test_v2_tlvs_follow_ipv6_and_unix_addresses():
    tlvs = tlv(PP2_TYPE_AUTHORITY, b"example.org")
    six = parsed(v2(inet6() + tlvs, fam=TCP6))
    path = parsed(v2(unix(b"/a", b"/b") + tlvs, fam=UNIX_STREAM))
    assert six.authority == path.authority == "example.org"


def test_v2_tlvs_follow_an_unspec_proxy_header():
    assert parsed(v2(tlv(PP2_TYPE_AUTHORITY, b"example.org"), fam=0x00)).authority == "example.org"


def test_v2_ssl_tlv_is_kept_whole():
    ssl = b"\x01" + bytes(4) + tlv(0x21, b"TLSv1.3")
    assert parsed(v2(inet() + tlv(PP2_TYPE_SSL, ssl))).tlvs == ((PP2_TYPE_SSL, ssl),)


def test_v2_crc32c_is_accepted_without_being_checked():
    header = parsed(v2(inet() + tlv(PP2_TYPE_CRC32C, b"\xde\xad\xbe\xef")))
    assert header.tlvs == ((PP2_TYPE_CRC32C, b"\xde\xad\xbe\xef"),)


def test_v2_crc32c_of_the_wrong_size_is_refused():
    assert refused(v2(inet() + tlv(PP2_TYPE_CRC32C, b"\x00\x00"))) == "bad-tlv"


def test_v2_authority_that_is_not_utf8_is_refused():
    assert refused(v2(inet() + tlv(PP2_TYPE_AUTHORITY, b"\xff"))) == "bad-tlv"


def test_v2_second_authority_is_refused():
    twice = tlv(PP2_TYPE_AUTHORITY, b"a.example") + tlv(PP2_TYPE_AUTHORITY, b"b.example")
    assert refused(v2(inet() + twice)) == "bad-tlv"


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_v2_tlv_cut_by_the_header_length_is_truncated(cut):
    tlvs = tlv(PP2_TYPE_AUTHORITY, b"abc")
    assert refused(v2(inet() + tlvs[:cut]) + HTTP) == "truncated"


# --- any input ----------------------------------------------------------------------------


def check_any(data: bytes) -> None:
    """parse either waits, returns a header no longer than data, or refuses it; and
    no prefix disagrees with the whole."""
    try:
        header = parse(data)
    except ProxyProtocolError as exc:
        for cut in range(len(data)):
            assert reason_of(data[:cut]) in (None, exc.reason)
        return
    if header is None:
        return
    assert isinstance(header, ProxyHeader) and 0 < header.length <= len(data)
    assert parse(data[: header.length]) == header
    assert parse(data[: header.length - 1]) is None


PREFIXES = st.sampled_from(
    [b"", V1_SIGNATURE, V1_SIGNATURE + b"TCP4 ", V1_SIGNATURE + b"TCP6 ", V2_SIGNATURE]
)
V2_FIXED = st.builds(
    lambda ver_cmd, fam, length: V2_SIGNATURE + bytes((ver_cmd, fam)) + struct.pack(">H", length),
    st.sampled_from([0x20, 0x21, 0x22, 0x11]),
    st.sampled_from([0x00, 0x01, 0x11, 0x12, 0x21, 0x31, 0x41]),
    st.integers(0, 300),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(PREFIXES, V2_FIXED), st.binary(max_size=300))
def test_any_bytes_wait_parse_or_raise_proxy_protocol_error(prefix, rest):
    check_any(prefix + rest)


@settings(max_examples=300)
@given(
    st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN"]),
    st.lists(
        st.one_of(
            st.sampled_from([b"192.0.2.1", b"::1", b"0", b"65535", b"65536", b"01", b""]),
            st.binary(max_size=6),
        ),
        max_size=5,
    ),
    st.binary(max_size=20),
)
def test_v1_lines_from_near_valid_fields_never_raise_anything_else(protocol, fields, rest):
    check_any(V1_SIGNATURE + b" ".join([protocol, *fields]) + b"\r\n" + rest)


def test_header_repr_names_its_fields():
    assert repr(parse(V1_TCP4)).startswith("ProxyHeader(version=1, local=False, source=(")
