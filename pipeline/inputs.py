"""The records job's inputs as its driver sees them before any work: the CSVs, every row's
path and image stat, the checks that fail fast (an unmounted image folder, valid-set
leakage), and the fingerprint of it all. For an NIH or MIMIC folder the rows are those of
``core.datasets.Dataset.rows()`` (its label file's), the same in every other respect.

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

from core import csv_reader, datasets, fingerprint, storage
from core.errors import ConfigError
from pipeline import rows as rows_lib
from pipeline.build_config import LOCATION_OPTIONS, SOURCES, BuildConfig, dataset_dir, output_options
from schemas import chexpert, nih
from schemas import example as example_lib


@dataclasses.dataclass(frozen=True)
class CsvSource:
    """One input CSV whose rows are the records, read once by the driver.

    Attributes:
        name: ``train.csv`` or ``valid.csv``, or an external dataset's label file
            (``Data_Entry_2017.csv``, ``mimic-cxr-2.0.0-metadata.csv.gz``); path: its full
            path; split: where its rows go ("" for an external one: each row's own).
        sha256: of its bytes; rows: its data rows (``csv_reader.count_data_rows``);
        data: its bytes (for ``scan_rows``; empty for an external one, which
            ``core.datasets`` reads).
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
        split: an external image's official split (``rows.official_split``: ``test``,
            ``valid`` or None), None for CheXpert; findings: its source's own labels.
    """

    source: str
    line: int
    path: str
    patient: str | None
    stat: str
    digest: str
    split: str | None = None
    findings: tuple[str, ...] = ()


def list_inputs(cfg: BuildConfig, dataset: datasets.Dataset | None) -> tuple[list[CsvSource], list[ListedRow]]:
    """The sources whose rows are the records, and those rows: CheXpert's CSVs
    (``list_sources``, ``scan_rows``), or an NIH/MIMIC dataset's label file
    (``list_dataset``)."""
    if dataset is None:
        sources = list_sources(cfg, count=False)
        counts: dict[str, int] = {}
        rows = scan_rows(cfg, sources, counts)
        return [dataclasses.replace(s, rows=counts[s.name]) for s in sources], rows
    return list_dataset(cfg, dataset)


def list_dataset(cfg: BuildConfig, dataset: datasets.Dataset) -> tuple[list[CsvSource], list[ListedRow]]:
    """An external dataset's label file as the one reconciled source, and each of its rows
    that validated and has a split (``Dataset.rows()``; the rest are the pipeline's dead
    letters), with its image's stat.

    Raises:
        ConfigError: a split name the dataset's files should not hold.
    """
    label = dataset.label_file
    listed = []
    for item in dataset.rows():
        # Dead letters in the pipeline: a row that does not fit, and an image on none of the
        # split files the dataset has (``no_split``), which must not count as a patient's
        # train image in ``check_held_out``.
        if isinstance(item, csv_reader.Reject) or rows_lib.no_split_detail(dataset, item.split, item.image):
            continue
        try:
            official = rows_lib.official_split(dataset.format, item.split)
        except ValueError as e:
            raise ConfigError(f"{dataset.folder}: {e}") from None
        listed.append(ListedRow(item.source, item.line, item.image, item.row.patient_id, "",
                                rows_lib.dataset_digest(item.image, item.row, item.split), official,
                                tuple(item.row.findings)))
    stats = fingerprint.file_stats(cfg.input_dir, [r.path for r in listed])
    listed = [dataclasses.replace(r, stat=stat) for r, stat in zip(listed, stats)]
    return [CsvSource(label.name, label.path, "", label.sha256, label.rows, b"")], listed


def list_sources(cfg: BuildConfig, count: bool = True) -> list[CsvSource]:
    """The CSVs present, each with its row count and sha256. ``count=False``: rows 0, for a
    caller that reads every row anyway (``scan_rows`` counts them in the same pass).

    Raises:
        ConfigError: neither CSV is there, or one has a header that is not CheXpert's.
    """
    folder = dataset_dir(cfg.input_dir)
    found = []
    for name, split in SOURCES:
        path = posixpath.join(folder, name)
        if not FileSystems.exists(path):
            continue
        if not storage.is_remote(path) and not os.path.isfile(path):
            # Opening a FIFO blocks until something writes to it: a nightly job would hang.
            raise ConfigError(f"{path}: not a regular file (a FIFO, device or folder); not read")
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
        try:
            csv_reader.read_header(csv_reader.iter_lines(io.BytesIO(data)), name)
        except chexpert.CsvHeaderError as e:
            raise ConfigError(str(e)) from None
        found.append(CsvSource(name, path, split, hashlib.sha256(data).hexdigest(),
                               csv_reader.count_data_rows(io.BytesIO(data)) if count else 0, data))
    if not found:
        raise ConfigError(f"--input_dir={cfg.input_dir}: neither train.csv nor valid.csv found in {folder}")
    return found


def scan_rows(cfg: BuildConfig, sources: list[CsvSource], counts: dict[str, int] | None = None) -> list[ListedRow]:
    """Each CSV row with a usable path, in file, then line order. ``counts``, if given,
    receives each CSV's data rows (``csv_reader.count_data_rows``, from the same pass)."""
    found = []
    for src in sources:
        n = 0
        for item in csv_reader.read_csv_rows(io.BytesIO(src.data), src.name):
            n += 1
            if not isinstance(item, csv_reader.CsvRow):
                continue
            try:
                path = chexpert.normalize_path(item.cells.get(chexpert.COL_PATH) or "")
            except chexpert.RowError:
                continue
            found.append((src.name, item.line, path, rows_lib.row_digest(item.cells)))
        if counts is not None:
            counts[src.name] = n
    # Every image's stat in one batch, by threads: a third of the scan at 224k rows.
    stats = fingerprint.file_stats(cfg.input_dir, [path for _, _, path, _ in found])
    return [ListedRow(name, line, path, rows_lib.patient_of(path), stat, digest)
            for (name, line, path, digest), stat in zip(found, stats)]


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
    # CheXpert: CheXpert-v1.0-small/train; NIH: images_001 (images/ for names found
    # nowhere, core.datasets); MIMIC: files.
    depth = 1 if cfg.external else 2
    listed: dict[str, list[int]] = {}
    for r in rows:
        n = listed.setdefault("/".join(r.path.split("/")[:depth]), [0, 0])
        n[0] += 1
        n[1] += r.stat != "missing"
    for folder, (n, present) in sorted(listed.items()):
        if not present and n > cfg.max_reject_fraction * len(rows):
            full = posixpath.join(cfg.input_dir, folder)
            if cfg.format == nih.DATASET and folder == "images" and not os.path.isdir(full):
                raise ConfigError(f"{cfg.input_dir}: {n} rows of {rows[0].source} name images found nowhere below "
                                  "it (NIH ships them in images_001/images/ ... images_012/images/); are the image "
                                  f"archives unpacked there? (--input_dir={cfg.input_dir})")
            state = "does not exist" if not os.path.isdir(full) else "holds none of them"
            what = "CSV rows" if not cfg.external else f"rows of {rows[0].source}"
            raise ConfigError(f"{full}: {n} {what} list images in this folder, but it {state}; is the image "
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


def check_held_out(cfg: BuildConfig, rows: list[ListedRow]) -> dict[str, str]:
    """An external dataset's patients whose images are in two splits (an image on NIH's
    test list and another on train_val; MIMIC's validate and train...; an image on no list of
    a dataset that has lists is a ``no_split`` dead letter, not listed here): {patient:
    its latest split}. Their earlier-split images become ``patient_in_test`` /
    ``patient_in_valid`` dead letters (``rows.leak_reason``), or, with
    ``--patient_overlap=fail``, the job stops here. Empty for CheXpert (its rows carry no
    official split; ``check_patient_overlap`` is its check).

    Raises:
        ConfigError: ``--patient_overlap=fail`` and such a patient.
    """
    latest: dict[str, str | None] = {}
    ranks: dict[str, set[int]] = {}
    for r in rows:
        if not cfg.external or r.patient is None:
            continue
        if rows_lib.split_rank(r.split) > rows_lib.split_rank(latest.get(r.patient)):
            latest[r.patient] = r.split
        ranks.setdefault(r.patient, set()).add(rows_lib.split_rank(r.split))
    held = {p: latest[p] for p, seen in ranks.items() if len(seen) > 1}
    leaked = [r for r in rows if r.patient in held and rows_lib.leak_reason(r.split, held[r.patient])]
    if leaked and cfg.patient_overlap == "fail":
        first = leaked[0]
        raise ConfigError(f"{len(leaked)} rows of {first.source} are images of patients who also have images in "
                          f"{held[first.patient]} (first: line {first.line}, patient {first.patient}); evaluation-set "
                          "leakage. --patient_overlap=reject keeps them out as dead letters instead")
    return held


def input_fingerprint(cfg: BuildConfig, sources: list[CsvSource], rows: list[ListedRow],
                      dataset: datasets.Dataset | None = None, with_folders: bool = False) -> str:
    """Everything the output depends on: options, CSV digests (every file of an external
    dataset: its lists and labels too), each listed file's size and mtime. Equal
    fingerprints mean a rebuild would be identical.

    Not where the folders are (``--input_dir``, ``--output_dir``: the same folders spelled
    another way, or the dataset moved with its files, build the same records);
    ``with_folders`` gives the fingerprint earlier releases committed, which included them.
    """
    options = output_options(cfg.manifest_options())
    if not with_folders:
        options = {k: v for k, v in options.items() if k not in LOCATION_OPTIONS}
    parts = [json.dumps(options, sort_keys=True), json.dumps(cfg.policy, sort_keys=True),
             str(chexpert.SCHEMA_VERSION), example_lib.RECORD_ORDER]
    files = [(f.name, f.sha256) for f in dataset.files] if dataset is not None else [(s.name, s.sha256)
                                                                                    for s in sources]
    parts += [f"{name}\t{sha256}" for name, sha256 in files]
    parts += [f"{r.path}\t{r.stat}" for r in rows]
    return fingerprint.fingerprint(parts)
