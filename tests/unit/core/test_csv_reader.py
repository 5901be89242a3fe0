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
