"""Request bodies read with a bound: the one way the HTTP routes read `wsgi.input`.

Called by handlers.slack_http (`_read_body`, POST /slack/events) and handlers.alertmanager (`Route.__call__`, POST
/alertmanager); bot.app sizes waitress's own limits from MAX_BODY. Nobody may make the bot hold more than
MAX_BODY of a request: a Content-Length over it is refused without reading a byte, and a body without one
(chunked, decoded by the server) is read in pieces and dropped as soon as it passes the limit. Both end in
`TooLarge`, which the routes answer with a 413. Waitress itself already refuses such requests before the app
runs (bot.app sets its `max_request_body_size`); this is the same rule for any other WSGI server or caller.
"""

from __future__ import annotations

from typing import Any

MAX_BODY = 1 << 20  # 1 MiB: Slack's requests and Alertmanager's group notifications are far smaller
_PIECE = 64 << 10  # how much of a body without a Content-Length is read at a time
TOO_LARGE = "413 Request Entity Too Large"  # the status line both routes answer TooLarge with


class TooLarge(ValueError):
    """The request declares or sends more than the limit; nothing of it is kept."""


class BadLength(ValueError):
    """The Content-Length header is not a non-negative whole number."""


def read_body(environ: dict[str, Any], limit: int = MAX_BODY) -> bytes:
    """The request body, at most `limit` bytes; TooLarge when more is declared or sent, BadLength when the
    Content-Length is not a number. Without a Content-Length the body is read only when the server says the
    stream ends (chunked, or `wsgi.input_terminated`); otherwise it is empty, as PEP 3333 requires."""
    declared = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if declared not in (None, ""):
        text = str(declared).strip()
        if not text.isdigit():
            raise BadLength(f"Content-Length is not a number of bytes: {text[:40]!r}")
        length = int(text)
        if length > limit:
            raise TooLarge(f"the body is {length} bytes; at most {limit} are accepted")
        return _read_exactly(stream, length)
    chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
    if not (chunked or environ.get("wsgi.input_terminated")):
        return b""
    pieces: list[bytes] = []
    size = 0
    while True:
        piece = stream.read(min(_PIECE, limit + 1 - size))
        if not piece:
            return b"".join(pieces)
        size += len(piece)
        if size > limit:
            raise TooLarge(f"the body passed {limit} bytes; at most {limit} are accepted")
        pieces.append(piece)


def _read_exactly(stream: Any, length: int) -> bytes:
    """`length` bytes, or fewer if the stream ends first (a cut-off body then fails its signature or parse)."""
    pieces: list[bytes] = []
    left = length
    while left > 0:
        piece = stream.read(left)
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)
