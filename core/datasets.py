"""Reading an NIH ChestX-ray14 or MIMIC-CXR-JPG folder into validated rows, one reader for
the records job, evaluation and scoring.

    find_dataset(folder, fmt)   which dataset a folder holds; None for CheXpert (whose CSVs
                                the records job reads itself), else a ``Dataset``
    Dataset.rows()              every data row of its label file: ``DatasetRow`` (the
                                ``schemas.external.ExternalRow``, the image's path, the
                                official split) or a ``csv_reader.Reject`` with its reason

The formats (columns, label mapping, quirks) are ``schemas.nih`` and ``schemas.mimic``; this
module finds the files, opens them (``.csv`` or ``.csv.gz``, local or any Beam filesystem),
joins MIMIC's three files and finds NIH's images by name. Every file a dataset's rows depend
on is a ``SourceFile`` with its sha256, so a caller can tell when anything changed.

A ``Dataset`` holds only names and digests (it is sent to Beam workers); ``rows()`` reads
the files each time it is called. TF-free and Beam-free at import.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import posixpath
import zlib
from typing import IO, Iterator

from core import csv_reader, imaging, storage
from core.errors import ConfigError
from schemas import chexpert, external, mimic, nih, sources

# The official split an image is on, as the dataset's files say (``DatasetRow.split``).
TRAIN_VAL, TEST = nih.TRAIN_VAL, nih.TEST  # NIH's two lists
MIMIC_SPLITS = mimic.SPLITS  # train, validate, test


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """A file a dataset's rows depend on.

    Attributes:
        name: its name in the dataset folder (``Data_Entry_2017.csv``, ``test_list.txt``,
            ``mimic-cxr-2.0.0-metadata.csv.gz``).
        path: its full path.
        sha256: of its bytes as stored (compressed, for ``.gz``).
        rows: data rows of a CSV (after the header), entries of a list file.
    """

    name: str
    path: str
    sha256: str
    rows: int


@dataclasses.dataclass(frozen=True)
class DatasetRow:
    """One image of the dataset, validated.

    Attributes:
        source: the file the row is a line of (NIH's label CSV, MIMIC's metadata CSV).
        line: the row's first line in that file (the header is line 1).
        row: the validated, mapped row (``schemas.external.ExternalRow``).
        image: the image's path relative to the dataset folder, the record's key: NIH
            ``images_001/images/00000001_000.png`` (found by name; ``images/NAME`` where no
            file has the name, which the image's reader then reports missing), MIMIC
            ``files/p10/p10000032/s50414267/<dicom_id>.jpg``.
        split: the official split: NIH ``train_val`` or ``test``, MIMIC ``train``,
            ``validate`` or ``test``; None without split files or for an image on no list.
    """

    source: str
    line: int
    row: external.ExternalRow
    image: str
    split: str | None


def open_csv(path: str) -> IO[bytes]:
    """A label file's bytes as a stream: ``.gz`` files decompressed (local or remote)."""
    f = storage.open_read(path)
    return gzip.GzipFile(fileobj=f, mode="rb") if path.endswith(".gz") else f


def _read_source(folder: str, name: str, kind: str) -> tuple[SourceFile, bytes]:
    """A file of the dataset, read whole: its ``SourceFile`` and its (decompressed) bytes.

    Raises:
        ConfigError: the file cannot be read or decompressed.
    """
    path = posixpath.join(folder, name)
    try:
        stored = storage.read_bytes(path)
        data = gzip.decompress(stored) if name.endswith(".gz") else stored
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"{path}: cannot read the {kind}: {e}") from None
    rows = (csv_reader.count_data_rows(io.BytesIO(data)) if ".csv" in name
            else sum(1 for line in data.splitlines() if line.strip()))
    return SourceFile(name, path, hashlib.sha256(stored).hexdigest(), rows), data


def _header_cells(data: bytes, source: str) -> tuple[list[str], Iterator[csv_reader.CsvLine]]:
    """The header's cells and the iterator positioned at the first data row.

    Raises:
        chexpert.CsvHeaderError: a header whose bytes cannot be read, or no header at all.
    """
    lines = csv_reader.iter_lines(io.BytesIO(data))
    for row in lines:
        try:
            return csv_reader.decode_cells(row, source), lines
        except chexpert.RowError as e:
            raise chexpert.CsvHeaderError(f"{source}: bad header: {e.detail}") from None
    raise chexpert.CsvHeaderError(f"{source}: the file is empty (no header)")


def _loose_cells(row: csv_reader.CsvLine, columns) -> dict[str, str]:
    """A row's cells as far as they can be told when its bytes do not decode (a NUL byte,
    bad UTF-8, a stray quote): cut at commas, decoded with replacement; for finding which
    study or image a dead letter belongs to, never for its values."""
    cells = row.raw.split(b",") if row.cells is None else row.cells
    return {c: v[:200].decode("utf-8", "replace").strip().strip('"') for c, v in zip(columns, cells) if c}


def _data_rows(data: bytes, source: str, columns) -> Iterator[tuple[int, dict | chexpert.RowError, dict]]:
    """``(line, cells or the RowError that stopped them, loose cells)`` per data row: cells
    keyed by ``columns`` (``external.cells_of``), and the loose cells (``_loose_cells``) that
    name a bad row's image or study in its dead letter."""
    _, lines = _header_cells(data, source)
    for row in lines:
        loose = _loose_cells(row, columns)
        try:
            values = csv_reader.decode_cells(row, source)
            yield row.line, external.cells_of(columns, values, f"{source} line {row.line}"), loose
        except chexpert.RowError as e:
            yield row.line, e, loose


class Dataset:
    """An NIH or MIMIC folder: its files, checked, and a reader of its rows.

    Attributes:
        folder: the dataset folder (image paths are relative to it).
        format: ``nih`` or ``mimic``.
        label_file: the file whose rows are the images (NIH's label CSV, MIMIC's metadata).
        files: every file the rows depend on, ``label_file`` first.
        official_split: whether the dataset's split files were there.
        notes: sentences about choices made reading the folder (a label file passed over,
            an image name found twice), for the caller's log and report.
    """

    format: str = ""

    def __init__(self, folder: str):
        self.folder = folder
        self.files: list[SourceFile] = []
        self.official_split = False
        self.notes: list[str] = []

    @property
    def label_file(self) -> SourceFile:
        return self.files[0]

    def rows(self) -> Iterator[DatasetRow | csv_reader.Reject]:  # pragma: no cover - overridden
        raise NotImplementedError

    def image_views(self) -> dict[str, str]:  # pragma: no cover - overridden
        """Image path (as ``DatasetRow.image``) -> ``frontal``, ``lateral`` or ``unknown``,
        from the label file's view column alone, for every row that names an image: a
        scorer needs no labels, so a row whose labels are bad still has its view."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.folder!r}, {[f.name for f in self.files]})"


def _present(names: list[str], candidates: tuple[str, ...]) -> list[str]:
    return [n for n in candidates if n in names]


class NihDataset(Dataset):
    """NIH ChestX-ray14: ``Data_Entry_2017.csv`` (or ``_v2020``, or ``sample_labels.csv``),
    images found by name anywhere below the folder (``images_NNN/images/``), the official
    split from ``train_val_list.txt`` and ``test_list.txt``."""

    format = nih.DATASET

    def __init__(self, folder: str, names: list[str]):
        super().__init__(folder)
        labels = _present(names, nih.LABEL_FILES)
        # Newest first: the 2020 relabelling, then the 2017 file, then the 5,606-image sample.
        order = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "sample_labels.csv")
        chosen = next(n for n in order if n in labels)
        if len(labels) > 1:
            self.notes.append(f"read {chosen}; {', '.join(n for n in labels if n != chosen)} also in "
                              f"{folder}, not read")
        label, data = _read_source(folder, chosen, "NIH label file")
        try:
            self.columns = nih.header_columns(_header_cells(data, chosen)[0], chosen)
        except chexpert.CsvHeaderError as e:
            raise ConfigError(f"{label.path}: {e}") from None
        self.files = [label]
        lists = _present(names, (nih.TRAIN_VAL_LIST, nih.TEST_LIST))
        if len(lists) == 1:
            missing = ({nih.TRAIN_VAL_LIST, nih.TEST_LIST} - set(lists)).pop()
            raise ConfigError(f"{folder}: has {lists[0]} but not {missing}; NIH's official split needs both "
                              "(or neither: then every image is split train/holdout by patient)")
        self.split_of: dict[str, str] = {}
        if lists:
            parsed = []
            for name in (nih.TRAIN_VAL_LIST, nih.TEST_LIST):
                src, text = _read_source(folder, name, "NIH split list")
                self.files.append(src)
                try:
                    parsed.append(nih.parse_image_list(text.decode("utf-8", "replace"), src.path))
                except ValueError as e:
                    raise ConfigError(str(e)) from None
            try:
                self.split_of = nih.official_splits(*parsed)
            except ValueError as e:
                raise ConfigError(f"{folder}: {e}") from None
            self.official_split = True
            self._note_unlisted_names(data, chosen)
        self.images = self._find_images()

    def _note_unlisted_names(self, data: bytes, source: str) -> None:
        """A note for list entries with no row in the label file (nothing to read for them)."""
        _, lines = _header_cells(data, source)
        in_file = {_loose_cells(row, self.columns).get(nih.COL_IMAGE, "") for row in lines}
        orphans = sorted(set(self.split_of) - in_file)
        if orphans:
            self.notes.append(f"{len(orphans)} image(s) on {nih.TRAIN_VAL_LIST} or {nih.TEST_LIST} have no row in "
                              f"{source} and are not read: {', '.join(orphans[:5])}"
                              + (" ..." if len(orphans) > 5 else ""))

    def _find_images(self) -> dict[str, str]:
        """Image name -> its path below the folder; the first in sorted order where a name is
        found twice (said in ``notes``)."""
        found: dict[str, str] = {}
        twice = 0
        for rel in storage.files_under(self.folder):
            if not rel.lower().endswith(imaging.IMAGE_SUFFIXES):
                continue
            name = posixpath.basename(rel)
            if name in found:
                twice += 1
                continue
            found[name] = rel
        if twice:
            self.notes.append(f"{twice} image file name(s) found in two places below {self.folder}; the first "
                              "path in sorted order is read")
        return found

    def rows(self) -> Iterator[DatasetRow | csv_reader.Reject]:
        label = self.label_file
        _, data = _read_source(self.folder, label.name, "NIH label file")
        for line, cells, loose in _data_rows(data, label.name, self.columns):
            try:
                if isinstance(cells, chexpert.RowError):
                    raise cells
                row = nih.parse_row(cells)
            except chexpert.RowError as e:
                yield csv_reader.Reject(label.name, line, loose.get(nih.COL_IMAGE, ""), None, e.reason, e.detail)
                continue
            image = self.images.get(row.path, posixpath.join("images", row.path))
            yield DatasetRow(label.name, line, row, image, self.split_of.get(row.path))

    def image_views(self) -> dict[str, str]:
        _, data = _read_source(self.folder, self.label_file.name, "NIH label file")
        out = {}
        for _, _, loose in _data_rows(data, self.label_file.name, self.columns):
            name = loose.get(nih.COL_IMAGE, "")
            if name:
                out[self.images.get(name, posixpath.join("images", name))] = external.position_view(
                    loose.get(nih.COL_VIEW, ""))
        return out


class MimicDataset(Dataset):
    """MIMIC-CXR-JPG 2.x: the metadata CSV's rows are the images, joined with the per-study
    labels CSV (``mimic-cxr-2.0.0-chexpert.csv``) and the split CSV when present."""

    format = mimic.DATASET

    def __init__(self, folder: str, names: list[str]):
        super().__init__(folder)
        for kind, candidates, check in (("metadata", mimic.METADATA_FILES, mimic.check_metadata_header),
                                        ("labels", mimic.LABEL_FILES, mimic.check_labels_header),
                                        ("split", mimic.SPLIT_FILES, mimic.check_split_header)):
            present = _present(names, candidates)
            if not present:
                if kind == "split":
                    continue
                raise ConfigError(f"{folder}: MIMIC-CXR-JPG's {kind} file ({' or '.join(candidates)}) is not there")
            if len(present) > 1:
                self.notes.append(f"read {present[0]}; {present[1]} also in {folder}, not read")
            src, data = _read_source(folder, present[0], f"MIMIC {kind} file")
            try:
                check(_header_cells(data, src.name)[0], src.name)
            except chexpert.CsvHeaderError as e:
                raise ConfigError(f"{src.path}: {e}") from None
            self.files.append(src)
        self.official_split = len(self.files) == 3

    def _table(self, src: SourceFile) -> Iterator[tuple[int, dict | chexpert.RowError, dict]]:
        _, data = _read_source(self.folder, src.name, "MIMIC file")
        header = [external.trim(c).lstrip("\ufeff") for c in _header_cells(data, src.name)[0]]
        return _data_rows(data, src.name, header)

    def _labels(self) -> tuple[dict[str, mimic.StudyLabels], dict[str, chexpert.RowError]]:
        """Study id -> its labels; study id -> why its labels cannot be used (a bad or a
        second labels row), so that its images are dead letters saying so."""
        src = self.files[1]
        good, bad = [], {}
        for line, cells, loose in self._table(src):
            try:
                if isinstance(cells, chexpert.RowError):
                    raise cells
                good.append((line, mimic.parse_labels_row(cells)))
            except chexpert.RowError as e:
                study = external.trim(loose.get(mimic.COL_STUDY))
                if study:
                    bad[study] = chexpert.RowError(e.reason, f"its study's labels row ({src.name} line {line}): "
                                                             f"{e.detail}")
        index, duplicates = mimic.index_study_labels(row for _, row in good)
        for dup in duplicates:
            bad[dup.study_id] = chexpert.RowError(
                "duplicate_labels", f"study {dup.study_id} has more than one row in {src.name}; which one holds is "
                                    "not known")
        return {k: v for k, v in index.items() if k not in bad}, bad

    def _splits(self) -> tuple[dict[str, str], dict[str, chexpert.RowError]]:
        """dicom id -> split; dicom id -> why its split row cannot be used."""
        if len(self.files) < 3:
            return {}, {}
        src = self.files[2]
        split_of: dict[str, str] = {}
        bad: dict[str, chexpert.RowError] = {}
        for line, cells, loose in self._table(src):
            dicom = external.trim(loose.get(mimic.COL_DICOM))
            try:
                if isinstance(cells, chexpert.RowError):
                    raise cells
                dicom, split = mimic.parse_split_row(cells)
                if split_of.get(dicom, split) != split:
                    raise chexpert.RowError(external.BAD_SPLIT, f"image {dicom} is listed as {split_of[dicom]} and "
                                                                f"as {split}")
                split_of[dicom] = split
            except chexpert.RowError as e:
                if dicom:
                    bad[dicom] = chexpert.RowError(e.reason, f"its split row ({src.name} line {line}): {e.detail}")
        return split_of, bad

    def rows(self) -> Iterator[DatasetRow | csv_reader.Reject]:
        labels, bad_labels = self._labels()
        split_of, bad_splits = self._splits()
        meta = self.label_file
        for line, cells, loose in self._table(meta):
            try:
                if isinstance(cells, chexpert.RowError):
                    raise cells
                study = external.trim(cells.get(mimic.COL_STUDY))
                dicom = external.trim(cells.get(mimic.COL_DICOM))
                if study in bad_labels:
                    raise bad_labels[study]
                if dicom in bad_splits:
                    raise bad_splits[dicom]
                row = mimic.join_row(cells, labels)
            except chexpert.RowError as e:
                yield csv_reader.Reject(meta.name, line, loose.get(mimic.COL_DICOM, ""), None, e.reason, e.detail)
                continue
            yield DatasetRow(meta.name, line, row, row.path, split_of.get(dicom) if self.official_split else None)

    def image_views(self) -> dict[str, str]:
        out = {}
        for _, _, loose in self._table(self.label_file):
            ids = [external.trim(loose.get(c)) for c in (mimic.COL_SUBJECT, mimic.COL_STUDY, mimic.COL_DICOM)]
            if all(ids):
                out[mimic.image_path(*ids)] = external.position_view(loose.get(mimic.COL_VIEW, ""))
        return out


_CLASSES = {nih.DATASET: NihDataset, mimic.DATASET: MimicDataset}


def _detect(folder: str, names: list[str]) -> tuple[str, str, list[str]]:
    """(format, dataset folder, its names): the folder itself, or its one child that holds
    a dataset."""
    try:
        return sources.detect_format(names, folder), folder, names
    except sources.FormatError as e:
        if "holds the label files of" in str(e):
            raise ConfigError(str(e)) from None
        first = e
    found = []
    for child in names:
        sub = posixpath.join(folder, child)
        sub_names = storage.children(sub)
        if not sub_names:
            continue
        try:
            found.append((sources.detect_format(sub_names, sub), sub, sub_names))
        except sources.FormatError:
            continue
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"{folder}: holds {len(found)} datasets ({', '.join(f[1] for f in found)}); "
                          "name one of them")
    raise ConfigError(str(first))


def find_dataset(folder: str, fmt: str | None = None) -> Dataset | None:
    """The dataset in ``folder`` (or in its one sub-folder that holds one).

    Args:
        folder: the dataset folder, or a folder above it.
        fmt: ``chexpert``, ``nih`` or ``mimic`` (``--format``); None to tell from the files.

    Returns:
        None for CheXpert, else an ``NihDataset`` or ``MimicDataset``.

    Raises:
        ConfigError: naming the folder (and ``--format``, the file): no such folder, no
            dataset or several, a format the folder does not hold, a label file whose header
            is not its format's, an image on both NIH lists, an unreadable file.
    """
    if fmt is not None and fmt not in sources.FORMATS:
        raise ConfigError(f"--format={fmt}: expected one of {', '.join(sources.FORMATS)}")
    names = storage.children(folder)
    if not names:
        state = "is empty" if storage.exists(folder) else "does not exist"
        raise ConfigError(f"{folder}: the dataset folder {state}")
    if fmt is None:
        fmt, folder, names = _detect(folder, names)
    elif not _present(names, sources.MARKERS[fmt]):
        below = [c for c in names if _present(storage.children(posixpath.join(folder, c)), sources.MARKERS[fmt])]
        if len(below) != 1:
            raise ConfigError(f"--format={fmt}: {folder} holds none of {', '.join(sources.MARKERS[fmt])}"
                              + (f" (nor does one folder below it: {len(below)} do)" if below else ""))
        folder = posixpath.join(folder, below[0])
        names = storage.children(folder)
    if fmt == sources.CHEXPERT:
        return None
    return _CLASSES[fmt](folder, names)
