"""Signed keyset cursors for the list routes (``{"items": [...], "next_cursor": ...}``, contract §3).

A cursor names a position ``(timestamp, id)`` in a list ordered newest first, for one user, and is
signed (HMAC-SHA256 with a key derived from JWT_SECRET under the list's own label): the server only
ever reads back a position it issued, to the user it issued it to, so no client-chosen value reaches a
query. A cursor that was altered, forged, belongs to another user or another list → 422 with
``errors: [{"field": "query.cursor", ...}]``.

Format: 8 bytes of microseconds since the epoch, the 16-byte id, a 24-byte tag — 48 bytes, exactly 64
base64url characters, no padding.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import struct
import uuid

from app.core.errors import Unprocessable

_BODY = struct.Struct(">q16s")
_TAG_BYTES = 24
_PATTERN = re.compile(r"[A-Za-z0-9_-]{64}")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
CURSOR_FIELD = "query.cursor"


class SignedCursor:
    """Encode and check cursors of one list; ``key`` from ``Settings.derived_key(<the list's label>)``."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, user_id: uuid.UUID, body: bytes) -> bytes:
        return hmac.new(self._key, user_id.bytes + body, hashlib.sha256).digest()[:_TAG_BYTES]

    def encode(self, user_id: uuid.UUID, at: dt.datetime, item_id: uuid.UUID) -> str:
        body = _BODY.pack((at - _EPOCH) // dt.timedelta(microseconds=1), item_id.bytes)
        return base64.urlsafe_b64encode(body + self._tag(user_id, body)).decode()

    def decode(self, user_id: uuid.UUID, cursor: str) -> tuple[dt.datetime, uuid.UUID]:
        """The position, or 422 for anything this server did not issue to ``user_id``."""
        invalid = Unprocessable(
            "The cursor is invalid: pass the next_cursor of a previous page, unchanged, as the same user.",
            errors=[{"field": CURSOR_FIELD, "message": "not a cursor this server issued to you"}],
        )
        if not _PATTERN.fullmatch(cursor):
            raise invalid
        raw = base64.urlsafe_b64decode(cursor)
        body, tag = raw[: _BODY.size], raw[_BODY.size :]
        if not hmac.compare_digest(tag, self._tag(user_id, body)):
            raise invalid
        micros, item_id = _BODY.unpack(body)
        try:  # only values this server signed get here; checked all the same
            return _EPOCH + dt.timedelta(microseconds=micros), uuid.UUID(bytes=item_id)
        except (OverflowError, ValueError):
            raise invalid from None
