"""The one reader of CheXpert-format CSVs (``pipeline.build_records``, ``pipeline.score
--csv``, ``trainer.evaluate --csv``): bytes in, rows or dead letters out; no Beam, no
TensorFlow.

    iter_lines      CSV bytes -> logical rows cut into cells, never raising on a bad byte
    decode_cells    one row's cells as text, or RowError naming the byte and the column
    read_header     the header, checked against CheXpert's columns
    read_csv_rows   CSV file -> CsvRow (first line number, column dict) or Reject
    count_data_rows the number of items read_csv_rows yields

It cuts the bytes into rows itself, rather than through the csv module, so that a bad byte
costs the row it is in and never raises: csv raises on a stray CR and cannot resume after an
error, and a quote it takes for an opening one swallows the rest of the file.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import re
from typing import IO, Container, Iterator, NamedTuple, Sequence

from schemas import chexpert


@dataclasses.dataclass(frozen=True)
class Reject:
    """A row that did not become a record: the dead-letter output's element."""

    source: str  # the CSV file name, e.g. "train.csv"
    row: int  # 1-based number of the row's first line in that file (the header is line 1)
    path: str  # the CSV's Path cell, as written
    split: str | None  # the split it would have gone to, when that was known
    reason: str  # RowError.reason
    detail: str  # RowError.detail

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CsvRow:
    """One logical row of a CSV (one line, or more where a quoted cell holds line breaks),
    before validation. ``line`` is its first line: the row's identity in dead letters and for
    incremental builds."""

    source: str
    line: int
    cells: dict


# Reasons a row is rejected before its cells are read (chexpert.RowError names the others).
BAD_ENCODING = "bad_encoding"  # not UTF-8
BAD_ROW = "bad_row"  # cut into cells cleanly, but not as many as the header has
BAD_CSV = "bad_csv"  # its bytes cannot be cut into cells: a stray CR, or a quote that does not parse
NUL_BYTE = "nul_byte"  # a NUL byte: a zeroed block of a damaged file, or binary data pasted in

# A quoted cell may hold line breaks (RFC 4180), but CheXpert's cells are paths, words and
# numbers: a quote still open this many lines on is a stray one. Also bounds the look-ahead.
MAX_ROW_LINES = 16
# The line ending is decided once per file, by a vote over its first bytes (see _physical_lines).
_SNIFF_BYTES = 1 << 16
_CHUNK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark from spreadsheet exports
_CR_ONLY_BREAK = re.compile(rb"\r\n|\r|\n")
# Possessive (*+): a quote that never closes fails in one pass instead of backtracking.
_QUOTED_CELL = re.compile(rb'"((?:[^"]|"")*+)"')
_UNQUOTED_CELL = re.compile(rb"[^,]*")
# What stops a row from being cut into cells; formatted with the byte offset and the column.
_PROBLEMS = {
    "stray_cr": "a carriage return (CR) at byte {at}, in {field}, that is not part of a line break",
    "unclosed_quote": ("a quote at byte {at}, in {field}, opens a cell that is not closed into a well-formed row "
                       f"within {MAX_ROW_LINES} lines; the lines after it are read as rows of their own"),
    "after_quote": "text at byte {at}, in {field}, after the closing quote of a cell",
}


class CsvLine(NamedTuple):
    """One logical row of a CSV as bytes, cut into cells but not decoded: what ``iter_lines``
    yields.

    Attributes:
        line: the number of its first physical line (the header is line 1).
        raw: its bytes without the final line break; line breaks inside quoted cells are kept.
        cells: each cell's bytes (quotes removed, doubled quotes undone); None where no cell is
            quoted, and then they are ``raw.split(b",")`` (left to the caller: the common case,
            kept fast).
        starts: each cell's byte offset in ``raw`` where ``cells`` is given.
        problem: ``(kind, byte offset in raw)`` of what stops the row from being cut into
            cells (a key of ``_PROBLEMS``), or None.
    """

    line: int
    raw: bytes
    cells: tuple[bytes, ...] | None = None
    starts: tuple[int, ...] | None = None
    problem: tuple[str, int] | None = None

    def field_at(self, offset: int) -> int:
        """The 0-based index of the cell holding byte ``offset`` of ``raw``."""
        if self.starts is None:
            return self.raw.count(b",", 0, offset)
        return bisect.bisect_right(self.starts, offset) - 1


def _cut_lines(data: bytes, cr_only: bool, final: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Cuts ``data`` into ``(line, line break)`` pairs and the unfinished rest."""
    out = []
    if cr_only:
        # A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
        end = len(data) - 1 if not final and data.endswith(b"\r") else len(data)
        pos = 0
        for m in _CR_ONLY_BREAK.finditer(data, 0, end):
            out.append((data[pos:m.start()], m.group()))
            pos = m.end()
        rest = data[pos:]
    else:
        *lines, rest = data.split(b"\n")
        for line in lines:
            body = line.rstrip(b"\r")  # CR CR LF: a CRLF file passed through a second LF->CRLF
            out.append((body, line[len(body):] + b"\n"))
    if final and rest:
        # A CR-only file's rest holds no CR (every one broke a line); an LF file's may end in
        # the CR of a CRLF whose LF is missing.
        body = rest.rstrip(b"\r")
        out.append((body, rest[len(body):]))
        rest = b""
    return out, rest


def _physical_lines(f: IO[bytes], chunk_size: int) -> Iterator[tuple[int, bytes, bytes]]:
    """``(number, line, line break)`` for every physical line of ``f``, read in chunks.

    LF and CRLF files break at LF; a CR elsewhere is a byte of the line. A file whose first
    ``_SNIFF_BYTES`` hold more lone CRs than LFs is CR-only (classic Mac OS, old Excel), and
    breaks at CR, LF and CRLF alike. A vote, not the header's own line break, so that one odd
    byte near the top cannot turn a whole file into a single line.
    """
    pending, size, eof = [], 0, False
    while size <= _SNIFF_BYTES and not eof:
        chunk = f.read(chunk_size)
        eof = not chunk
        pending.append(chunk)
        size += len(chunk)
    head = b"".join(pending)
    sample = head[:_SNIFF_BYTES]
    lone_crs = sample.count(b"\r") - head[:_SNIFF_BYTES + 1].count(b"\r\n")
    cr_only = lone_crs > sample.count(b"\n")
    breaks = (b"\r", b"\n") if cr_only else (b"\n",)
    pending, number = [head], 1
    while True:
        # Chunks without a line break wait in ``pending``: a very long line is joined once,
        # not re-scanned with every chunk.
        if eof or any(b in pending[-1] for b in breaks):
            lines, rest = _cut_lines(b"".join(pending), cr_only, eof)
            for line, end in lines:
                yield number, line, end
                number += 1
            pending = [rest]
        if eof:
            return
        chunk = f.read(chunk_size)
        eof = not chunk
        pending.append(chunk)


def _cut_cells(number: int, raw: bytes) -> CsvLine:
    """Cuts a row holding a quote into cells (RFC 4180, as Python's csv reads it: a quote that
    starts a cell opens it, a quote inside an unquoted cell is a plain character).

    Returns:
        A ``CsvLine`` numbered ``number`` whose ``problem`` is ``unclosed_quote`` where the row ends
        inside a quoted cell: the caller may join the next line and try again.
    """
    cells, starts, stray_cr, pos, n = [], [], -1, 0, len(raw)
    while True:
        starts.append(pos)
        if raw.startswith(b'"', pos):
            m = _QUOTED_CELL.match(raw, pos)
            if m is None:
                return CsvLine(number, raw, tuple(cells), tuple(starts), ("unclosed_quote", pos))
            cells.append(m.group(1).replace(b'""', b'"'))
            pos = m.end()
            if pos < n and raw[pos] != ord(","):
                return CsvLine(number, raw, tuple(cells), tuple(starts), ("after_quote", pos))
        else:
            cell = _UNQUOTED_CELL.match(raw, pos).group()
            if stray_cr < 0 and b"\r" in cell:
                stray_cr = pos + cell.index(b"\r")
            cells.append(cell)
            pos += len(cell)
        if pos >= n:
            return CsvLine(number, raw, tuple(cells), tuple(starts), ("stray_cr", stray_cr) if stray_cr >= 0 else None)
        pos += 1  # the comma


def iter_lines(f: IO[bytes], chunk_size: int = _CHUNK_BYTES) -> Iterator[CsvLine]:
    """Yields every non-blank logical row of a CSV, the header first, cut into cells.

    Never raises on the file's bytes: a row that cannot be cut into cells carries its
    ``problem`` and costs itself only. A quoted cell may span lines: the row is numbered by its
    first line and counts once. Where a quote leaves a cell open and no later line (up to
    ``MAX_ROW_LINES``) closes it into a well-formed row, the quote is taken for a stray byte: its
    line alone is the bad row, and the lines after it are read as rows of their own.

    Args:
        f: the CSV, opened in binary mode.
        chunk_size: bytes per read; the result does not depend on it.
    """
    lines = _physical_lines(f, chunk_size)
    again: collections.deque = collections.deque()  # lines to read again after a stray quote
    while (first := again.popleft() if again else next(lines, None)) is not None:
        number, raw, end = first
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        if not raw or raw.isspace():  # a blank line is no row; isspace() copies nothing
            continue
        if b'"' not in raw:
            cr = raw.find(b"\r")
            yield CsvLine(number, raw, problem=("stray_cr", cr) if cr >= 0 else None)
            continue
        alone = row = _cut_cells(number, raw)
        taken = []
        while row.problem and row.problem[0] == "unclosed_quote" and len(taken) + 1 < MAX_ROW_LINES:
            nxt = again.popleft() if again else next(lines, None)
            if nxt is None:
                break
            taken.append(nxt)
            raw += end + nxt[1]
            end = nxt[2]
            row = _cut_cells(number, raw)
        if taken and row.problem and row.problem[0] != "stray_cr":
            again.extendleft(reversed(taken))
            row = alone
        yield row


def _field_name(row: CsvLine, offset: int, header: Sequence[str] | None) -> str:
    i = row.field_at(offset)
    return f"column {header[i]!r}" if header and i < len(header) else f"field {i + 1}"


def decode_cells(row: CsvLine, source: str, header: Sequence[str] | None = None) -> list[str]:
    """A row's cells as text.

    Args:
        row: from ``iter_lines``.
        source: the file name, for messages.
        header: the header's cells; None while reading the header itself.

    Raises:
        chexpert.RowError: ``nul_byte``, ``bad_encoding``, ``bad_csv`` (see ``_PROBLEMS``) or,
            given a header, ``bad_row`` for another number of cells; the detail names the line,
            the byte offset in the row and the column.
    """
    # Messages are formatted only for a bad row: this runs for each of 224k rows.
    nul = row.raw.find(b"\0")
    if nul >= 0:
        raise chexpert.RowError(NUL_BYTE, f"{source} line {row.line}: NUL byte (0x00) at byte {nul}, in "
                                          f"{_field_name(row, nul, header)}")
    try:
        text = row.raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise chexpert.RowError(BAD_ENCODING, f"{source} line {row.line} is not valid UTF-8: byte "
                                              f"0x{row.raw[e.start]:02x} at byte {e.start}, in "
                                              f"{_field_name(row, e.start, header)}") from None
    if row.problem:
        kind, at = row.problem
        field = _field_name(row, at, header)
        raise chexpert.RowError(BAD_CSV, f"{source} line {row.line}: " + _PROBLEMS[kind].format(at=at, field=field))
    # Valid UTF-8 cut at ASCII commas and quotes gives valid UTF-8 cells.
    cells = text.split(",") if row.cells is None else [c.decode("utf-8") for c in row.cells]
    if header is not None and len(cells) != len(header):
        raise chexpert.RowError(BAD_ROW, f"{source} line {row.line} has {len(cells)} fields; the header has "
                                         f"{len(header)}")
    return cells


def read_header(lines: Iterator[CsvLine], source: str) -> list[str]:
    """Reads and checks the header, the first row of ``iter_lines``.

    Raises:
        chexpert.CsvHeaderError: a header with bad bytes, or that is not CheXpert's.
    """
    for row in lines:
        try:
            header = [c.strip() for c in decode_cells(row, source)]
        except chexpert.RowError as e:
            raise chexpert.CsvHeaderError(f"{source}: bad header: {e.detail}") from None
        chexpert.check_header(header, source)
        return header
    chexpert.check_header(None, source)
    return []


def _path_cell(row: CsvLine, index: int) -> str:
    """A rejected row's Path cell, as far as it can be told, for the dead letter."""
    cells = row.raw.split(b",") if row.cells is None else row.cells
    cell = cells[index] if index < len(cells) else b""
    return cell[:200].decode("utf-8", "replace")


def read_csv_rows(f: IO[bytes], source: str, skip: Container[int] = (),
                  part: tuple[int, int] = (0, 1)) -> Iterator[CsvRow | Reject]:
    """Every data row of a CheXpert CSV, as a ``CsvRow`` or, where its bytes cannot be read
    into the header's cells, a ``Reject`` (``nul_byte``, ``bad_encoding``, ``bad_csv``,
    ``bad_row``; see ``decode_cells``). Yields exactly ``count_data_rows`` items, less those
    of ``skip``.

    Args:
        f: the CSV, opened in binary mode.
        source: its file name, for rows and messages.
        skip: first line numbers of rows to pass over without decoding them (an incremental
            run's settled rows: at 224k rows, decoding is most of the read).
        part: ``(k, parts)``: only the data rows whose index (0, 1, ... in file order) is
            ``k`` modulo ``parts``, the others passed over undecoded like ``skip``'s; the
            ``parts`` parts of a file together yield what the whole file does, so that as
            many workers can read one CSV (cutting lines costs ~1.3 us a row, decoding and
            parsing ~20 us).

    Raises:
        chexpert.CsvHeaderError: before any row, for a header that is not CheXpert's.
    """
    k, parts = part
    if not 0 <= k < parts:
        raise ValueError(f"part {k} of {parts}: expected 0 <= k < parts")
    lines = iter_lines(f)  # one iterator, so line numbers continue after the header
    header = read_header(lines, source)
    path_index = header.index(chexpert.COL_PATH)
    for index, row in enumerate(lines):
        if index % parts != k or row.line in skip:
            continue
        try:
            cells = decode_cells(row, source, header)
        except chexpert.RowError as e:
            yield Reject(source, row.line, _path_cell(row, path_index), None, e.reason, e.detail)
            continue
        yield CsvRow(source, row.line, dict(zip(header, cells)))


def count_data_rows(f: IO[bytes]) -> int:
    """The number of rows ``read_csv_rows`` will yield (rows + rejects) for the same file."""
    return max(sum(1 for _ in iter_lines(f)) - 1, 0)
