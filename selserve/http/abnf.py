"""The HTTP/1.1 request grammar (RFC 9110, RFC 9112, RFC 3986) as compiled regexes.

Each rule sits next to the ABNF it implements, with its section number, so that the
parser reads as a list of checks against the RFC. Everything is compiled at import:
nothing here may be built per request, and no pattern may backtrack more than linearly
(they run on bytes an attacker chooses).

Two kinds of pattern live here:

* ``*_B`` patterns are ``bytes`` patterns, run directly on the receive buffer (line
  ends, chunk-size lines).
* All others are ``str`` patterns, run on the head after one ``latin-1`` decode.
  latin-1 maps byte N to code point N, so a class such as ``[\\x80-\\xff]`` means
  exactly the same octets as in the ABNF; decoding the head once is cheaper than
  decoding every name and value separately.
"""

from __future__ import annotations

import re

# --- Core rules (RFC 5234 Appendix B.1; RFC 9110 §5.5, §5.6) --------------------------
#
#   VCHAR     = %x21-7E
#   obs-text  = %x80-FF
#   OWS       = *( SP / HTAB )                              ; RFC 9110 §5.6.3
#   BWS       = OWS                                         ; RFC 9110 §5.6.3
#   DIGIT     = %x30-39
#   HEXDIG    = DIGIT / "A" / "B" / "C" / "D" / "E" / "F"   ; case-insensitive
VCHAR = r"\x21-\x7e"
OBS_TEXT = r"\x80-\xff"
OWS = r"[ \t]*"
BWS = OWS

#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA     ; RFC 9110 §5.6.2
#   token = 1*tchar
TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN = TCHAR + "+"

#   quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE   ; RFC 9110 §5.6.4
#   qdtext        = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
#   quoted-pair   = "\" ( HTAB / SP / VCHAR / obs-text )
QUOTED_STRING = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'

# --- Request line (RFC 9112 §3) ------------------------------------------------------
#
#   request-line = method SP request-target SP HTTP-version
#   method       = token                                    ; RFC 9110 §9.1
#   HTTP-version = HTTP-name "/" DIGIT "." DIGIT            ; RFC 9112 §2.3
#   HTTP-name    = %s"HTTP"                                 ; case-sensitive
METHOD = TOKEN
HTTP_VERSION = r"HTTP/([0-9])\.([0-9])"

# The request-target is checked in two steps: first its octets (no CTL, SP or non-ASCII
# may appear, RFC 9112 §3.2), then its form. We accept any VCHAR in paths and queries,
# as browsers and h11 do, rather than the narrower pchar set of RFC 3986; the target is
# handed to the application still percent-encoded either way.
TARGET_CHARS = rf"[{VCHAR}]+"

# The fast path: a well-formed HTTP/1.x line, with its line end (CRLF, or a bare LF,
# RFC 9112 §2.2). A minor version above 1 is served as 1.1 (RFC 9110 §6.2: a recipient
# treats a higher minor version as the highest it implements). Anything else goes to a
# slower diagnosis that picks the right status (400 or 505).
REQUEST_LINE = re.compile(rf"({METHOD}) ({TARGET_CHARS}) HTTP/1\.([0-9])\r?\n")
METHOD_RE = re.compile(METHOD)
# How far the bytes of a request line still read as a method: the parser refuses one that
# cannot become a method before the line ends (a TLS ClientHello, binary garbage).
METHOD_SO_FAR_B = re.compile(rf"{TCHAR}*".encode("ascii"))
TARGET_CHARS_RE = re.compile(TARGET_CHARS)
HTTP_VERSION_RE = re.compile(HTTP_VERSION)

# --- request-target forms (RFC 9112 §3.2; URI parts from RFC 3986 §3) ------------------
#
#   request-target = origin-form / absolute-form / authority-form / asterisk-form
#   origin-form    = absolute-path [ "?" query ]            ; §3.2.1 - starts with "/"
#   absolute-form  = absolute-URI                           ; §3.2.2
#   authority-form = uri-host ":" port                      ; §3.2.3 - CONNECT only
#   asterisk-form  = "*"                                    ; §3.2.4 - OPTIONS only
#
#   uri-host    = IP-literal / IPv4address / reg-name       ; RFC 3986 §3.2.2
#   IP-literal  = "[" ( IPv6address / IPvFuture ) "]"
#   reg-name    = *( unreserved / pct-encoded / sub-delims )
#   unreserved  = ALPHA / DIGIT / "-" / "." / "_" / "~"
#   sub-delims  = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="
#   port        = *DIGIT
# IP literals and percent-escapes are checked for their octets only, not their inner
# structure: that is enough to keep "/", "?", "@", whitespace and controls out.
_REG_NAME_CHAR = r"[0-9A-Za-z\-._~%!$&'()*+,;=]"
IP_LITERAL = r"\[[0-9A-Za-z\-._~%!$&'()*+,;=:]+\]"
URI_HOST = rf"(?:{IP_LITERAL}|{_REG_NAME_CHAR}*)"
PORT = r"[0-9]*"
AUTHORITY_FORM_RE = re.compile(rf"{URI_HOST}:{PORT}")

#   absolute-URI  = scheme ":" hier-part [ "?" query ]      ; RFC 3986 §4.3
#   hier-part     = "//" authority path-abempty / ...
#   path-abempty  = *( "/" segment )
#   scheme        = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
#   authority     = [ userinfo "@" ] host [ ":" port ]      ; RFC 3986 §3.2
# Only the "//" authority path-abempty kind of hier-part makes sense for HTTP. The host
# must not be empty (RFC 9110 §4.2.1), and userinfo ("user@host") is refused: RFC 9110
# §4.2.4 says a recipient SHOULD treat it as an error. Groups: authority (host and port,
# which replace Host, RFC 9112 §3.2.2), path, query.
SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
ABSOLUTE_FORM_RE = re.compile(
    rf"{SCHEME}://((?:{IP_LITERAL}|{_REG_NAME_CHAR}+)(?::{PORT})?)((?:/[^?]*)?)(?:\?(.*))?"
)

#   Host = uri-host [ ":" port ]                            ; RFC 9110 §7.2
HOST_RE = re.compile(rf"{URI_HOST}(?::{PORT})?")

# --- Header section (RFC 9112 §2.1, §5; RFC 9110 §5.5) --------------------------------
#
#   HTTP-message   = start-line CRLF *( field-line CRLF ) CRLF [ message-body ]
#   field-line     = field-name ":" OWS field-value OWS
#   field-name     = token
#   field-value    = *field-content
#   field-content  = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
#   field-vchar    = VCHAR / obs-text
#
# The end of a head (or trailer section) is the first empty line: a LF followed by an
# optional CR and another LF. In a head, a bare LF ends a line (RFC 9112 §2.2 lets a
# recipient accept it); a bare CR is never a line end and fails the patterns below.
HEAD_END_B = re.compile(rb"\n\r?\n")
EMPTY_LINES_B = re.compile(rb"(?:\r?\n)+")

FIELD_VCHAR = rf"[{VCHAR}{OBS_TEXT}]"

# One field line, found by its leading LF (the end of the line before) and ending just
# before its own LF, which is left for the next match. Starting at a LF means a match can
# only ever be a whole line, so "matches == lines" proves every line valid in one pass.
# The possessive OWS takes all leading whitespace, so the value group can start with any
# field char and still begins with a field-vchar; it must end with one, so trailing OWS
# falls outside it too: values come out stripped. (Possessive forms save backtracking
# bookkeeping.)
_FIELD_LINE = rf"({TCHAR}++):[ \t]*+((?:[\t {VCHAR}{OBS_TEXT}]*{FIELD_VCHAR})?)[ \t]*+\r?"
FIELD_LINE = re.compile(rf"\n{_FIELD_LINE}(?=\n)")

# The same for one line split off at its LF (its CR kept), to fullmatch: a request's
# head runs it only over lines not seen before (parser.py's _KNOWN_FIELD_LINES).
FIELD_LINE_TEXT = re.compile(_FIELD_LINE)

# Used only to explain a field line that FIELD_LINE rejected.
TOKEN_RE = re.compile(TOKEN)
FIELD_VALUE_CHARS_RE = re.compile(rf"[\t {VCHAR}{OBS_TEXT}]*")

# --- Message body framing (RFC 9112 §6) -----------------------------------------------
#
#   Content-Length = 1*DIGIT                                ; RFC 9110 §8.6
# At most 18 digits, so the value always fits a signed 64-bit integer.
CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,18}")

#   Transfer-Encoding  = #transfer-coding                   ; RFC 9112 §6.1
#   transfer-coding    = token *( OWS ";" OWS transfer-parameter )   ; RFC 9110 §10.1.4
#   transfer-parameter = token BWS "=" BWS ( token / quoted-string )
TRANSFER_CODING_RE = re.compile(
    rf"{TOKEN}(?:{OWS};{OWS}{TOKEN}{BWS}={BWS}(?:{TOKEN}|{QUOTED_STRING}))*"
)

# --- Chunked transfer coding (RFC 9112 §7.1) ------------------------------------------
#
#   chunked-body   = *chunk last-chunk trailer-section CRLF
#   chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
#   chunk-size     = 1*HEXDIG
#   last-chunk     = 1*("0") [ chunk-ext ] CRLF
#   chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-name = token
#   chunk-ext-val  = token / quoted-string
#   trailer-section = *( field-line CRLF )
#
# Extensions are validated and dropped (no extension is defined that we act on). The size
# is captured with any number of digits so that "too many digits" gets its own message.
#
# Every line end in this grammar is CRLF. The bare-LF leniency of RFC 9112 §2.2 covers the
# start line and header fields only, so a bare LF inside a chunked body is refused: a front
# end that took it for data, not framing, would see a different request boundary than we
# do. CHUNK_LINE_B is for chunk-size and last-chunk lines; chunk-data's CRLF is compared
# directly; a trailer section is found with HEAD_END_B, then refused if BARE_LF_B matches.
CHUNK_EXT = rf"(?:{BWS};{BWS}{TOKEN}(?:{BWS}={BWS}(?:{TOKEN}|{QUOTED_STRING}))?)*"
CHUNK_LINE_B = re.compile(rf"([0-9A-Fa-f]+){CHUNK_EXT}\r\n".encode("ascii"))
BARE_LF_B = re.compile(rb"(?<!\r)\n")
