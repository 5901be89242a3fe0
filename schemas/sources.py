"""Which dataset a folder holds: CheXpert, NIH ChestX-ray14 or MIMIC-CXR-JPG, by the label
files each ships.

    chexpert  train.csv or valid.csv            (schemas.chexpert)
    nih       Data_Entry_2017.csv, Data_Entry_2017_v2020.csv or sample_labels.csv
                                                (schemas.nih)
    mimic     mimic-cxr-2.0.0-metadata.csv(.gz) (schemas.mimic)

A plain function of the folder's file names, so that it is the same for a local folder and a
bucket listing; listing the folder is the caller's.
"""

from __future__ import annotations

import posixpath
from typing import Iterable

from schemas import chexpert, mimic, nih

CHEXPERT, NIH, MIMIC = "chexpert", "nih", "mimic"
FORMATS = (CHEXPERT, NIH, MIMIC)
# Format -> the file names that mark it (any one is enough).
MARKERS: dict[str, tuple[str, ...]] = {
    CHEXPERT: ("train.csv", "valid.csv"),
    NIH: nih.LABEL_FILES,
    MIMIC: mimic.METADATA_FILES,
}


class FormatError(ValueError):
    """A folder that holds none of the formats, or the label files of several."""


def detect_format(names: Iterable[str], folder: str) -> str:
    """The format of a folder, from the names of the files directly in it.

    Args:
        names: the folder's entries: base names, or paths (only the last part counts; a
            trailing ``/`` of a folder entry is ignored).
        folder: the folder, for the message.

    Returns:
        ``chexpert``, ``nih`` or ``mimic``.

    Raises:
        FormatError: naming the folder and, for none, what each format needs; for several,
            which files matched which format (pass ``--format`` to choose).
    """
    present = {posixpath.basename(n.replace("\\", "/").rstrip("/")) for n in names}
    found = {f: [m for m in MARKERS[f] if m in present] for f in FORMATS}
    matched = [f for f in FORMATS if found[f]]
    if len(matched) == 1:
        return matched[0]
    if not matched:
        needs = "; ".join(f"{f}: {' or '.join(MARKERS[f])}" for f in FORMATS)
        raise FormatError(f"{folder}: no dataset's label file found ({needs})")
    which = "; ".join(f"{f} ({', '.join(found[f])})" for f in matched)
    raise FormatError(f"{folder}: holds the label files of {len(matched)} datasets: {which}; "
                      f"say which with --format {'|'.join(FORMATS)}")


# Format -> the CheXpert observations its labels say something about. Elsewhere every row
# of that format is blank (``Code.BLANK``), which is "not labelled", never "negative":
# training masks those entries and evaluation leaves them unscored.
LABELLED: dict[str, tuple[str, ...]] = {
    CHEXPERT: chexpert.OBSERVATIONS,
    NIH: nih.LABELLED_OBSERVATIONS,
    MIMIC: mimic.LABELLED_OBSERVATIONS,
}


def labelled(fmt: str) -> tuple[str, ...]:
    """The observations a format labels, in ``chexpert.OBSERVATIONS`` order.

    Raises:
        FormatError: an unknown format.
    """
    if fmt not in LABELLED:
        raise FormatError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return LABELLED[fmt]
