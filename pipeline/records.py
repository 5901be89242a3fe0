"""The records job's per-row work as plain functions (no Beam import).

Each step is unit-tested on its own; ``pipeline.build_records`` only wires them into Beam.

    iter_lines      CSV bytes -> logical rows cut into cells, never raising on a bad byte
    read_csv_rows   CSV file -> (first line number, column dict) or a reject
    parse_csv_row   column dict -> (split, Row), or RowError
    split_of        patient id -> train / holdout (stable hash)
    num_shards_for  rows in a split -> shard count
    shard_of        record key -> shard index (stable hash)
    build_example   Row + image bytes -> serialized tf.train.Example
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import math
import re
from typing import IO, Iterator, NamedTuple, Sequence

import numpy as np

from core import imaging
from schemas import chexpert
from schemas import example as example_lib

SPLITS = ("train", "holdout", "valid")
# Bytes per stored 320^2 image, before the Example's ~0.5 KB of labels and metadata; used
# only to pick a shard count before any image is read. PNG's ratio was measured on the
# synthetic set (BUILD_NOTES.md); real radiographs compress similarly within ~20%.
ENCODED_RATIO = {"raw": 1.0, "png": 0.65, "jpeg": 0.35}
# Fewer rows than this per shard and a hash split could leave a shard empty.
MIN_ROWS_PER_SHARD = 64


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


# --- Reading CSV bytes ------------------------------------------------------------------------
#
# One reader for every CSV this system takes (build_records, score --csv, trainer.evaluate
# --csv). It cuts the bytes into rows itself, rather than through the csv module, so that a bad
# byte costs the row it is in and never raises: csv raises on a stray CR and cannot resume
# after an error, and a quote it takes for an opening one swallows the rest of the file.

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
        body = rest if cr_only else rest.rstrip(b"\r")
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


def _cut_cells(raw: bytes) -> CsvLine:
    """Cuts a row holding a quote into cells (RFC 4180, as Python's csv reads it: a quote that
    starts a cell opens it, a quote inside an unquoted cell is a plain character).

    Returns:
        A ``CsvLine`` (``line`` 0) whose ``problem`` is ``unclosed_quote`` where the row ends
        inside a quoted cell: the caller may join the next line and try again.
    """
    cells, starts, stray_cr, pos, n = [], [], -1, 0, len(raw)
    while True:
        starts.append(pos)
        if raw.startswith(b'"', pos):
            m = _QUOTED_CELL.match(raw, pos)
            if m is None:
                return CsvLine(0, raw, tuple(cells), tuple(starts), ("unclosed_quote", pos))
            cells.append(m.group(1).replace(b'""', b'"'))
            pos = m.end()
            if pos < n and raw[pos] != ord(","):
                return CsvLine(0, raw, tuple(cells), tuple(starts), ("after_quote", pos))
        else:
            cell = _UNQUOTED_CELL.match(raw, pos).group()
            if stray_cr < 0 and b"\r" in cell:
                stray_cr = pos + cell.index(b"\r")
            cells.append(cell)
            pos += len(cell)
        if pos >= n:
            return CsvLine(0, raw, tuple(cells), tuple(starts), ("stray_cr", stray_cr) if stray_cr >= 0 else None)
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
        alone = row = _cut_cells(raw)
        taken = []
        while row.problem and row.problem[0] == "unclosed_quote" and len(taken) + 1 < MAX_ROW_LINES:
            nxt = again.popleft() if again else next(lines, None)
            if nxt is None:
                break
            taken.append(nxt)
            raw += end + nxt[1]
            end = nxt[2]
            row = _cut_cells(raw)
        if taken and row.problem and row.problem[0] != "stray_cr":
            again.extendleft(reversed(taken))
            row = alone
        yield row._replace(line=number)


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


def read_csv_rows(f: IO[bytes], source: str) -> Iterator[CsvRow | Reject]:
    """Every data row of a CheXpert CSV, as a ``CsvRow`` or, where its bytes cannot be read
    into the header's cells, a ``Reject`` (``nul_byte``, ``bad_encoding``, ``bad_csv``,
    ``bad_row``; see ``decode_cells``). Yields exactly ``count_data_rows`` items.

    Raises:
        chexpert.CsvHeaderError: before any row, for a header that is not CheXpert's.
    """
    lines = iter_lines(f)  # one iterator, so line numbers continue after the header
    header = read_header(lines, source)
    path_index = header.index(chexpert.COL_PATH)
    for row in lines:
        try:
            cells = decode_cells(row, source, header)
        except chexpert.RowError as e:
            yield Reject(source, row.line, _path_cell(row, path_index), None, e.reason, e.detail)
            continue
        yield CsvRow(source, row.line, dict(zip(header, cells)))


def count_data_rows(f: IO[bytes]) -> int:
    """The number of rows ``read_csv_rows`` will yield (rows + rejects) for the same file."""
    return max(sum(1 for _ in iter_lines(f)) - 1, 0)


def split_of(source_split: str, patient_id: str, holdout_fraction: float) -> str:
    """The split of a record: ``valid`` for valid.csv; for train.csv, ``holdout`` for a
    stable, patient-level ``holdout_fraction`` of patients and ``train`` for the rest.

    A patient's images all share one split, on every run and runner, because the only
    input is the patient id.
    """
    if source_split == "valid":
        return "valid"
    if holdout_fraction > 0 and chexpert.stable_fraction("holdout:" + patient_id) < holdout_fraction:
        return "holdout"
    return "train"


def parse_csv_row(row: CsvRow, source_split: str, holdout_fraction: float) -> tuple[str, chexpert.Row]:
    """Validates a CSV row and assigns its split.

    Raises:
        chexpert.RowError: see ``chexpert.parse_row``.
    """
    parsed = chexpert.parse_row(row.cells)
    return split_of(source_split, parsed.patient_id, holdout_fraction), parsed


def patient_of(path: str) -> str | None:
    """The patient folder a (normalized) CheXpert path names, e.g. ``patient00001``."""
    parts = [p for p in path.split("/") if p.startswith("patient")]
    return parts[0] if parts else None


def guess_split(row: CsvRow, source_split: str, holdout_fraction: float) -> str | None:
    """The split of a row that failed validation, where its path still names a patient."""
    try:
        path = chexpert.normalize_path(row.cells.get(chexpert.COL_PATH) or "")
    except chexpert.RowError:
        return None
    patient = patient_of(path)
    return split_of(source_split, patient, holdout_fraction) if patient else None


def num_shards_for(rows: int, *, image_size: int, encoding: str, shard_size_mb: float, min_shards: int,
                   fixed: int = 0) -> int:
    """How many shards a split of ``rows`` records gets.

    ``fixed`` (``--num_shards``) wins. Otherwise enough shards to keep each near
    ``shard_size_mb``, at least ``min_shards`` so that several workers write in parallel,
    but never so many that a shard expects fewer than MIN_ROWS_PER_SHARD rows (a hash split
    could then leave one empty).
    """
    if rows <= 0:
        return 0
    if fixed:
        return fixed
    est = rows * (image_size * image_size * ENCODED_RATIO[encoding] + 600)
    n = max(math.ceil(est / (shard_size_mb * 2**20)), min_shards)
    return max(1, min(n, rows // MIN_ROWS_PER_SHARD))


def shard_of(key: str, num_shards: int) -> int:
    """A record's shard: a stable hash of its key (its Path), independent of input order."""
    return int.from_bytes(hashlib.sha256(("shard:" + key).encode()).digest()[:8], "big") % num_shards


def shard_name(split: str, index: int, num_shards: int, tag: str = "") -> str:
    """``train-00003-of-00008.tfrecord``; an incremental run's shards carry its tag:
    ``train-u20261125T182300-00000-of-00001.tfrecord``."""
    return f"{split}-{tag + '-' if tag else ''}{index:05d}-of-{num_shards:05d}.tfrecord"


def row_digest(cells: dict) -> str:
    """A 128-bit digest of a CSV row's cells in header order: a relabelled row is a changed row."""
    return hashlib.blake2b("\x1f".join(cells.values()).encode(), digest_size=16).hexdigest()


INDEX_COLUMNS = ("path", "stat", "row", "split", "shard", "codes", "view", "teacher")


def write_index(index: dict[str, dict]) -> bytes:
    """The committed records' index as TSV (5x faster to read back than JSON lines at 225k
    rows): one line per record, sorted by path; ``codes`` comma-separated; ``teacher`` the
    record's ``labels/teacher`` (14 comma-separated float32 values, exact) or empty."""
    lines = ["\t".join(INDEX_COLUMNS)]
    for path in sorted(index):
        e = index[path]
        teacher = e.get("teacher")
        lines.append("\t".join([path, e["stat"], e["row"], e["split"], e["shard"],
                                ",".join(map(str, e["codes"])), e["view"],
                                ",".join(repr(float(v)) for v in teacher) if teacher is not None else ""]))
    return ("\n".join(lines) + "\n").encode()


def read_index(data: bytes) -> dict[str, dict]:
    """Inverse of ``write_index``: path -> entry (codes a list of ints; teacher a list of
    floats or None)."""
    lines = data.decode().splitlines()
    if not lines or tuple(lines[0].split("\t")) != INDEX_COLUMNS:
        raise ValueError("not a records index (unexpected header)")
    out = {}
    for line in lines[1:]:
        path, stat, row, split, shard, codes, view, teacher = line.split("\t")
        out[path] = {"stat": stat, "row": row, "split": split, "shard": shard,
                     "codes": [int(c) for c in codes.split(",")], "view": view,
                     "teacher": [float(v) for v in teacher.split(",")] if teacher else None}
    return out


@dataclasses.dataclass(frozen=True)
class ExampleSettings:
    """What the writer needs to turn a row into a record."""

    image_size: int
    resize: str
    encoding: str
    table: np.ndarray  # float32 (14, 4, 4): chexpert.policy_matrix(...)
    seed: int


def build_example(
    row: chexpert.Row, data: bytes, settings: ExampleSettings, teacher: np.ndarray | None = None
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Decodes, resizes and encodes one radiograph and builds its record.

    Args:
        row: the validated row.
        data: the image file's bytes.
        settings: size, resize mode, encoding, policy table and seed.
        teacher: float32 (14,) the teacher's P(positive) for this row (``NO_TEACHER`` where
            none), or None.

    Returns:
        ``(serialized Example, targets, mask)``; targets and mask are float32 (14,).

    Raises:
        chexpert.RowError: the image could not be decoded (see ``imaging.decode``).
    """
    pixels = imaging.preprocess(data, row.path, settings.image_size, settings.resize)
    draws = chexpert.draws_for(row.path, settings.seed)
    targets, mask = chexpert.apply_policy(np.asarray(row.codes), draws, settings.table, teacher)
    serialized = example_lib.to_example(
        row,
        encoded=imaging.encode(pixels, settings.encoding),
        image_format=settings.encoding,
        height=pixels.shape[0],
        width=pixels.shape[1],
        draws=draws,
        targets=targets,
        mask=mask,
        teacher=teacher,
    )
    return serialized, targets, mask


CODE_KEYS = {int(chexpert.Code.POSITIVE): "1", int(chexpert.Code.NEGATIVE): "0",
             int(chexpert.Code.UNCERTAIN): "-1", int(chexpert.Code.BLANK): "blank"}


def empty_counts() -> dict:
    return {slug: {} for slug in chexpert.OBSERVATIONS}


def label_counts(codes, targets, mask) -> tuple[dict, dict]:
    """Per-observation counts of raw codes and of mapped-target buckets for many records.

    Args:
        codes: int (n, 14); targets, mask: float32 (n, 14).

    Returns:
        ``(raw, mapped)``: {slug: {key: count}}; raw keys are ``CODE_KEYS`` values, mapped keys
        ``masked``, ``0``, ``1``, ``2`` (class or hard target) or ``soft``.
    """
    n = chexpert.NUM_OBSERVATIONS
    codes = np.asarray(codes, np.int64).reshape(-1, n)
    targets = np.asarray(targets, np.float32).reshape(-1, n)
    mask = np.asarray(mask, np.float32).reshape(-1, n)
    hard = np.isin(targets, (0.0, 1.0, 2.0))
    buckets = np.where(mask == 0, "masked", np.where(hard, np.where(hard, targets, 0).astype(int).astype(str), "soft"))
    raw, mapped = {}, {}
    for i, slug in enumerate(chexpert.OBSERVATIONS):
        vals, counts = np.unique(codes[:, i], return_counts=True)
        raw[slug] = {CODE_KEYS[int(v)]: int(c) for v, c in zip(vals, counts)}
        vals, counts = np.unique(buckets[:, i], return_counts=True)
        mapped[slug] = {str(v): int(c) for v, c in zip(vals, counts)}
    return raw, mapped


def merge_counts(into: dict, other: dict) -> None:
    for slug, counts in other.items():
        for k, v in counts.items():
            into.setdefault(slug, {})[k] = into.setdefault(slug, {}).get(k, 0) + v
