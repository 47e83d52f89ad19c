"""Who the client is when a proxy stands in front: `Forwarded` (RFC 7239) and X-Forwarded-*.

`TrustedPeers` is `--forwarded-allow-ips` parsed once; `resolve` reads one request's
headers and says which client address, URL scheme and host a trusted proxy reported.
When the immediate peer is not trusted its headers are not believed, and a WSGI adapter
drops `UNTRUSTED_HEADERS` from the environ so that an application cannot believe them
either.

It must never raise on a header value (a bad one is ignored and counted), never believe
a hop written by a client (lists are read from the right, and reading stops at the first
hop that is not a trusted proxy or cannot be read), never do more than bounded work per
request, and never touch a socket, a clock or a logger.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

from selserve.http.abnf import QUOTED_STRING, TCHAR, TOKEN

__all__ = [
    "MAX_ELEMENTS",
    "MAX_ELEMENT_LENGTH",
    "UNTRUSTED_HEADERS",
    "Forwarding",
    "TrustedPeers",
    "resolve",
]

# Of a forwarding list (all Forwarded fields, or all X-Forwarded-For fields) only the
# last MAX_ELEMENTS elements are read: the hops that matter are the rightmost, and a
# 60 KB field must cost no more than a short one. A chain of trusted proxies longer
# than this ends at the leftmost element read.
MAX_ELEMENTS = 64

# An element longer than this is refused unread (a Forwarded element, an address in
# X-Forwarded-For, a host): the longest valid ones, a host name with a port in an
# element that also has for=, by= and proto=, are well under it.
MAX_ELEMENT_LENGTH = 512

# A Forwarded element with more parameters than this is refused (four are defined).
MAX_PAIRS = 16

# TrustedPeers remembers this many verdicts, then starts again (the check runs for
# every request, and for every hop of a chain).
MAX_VERDICTS = 1024

# What a WSGI adapter removes from the environ when the peer is not trusted: the fields
# read here, and those that other proxies and frameworks use for the same purpose, so
# that an application reading them directly is not fooled either (waitress 3.0's
# clear_untrusted_proxy_headers). Header names with "_" never reach the environ at all.
UNTRUSTED_HEADERS = frozenset(
    (
        "forwarded",
        "x-forwarded-by",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-proto",
        "x-forwarded-protocol",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-real-ip",
        "x-url-scheme",
    )
)

# --- Grammar -------------------------------------------------------------------------
#
#   Forwarded         = 1#forwarded-element                 ; RFC 7239 §4
#   forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )
#   forwarded-pair    = token "=" value
#   value             = token / quoted-string
# Deviation: OWS is allowed around ";" ("for=192.0.2.1; proto=https" is common). An
# element is checked whole before its pairs are read, and one error refuses it whole:
# a pair that survived a broken element could be text a client wrote, glued to a
# proxy's. Possessive forms keep a long bad element from costing backtracking.
_PAIR = rf"{TCHAR}++=(?>{TCHAR}++|{QUOTED_STRING})"
ELEMENT_RE = re.compile(rf"[ \t]*+(?:{_PAIR})?+(?:[ \t]*+;[ \t]*+(?:{_PAIR})?+)*+[ \t]*+(?=,|\Z)")
PAIR_RE = re.compile(rf"({TOKEN})=({TOKEN}|{QUOTED_STRING})")
QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)  # RFC 9110 §5.6.4: "\" escapes one octet

#   IPv4address = dec-octet "." dec-octet "." dec-octet "." dec-octet   ; RFC 3986 §3.2.2
#   dec-octet   = DIGIT / %x31-39 DIGIT / "1" 2DIGIT / "2" %x30-34 DIGIT / "25" %x30-35
# No leading zeros: "010.0.0.1" means 8.0.0.1 to some readers and 10.0.0.1 to others.
_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
# IPv6 text is checked for its characters here and for its structure by ipaddress. No
# zone ("%eth0"): a zone means something only on the host that wrote it.
_IPV6_CHARS = r"[0-9A-Fa-f:.]++"

#   node      = nodename [ ":" node-port ]                  ; RFC 7239 §6
#   nodename  = IPv4address / "[" IPv6address "]" / "unknown" / obfnode
#   obfnode   = "_" 1*( ALPHA / DIGIT / "." / "_" / "-")
#   node-port = port / obfport
#   port      = 1*5DIGIT
#   obfport   = "_" 1*(ALPHA / DIGIT / "." / "_" / "-")
# Groups: IPv4, IPv6, port. "unknown" and obfuscated names match with neither address.
_OBF = r"_[A-Za-z0-9._-]++"
NODE_RE = re.compile(
    rf"(?:({_IPV4})|\[({_IPV6_CHARS})\]|(?i:unknown)|{_OBF})(?::(?:([0-9]{{1,5}})|{_OBF}))?"
)

# X-Forwarded-For has no specification; proxies write one address per hop, bare
# ("192.0.2.1", "2001:db8::1") or with the client's port ("192.0.2.1:5678",
# "[2001:db8::1]:5678"); Squid writes "unknown" for a hop it will not name.
# Groups: IPv4, its port, IPv6 in brackets, its port, bare IPv6.
XFF_ENTRY_RE = re.compile(
    rf"({_IPV4})(?::([0-9]{{1,5}}))?|\[({_IPV6_CHARS})\](?::([0-9]{{1,5}}))?"
    rf"|({_IPV6_CHARS})|(?i:unknown)"
)

#   Host       = uri-host [ ":" port ]                      ; RFC 9110 §7.2
#   uri-host   = IP-literal / IPv4address / reg-name        ; RFC 3986 §3.2.2
#   IP-literal = "[" ( IPv6address / IPvFuture ) "]"
#   reg-name   = *( unreserved / pct-encoded / sub-delims )
#   port       = *DIGIT
# Deviations: the name must not be empty (it would name nothing), IPvFuture is refused
# (nothing uses it) and a port has at most 5 digits. Groups: IPv6, port.
_REG_NAME = r"(?:[0-9A-Za-z\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})++"
HOST_RE = re.compile(rf"(?:\[({_IPV6_CHARS})\]|{_REG_NAME})(?::([0-9]{{0,5}}))?")

# RFC 7239 §5.4 allows any URI scheme; an HTTP server can only have been reached by these.
_SCHEMES = {"http": "http", "https": "https"}


class Forwarding(NamedTuple):
    """What the proxies in front of one request reported, as `resolve` believed it.

    `client` is (address, port or None), the address as the proxy wrote it (IPv6 without
    brackets, lower-cased); `scheme` is "http" or "https"; `host` is a valid Host value.
    Each is None where nothing usable was reported: the connection's own values stand. `malformed`
    counts the values read and refused. `used` is whether the peer is trusted, so that
    its forwarding headers were read; when it is False they were ignored and a WSGI
    adapter must drop `UNTRUSTED_HEADERS` from the environ.
    """

    client: tuple[str, int | None] | None
    scheme: str | None
    host: str | None
    malformed: int
    used: bool


_IGNORED = Forwarding(None, None, None, 0, False)
_NOTHING = Forwarding(None, None, None, 0, True)

# A hop that is there but names no address: "unknown", an obfuscated name, a Forwarded
# element without for=. Reading stops at it; the client stays the connection's peer.
# (Compared by identity.)
_UNNAMED = ("", None)

_MAPPED_IPV4 = ipaddress.IPv6Network("::ffff:0:0/96")


def _plain_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The address with an IPv4-mapped IPv6 address turned into IPv4, and no zone."""
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(str(address).partition("%")[0])
    return address


def _plain_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network):
    """A network inside ::ffff:0:0/96 as the IPv4 network it maps."""
    if network.version == 6 and network.prefixlen >= 96 and network.subnet_of(_MAPPED_IPV4):
        low = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((low, network.prefixlen - 96))
    return network


class TrustedPeers:
    """The peers whose forwarding headers are believed: `--forwarded-allow-ips`.

    Build it with `parse("127.0.0.1, ::1, 10.0.0.0/8")`: addresses and CIDR networks,
    comma-separated, IPv4 or IPv6; "*" trusts every peer. An IPv4 entry also matches the
    same address IPv4-mapped ("::ffff:10.0.0.1", as a dual-stack listener reports it).

    A peer host that is not an IP address is a Unix socket's (the server passes "" or
    the socket's path for those), and is trusted unless `unix=False`: only processes on
    this machine that may open the socket can connect, and when the server listens on
    one, it is the proxy in front that connects through it (gunicorn decides the same).
    """

    __slots__ = ("everyone", "unix", "spec", "_exact", "_addresses", "_networks", "_verdicts")

    def __init__(
        self,
        addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        *,
        everyone: bool = False,
        unix: bool = True,
    ) -> None:
        self.everyone = everyone
        self.unix = unix
        self._addresses = frozenset(_plain_address(a) for a in addresses)
        self._networks = tuple(_plain_network(n) for n in networks)
        # The addresses as a peer's host reads: a listed peer is a set lookup away.
        self._exact = frozenset(str(a) for a in self._addresses)
        # Host -> trusted? Each step is one dict operation: safe from worker threads.
        self._verdicts: dict[str, bool] = {}
        items = ["*"] if everyone else []
        items += sorted(self._exact) + [str(n) for n in self._networks]
        self.spec = ", ".join(items)

    @classmethod
    def parse(cls, spec: str, *, unix: bool = True) -> TrustedPeers:
        """Parse the option's value; ValueError names the first bad item."""
        addresses = []
        networks = []
        everyone = False
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            if item == "*":
                everyone = True
                continue
            text = item[1:-1] if item[0] == "[" and item[-1] == "]" else item
            try:
                if "/" in text:
                    networks.append(ipaddress.ip_network(text))
                else:
                    addresses.append(ipaddress.ip_address(text))
            except ValueError:
                raise ValueError(_refusal(item, text)) from None
        return cls(addresses, networks, everyone=everyone, unix=unix)

    def trusts(self, host: str) -> bool:
        """Whether a peer at `host` (an address as accept() reports it) is trusted."""
        if self.everyone or host in self._exact:
            return True
        verdict = self._verdicts.get(host)
        if verdict is None:
            verdict = self._decide(host)
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict

    __contains__ = trusts

    def _decide(self, host: str) -> bool:
        if type(host) is not str:
            return self.unix  # an abstract Unix socket's name comes as bytes
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return self.unix
        if address.version == 6:
            mapped = address.ipv4_mapped
            if mapped is not None and self._holds(mapped):
                return True
            if address.scope_id is not None:
                address = ipaddress.IPv6Address(host.partition("%")[0])
        return self._holds(address)

    def _holds(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if address in self._addresses:
            return True
        return any(address in network for network in self._networks)

    def __repr__(self) -> str:
        unix = "" if self.unix else " (not Unix sockets)"
        return f"<TrustedPeers {self.spec or 'none'}{unix}>"


def _refusal(item: str, text: str) -> str:
    example = 'for example "127.0.0.1, ::1, 10.0.0.0/8", or "*" to trust every peer'
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            pass
        else:
            return f"trusted proxy {item!r} has host bits set: did you mean {network}?"
        return f"trusted proxy {item!r} is not an IP network; give CIDR networks, {example}"
    return f"trusted proxy {item!r} is not an IP address; give addresses or networks, {example}"


# --- Reading a request's headers ------------------------------------------------------

# The fields read, in the order of the lists `resolve` gathers.
# The two families of proxy headers; a deployment reads one (--forwarded-headers).
X_FORWARDED = "x-forwarded"  # X-Forwarded-For/-Proto/-Host: nginx, HAProxy forwardfor
FORWARDED = "forwarded"  # RFC 7239 Forwarded: HAProxy's "option forwarded", Envoy
SOURCES = (X_FORWARDED, FORWARDED)
_READ = {
    X_FORWARDED: {"x-forwarded-for": 1, "x-forwarded-proto": 2, "x-forwarded-host": 3},
    FORWARDED: {"forwarded": 0},
}


def resolve(
    peer_host: str,
    headers: Iterable[tuple[str, str]],
    trusted: TrustedPeers,
    source: str = X_FORWARDED,
) -> Forwarding:
    """What the proxies in front reported about one request, if `peer_host` is trusted.

    `headers` are (lower-case name, value) pairs as the parser makes them.  Only the
    family `source` names is read, never both: a proxy writes one family and passes
    the other on from the client untouched (nginx's proxy_add_x_forwarded_for leaves
    a client's Forwarded as it is), so reading the other would let any client name
    its own address.  X-Forwarded-For gives the client; X-Forwarded-Proto and
    X-Forwarded-Host the last element of each. X-Forwarded-Port is not read: it is the
    port the client connected *to* (the proxy's), not the client's own. X-Real-IP is
    not read either: it is a single value that any hop may have overwritten.
    """
    if not trusted.trusts(peer_host):
        return _IGNORED
    read = _READ[source]
    found = None
    for name, value in headers:
        kind = read.get(name)
        if kind is not None:
            if found is None:
                found = ([], [], [], [])
            found[kind].append(value)
    if found is None:
        return _NOTHING
    forwarded, forwarded_for, proto, host = found
    if forwarded:
        # RFC 9110 §5.3: field lines of one name are one list, in order.
        return _from_forwarded(", ".join(forwarded), trusted)
    return _from_x_forwarded(forwarded_for, proto, host, trusted)


def _window(value: str) -> str:
    """The tail of a comma-separated list that holds its last MAX_ELEMENTS elements.

    Commas are counted regardless of quoting, so a quoted comma means one element fewer
    and a first element that may be a fragment. That is safe: a fragment is refused, or
    reached only past a chain of trusted hops, whose word is taken anyway.
    """
    start = len(value)
    for _ in range(MAX_ELEMENTS):
        start = value.rfind(",", 0, start)
        if start < 0:
            return value
    return value[start + 1 :]


def _from_forwarded(value: str, trusted: TrustedPeers) -> Forwarding:
    elements, malformed = _forwarded_elements(_window(value))
    # From the right, each element was written by a proxy whose own address is in the
    # element to its right (or is our peer): while that address is trusted, so is the
    # element. The first element naming an untrusted address describes the client.
    chosen = node = None
    for params in reversed(elements):
        if params is None:  # unreadable: nothing here or to its left is believed
            chosen = node = None
            break
        if not params:
            continue  # an empty list element (RFC 9110 §5.6.1)
        chosen = params
        node = _forwarded_node(params.get("for"))
        if node is None:
            malformed += 1
            break
        if node is _UNNAMED or not trusted.trusts(node[0]):
            break
    if chosen is None:
        return Forwarding(None, None, None, malformed, True)
    scheme = host = None
    proto = chosen.get("proto")
    if proto is not None:
        scheme = _SCHEMES.get(proto.lower())
        if scheme is None:
            malformed += 1
    named = chosen.get("host")
    if named is not None:
        if _valid_host(named):
            host = named
        else:
            malformed += 1
    client = node if node is not None and node is not _UNNAMED else None
    return Forwarding(client, scheme, host, malformed, True)


def _forwarded_elements(window: str) -> tuple[list[dict[str, str] | None], int]:
    """The window's elements, left to right: a dict of parameters (names lower-cased,
    values unquoted) or None for a refused one; and how many were refused."""
    elements: list[dict[str, str] | None] = []
    malformed = 0
    end = len(window)
    pos = 0
    while pos <= end:
        # Matching stops one character past the longest element allowed, so that a
        # long one costs no more than that.
        m = ELEMENT_RE.match(window, pos, pos + MAX_ELEMENT_LENGTH + 1)
        if m is None or m.end() - pos > MAX_ELEMENT_LENGTH:
            # Go on after the next comma, wherever it is: the element a proxy appended
            # after this one is still read on its own.
            malformed += 1
            elements.append(None)
            comma = window.find(",", pos)
            pos = end + 1 if comma < 0 else comma + 1
            continue
        params = _forwarded_pairs(m.group())
        if params is None:
            malformed += 1
        elements.append(params)
        pos = m.end() + 1
    return elements, malformed


def _forwarded_pairs(element: str) -> dict[str, str] | None:
    """The parameters of a well-formed element, or None if one repeats (RFC 7239 §4:
    each MUST NOT occur more than once) or there are more than MAX_PAIRS."""
    params: dict[str, str] = {}
    for m in PAIR_RE.finditer(element):
        name = m.group(1).lower()  # RFC 7239 §4: parameter names are case-insensitive
        if name in params or len(params) == MAX_PAIRS:
            return None
        value = m.group(2)
        if value[0] == '"':
            value = value[1:-1]
            if "\\" in value:
                value = QUOTED_PAIR_RE.sub(r"\1", value)
        params[name] = value
    return params


def _forwarded_node(value: str | None) -> tuple[str, int | None] | None:
    """A for= value as (address, port or None), `_UNNAMED`, or None if invalid."""
    if value is None:
        return _UNNAMED
    m = NODE_RE.fullmatch(value)
    if m is None:
        return None
    ipv4, ipv6, port = m.groups()
    return _address(ipv4, ipv6, port)


def _address(ipv4: str | None, ipv6: str | None, port: str | None):
    """(address, port or None) from matched parts, `_UNNAMED`, or None if invalid."""
    if ipv4 is not None:
        address = ipv4
    elif ipv6 is not None:
        if not _is_ipv6(ipv6):
            return None
        address = ipv6.lower()
    else:
        return _UNNAMED
    if port is None:
        return address, None
    number = int(port)
    return (address, number) if number <= 65535 else None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _valid_host(text: str) -> bool:
    if len(text) > MAX_ELEMENT_LENGTH:
        return False
    m = HOST_RE.fullmatch(text)
    if m is None:
        return False
    ipv6, port = m.groups()
    if ipv6 is not None and not _is_ipv6(ipv6):
        return False
    return not port or int(port) <= 65535


def _from_x_forwarded(
    forwarded_for: list[str], proto: list[str], host: list[str], trusted: TrustedPeers
) -> Forwarding:
    client = None
    malformed = 0
    if forwarded_for:
        client, malformed = _xff_client(",".join(forwarded_for), trusted)
    scheme = named = None
    if proto:
        value = _last_element(proto)
        if value:
            scheme = _SCHEMES.get(value.lower())
            if scheme is None:
                malformed += 1
    if host:
        value = _last_element(host)
        if value:
            if _valid_host(value):
                named = value
            else:
                malformed += 1
    return Forwarding(client, scheme, named, malformed, True)


def _xff_client(value: str, trusted: TrustedPeers) -> tuple[tuple[str, int | None] | None, int]:
    """The rightmost address of X-Forwarded-For that is not a trusted proxy (the leftmost
    read if all are), and 1 if reading stopped at an invalid entry, else 0."""
    client = None
    for entry in reversed(_window(value).split(",")):
        if len(entry) > MAX_ELEMENT_LENGTH:
            return None, 1
        entry = entry.strip(" \t")
        if not entry:
            continue  # an empty list element (RFC 9110 §5.6.1)
        m = XFF_ENTRY_RE.fullmatch(entry)
        if m is None:
            return None, 1
        ipv4, ipv4_port, bracketed, bracketed_port, bare = m.groups()
        if ipv4 is not None:
            node = _address(ipv4, None, ipv4_port)
        else:
            node = _address(None, bracketed or bare, bracketed_port)
        if node is None:
            return None, 1
        if node is _UNNAMED:
            return None, 0
        client = node
        if not trusted.trusts(node[0]):
            break
    return client, 0


def _last_element(lines: list[str]) -> str:
    """The last non-empty element of the list these field lines make, among its last
    MAX_ELEMENTS ("" if none). One too long to read comes back as it is: invalid."""
    for element in reversed(_window(",".join(lines)).split(",")):
        if len(element) > MAX_ELEMENT_LENGTH:
            return element
        element = element.strip(" \t")
        if element:
            return element
    return ""


def forwarded_request_class(
    base: type,
    trusted: TrustedPeers,
    source: str = X_FORWARDED,
    malformed: Callable[[int], object] = lambda count: None,
) -> type:
    """A subclass of the request class `base` (selserve.app.Request) whose requests take
    the client, scheme and host from the proxy headers of a trusted peer the moment
    their head and addresses arrive, and lose every proxy header from any other peer,
    so that neither the app nor a framework behind WSGI can be fooled by them.
    `malformed(count)` hears of values that could not be read.

    The server uses it only with --proxy-headers, so that without them no request
    pays for it.  `arrived` runs again when a request's body has come: the original
    peer comes back with it, and the same headers give the same answer."""

    class ForwardedRequest(base):
        __slots__ = ("scheme",)

        def arrived(self, body=b"", peer=None, local=None):
            base.arrived(self, body, peer, local)
            self.scheme = None
            headers = self.headers
            found = resolve(peer[0] if type(peer) is tuple else "", headers, trusted, source)
            if not found.used:
                if any(name in UNTRUSTED_HEADERS for name, _ in headers):
                    self.headers = [h for h in headers if h[0] not in UNTRUSTED_HEADERS]
                return self
            if found.malformed:
                malformed(found.malformed)
            if found.client is not None:
                host, port = found.client
                self.peer = (host, port or 0)
            if found.scheme is not None:
                self.scheme = found.scheme
            if found.host is not None:
                self.host = found.host
                self.headers = [
                    ("host", found.host) if name == "host" else (name, value)
                    for name, value in headers
                ]
            return self

    return ForwardedRequest
