"""User-given values in error messages: quoted, and cut short when long (a 1 MB model name must not come back
as a 1 MB message, which would not even fit in the gRPC trailers)."""

from __future__ import annotations

LIMIT = 60


def quote(value: object, limit: int = LIMIT) -> str:
    """`repr(value)`; a longer string is cut in the middle and its length given: 'abc…xyz' (5000 characters)."""
    text = str(value)
    if len(text) <= limit:
        return repr(value)
    head, tail = text[: limit * 2 // 3], text[-(limit // 3):]
    return f"{head + '…' + tail!r} ({len(text)} characters)"
