"""The records job's inputs as its driver sees them before any work: the CSVs, every row's
path and image stat, the checks that fail fast (an unmounted image folder, valid-set
leakage), and the fingerprint of it all.

A stat, not a read: 224k of them take seconds, so a rerun knows in seconds whether anything
changed (``core.fingerprint``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import posixpath

from apache_beam.io.filesystems import FileSystems

from core import csv_reader, fingerprint, storage
from core.errors import ConfigError
from pipeline import rows as rows_lib
from pipeline.build_config import SOURCES, BuildConfig, dataset_dir, output_options
from schemas import chexpert
from schemas import example as example_lib


@dataclasses.dataclass(frozen=True)
class CsvSource:
    """One input CSV, read once by the driver.

    Attributes:
        name: ``train.csv`` or ``valid.csv``; path: its full path; split: where its rows go.
        sha256: of its bytes; rows: its data rows (``csv_reader.count_data_rows``);
        data: its bytes (for ``scan_rows``).
    """

    name: str
    path: str
    split: str
    sha256: str
    rows: int
    data: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class ListedRow:
    """A CSV row with a usable Path, as the driver lists it.

    Attributes:
        source: the CSV's name; line: the row's first line; path: its normalized Path;
        patient: its patient folder (None if the path names none); stat: its image's
        ``core.fingerprint.file_stat``; digest: ``rows.row_digest`` of its cells.
    """

    source: str
    line: int
    path: str
    patient: str | None
    stat: str
    digest: str


def list_sources(cfg: BuildConfig) -> list[CsvSource]:
    """The CSVs present, each with its row count and sha256.

    Raises:
        ConfigError: neither CSV is there, or one has a header that is not CheXpert's.
    """
    folder = dataset_dir(cfg.input_dir)
    found = []
    for name, split in SOURCES:
        path = posixpath.join(folder, name)
        if not FileSystems.exists(path):
            continue
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
        try:
            csv_reader.read_header(csv_reader.iter_lines(io.BytesIO(data)), name)
        except chexpert.CsvHeaderError as e:
            raise ConfigError(str(e)) from None
        found.append(CsvSource(name, path, split, hashlib.sha256(data).hexdigest(),
                               csv_reader.count_data_rows(io.BytesIO(data)), data))
    if not found:
        raise ConfigError(f"--input_dir={cfg.input_dir}: neither train.csv nor valid.csv found in {folder}")
    return found


def scan_rows(cfg: BuildConfig, sources: list[CsvSource]) -> list[ListedRow]:
    """Each CSV row with a usable path, in file, then line order."""
    out = []
    for src in sources:
        for item in csv_reader.read_csv_rows(io.BytesIO(src.data), src.name):
            if not isinstance(item, csv_reader.CsvRow):
                continue
            try:
                path = chexpert.normalize_path(item.cells.get(chexpert.COL_PATH) or "")
            except chexpert.RowError:
                continue
            out.append(ListedRow(src.name, item.line, path, rows_lib.patient_of(path),
                                 fingerprint.file_stat(posixpath.join(cfg.input_dir, path)),
                                 rows_lib.row_digest(item.cells)))
    return out


def check_image_folders(cfg: BuildConfig, rows: list[ListedRow]) -> None:
    """Fails when an image folder the CSV points into (``CheXpert-v1.0-small/train``) is
    missing or holds none of the images listed, and its rows are more than
    ``--max_reject_fraction`` of all: an unmounted disk, said before any work. A folder of a
    few rows (a typo in one row's Path) is not: those rows become ``missing_file`` dead
    letters like any other missing image.

    Raises:
        ConfigError: naming the folder.
    """
    if storage.is_remote(cfg.input_dir):
        return  # no cheap stat there; the --max_reject_fraction guard still applies
    listed: dict[str, list[int]] = {}
    for r in rows:
        n = listed.setdefault("/".join(r.path.split("/")[:2]), [0, 0])
        n[0] += 1
        n[1] += r.stat != "missing"
    for folder, (n, present) in sorted(listed.items()):
        if not present and n > cfg.max_reject_fraction * len(rows):
            full = posixpath.join(cfg.input_dir, folder)
            state = "does not exist" if not os.path.isdir(full) else "holds none of them"
            raise ConfigError(f"{full}: {n} CSV rows list images in this folder, but it {state}; is the image "
                              f"folder there (mounted, unpacked)? (--input_dir={cfg.input_dir})")


def check_patient_overlap(cfg: BuildConfig, rows: list[ListedRow]) -> frozenset:
    """valid.csv's patient ids; with ``--patient_overlap=fail``, fails when train.csv lists
    any of them (otherwise those train rows become ``patient_in_valid`` dead letters).

    Raises:
        ConfigError: ``--patient_overlap=fail`` and a train row of a valid patient.
    """
    valid = frozenset(r.patient for r in rows if r.source == "valid.csv" and r.patient)
    leaked = [r for r in rows if r.source == "train.csv" and r.patient in valid]
    if leaked and cfg.patient_overlap == "fail":
        first = leaked[0]
        raise ConfigError(f"{len(leaked)} train.csv rows belong to patients of valid.csv (first: line {first.line}, "
                          f"{first.patient}); valid-set leakage. --patient_overlap=reject keeps them out of "
                          "training as dead letters instead")
    return valid


def input_fingerprint(cfg: BuildConfig, sources: list[CsvSource], rows: list[ListedRow]) -> str:
    """Everything the output depends on: options, CSV digests, each listed file's size and
    mtime. Equal fingerprints mean a rebuild would be identical."""
    parts = [json.dumps(output_options(cfg.manifest_options()), sort_keys=True), json.dumps(cfg.policy, sort_keys=True),
             str(chexpert.SCHEMA_VERSION), example_lib.RECORD_ORDER]
    parts += [f"{src.name}\t{src.sha256}" for src in sources]
    parts += [f"{r.path}\t{r.stat}" for r in rows]
    return fingerprint.fingerprint(parts)
