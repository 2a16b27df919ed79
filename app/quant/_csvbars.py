"""Streaming reader for OHLCV bar files: ``timestamp,open,high,low,close,volume``.

The file is read in batches of exactly ``chunk_rows`` data rows (the last batch may be shorter);
only the current batch is in memory.  Each batch is parsed on a fast path – NumPy over the raw
bytes for the structure and the timestamps, pandas' C parser for the numbers – and falls back to a
plain Python parser (``csv`` + a strict ISO 8601 grammar) whenever the fast path is not certain to
give the same answer.  The fallback is the definition: the fast path only accepts what the fallback
accepts and yields identical values, so results never depend on the batch size.  Errors carry the
1-based line number in the file.

Accepted
* header: the six column names in this order (case-insensitive, surrounding spaces ignored; a
  UTF-8 byte order mark is skipped);
* blank lines anywhere (skipped, line numbers stay exact); ``\\n`` or ``\\r\\n`` line ends; RFC 4180
  quoting (a quoted field may not contain a line break);
* timestamp: ISO 8601 extended format ``YYYY-MM-DD[Thh:mm[:ss[.fffffffff]]][Z|±hh[:mm]|±hhmm]``
  (``T``, ``t`` or a space between date and time, ``.`` or ``,`` before 1–9 fraction digits);
  without an offset the time is UTC; strictly increasing through the file;
* open, high, low, close: finite decimal numbers > 0; volume: a finite decimal number >= 0
  (``[+-]digits[.digits][e±digits]``; surrounding spaces ignored).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, BinaryIO, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
HEADER_TEXT = ",".join(COLUMNS)
_MAX_HEADER_BYTES = 1 << 16
_MAX_LINE_BYTES = 1 << 20
_PART_ROWS = 25_000  # a batch is parsed in parts of this many lines: bounds the temporaries


class CsvValidationError(ValueError):
    """A malformed bar file; ``line`` is the 1-based line number of the offending line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message


# --------------------------------------------------------------------------------------------------
# ISO 8601 timestamps (the reference grammar; the vectorised path reproduces it exactly)

_TS_RE = re.compile(
    r"(?P<Y>[0-9]{4})-(?P<M>[0-9]{2})-(?P<D>[0-9]{2})"
    r"(?:(?P<sep>[Tt ])(?P<h>[0-9]{2}):(?P<m>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<f>[0-9]{1,9}))?)?"
    r"(?:(?P<z>[Zz])|(?P<osign>[+-])(?P<oh>[0-9]{2})(?::?(?P<om>[0-9]{2}))?)?)?"
)
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NONFINITE_RE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
FloatArray: TypeAlias = npt.NDArray[np.float64]
U8Array: TypeAlias = npt.NDArray[np.uint8]
#: (seconds, nanoseconds, line number) of the last row read: what the time-order check carries.
LastRow: TypeAlias = tuple[int, int, int]
_IntOrArray = TypeVar("_IntOrArray", int, IntArray)


def _days_from_civil(y: _IntOrArray, m: _IntOrArray, d: _IntOrArray) -> _IntOrArray:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm); ints or arrays."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days: _IntOrArray = era * 146097 + doe - 719468
    return days


def _is_leap(y: IntArray) -> BoolArray:
    leap: BoolArray = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    return leap


def parse_timestamp(text: str) -> tuple[int, int]:
    """(seconds since the epoch, nanoseconds) of an ISO 8601 timestamp; ValueError if invalid."""
    t = text.strip()
    mt = _TS_RE.fullmatch(t)
    if mt is None:
        raise ValueError(f"invalid ISO 8601 timestamp {text!r}")
    g = mt.groupdict()
    y, mo, d = int(g["Y"]), int(g["M"]), int(g["D"])
    h = int(g["h"] or 0)
    mi = int(g["m"] or 0)
    s = int(g["s"] or 0)
    frac = g["f"] or ""
    oh = int(g["oh"] or 0)
    om = int(g["om"] or 0)
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    dim = 29 if (mo == 2 and leap) else (_DAYS_IN_MONTH[mo - 1] if 1 <= mo <= 12 else 0)
    if not (
        1 <= y
        and 1 <= mo <= 12
        and 1 <= d <= dim
        and h <= 23
        and mi <= 59
        and s <= 59
        and oh <= 23
        and om <= 59
    ):
        raise ValueError(f"timestamp out of range {text!r}")
    sec = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
    if g["osign"]:
        off = oh * 3600 + om * 60
        sec -= off if g["osign"] == "+" else -off
    return sec, int(frac.ljust(9, "0")) if frac else 0


def _parse_number(text: str) -> float:
    t = text.strip()
    if not _NUM_RE.fullmatch(t):
        raise ValueError
    return float(t)


# --------------------------------------------------------------------------------------------------
# vectorised timestamps for rows that share one layout


def _gather_rows(buf: bytes, starts: IntArray, width: int) -> U8Array | None:
    """(rows, width) uint8 matrix of buf[start:start+width] for every start (one fixed-size gather)."""
    nbytes = len(buf)
    if starts.size == 0 or int(starts[-1]) + width > nbytes:
        return None
    rows = np.ndarray(shape=(nbytes - width + 1,), dtype=np.dtype((np.void, width)), buffer=buf, strides=(1,))
    gathered: U8Array = rows[starts].view(np.uint8).reshape(-1, width)
    return gathered


def _timestamps_fast(cols: U8Array) -> tuple[IntArray, IntArray] | None:
    """Parse timestamp fields that all have the width of ``cols`` (rows x width, uint8), or None if
    any row does not share the first row's layout or fails a range check – the batch is then
    re-parsed by the reference parser, which reports the error."""
    try:
        first = bytes(cols[0]).decode("ascii")
    except UnicodeDecodeError:
        return None
    mt = _TS_RE.fullmatch(first)
    if mt is None:
        return None
    ref = cols[0]
    is_digit = (ref >= 48) & (ref <= 57)
    sign_pos = mt.start("osign") if mt.group("osign") else -1
    fixed = ~is_digit
    if sign_pos >= 0:
        fixed[sign_pos] = False
        sc = cols[:, sign_pos]
        if not np.all((sc == 43) | (sc == 45)):
            return None
    fixed_idx = np.flatnonzero(fixed)
    if fixed_idx.size and not (cols[:, fixed_idx] == ref[fixed_idx]).all():
        return None
    digit_idx = np.flatnonzero(is_digit)
    if digit_idx.size and (cols[:, digit_idx] - np.uint8(48)).max() > 9:  # uint8 wrap: non-digits > 9
        return None
    n = cols.shape[0]
    zero = np.zeros(n, dtype=np.int64)

    def field(name: str) -> IntArray | None:
        if mt.group(name) is None:
            return None
        a, b = mt.start(name), mt.end(name)
        out = cols[:, a].astype(np.int64) - 48
        for j in range(a + 1, b):
            out *= 10
            out += cols[:, j]
            out -= 48
        return out

    y, mo, d = field("Y"), field("M"), field("D")
    if y is None or mo is None or d is None:  # pragma: no cover - the date groups are not optional in _TS_RE
        return None
    h = field("h")
    mi = field("m")
    s = field("s")
    oh = field("oh")
    om = field("om")
    h = zero if h is None else h
    mi = zero if mi is None else mi
    s = zero if s is None else s
    ok = (y >= 1) & (mo >= 1) & (mo <= 12) & (d >= 1) & (h <= 23) & (mi <= 59) & (s <= 59)
    if oh is not None:
        ok &= oh <= 23
    if om is not None:
        ok &= om <= 59
    if not ok.all():
        return None
    dim = np.asarray(_DAYS_IN_MONTH, dtype=np.int64)[mo - 1] + ((mo == 2) & _is_leap(y))
    if not (d <= dim).all():
        return None
    sec = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
    if oh is not None:
        off = oh * 3600 + (om * 60 if om is not None else 0)
        sec = np.where(cols[:, sign_pos] == 43, sec - off, sec + off)
    f = field("f")
    nsec = zero if f is None else f * 10 ** (9 - (mt.end("f") - mt.start("f")))
    return sec, nsec


# --------------------------------------------------------------------------------------------------
# batches of raw lines


def _line_batches(f: BinaryIO, chunk_rows: int, first_line: int) -> Iterator[tuple[bytes, IntArray, int]]:
    """Yield (bytes of up to ``chunk_rows`` complete lines, positions of their '\\n', bytes consumed)."""
    read_size = 1 << 16
    lines_seen = 0
    tail = b""
    queue: deque[list[Any]] = deque()  # [block, line ends in block, next line index, next byte]
    queued = 0
    eof = False
    overlong = False  # a line without a break beyond _MAX_LINE_BYTES: raised once the lines before it are out
    while True:
        while queued < chunk_rows and not eof and not overlong:
            data = f.read(read_size)
            if not data:
                eof = True
                if not tail:
                    break
                data = b"\n"  # a last line without a line break
            block = tail + data if tail else data
            ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
            if ends.size == 0:
                tail = block
                overlong = len(block) > _MAX_LINE_BYTES
                continue
            cut = int(ends[-1]) + 1
            tail = block[cut:]
            queue.append([block, ends, 0, 0])
            queued += ends.size
            lines_seen += ends.size
            # aim for about one read per batch
            per_line = max(16, cut // ends.size)
            read_size = int(min(max(chunk_rows * per_line, 1 << 16), 1 << 20))
        if queued == 0:
            if overlong:
                raise CsvValidationError(first_line + lines_seen, "line longer than 1 MiB (not a bar file?)")
            return
        need = min(chunk_rows, queued)
        parts: list[memoryview] = []
        ends_parts: list[IntArray] = []
        size = 0
        consumed = 0
        while need:
            item = queue[0]
            block, ends, li, b0 = item
            take = min(need, ends.size - li)
            last = int(ends[li + take - 1]) + 1
            parts.append(memoryview(block)[b0:last])
            ends_parts.append(ends[li : li + take] - b0 + size)
            size += last - b0
            consumed += last - b0
            need -= take
            queued -= take
            if li + take == ends.size:
                queue.popleft()
            else:
                item[2] = li + take
                item[3] = last
        buf = parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
        line_ends = np.concatenate(ends_parts) if len(ends_parts) > 1 else ends_parts[0]
        # drop every reference to consumed blocks before handing the batch out
        del parts, ends_parts, item, block, ends
        data = b""  # (the last read, which `block` may have been)
        yield buf, line_ends, consumed
        del buf, line_ends


# --------------------------------------------------------------------------------------------------
# batch parsing


@dataclass
class Batch:
    sec: IntArray  # int64 seconds since the epoch (UTC)
    nsec: IntArray  # int64 nanoseconds
    values: FloatArray  # (rows, 5) float64: open, high, low, close, volume
    lines: IntArray  # int64 line number of every row

    def __len__(self) -> int:
        rows: int = self.values.shape[0]
        return rows


def _values_ok(values: FloatArray) -> bool:
    """Prices finite and > 0, volumes finite and >= 0 (NaN fails every comparison)."""
    if values.shape[0] == 0:
        return True
    return bool(values[:, :4].min() > 0.0 and values.max() < np.inf and values[:, 4].min() >= 0.0)


def _later(sec: int, nsec: int, last: LastRow | None) -> bool:
    return last is None or sec > last[0] or (sec == last[0] and nsec > last[1])


def _order_error(line: int, prev_line: int) -> CsvValidationError:
    return CsvValidationError(
        line,
        f"timestamp is not after the previous row's (line {prev_line}); rows must be in strictly ascending time",
    )


def _parse_slow(
    buf: bytes,
    starts: IntArray,
    stop: IntArray,
    lines: IntArray,
    out: Batch,
    rows: slice,
    last: LastRow | None,
) -> LastRow | None:
    """Reference parser: one row at a time with the csv module and the strict grammars; checks the
    time order as it goes, so the first error in line order is the one reported."""
    sec, nsec, values = out.sec, out.nsec, out.values
    for i in range(rows.start, rows.stop):
        ln = int(lines[i])
        raw = buf[starts[i] : stop[i]]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CsvValidationError(ln, "not valid UTF-8 text") from None
        try:
            fields = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            raise CsvValidationError(ln, f"malformed CSV ({exc})") from None
        if len(fields) != 6:
            raise CsvValidationError(ln, f"expected 6 fields ({HEADER_TEXT}), got {len(fields)}")
        try:
            ts = parse_timestamp(fields[0])
        except ValueError as exc:
            raise CsvValidationError(ln, str(exc)) from None
        for j in range(5):
            text = fields[1 + j]
            try:
                v = _parse_number(text)
            except ValueError:
                kind = "a finite number" if _NONFINITE_RE.fullmatch(text.strip()) else "a number"
                raise CsvValidationError(ln, f"{COLUMNS[1 + j]} is not {kind}: {text.strip()!r}") from None
            if j < 4 and not (0.0 < v < math.inf):
                raise CsvValidationError(
                    ln, f"{COLUMNS[1 + j]} must be a finite number > 0, got {text.strip()!r}"
                )
            if j == 4 and not (0.0 <= v < math.inf):
                raise CsvValidationError(ln, f"volume must be a finite number >= 0, got {text.strip()!r}")
            values[i, j] = v
        if last is not None and not _later(ts[0], ts[1], last):
            raise _order_error(ln, last[2])
        sec[i], nsec[i] = ts
        last = (ts[0], ts[1], ln)
    return last


def parse_batch(
    buf: bytes, ends: IntArray, first_line: int, last: LastRow | None = None
) -> tuple[Batch, LastRow | None]:
    """Parse one batch of complete lines (``ends``: positions of their '\n' in ``buf``), checking
    that time ascends from ``last`` = (sec, nsec, line) of the previous row (None at the start).
    Returns the batch and the new ``last``."""
    # imported here: the module is usable (and cheap) without it
    import pandas as pd  # type: ignore[import-untyped]  # pandas-stubs is not among the dev dependencies

    arr = np.frombuffer(buf, np.uint8)
    n_lines = ends.size
    starts = np.empty(n_lines, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    # end of each line's content: without '\n' and a '\r' before it
    stop = ends - ((ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13))
    lines = first_line + np.arange(n_lines, dtype=np.int64)
    blank = stop == starts
    if blank.any():  # skipped; the line numbers of the other rows stay exact
        keep = ~blank
        starts, stop, ends, lines = starts[keep], stop[keep], ends[keep], lines[keep]
    n = lines.size
    out = Batch(np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, 5)), lines)
    for a in range(0, n, _PART_ROWS):
        rows = slice(a, min(a + _PART_ROWS, n))
        if _parse_fast(pd, buf, arr, starts[rows], stop[rows], ends[rows], out, rows):
            last = _check_ascending(out, rows, last)
        else:
            last = _parse_slow(buf, starts, stop, lines, out, rows, last)
    return out, last


def _parse_fast(
    pd: ModuleType,
    buf: bytes,
    arr: U8Array,
    starts: IntArray,
    stop: IntArray,
    ends: IntArray,
    out: Batch,
    rows: slice,
) -> bool:
    """The vectorised path for the lines of one part; False whenever anything is unusual (the
    reference parser then parses the part and reports any error)."""
    n = ends.size
    lo, hi = int(starts[0]), int(ends[-1]) + 1
    # 5 commas per line on average, and (checked below) no line with more than 6 fields and no
    # missing value: then every line has exactly 6 fields.  Quoted commas fail this: reference.
    if np.count_nonzero(arr[lo:hi] == 44) != 5 * n:
        return False
    sec = out.sec[rows]
    nsec = out.nsec[rows]
    width = buf.find(b",", lo, int(stop[0])) - lo
    cols = _gather_rows(buf, starts, width + 1) if width > 0 else None
    if cols is not None and (cols[:, width] == 44).all():
        parsed = _timestamps_fast(cols[:, :width])
        if parsed is None:
            return False
        sec[:], nsec[:] = parsed
    else:  # timestamps of several widths: one layout per width
        commas = lo + np.flatnonzero(arr[lo:hi] == 44)
        pos = np.searchsorted(commas, starts)
        if (pos >= commas.size).any():
            return False
        widths = commas[pos] - starts
        if (widths <= 0).any() or (commas[pos] >= stop).any():
            return False
        for w in np.unique(widths).tolist():
            sel = np.flatnonzero(widths == w)
            cols = _gather_rows(buf, starts[sel], w)
            parsed = _timestamps_fast(cols) if cols is not None else None
            if parsed is None:
                return False
            sec[sel], nsec[sel] = parsed
    del cols
    # the numbers: pandas' C parser
    try:
        frame = pd.read_csv(
            io.BytesIO(memoryview(buf)[lo:hi]),
            header=None,
            names=COLUMNS,
            usecols=[1, 2, 3, 4, 5],
            dtype=np.float64,
            engine="c",
            skip_blank_lines=False,
        )
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
        return False
    if frame.shape != (n, 5):
        return False
    values = out.values[rows]
    values[:] = frame.to_numpy(dtype=np.float64)
    del frame
    return _values_ok(values)


def read_header(f: BinaryIO) -> int:
    """Validate the header line; return the number of bytes it took."""
    raw = f.readline(_MAX_HEADER_BYTES)
    if not raw:
        raise CsvValidationError(1, f"empty file: expected the header {HEADER_TEXT!r}")
    if not raw.endswith(b"\n") and len(raw) >= _MAX_HEADER_BYTES:
        raise CsvValidationError(1, f"expected the header {HEADER_TEXT!r}, got a line of over 64 KiB")
    text = raw.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    names = [c.strip().strip('"').strip().lower() for c in text.rstrip("\r\n").split(",")]
    if tuple(names) != COLUMNS:
        shown = text.rstrip("\r\n")
        if len(shown) > 200:
            shown = shown[:200] + "..."
        raise CsvValidationError(1, f"expected the header {HEADER_TEXT!r}, got {shown!r}")
    return len(raw)


def iter_batches(f: BinaryIO, chunk_rows: int) -> Iterator[tuple[Batch, int]]:
    """Validate the header, then yield (parsed batch, bytes consumed so far); time must ascend
    strictly through the whole file."""
    consumed = read_header(f)
    next_line = 2
    last = None  # (sec, nsec, line) of the previous row
    for buf, ends, size in _line_batches(f, chunk_rows, next_line):
        batch, last = parse_batch(buf, ends, next_line, last)
        del buf
        next_line += ends.size
        consumed += size
        yield batch, consumed


def _check_ascending(batch: Batch, rows: slice, last: LastRow | None) -> LastRow:
    sec, nsec = batch.sec[rows], batch.nsec[rows]
    lines = batch.lines[rows]
    if last is not None and not _later(int(sec[0]), int(nsec[0]), last):
        raise _order_error(int(lines[0]), last[2])
    later = (sec[1:] > sec[:-1]) | ((sec[1:] == sec[:-1]) & (nsec[1:] > nsec[:-1]))
    if not later.all():
        i = int(np.argmin(later))
        raise _order_error(int(lines[i + 1]), int(lines[i]))
    return int(sec[-1]), int(nsec[-1]), int(lines[-1])
