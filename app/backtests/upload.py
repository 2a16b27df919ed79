"""Receiving a multipart upload straight to disk: the CSV is never held in memory whole.

Starlette's form parser would spool the file into an anonymous temporary file (then it would have to be
copied into the spool directory) and has no per-part size cap; this reads the request stream itself with
python-multipart's push parser, writes the ``file`` part to the destination in 1 MiB slices from a
thread (the event loop never waits on the disk), keeps the few small text fields, and stops at the
first byte past ``max_file_bytes`` (413). A client that stops sending for ``idle_timeout`` seconds gets
408, so a trickling upload cannot hold its slot forever. On any error the partial file is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import AppError, BadRequest, Unprocessable

FILE_FIELD = "file"
MAX_FIELDS = 8
MAX_FIELD_BYTES = 256
WRITE_SLICE = 1 << 20


class UploadTooLarge(AppError):
    status, title, slug = 413, "Payload Too Large", "upload-too-large"


class UnsupportedUpload(AppError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class UploadIdle(AppError):
    status, title, slug = 408, "Request Timeout", "upload-idle"


@dataclass
class Upload:
    """The text fields as sent, and how much of the file part was written (None: no file part)."""

    fields: dict[str, str] = field(default_factory=dict)
    file_bytes: int | None = None


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary, or 415 for anything but ``multipart/form-data`` with one."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UnsupportedUpload(
            "Send the CSV as multipart/form-data: a 'file' part and the parameters as text fields."
        )
    return boundary


class _Receiver:
    def __init__(self, dest: Path, max_file_bytes: int) -> None:
        self.dest = dest
        self.max_file_bytes = max_file_bytes
        self.upload = Upload()
        self.file: BinaryIO | None = None
        self.pending = bytearray()
        self.events: list[tuple[str, bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self.parts = 0
        self.current: str | None = None  # the field being read ("file" for the file part)
        self.value = bytearray()

    # python-multipart callbacks: they only record; the async side acts on the records.
    def on_part_begin(self) -> None:
        self.events.append(("begin", b""))

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"")
        self._headers = {}
        _, options = parse_options_header(disposition)
        name = options.get(b"name")
        self.events.append(("headers", name if name is not None else b""))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", data[start:end]))

    def on_part_end(self) -> None:
        self.events.append(("end", b""))

    async def handle(self) -> None:
        events, self.events = self.events, []
        for kind, data in events:
            if kind == "begin":
                self.parts += 1
                if self.parts > MAX_FIELDS:
                    raise Unprocessable(
                        f"At most {MAX_FIELDS} form fields.", errors=[_err("body", "too many fields")]
                    )
            elif kind == "headers":
                await self._start_part(data.decode("latin-1"))
            elif kind == "data":
                await self._data(data)
            elif kind == "end":
                await self._end_part()

    async def _start_part(self, name: str) -> None:
        if not name:
            raise BadRequest("A form part has no name (Content-Disposition: form-data; name=...).")
        if name == FILE_FIELD:
            if self.upload.file_bytes is not None:
                raise Unprocessable("Send one file.", errors=[_err(FILE_FIELD, "sent more than once")])
            self.file = await asyncio.to_thread(_open_exclusive, self.dest)
            self.upload.file_bytes = 0
        elif name in self.upload.fields:
            raise Unprocessable(
                f"'{name}' was sent more than once.", errors=[_err(name, "sent more than once")]
            )
        self.current = name
        self.value = bytearray()

    async def _data(self, data: bytes) -> None:
        if self.current == FILE_FIELD:
            if self.upload.file_bytes is None:  # _start_part counts from 0 before current is the file
                raise RuntimeError("file data outside the file part")
            self.upload.file_bytes += len(data)
            if self.upload.file_bytes > self.max_file_bytes:
                raise UploadTooLarge(
                    f"The file exceeds BACKTEST_MAX_UPLOAD_BYTES ({self.max_file_bytes} bytes).",
                    max_bytes=self.max_file_bytes,
                )
            self.pending += data
            if len(self.pending) >= WRITE_SLICE:
                await self._flush()
        else:
            self.value += data
            if len(self.value) > MAX_FIELD_BYTES:
                field_name = self.current or "body"
                raise Unprocessable(
                    f"'{field_name}' is longer than {MAX_FIELD_BYTES} bytes.",
                    errors=[_err(field_name, f"at most {MAX_FIELD_BYTES} bytes")],
                )

    async def _end_part(self) -> None:
        if self.current == FILE_FIELD:
            await self._flush()
            if self.file is None:  # opened by _start_part, closed only here
                raise RuntimeError("the file part ended twice")
            await asyncio.to_thread(self.file.close)
            self.file = None
        elif self.current is not None:
            try:
                self.upload.fields[self.current] = self.value.decode("utf-8")
            except UnicodeDecodeError:
                raise Unprocessable(
                    f"'{self.current}' is not UTF-8 text.", errors=[_err(self.current, "not UTF-8 text")]
                ) from None
        self.current = None

    async def _flush(self) -> None:
        if self.pending and self.file is not None:
            chunk, self.pending = bytes(self.pending), bytearray()
            await asyncio.to_thread(self.file.write, chunk)

    async def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.file.close)
            self.file = None


def _open_exclusive(path: Path) -> BinaryIO:
    return open(path, "xb")  # noqa: SIM115 - closed by the receiver


def _err(field_name: str, message: str) -> dict[str, str]:
    return {"field": field_name, "message": message}


async def receive_upload(
    stream: AsyncIterator[bytes],
    *,
    boundary: bytes,
    dest: Path,
    max_file_bytes: int,
    idle_timeout: float,  # noqa: ASYNC109 - per chunk, not for the whole upload
) -> Upload:
    """Parse the multipart ``stream``, writing the ``file`` part to ``dest`` (created, must not exist).

    Raises 413 past ``max_file_bytes``, 408 after ``idle_timeout`` seconds without a byte, 400 for a
    malformed body, 422 for repeated, over-long or too many fields. ``dest`` is removed on any error."""
    receiver = _Receiver(dest, max_file_bytes)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": receiver.on_part_begin,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
        },
    )
    iterator = stream.__aiter__()
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UploadIdle(
                    f"No data arrived for {idle_timeout:g} seconds; the upload was dropped."
                ) from None
            if chunk:
                try:
                    parser.write(chunk)
                except MultipartParseError as exc:
                    raise BadRequest(f"Malformed multipart body: {exc}.") from None
                await receiver.handle()
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise BadRequest(f"Malformed multipart body: {exc}.") from None
        await receiver.handle()
        if receiver.current is not None or receiver.file is not None:
            raise BadRequest("The multipart body ended in the middle of a part.")
        return receiver.upload
    except BaseException:
        await receiver.close()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, dest)
        raise
