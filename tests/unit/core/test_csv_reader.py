"""core/csv_reader.py, the CSV reader, on bad bytes: every bad byte costs one row, never the
job; a logical CSV row (RFC 4180, quoted line breaks included) is one row, numbered by its
first line; rows yielded always equal ``count_data_rows``."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import example, given, settings, strategies as st

from core import csv_reader
from schemas import chexpert

HEADER = ",".join(chexpert.CSV_COLUMNS)


def _line(n: int, **over: str) -> str:
    """A valid data line for patient ``n``; ``over`` replaces cells by column name (spaces and
    slashes in names written as ``_``: ``Frontal_Lateral``)."""
    cells = {c: "" for c in chexpert.CSV_COLUMNS}
    cells.update({"Path": f"d/train/patient{n:05d}/study1/view1_frontal.jpg", "Sex": "Male", "Age": "50",
                  "Frontal/Lateral": "Frontal", "AP/PA": "PA", "Edema": "1.0"})
    names = {c.replace(" ", "_").replace("/", "_"): c for c in chexpert.CSV_COLUMNS}
    cells.update({names[k]: v for k, v in over.items()})
    return ",".join(cells[c] for c in chexpert.CSV_COLUMNS)


def _csv(*lines: str, eol: str = "\n") -> bytes:
    return (eol.join([HEADER, *lines]) + eol).encode()


def _read(data: bytes) -> list:
    """All items of ``read_csv_rows``; checks they reconcile with ``count_data_rows``."""
    items = list(csv_reader.read_csv_rows(io.BytesIO(data), "train.csv"))
    assert csv_reader.count_data_rows(io.BytesIO(data)) == len(items)
    return items


def _outcomes(items) -> list[tuple[int, str]]:
    return [(i.line, "ok") if isinstance(i, csv_reader.CsvRow) else (i.row, i.reason) for i in items]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_lf_crlf_and_cr_only_files_give_the_same_rows(eol, bom):
    data = bom + _csv(_line(1), "", _line(2), _line(3), eol=eol)
    items = _read(data)
    assert _outcomes(items) == [(2, "ok"), (4, "ok"), (5, "ok")]  # the blank line 3 is no row
    assert [i.cells for i in items] == [dict(zip(chexpert.CSV_COLUMNS, _line(n).split(","))) for n in (1, 2, 3)]


@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_a_stray_cr_inside_an_unquoted_cell_costs_that_row_only(eol):
    items = _read(_csv(_line(1), _line(2, Sex="Ma\rle"), _line(3), eol=eol))
    assert _outcomes(items) == [(2, "ok"), (3, "bad_csv"), (4, "ok")]
    offset = _line(2).index("Male") + 2
    assert "carriage return" in items[1].detail and "'Sex'" in items[1].detail and f"byte {offset}" in items[1].detail


def test_extra_crs_before_a_line_break_are_part_of_the_line_break():
    # CR CR LF: what a CRLF file looks like after a second LF -> CRLF conversion.
    items = _read(_csv(_line(1), _line(2), eol="\r\r\n"))
    assert _outcomes(items) == [(2, "ok"), (3, "ok")]


@pytest.mark.parametrize("column,cell", [("Path", "d/train/patient00002/study1/view1\x00frontal.jpg"),
                                         ("Age", "5\x000"), ("Edema", "\x00"), ("AP_PA", '"P\x00A"')])
def test_a_nul_byte_costs_its_row_only_and_the_reason_names_it(column, cell):
    items = _read(_csv(_line(1), _line(2, **{column: cell}), _line(3)))
    assert _outcomes(items) == [(2, "ok"), (3, "nul_byte"), (4, "ok")]
    name = chexpert.CSV_COLUMNS[[c.replace(" ", "_").replace("/", "_") for c in chexpert.CSV_COLUMNS].index(column)]
    assert "NUL" in items[1].detail and "byte" in items[1].detail and repr(name) in items[1].detail


def test_a_quoted_cell_holding_line_breaks_is_one_row_numbered_by_its_first_line():
    items = _read(_csv(_line(1), _line(2, Frontal_Lateral='"Front\nal"', AP_PA='"P""A\r\n"'), _line(3)))
    assert _outcomes(items) == [(2, "ok"), (3, "ok"), (6, "ok")]  # row 3 spans lines 3 to 5
    assert items[1].cells["Frontal/Lateral"] == "Front\nal" and items[1].cells["AP/PA"] == 'P"A\r\n'
    assert items[1].cells["Path"] == "d/train/patient00002/study1/view1_frontal.jpg"
    # The same row in a CR-only file.
    items = _read(_csv(_line(1), _line(2, Frontal_Lateral='"Front\ral"'), _line(3), eol="\r"))
    assert _outcomes(items) == [(2, "ok"), (3, "ok"), (5, "ok")]


def test_a_multi_line_row_with_the_wrong_number_of_cells_is_one_bad_row():
    items = _read(_csv(_line(1), _line(2, Frontal_Lateral='"Front\nal"') + ",extra", _line(3)))
    assert _outcomes(items) == [(2, "ok"), (3, "bad_row"), (5, "ok")]


def test_an_unterminated_quote_costs_its_own_line_and_the_lines_after_it_are_still_rows():
    opened = _line(2, Sex='"Male')
    items = _read(_csv(_line(1), opened, _line(3), _line(4)))
    assert _outcomes(items) == [(2, "ok"), (3, "bad_csv"), (4, "ok"), (5, "ok")]
    assert "quote" in items[1].detail and f"byte {_line(2).index('Male')}" in items[1].detail
    # At the end of the file.
    assert _outcomes(_read(_csv(_line(1), opened))) == [(2, "ok"), (3, "bad_csv")]
    # Closed by a stray quote two lines later: the row that makes is not well-formed, so the
    # first quote costs its line and the second line is read as a row of its own.
    items = _read(_csv(_line(1), opened, _line(3), _line(4, Sex='Ma"le'), _line(5)))
    assert _outcomes(items) == [(2, "ok"), (3, "bad_csv"), (4, "ok"), (5, "ok"), (6, "ok")]
    assert items[3].cells["Sex"] == 'Ma"le'  # a quote inside an unquoted cell is a character


def test_text_after_a_closing_quote_is_a_bad_row():
    items = _read(_csv(_line(1), _line(2, Sex='"Ma"le'), _line(3)))
    assert _outcomes(items) == [(2, "ok"), (3, "bad_csv"), (4, "ok")]
    assert "after the closing quote" in items[1].detail


def test_wrong_cell_counts_and_bad_utf8_cost_one_row_each_naming_the_problem():
    data = _csv(_line(1), _line(2) + ",extra", "only,three,cells") + _line(4).encode()[:-3] + b"\xff\n"
    items = _read(data + _csv(_line(5))[len(HEADER) + 1:])
    assert _outcomes(items) == [(2, "ok"), (3, "bad_row"), (4, "bad_row"), (5, "bad_encoding"), (6, "ok")]
    assert "20 fields" in items[1].detail and "3 fields" in items[2].detail
    assert "0xff" in items[3].detail and f"byte {len(_line(4)) - 3}" in items[3].detail


def test_a_header_with_bad_bytes_fails_before_any_row():
    with pytest.raises(chexpert.CsvHeaderError, match="NUL"):
        _read(HEADER.replace("Sex", "S\x00ex").encode() + b"\n" + _line(1).encode())
    with pytest.raises(chexpert.CsvHeaderError, match="quote"):
        _read(HEADER.replace("Sex", '"Sex').encode() + b"\n" + _line(1).encode())


def test_a_quoted_header_is_read_like_a_plain_one():
    header = ",".join(f'"{c}"' for c in chexpert.CSV_COLUMNS)
    items = _read((header + "\r\n" + _line(1) + "\r\n").encode())
    assert _outcomes(items) == [(2, "ok")]


# --- Fuzzing: a row of arbitrary bytes costs only the lines it occupies --------------------

# More good lines than the junk can hold line breaks, so that it never outvotes the file's
# line ending (see csv_reader.iter_lines).
_GOOD = [_line(n) for n in range(1, 25)]


def _physical_lines(data: bytes, cr_only: bool) -> list[bytes]:
    """An independent oracle for line numbers: the file's physical lines."""
    return re.split(rb"\r\n|\r|\n" if cr_only else rb"\r*\n", data)


@settings(max_examples=400, deadline=None)
@given(junk=st.binary(max_size=20) | st.lists(st.sampled_from([b'"', b",", b"\r", b"\n", b"\x00", b"\xff", b"a",
                                                                  b"\xef\xbb\xbf", b"\r\n", b'""']),
                                                 max_size=12).map(b"".join),
       at=st.integers(0, len(_GOOD)), eol=st.sampled_from(["\n", "\r\n", "\r"]), chunk=st.integers(1, 40))
@example(junk=b'a,"', at=1, eol="\n", chunk=7)
@example(junk=b"\r", at=0, eol="\r", chunk=1)
def test_a_row_of_arbitrary_bytes_costs_only_its_own_lines(junk, at, eol, chunk):
    data = _csv(*_GOOD[:at], "\x00JUNK", *_GOOD[at:], eol=eol).replace(b"\x00JUNK", junk)
    items = _read(data)  # never raises, and reconciles with count_data_rows
    assert len(list(csv_reader.iter_lines(io.BytesIO(data), chunk_size=chunk))) == len(items) + 1
    assert (list(csv_reader.iter_lines(io.BytesIO(data), chunk_size=chunk))
            == list(csv_reader.iter_lines(io.BytesIO(data))))
    # Every good row comes through intact, numbered by the physical line it is on.
    want = [dict(zip(chexpert.CSV_COLUMNS, g.split(","))) for g in _GOOD]
    got = [(i.line, i.cells) for i in items if isinstance(i, csv_reader.CsvRow) and i.cells in want]
    assert [cells for _, cells in got] == want
    physical = _physical_lines(data, eol == "\r")
    for line, cells in got:
        assert physical[line - 1].decode() == ",".join(cells.values())


# --- Files longer than the line-ending vote's window: chunk boundaries ------------------------

# The reader reads the first _SNIFF_BYTES (64 KiB) whole, then goes on in chunks: only a longer
# file has chunk boundaries between the bytes of its rows. Long valid rows keep these files
# to a hundred lines, so that reading one takes a fraction of a millisecond.
_LONG_PATH = "d/train/patient{:05d}/study1/" + "x" * 900 + ".jpg"


def _long_file(tail: str, eol: str) -> tuple[bytes, int]:
    """Header and padding rows past the sniff window, then ``tail``; and where ``tail`` starts."""
    head = HEADER + eol
    n = 1
    while len(head) <= csv_reader._SNIFF_BYTES + 1000:
        head += _line(n, Path=_LONG_PATH.format(n)) + eol
        n += 1
    return (head + tail).encode(), len(head)


class _Pieces:
    """A binary file that returns its bytes cut at ``cuts`` and never more than asked for, as a
    pipe or a network stream may: where the reads split the bytes must not change the rows."""

    def __init__(self, data: bytes, cuts):
        self.data, self.cuts, self.pos = data, sorted(cuts), 0

    def read(self, n: int) -> bytes:
        end = min([c for c in self.cuts if c > self.pos] + [len(self.data), self.pos + n])
        out, self.pos = self.data[self.pos:end], end
        return out


def _tail(eol: str) -> str:
    """Rows past the sniff window with every line break a file may mix in: the file's own,
    CRLF, CR CR LF, LF, blank lines, a quoted cell holding a line break, a stray CR, and a last
    line without a line break."""
    return (_line(901) + eol + eol
            + _line(902) + "\r\n" + "\r\n"
            + _line(903) + "\r\r\n" + eol
            + _line(904, Frontal_Lateral='"Front' + eol + 'al"') + eol
            + _line(905) + "\n" + "\n"
            + _line(906, Sex="Ma\rle") + eol
            + _line(907))


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_rows_do_not_depend_on_where_the_reads_split_the_bytes(eol):
    data, start = _long_file(_tail(eol), eol)
    want = list(csv_reader.iter_lines(io.BytesIO(data)))
    n = data[:start].count(eol.encode()) + 1  # the tail's first line
    outcomes = [o for o in _outcomes(_read(data)) if o[0] >= n]
    if eol == "\r":  # CR-only: CR CR LF is a line and a blank one; Ma\rle is two lines, each of too few cells
        assert outcomes == [(n, "ok"), (n + 2, "ok"), (n + 4, "ok"), (n + 7, "ok"), (n + 9, "ok"),
                            (n + 11, "bad_row"), (n + 12, "bad_row"), (n + 13, "ok")]
    else:  # LF and CRLF: CR CR LF is one line break; Ma\rle is a stray CR
        assert outcomes == [(n, "ok"), (n + 2, "ok"), (n + 4, "ok"), (n + 6, "ok"), (n + 8, "ok"),
                            (n + 10, "bad_csv"), (n + 11, "ok")]
    assert want[-1].raw == _line(907).encode()
    # Every cut in the tail at once (pieces of 1 byte), and cuts 2, 3 and 5 bytes apart at
    # every phase: a CR at a cut may be the first half of a CRLF, a cut may fall on a line break.
    for step in (1, 2, 3, 5):
        for phase in range(step):
            cuts = range(start - 40 + phase, len(data), step)
            assert list(csv_reader.iter_lines(_Pieces(data, cuts))) == want, (step, phase)


@pytest.mark.parametrize("eol", ["\n", "\r"], ids=["lf", "cr"])
def test_a_file_missing_its_last_line_break_keeps_its_last_row_exactly(eol):
    for data in (_csv(_line(1), eol=eol)[:-1], _long_file(_line(2), eol)[0]):
        rows = list(csv_reader.iter_lines(io.BytesIO(data)))
        assert rows[-1].raw == data.split(eol.encode())[-1] and rows[-1].problem is None
    # A CRLF file cut between the CR and the LF of its last line break.
    rows = _read(_csv(_line(1), _line(2), eol="\r\n")[:-1])
    assert _outcomes(rows) == [(2, "ok"), (3, "ok")] and rows[-1].cells == _read(_csv(_line(2)))[0].cells


@pytest.mark.parametrize("eol", ["\n", "\r"], ids=["lf", "cr"])
@pytest.mark.parametrize("chunk", [7, 4096])
def test_the_reader_streams_a_row_once_its_line_break_is_read(eol, chunk):
    """A 224k-row CSV is never read whole before the first row: past the sniff window, a row
    comes out once the chunk holding its line break is read (or, where that chunk ends in a
    CR that may be half a CRLF, the chunk holding the next line break)."""
    # CR-only with a run of LF lines: LF breaks lines there too, so those rows stream as well.
    lf_run = "".join(_line(n) + "\n" for n in range(950, 990)) if eol == "\r" else ""
    tail = "".join(_line(n) + eol for n in range(901, 950)) + lf_run + "".join(_line(n) + eol for n in range(990, 1030))
    data, _ = _long_file(tail, eol)
    ends = [m.end() for m in re.finditer(rb"\r\n|\r|\n" if eol == "\r" else rb"\n", data)]
    head = (csv_reader._SNIFF_BYTES // chunk + 1) * chunk  # read before the line ending is known
    f = io.BytesIO(data)
    rows = []
    for row in csv_reader.iter_lines(f, chunk_size=chunk):
        assert f.tell() <= max(head, ends[min(row.line, len(ends) - 1)] + chunk), row.line
        rows.append(row)
    assert rows == list(csv_reader.iter_lines(io.BytesIO(data)))
    assert len(rows) == len(ends)  # no blank lines here: one row per line


def _vote_file(cr_at: int, extra_lone_crs: int) -> bytes:
    """Lines of one lone CR and one LF each (``x\\ry\\n``, a tie), ``extra_lone_crs`` more lone
    CRs first, and a CRLF whose CR is at byte ``cr_at``, near the end of the sniff window."""
    block = b"x" * 60 + b"\ry" + b"y" * 59 + b"\n"
    data = b"a\r" * extra_lone_crs
    data += block * ((cr_at - len(data)) // len(block))
    data += b"z" * (cr_at - len(data)) + b"\r\n"
    return data + block * 40


@pytest.mark.parametrize("cr_at,extra,cr_only", [
    (csv_reader._SNIFF_BYTES - 2, 0, False),  # the CRLF inside the window: a line break, not a lone CR
    (csv_reader._SNIFF_BYTES - 1, 0, False),  # its LF just past the window: still a line break
    (csv_reader._SNIFF_BYTES, 1, True),  # its CR past the window: not counted, the extra lone CR wins
])
@pytest.mark.parametrize("chunk", [4096, csv_reader._CHUNK_BYTES])
def test_the_line_ending_vote_counts_exactly_the_first_64_kib(cr_at, extra, cr_only, chunk):
    data = _vote_file(cr_at, extra)
    window = data[:csv_reader._SNIFF_BYTES]
    lone = sum(1 for i, b in enumerate(window) if b == 13 and data[i + 1] != 10)  # an independent count
    assert (lone > window.count(b"\n")) == cr_only
    lines = [x for x in re.split(rb"\r\n|\r|\n" if cr_only else rb"\r*\n", data) if x]
    got = list(csv_reader.iter_lines(io.BytesIO(data), chunk_size=chunk))
    assert [r.raw for r in got] == lines


# --- What each row carries: its bytes, its cells, its number, its file --------------------

@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_a_line_is_its_bytes_less_its_line_break_whatever_it_ends_in(eol):
    # Every byte but a line break and a quote, as a line's last: spaces, tabs and letters are
    # the last cell's own (an odd cell is the validator's to judge, with its bytes intact).
    ends = [bytes([b]) for b in range(256) if b not in b'\r\n"']
    lines = [b"a,b" + e for e in ends]
    data = eol.encode().join(lines)  # the last line without a line break
    assert [r.raw for r in csv_reader.iter_lines(io.BytesIO(data))] == [x for x in lines if not x.isspace()]
    for last in (b"a,b ", b"a,b\t", b"a,X"):  # the same for the last line, which has no line break
        assert [r.raw for r in csv_reader.iter_lines(io.BytesIO(data + eol.encode() + last))][-1] == last


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "with-a-quoted-cell"])
def test_a_stray_cr_is_reported_at_the_first_one_by_byte_and_column(quoted):
    ap = '"PA"' if quoted else "PA"
    line = _line(2, Sex="Ma\rl\re", Age="5\r0", AP_PA=ap)
    items = _read(_csv(_line(1), line, _line(3)))
    assert _outcomes(items) == [(2, "ok"), (3, "bad_csv"), (4, "ok")]
    assert f"byte {line.index(chr(13))}, in column 'Sex'" in items[1].detail
    # At byte 0 of the row, with another CR later.
    line = "\r" + _line(2, Age="5\r0", AP_PA=ap)
    items = _read(_csv(_line(1), line, _line(3)))
    assert _outcomes(items) == [(2, "ok"), (3, "bad_csv"), (4, "ok")]
    assert "byte 0, in column 'Path'" in items[1].detail
    # After an empty first cell: the row's first byte is a comma.
    line = _line(2, Path="", Sex="Ma\rle", AP_PA=ap)
    assert f"byte {line.index(chr(13))}, in column 'Sex'" in _read(_csv(line))[0].detail


def test_a_quoted_row_with_a_stray_cr_spanning_lines_is_one_bad_row():
    items = _read(_csv(_line(1), _line(2, Frontal_Lateral='"Front\nal"', Sex="Ma\rle"), _line(3)))
    assert _outcomes(items) == [(2, "ok"), (3, "bad_csv"), (5, "ok")]
    assert "carriage return" in items[1].detail and "'Sex'" in items[1].detail


def test_the_column_of_a_problem_counts_cells_not_commas_inside_quotes():
    path = '"d/train/patient00002/study1/a,b,c.jpg"'  # two commas inside a quoted cell
    for over, problem in [({"Sex": '"Ma"le'}, "after the closing quote"), ({"Sex": '"Male'}, "quote"),
                          ({"Age": "5\r0"}, "carriage return"), ({"Age": "5\x000"}, "NUL")]:
        items = _read(_csv(_line(1), _line(2, Path=path, **over), _line(3)))
        column = chexpert.CSV_COLUMNS[1 if "Sex" in over else 2]
        assert _outcomes(items)[1][1] in ("bad_csv", "nul_byte") and problem in items[1].detail
        assert f"in column {column!r}" in items[1].detail, items[1].detail
        # The dead letter's path is the Path cell as read, quotes removed, even from a bad row.
        assert items[1].path == "d/train/patient00002/study1/a,b,c.jpg"


def test_a_problem_past_the_headers_columns_is_named_by_its_field_number():
    items = _read(_csv(_line(1) + ",\x00", _line(2) + ",x,y\ry"))
    assert f"at byte {len(_line(1)) + 1}, in field 20" in items[0].detail and "field 21" in items[1].detail


def test_nul_bytes_and_bad_utf8_are_reported_at_the_first_one_by_column():
    bad = _line(3, Sex="M\x01le", Age="5\x02").encode().replace(b"\x01", b"\xff").replace(b"\x02", b"\xfe")
    items = _read(_csv(_line(1), "\x00" + _line(2, Age="5\x000")) + bad + b"\n")
    assert "NUL byte (0x00) at byte 0, in column 'Path'" in items[1].detail
    at = bad.index(b"\xff")
    assert items[2].detail == (f"train.csv line 4 is not valid UTF-8: byte 0xff at byte {at}, "
                               "in column 'Sex'")


def test_header_errors_and_empty_files_name_the_file():
    for data in (b"", b"\n\r\n  \n"):  # nothing, or only blank lines
        with pytest.raises(chexpert.CsvHeaderError, match="^train.csv: empty file, expected a header with Path, Sex"):
            _read(data)
    with pytest.raises(chexpert.CsvHeaderError, match="^train.csv: missing column.s. 'Edema'"):
        _read(HEADER.replace(",Edema", "").encode() + b"\n")
    with pytest.raises(chexpert.CsvHeaderError, match="^train.csv: bad header: train.csv line 1: NUL"):
        _read(HEADER.replace("Sex", "S\x00ex").encode() + b"\n")


def test_a_header_only_file_has_no_data_rows():
    assert _read(_csv()) == [] and csv_reader.count_data_rows(io.BytesIO(_csv())) == 0


def test_rows_and_dead_letters_carry_their_file_line_path_and_reason():
    bad = _line(2, Age="5\x000")
    data = _csv(_line(1), bad, _line(3))
    items = list(csv_reader.read_csv_rows(io.BytesIO(data), "valid.csv"))
    assert [(i.source, i.line) for i in (items[0], items[2])] == [("valid.csv", 2), ("valid.csv", 4)]
    assert items[1].to_dict() == {
        "source": "valid.csv", "row": 3, "path": "d/train/patient00002/study1/view1_frontal.jpg", "split": None,
        "reason": "nul_byte", "detail": f"valid.csv line 3: NUL byte (0x00) at byte {bad.index(chr(0))}, "
                                        "in column 'Age'"}
    # Skipped rows are passed over, and the rows after them still come.
    skipped = list(csv_reader.read_csv_rows(io.BytesIO(data), "valid.csv", skip={2, 3}))
    assert [i.line for i in skipped] == [4]


def test_a_dead_letters_path_is_the_path_cell_cut_to_200_characters_or_empty():
    long_path = "d/train/patient00002/study1/" + "v" * 300 + ".jpg"
    items = _read(_csv(_line(1), _line(2, Path=long_path, Age="\x00")))
    assert items[1].path == long_path[:200]
    # Columns in another order (they are read by name): a short row may have no Path cell.
    header = ",".join(chexpert.CSV_COLUMNS[1:] + chexpert.CSV_COLUMNS[:1])
    items = list(csv_reader.read_csv_rows(io.BytesIO(f"{header}\nMale,50\n".encode()), "train.csv"))
    assert (items[0].reason, items[0].path) == ("bad_row", "")


def test_a_quoted_cell_may_span_max_row_lines_lines_and_no_more():
    m = csv_reader.MAX_ROW_LINES
    spans = _line(2, Sex='"Ma' + "\nx" * (m - 1) + 'le"')  # m lines
    assert _outcomes(_read(_csv(_line(1), spans, _line(3)))) == [(2, "ok"), (3, "ok"), (3 + m, "ok")]
    # One line more: the quote is a stray one; the lines after it are rows of their own
    # (too few cells each), the last of them the rest of the row the quote cut.
    spans = _line(2, Sex='"Ma' + "\nx" * m + 'le"')  # m + 1 lines
    assert _outcomes(_read(_csv(_line(1), spans, _line(3)))) == (
        [(2, "ok"), (3, "bad_csv")] + [(n, "bad_row") for n in range(4, 4 + m)] + [(4 + m, "ok")])


def test_lines_read_again_after_a_stray_quote_are_read_in_file_order_quotes_included():
    # Line 3 opens a quote that no line closes within MAX_ROW_LINES: lines 4-18 are read again.
    # Line 5, among them, opens a quoted cell of its own (its first cell ends in a plain
    # quote) that line 20 closes: lines 5-20 are one row, as they are in a file without line 3.
    m = csv_reader.MAX_ROW_LINES
    path = "d/train/patient00004/study1/view1_frontal.jpg"
    lines = ([_line(1), _line(2, Sex='"Male'), _line(3), _line(4, Path=path + '"', Sex='"Male')]
             + [_line(n) for n in range(5, m + 3)] + [_line(m + 3, Sex='Male"'), _line(m + 4)])
    assert _outcomes(_read(_csv(*lines))) == [(2, "ok"), (3, "bad_csv"), (4, "ok"), (5, "ok"), (m + 5, "ok")]
    assert _outcomes(_read(_csv(*lines[3:]))) == [(2, "ok"), (m + 2, "ok")]


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_a_files_parts_together_yield_each_row_once_as_the_whole_file_does(parts):
    # ReadCsv reads one CSV in parts, one per worker: every row and dead letter of the whole
    # file in exactly one part (rows in file order by index, whatever their line numbers:
    # blank lines and a quoted line break make those uneven), none twice, skip still applied.
    lines = [_line(1), "", _line(2, Sex='"Ma\nle"'), _line(3, Age="5\x000"), _line(4), "only,three,fields",
             _line(5), _line(6), _line(7)]
    data = _csv(*lines)
    whole = _outcomes(_read(data))
    got = [list(csv_reader.read_csv_rows(io.BytesIO(data), "train.csv", part=(k, parts))) for k in range(parts)]
    assert sorted(o for items in got for o in _outcomes(items)) == sorted(whole)
    for k, items in enumerate(got):
        assert _outcomes(items) == whole[k::parts]
        assert [i.cells for i in items if isinstance(i, csv_reader.CsvRow)] == [
            i.cells for i in _read(data)[k::parts] if isinstance(i, csv_reader.CsvRow)]
    skip = {whole[1][0], whole[4][0]}
    skipped = [o for k in range(parts)
               for o in _outcomes(csv_reader.read_csv_rows(io.BytesIO(data), "train.csv", skip, (k, parts)))]
    assert sorted(skipped) == sorted(o for o in whole if o[0] not in skip)


@pytest.mark.parametrize("part", [(1, 1), (-1, 2), (2, 2), (0, 0)])
def test_a_part_outside_its_count_is_refused(part):
    with pytest.raises(ValueError, match=rf"^part {part[0]} of {part[1]}: expected 0 <= k < parts$"):
        list(csv_reader.read_csv_rows(io.BytesIO(_csv(_line(1))), "train.csv", part=part))
