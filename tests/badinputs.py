"""Every bad input the records job knows, planted into a generated dataset.

``plant(dataset_dir)`` appends rows to train.csv (and writes their files) and returns what
the job must do with each: the reject reason, or ``None`` where the input is odd but must be
converted and written (RGB, 16-bit).
"""

from __future__ import annotations

import os

import numpy as np

from schemas import chexpert
from tests import images

_PREFIX = "CheXpert-v1.0-small/train"


def _cells(path, **over):
    c = {k: "" for k in chexpert.CSV_COLUMNS}
    c.update({"Path": path, "Sex": "Female", "Age": "40", "Frontal/Lateral": "Frontal", "AP/PA": "AP",
              "Edema": "1.0"})
    c.update(over)
    return ",".join(c[k] for k in chexpert.CSV_COLUMNS)


def plant(root: str) -> dict[str, str | None]:
    """Adds the bad inputs under ``root`` (the folder holding CheXpert-v1.0-small).

    Returns:
        CSV Path -> expected reject reason, or None for inputs that must be written.
    """
    ds = os.path.join(root, "CheXpert-v1.0-small")
    files = {
        "patient90001/study1/view1_frontal.jpg": ("zero", b""),
        "patient90002/study1/view1_frontal.jpg": ("truncated", images.jpeg_bytes(images.gradient(300, 300))[:3000]),
        "patient90003/study1/view1_frontal.jpg": ("text", b"<html>not an x-ray</html>\n" * 40),
        "patient90004/study1/view1_frontal.jpg": ("rgb", images.jpeg_bytes(np.stack([images.gradient(390, 320)] * 3, -1))),
        "patient90005/study1/view1_frontal.png": ("png16", images.png_bytes(images.gradient(390, 320, np.uint16, 4095))),
        "patient90006/study1/view1_frontal.dcm": ("dicom", images.dicom_bytes(images.gradient(64, 64, np.uint16, 4000),
                                                                             photometric="MONOCHROME1")),
    }
    for rel, (_, data) in files.items():
        path = os.path.join(ds, "train", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    expected: dict[str, str | None] = {
        f"{_PREFIX}/patient90000/study1/view1_frontal.jpg": "missing_file",
        f"{_PREFIX}/patient90001/study1/view1_frontal.jpg": "empty_file",
        f"{_PREFIX}/patient90002/study1/view1_frontal.jpg": "truncated_image",
        f"{_PREFIX}/patient90003/study1/view1_frontal.jpg": "not_an_image",
        f"{_PREFIX}/patient90004/study1/view1_frontal.jpg": None,
        f"{_PREFIX}/patient90005/study1/view1_frontal.png": None,
        f"{_PREFIX}/patient90006/study1/view1_frontal.dcm": None,
        f"{_PREFIX}/patient90007/study1/view1_frontal.jpg": "bad_label",
        f"{_PREFIX}/patient90008/study1/view1_frontal.jpg": "bad_age",
        f"{_PREFIX}/../../../etc/patient1/study1/passwd.jpg": "bad_path",
    }
    lines = []
    for path, reason in expected.items():
        if reason == "bad_label":
            lines.append(_cells(path, Edema="likely"))
        elif reason == "bad_age":
            lines.append(_cells(path, Age="forty"))
        else:
            lines.append(_cells(path))
    # A duplicate of the first generated row (a real, good file): the copy is rejected.
    with open(os.path.join(ds, "train.csv")) as f:
        first = f.read().splitlines()[1]
    lines.append(first)
    expected_dupes = {first.split(",")[0]: "duplicate_path"}
    with open(os.path.join(ds, "train.csv"), "a") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(ds, "train.csv"), "ab") as f:
        f.write(_cells(f"{_PREFIX}/patient90009/study1/view1_frontal.jpg", Sex="F\xe9minin").encode("latin-1") + b"\n")
        f.write(b"too,few,fields\n")
    expected["__non_utf8__"] = "bad_encoding"
    expected["__short_row__"] = "bad_row"
    expected.update(expected_dupes)
    return expected


def plant_csv_bytes(root: str) -> tuple[dict[int, str], list[str]]:
    """Appends rows with bad bytes to train.csv and rewrites valid.csv with CR-only line
    endings, under ``root`` (the folder holding CheXpert-v1.0-small).

    Returns:
        ``(rejects, written)``: train.csv line number -> the reject reason for that row; the
        Paths of the planted rows that must become records (one of them spans two lines).
    """
    ds = os.path.join(root, "CheXpert-v1.0-small")
    with open(os.path.join(ds, "valid.csv"), "rb") as f:
        valid = f.read()
    with open(os.path.join(ds, "valid.csv"), "wb") as f:
        f.write(valid.replace(b"\n", b"\r"))  # classic Mac OS / old Excel line endings
    written = [f"{_PREFIX}/patient{n}/study1/view1_frontal.jpg" for n in (90200, 90201)]
    for path in written:
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(images.jpeg_bytes(images.gradient(330, 320)))
    path = f"{_PREFIX}/patient90210/study1/view1_frontal.jpg"
    rows: list[tuple[bytes, str | None]] = [
        # A quoted Path and a quoted cell holding a CRLF: one row on two lines (RFC 4180).
        (_cells(f'"{written[0]}"', **{"Frontal/Lateral": '"Frontal\r\n"'}).encode(), None),
        (_cells(path, Sex="Fe\rmale").encode(), "bad_csv"),  # a stray CR
        (_cells(path.replace("view1", "view1\x00")).encode(), "nul_byte"),
        (_cells(path, Age="5\x000").encode(), "nul_byte"),
        (_cells(path, Sex='"Female').encode(), "bad_csv"),  # a quote that never closes, mid-file
        (_cells(written[1]).encode(), None),  # read as a row of its own after that quote
        (_cells(path, Edema="\uff11.0").encode(), "bad_label"),  # full-width digit
        (_cells(path, Edema="\u0661").encode(), "bad_label"),  # Arabic-Indic digit
        (_cells(path, Edema="1.0\u00a0").encode(), "bad_label"),  # non-breaking space
        (_cells(path, Age="\uff14\uff10").encode(), "bad_age"),
        (_cells(f'"{path}\n"').encode() + b",extra", "bad_row"),  # two lines, one cell too many
        (_cells(path, Sex='"Fe"male').encode(), "bad_csv"),  # text after a closing quote
        (_cells(path, Sex='"Female').encode(), "bad_csv"),  # and at the end of the file
    ]
    with open(os.path.join(ds, "train.csv"), "rb") as f:
        line = f.read().count(b"\n") + 1
    rejects = {}
    with open(os.path.join(ds, "train.csv"), "ab") as f:
        for data, reason in rows:
            if reason:
                rejects[line] = reason
            f.write(data + b"\n")
            line += 1 + data.count(b"\n")
    return rejects, written
