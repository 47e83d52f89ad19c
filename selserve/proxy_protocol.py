"""Sans-I/O parser for the PROXY protocol header, versions 1 and 2.

A proxy in front of us (HAProxy, a cloud load balancer, stunnel) may start each
connection with one header giving the client's real addresses. The transport passes
the connection's first bytes to `parse` before any HTTP parsing, keeps the
`ProxyHeader` it returns and gives the bytes after `ProxyHeader.length` to the HTTP
parser. `parse` keeps no state: the caller passes everything received so far, which
can never be more than MAX_V2_LENGTH bytes before a verdict. It must never do I/O
(`socket` is imported for inet_ntop alone), read a clock or log, and never guess:
a listener that expects the header accepts nothing else, because a server that
takes the header when present would take a false one from any client (spec
section 2).

"The spec" below is HAProxy's doc/proxy-protocol.txt; section numbers refer to it.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from socket import AF_INET, AF_INET6, inet_ntop

__all__ = [
    "MAX_V2_LENGTH",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "V1_MAX_LENGTH",
    "V1_SIGNATURE",
    "V2_HEADER_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "parse",
]

# --- reasons: short constants shared by the error, the counters and the debug log ------

BAD_SIGNATURE = "bad-signature"  # neither "PROXY " nor the v2 signature
TOO_LONG = "too-long"  # v1 line without CRLF in 107 bytes; v2 length over MAX_V2_LENGTH
BAD_LINE = "bad-line"  # v1: a lone CR or LF, or fields not separated by single spaces
BAD_PROTOCOL = "bad-protocol"  # v1: not TCP4, TCP6 or UNKNOWN
BAD_ADDRESS = "bad-address"  # v1: not an address in the canonical form
FAMILY_MISMATCH = "family-mismatch"  # v1: an IPv6 address after TCP4, or the reverse
BAD_PORT = "bad-port"  # v1: not a decimal 0-65535 without leading zeros
BAD_VERSION = "bad-version"  # v2: version nibble is not 2
BAD_COMMAND = "bad-command"  # v2: command is neither LOCAL nor PROXY
BAD_FAMILY = "bad-family"  # v2: address family nibble over 3
BAD_TRANSPORT = "bad-transport"  # v2: DGRAM (we serve TCP) or an unassigned value
SHORT_ADDRESSES = "short-addresses"  # v2: length too short for the family's addresses
TRUNCATED = "truncated"  # v2: a TLV runs past the end of the header
BAD_TLV = "bad-tlv"  # v2: a TLV we read (authority, CRC32c) has a bad value


class ProxyProtocolError(ValueError):
    """An invalid header. The connection must be closed; `reason` is one of the
    constants above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class ProxyHeader:
    """What a complete header says. `length` is the number of leading bytes it took.

    `local` is true when the socket's own addresses stand (a v1 UNKNOWN line, a v2
    LOCAL command or an unspecified family or transport); `source` and `destination`
    are None then. Otherwise they are (host, port) tuples, or a path for AF_UNIX.
    """

    __slots__ = ("version", "local", "source", "destination", "length", "tlvs", "authority")

    def __init__(
        self,
        version: int,
        local: bool,
        source: tuple[str, int] | str | None,
        destination: tuple[str, int] | str | None,
        length: int,
        tlvs: tuple[tuple[int, bytes], ...] = (),
        authority: str | None = None,
    ) -> None:
        self.version = version
        self.local = local
        self.source = source
        self.destination = destination
        self.length = length
        self.tlvs = tlvs
        self.authority = authority

    def __eq__(self, other: object) -> bool:
        if type(other) is not ProxyHeader:
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in ProxyHeader.__slots__)

    __hash__ = None  # type: ignore[assignment]  # compared by value

    def __repr__(self) -> str:
        fields = ", ".join(f"{a}={getattr(self, a)!r}" for a in ProxyHeader.__slots__)
        return f"ProxyHeader({fields})"


# --- version 1 (spec section 2.1) ------------------------------------------------------
#
#   line     = "PROXY" SP ( inet / unknown ) CRLF         ; at most 107 bytes
#   inet     = ( "TCP4" / "TCP6" ) SP src-addr SP dst-addr SP src-port SP dst-port
#   unknown  = "UNKNOWN" [ SP *( any byte but CR and LF ) ]  ; the rest is ignored
#   IPv4     = 4 decimal numbers 0-255 joined by ".", no leading zeros
#   IPv6     = hex groups joined by ":", at most one "::"
#   port     = decimal 0-65535, no leading zeros

V1_SIGNATURE = b"PROXY "
V1_MAX_LENGTH = 107  # the longest line, CRLF included: UNKNOWN with two IPv6 addresses
_V1_START = len(V1_SIGNATURE)
_CRLF = b"\r\n"
_MAX_PORT = 65535

_DEC_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = _DEC_OCTET + rb"(?:\." + _DEC_OCTET + rb"){3}"
_PORT = rb"(?:0|[1-9][0-9]{0,4})"  # at most 99999; the range is checked after int()
_IPV4_RE = re.compile(_IPV4)
_PORT_RE = re.compile(_PORT)
# The characters an IPv6 address may use; ipaddress judges the rest. The dot is for
# the IPv4-mapped form (::ffff:192.0.2.1) that inet_ntop, and so senders, write; a zone
# ("%eth0") is refused: it means nothing on the receiver's host.
_IPV6_CHARS_RE = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
# The whole common line in one match: one C-level call for the usual case.
_V1_TCP4_RE = re.compile(rb"TCP4 (%s) (%s) (%s) (%s)" % (_IPV4, _IPV4, _PORT, _PORT))


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | None:
    # The line ends at the first CRLF; the spec has the receiver wait for it before it
    # reads any field, and give up when 107 bytes hold none.
    end = data.find(_CRLF, _V1_START, V1_MAX_LENGTH)
    if end < 0:
        return _partial_v1(data)
    m = _V1_TCP4_RE.fullmatch(data, _V1_START, end)
    if m is not None:
        src_port = int(m[3])
        dst_port = int(m[4])
        if src_port <= _MAX_PORT and dst_port <= _MAX_PORT:
            return ProxyHeader(
                1, False, (m[1].decode(), src_port), (m[2].decode(), dst_port), end + 2
            )
    return _parse_v1_line(bytes(data[_V1_START:end]), end + 2)


def _partial_v1(data: bytes | bytearray) -> None:
    """None for a line whose CRLF has not arrived, once what is here is checked: a
    lone LF, or a CR followed by something else, can never end a valid line."""
    window = min(len(data), V1_MAX_LENGTH)
    if data.find(b"\n", _V1_START, window) >= 0 or data.find(b"\r", _V1_START, window - 1) >= 0:
        raise ProxyProtocolError(BAD_LINE, "lone CR or LF in the PROXY line")
    if len(data) >= V1_MAX_LENGTH:
        raise ProxyProtocolError(TOO_LONG, f"no CRLF in the first {V1_MAX_LENGTH} bytes")
    return None


def _parse_v1_line(line: bytes, length: int) -> ProxyHeader:
    """Everything but a valid TCP4 line: UNKNOWN, TCP6, and every refusal.
    `line` is what follows "PROXY ", CRLF excluded."""
    # The spec ends the line only with CRLF; a lone CR or LF inside it could end it
    # for another reader of the same bytes.
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError(BAD_LINE, "lone CR or LF in the PROXY line")
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return ProxyHeader(1, True, None, None, length)
    fields = line.split(b" ")
    if b"" in fields:
        raise ProxyProtocolError(BAD_LINE, "fields must be separated by single spaces")
    protocol = fields[0]
    if protocol != b"TCP4" and protocol != b"TCP6":
        raise ProxyProtocolError(BAD_PROTOCOL, f"unknown protocol {protocol[:8]!r}")
    if len(fields) != 5:
        raise ProxyProtocolError(BAD_LINE, f"{protocol.decode()} needs 4 fields")
    ipv6 = protocol == b"TCP6"
    return ProxyHeader(
        1,
        False,
        (_v1_address(fields[1], ipv6), _v1_port(fields[3])),
        (_v1_address(fields[2], ipv6), _v1_port(fields[4])),
        length,
    )


def _v1_address(text: bytes, ipv6: bool) -> str:
    if not ipv6:
        if _IPV4_RE.fullmatch(text):
            return text.decode()
        if _ipv6_text(text) is not None:
            raise ProxyProtocolError(FAMILY_MISMATCH, "IPv6 address after TCP4")
        raise ProxyProtocolError(BAD_ADDRESS, f"not an IPv4 address: {text[:45]!r}")
    host = _ipv6_text(text)
    if host is not None:
        return host
    if _IPV4_RE.fullmatch(text):
        raise ProxyProtocolError(FAMILY_MISMATCH, "IPv4 address after TCP6")
    raise ProxyProtocolError(BAD_ADDRESS, f"not an IPv6 address: {text[:45]!r}")


def _ipv6_text(text: bytes) -> str | None:
    """The address in inet_ntop's form (as version 2 gives it), or None if invalid."""
    if not _IPV6_CHARS_RE.fullmatch(text):
        return None
    try:
        packed = ipaddress.IPv6Address(text.decode()).packed
    except ValueError:
        return None
    return inet_ntop(AF_INET6, packed)


def _v1_port(text: bytes) -> int:
    if _PORT_RE.fullmatch(text):
        port = int(text)
        if port <= _MAX_PORT:
            return port
    raise ProxyProtocolError(BAD_PORT, f"not a port: {text[:8]!r}")


# --- version 2 (spec section 2.2) ------------------------------------------------------
#
#   header    = signature(12) ver-cmd(1) fam(1) len(2, big-endian) block(len)
#   ver-cmd   = version(high nibble, 2) command(low nibble: 0 LOCAL, 1 PROXY)
#   fam       = family(high: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX)
#               transport(low: 0 UNSPEC, 1 STREAM, 2 DGRAM)
#   block     = addresses TLV*
#   INET      = src(4) dst(4) src-port(2) dst-port(2)        ; 12 bytes
#   INET6     = src(16) dst(16) src-port(2) dst-port(2)      ; 36 bytes
#   UNIX      = src(108) dst(108)                            ; 216 bytes, NUL-padded
#   TLV       = type(1) length(2, big-endian) value(length)  ; section 2.2, after union

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16  # signature, ver-cmd, fam, len: the bytes before the block
# The largest header we wait for. The spec expects a header to fit one TCP segment,
# and the usual TLVs are small: authority (an SNI host name, at most 255 bytes),
# unique id (at most 128), cloud ids (AWS VPC endpoint, GCP PSC, Azure link: tens of
# bytes), SSL version, cipher and CN. 4 KiB covers these, a UNIX address block (216)
# and a client certificate of ordinary size in the SSL TLV. It also bounds what a
# connection holds before its header is judged.
MAX_V2_LENGTH = V2_HEADER_LENGTH + 4096

_VERSION_2 = 0x2
_LOCAL = 0x0
_PROXY = 0x1
_UNIX_FAMILY = 0x3
_DGRAM = 0x2
_TCP_OVER_IPV4 = 0x11
_TCP_OVER_IPV6 = 0x21
_UNIX_STREAM = 0x31
_UNSPEC = 0x00  # family and transport unspecified: no addresses, TLVs may follow

_FIXED = struct.Struct(">BBH")  # ver-cmd, fam, len: after the signature
_INET = struct.Struct(">4s4sHH")
_INET6 = struct.Struct(">16s16sHH")
# The two address blocks of TCP: (layout, address family, name in errors).
_INET_LAYOUTS = {
    _TCP_OVER_IPV4: (_INET, AF_INET, "INET"),
    _TCP_OVER_IPV6: (_INET6, AF_INET6, "INET6"),
}
_UNIX = struct.Struct("108s108s")
_TLV_HEAD = struct.Struct(">BH")

PP2_TYPE_AUTHORITY = 0x02  # section 2.2.2: the host name the client asked for, UTF-8
PP2_TYPE_CRC32C = 0x03  # section 2.2.3: a checksum of the header, 4 bytes


def _parse_v2(data: bytes | bytearray) -> ProxyHeader | None:
    available = len(data)
    if available < V2_HEADER_LENGTH:
        return None
    # Everything the first 16 bytes can refuse is refused before waiting for the
    # rest, so that a bad header costs no wait and no buffer.
    ver_cmd, fam, block = _FIXED.unpack_from(data, len(V2_SIGNATURE))
    if ver_cmd >> 4 != _VERSION_2:
        raise ProxyProtocolError(BAD_VERSION, f"version {ver_cmd >> 4}, expected 2")
    command = ver_cmd & 0x0F
    if command > _PROXY:
        raise ProxyProtocolError(BAD_COMMAND, f"unknown command {command:#x}")
    length = V2_HEADER_LENGTH + block
    if length > MAX_V2_LENGTH:
        raise ProxyProtocolError(TOO_LONG, f"{length}-byte header, at most {MAX_V2_LENGTH}")
    if command == _LOCAL:
        # The spec has the receiver discard a LOCAL block, family byte included (a
        # health check from the proxy itself): its TLVs are not read either, since
        # where they start depends on that family.
        return None if available < length else ProxyHeader(2, True, None, None, length)

    inet = _INET_LAYOUTS.get(fam)
    if inet is None:
        return _parse_v2_other(data, fam, block, length)
    layout, family, name = inet
    if block < layout.size:
        raise _short_addresses(block, name, layout.size)
    if available < length:
        return None
    src, dst, src_port, dst_port = layout.unpack_from(data, V2_HEADER_LENGTH)
    source = (inet_ntop(family, src), src_port)
    destination = (inet_ntop(family, dst), dst_port)
    start = V2_HEADER_LENGTH + layout.size
    if start == length:
        return ProxyHeader(2, False, source, destination, length)
    tlvs, authority = _parse_tlvs(data, start, length)
    return ProxyHeader(2, False, source, destination, length, tlvs, authority)


def _parse_v2_other(
    data: bytes | bytearray, fam: int, block: int, length: int
) -> ProxyHeader | None:
    """A PROXY command for anything but TCP over IPv4 or IPv6."""
    family = fam >> 4
    transport = fam & 0x0F
    if family > _UNIX_FAMILY:
        raise ProxyProtocolError(BAD_FAMILY, f"unknown address family {family:#x}")
    if transport == _DGRAM:
        raise ProxyProtocolError(BAD_TRANSPORT, "DGRAM transport: only stream is served")
    if transport > _DGRAM:
        raise ProxyProtocolError(BAD_TRANSPORT, f"unknown transport {transport:#x}")
    if fam == _UNIX_STREAM:
        if block < _UNIX.size:
            raise _short_addresses(block, "UNIX", _UNIX.size)
        if len(data) < length:
            return None
        src, dst = _UNIX.unpack_from(data, V2_HEADER_LENGTH)
        start = V2_HEADER_LENGTH + _UNIX.size
        tlvs, authority = _parse_tlvs(data, start, length)
        return ProxyHeader(2, False, _unix_path(src), _unix_path(dst), length, tlvs, authority)
    if len(data) < length:
        return None
    if fam == _UNSPEC:
        tlvs, authority = _parse_tlvs(data, V2_HEADER_LENGTH, length)
        return ProxyHeader(2, True, None, None, length, tlvs, authority)
    # A known family with an unspecified transport, or the reverse: the spec has the
    # receiver ignore the addresses, and does not say how long they are, so neither
    # the addresses nor any TLV after them can be read. The socket's addresses stand.
    return ProxyHeader(2, True, None, None, length)


def _short_addresses(block: int, family: str, needed: int) -> ProxyProtocolError:
    return ProxyProtocolError(
        SHORT_ADDRESSES, f"{block}-byte block, {family} addresses need {needed}"
    )


def _unix_path(raw: bytes) -> str:
    """A sun_path field as a str; NUL-padded, or NUL-led for a Linux abstract name."""
    if raw[0] == 0:
        raw = raw.rstrip(b"\x00")  # abstract: keep the leading NUL, as Python does
    else:
        end = raw.find(b"\x00")
        if end >= 0:
            raw = raw[:end]
    # As os.fsdecode on Linux: any byte survives and can be encoded back.
    return raw.decode("utf-8", "surrogateescape")


def _parse_tlvs(
    data: bytes | bytearray, pos: int, end: int
) -> tuple[tuple[tuple[int, bytes], ...], str | None]:
    """The TLVs in data[pos:end] and the authority among them. Unknown types are kept
    as they are, and so is the SSL TLV (its sub-TLVs are not read)."""
    tlvs = []
    authority = None
    while pos < end:
        if end - pos < _TLV_HEAD.size:
            raise ProxyProtocolError(TRUNCATED, f"{end - pos} bytes left for a TLV head")
        kind, size = _TLV_HEAD.unpack_from(data, pos)
        pos += _TLV_HEAD.size
        if pos + size > end:
            raise ProxyProtocolError(TRUNCATED, f"TLV {kind:#04x} runs past the header")
        value = bytes(data[pos : pos + size])
        pos += size
        if kind == PP2_TYPE_AUTHORITY:
            # Two authorities could mean one thing to us and another to a log reader.
            if authority is not None:
                raise ProxyProtocolError(BAD_TLV, "more than one authority TLV")
            try:
                authority = value.decode()
            except UnicodeDecodeError:
                raise ProxyProtocolError(BAD_TLV, "authority is not UTF-8") from None
        elif kind == PP2_TYPE_CRC32C and size != 4:
            # Accepted, but not verified: the stdlib has no CRC32c, a pure-Python one
            # would cost more than the whole parse, and the header comes from a proxy
            # we trust over a stream that TCP already checksums.
            raise ProxyProtocolError(BAD_TLV, f"{size}-byte CRC32c, expected 4")
        tlvs.append((kind, value))
    return tuple(tlvs), authority


# --- entry point -----------------------------------------------------------------------


def parse(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """The header at the start of `data`, or None if more bytes are needed.

    Raises ProxyProtocolError as soon as the bytes can no longer begin a valid header:
    a connection whose first bytes match neither signature is refused at once.
    """
    if type(data) is memoryview:
        # No header is longer than this; bytes() of a short piece costs less than
        # teaching every step to read a memoryview (it has no find or startswith).
        data = bytes(data[:MAX_V2_LENGTH])
    if data.startswith(V1_SIGNATURE):
        return _parse_v1(data)
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    # Spec section 2.2 tells the versions apart by their first bytes ("P" or CR);
    # until the bytes stop being a prefix of either signature, wait.
    if V1_SIGNATURE.startswith(data) or V2_SIGNATURE.startswith(data):
        return None
    raise ProxyProtocolError(BAD_SIGNATURE, f"not a PROXY header: {bytes(data[:16])!r}")
