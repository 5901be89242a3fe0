r"""Generates synthetic NIH ChestX-ray14 and MIMIC-CXR-JPG datasets with make_sample's signal.

    python -m pipeline.make_external --format nih --output_dir data/synthetic_nih --num_patients 300
    python -m pipeline.make_external --format mimic --output_dir data/synthetic_mimic --num_patients 100

write the layouts of the real downloads (no real data is used; the layouts follow the
datasets' documentation, as ``schemas.nih`` and ``schemas.mimic`` read them)::

    DIR/ChestX-ray14/Data_Entry_2017.csv
    DIR/ChestX-ray14/train_val_list.txt, test_list.txt          (patient-level, ~20% test)
    DIR/ChestX-ray14/images_001/images/00000001_000.png ...     (up to 12 folders, as NIH's)

    DIR/mimic-cxr-jpg-2.0.0/mimic-cxr-2.0.0-metadata.csv.gz     (one row per image)
    DIR/mimic-cxr-jpg-2.0.0/mimic-cxr-2.0.0-chexpert.csv.gz     (one row per study)
    DIR/mimic-cxr-jpg-2.0.0/mimic-cxr-2.0.0-split.csv.gz        (train/validate/test by subject)
    DIR/mimic-cxr-jpg-2.0.0/files/p1X/p1XXXXXXX/s5XXXXXXX/<dicom_id>.jpg

    DIR/hidden_truth.csv        (not part of either dataset: the generator's truth per image)

Labels and pixels. Every study (an NIH follow-up visit, a MIMIC study) draws its CheXpert
codes, hidden severities and truth with ``make_sample.draw_labels`` (CheXpert's train.csv
prevalence) and its images with ``make_sample.render``, so a model trained on the synthetic
CheXpert sees the same findings drawn the same way here: the external sets differ in
layout, labels and quirks, not in what a finding looks like.

* NIH's labels are certain and mined from the truth: a finding NIH shares with CheXpert
  (``schemas.nih.MAPPING``: Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion,
  Pneumonia, Pneumothorax) is listed iff its truth is 1. NIH's own findings (Infiltration,
  Mass, Nodule, Emphysema, Fibrosis, Pleural_Thickening, Hernia) are drawn independently at
  NIH's prevalence and have no image signal. ``No Finding`` is NIH's: none of its 14 listed,
  which is not the generator's ``truth_no_finding`` where only an observation NIH does not
  label (lung opacity, a support device, ...) is present, as in the real dataset.
* MIMIC's labels are the CheXpert codes as drawn (1.0/0.0/-1.0/blank, uncertain included),
  one row per study, shared by the study's images.

Quirks, as the real files have them: NIH's header spells ``OriginalImage[Width,Height]``
unquoted (a CSV reader splits it) and ends in a comma its rows lack; ~10% of patients have
ages in the old ``058Y`` form (every row with ``--label_file sample_labels.csv``, whose header
spells the four size columns its own way); ~3% of NIH images are RGBA PNGs (alpha 255);
findings are ``|``-joined in alphabetical order. MIMIC's labels CSV has its columns in
alphabetical order; ~8% of studies hold two frontal images (PA and AP) and a lateral; the
lateral is ``LATERAL`` or ``LL``; ~3% of ViewPositions are blank or ``AP AXIAL``. Patient 1 of
NIH (its first image RGBA, its ages ``058Y``) and subject 1 of MIMIC (its first study PA, AP
and LATERAL) always show those quirks, so a set of any size has one of each.

Deterministic for a seed: each patient (subject) draws from its own generator seeded by
(seed, patient), so the output does not depend on the number of worker processes, and
patient N is the same whatever ``--num_patients``. Only NIH's folder boundaries depend on the
total (a new ``images_NNN`` every ceil(images / 12) images, at least 10).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip as gzip_lib
import io
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from core import cli, imaging
from pipeline import make_sample
from schemas import chexpert, mimic, nih

FORMATS = ("nih", "mimic")
NIH_DIR = "ChestX-ray14"
MIMIC_DIR = "mimic-cxr-jpg-2.0.0"
TRUTH_FILE = make_sample.TRUTH_FILE

# --- NIH ChestX-ray14 ---------------------------------------------------------------------

# CheXpert observation -> the NIH finding that labels it (No Finding is NIH's own rule).
_NIH_FINDING_OF = {slug: label for label, slug in nih.MAPPING if label and slug and label != nih.NO_FINDING}
# NIH's findings with no CheXpert counterpart, at their prevalence in Data_Entry_2017.csv.
NIH_ONLY_RATES = {"Infiltration": 0.177, "Mass": 0.052, "Nodule": 0.056, "Emphysema": 0.022,
                  "Fibrosis": 0.015, "Pleural_Thickening": 0.030, "Hernia": 0.002}
NIH_TEST_FRACTION = 0.2  # of patients
NIH_RGBA_FRACTION = 0.03  # of images
NIH_LEGACY_AGE_FRACTION = 0.10  # of patients: ages written 058Y
NIH_PA_FRACTION = 0.6
NIH_MALE_FRACTION = 0.565
NIH_MEAN_FOLLOW_UPS = 2.5
NIH_MAX_FOLLOW_UPS = 12
NIH_FOLDERS = 12
NIH_MIN_PER_FOLDER = 10
# OriginalImage width, height and pixel spacing (mm) as the real rows have them.
NIH_ORIGINALS = ((2500, 2048, 0.168), (2048, 2500, 0.168), (2992, 2991, 0.143), (2682, 2749, 0.143),
                 (3056, 2544, 0.139))
_NIH_SIZE_HEADER = "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
_NIH_HEADERS = {  # label file -> its header line, as the dataset ships it
    "Data_Entry_2017.csv": ",".join(nih.REQUIRED_COLUMNS) + "," + _NIH_SIZE_HEADER + ",",
    "Data_Entry_2017_v2020.csv": ",".join(nih.REQUIRED_COLUMNS) + "," + _NIH_SIZE_HEADER,
    "sample_labels.csv": ",".join(nih.CSV_COLUMNS),
}
assert set(_NIH_HEADERS) == set(nih.LABEL_FILES)


@dataclasses.dataclass(frozen=True)
class NihImage:
    """One NIH image (one follow-up visit): its row of the label CSV and its truth."""

    patient: int
    follow_up: int
    split: str  # nih.TRAIN_VAL or nih.TEST
    age: int
    legacy_age: bool  # written 058Y
    sex: str  # M or F
    view: str  # PA or AP
    original: tuple[int, int, float]  # width, height, pixel spacing
    findings: tuple[str, ...]  # NIH names, alphabetical, or ("No Finding",)
    rgba: bool
    severity: np.ndarray  # float32 (14,)
    truth: np.ndarray  # int (14,)

    @property
    def name(self) -> str:
        return f"{self.patient:08d}_{self.follow_up:03d}.png"


def plan_nih_patient(patient: int, seed: int) -> list[NihImage]:
    """All images of one NIH patient (no pixels yet), deterministic for (seed, patient)."""
    rng = np.random.default_rng([seed, patient])
    sex = "M" if rng.random() < NIH_MALE_FRACTION else "F"
    age = int(np.clip(rng.normal(47, 17), 1, 95))
    legacy_age = rng.random() < NIH_LEGACY_AGE_FRACTION or patient == 1
    split = nih.TEST if rng.random() < NIH_TEST_FRACTION else nih.TRAIN_VAL
    n = int(min(rng.geometric(1.0 / NIH_MEAN_FOLLOW_UPS), NIH_MAX_FOLLOW_UPS))
    images = []
    for k in range(n):
        _, severity, truth = make_sample.draw_labels(rng, "train")
        found = {label for slug, label in _NIH_FINDING_OF.items() if truth[chexpert.OBSERVATION_INDEX[slug]]}
        found |= {label for label, rate in NIH_ONLY_RATES.items() if rng.random() < rate}
        view = "PA" if rng.random() < NIH_PA_FRACTION else "AP"
        original = NIH_ORIGINALS[int(rng.integers(len(NIH_ORIGINALS)))]
        rgba = rng.random() < NIH_RGBA_FRACTION or (patient == 1 and k == 0)
        images.append(NihImage(patient, k, split, min(age + k // 3, 99), legacy_age, sex, view, original,
                               tuple(sorted(found)) or (nih.NO_FINDING,), rgba, severity, truth))
    return images


def encode_png(pixels: np.ndarray, rgba: bool = False) -> bytes:
    """8-bit grayscale PNG, or RGBA (the gray in R, G and B, alpha 255) as a few NIH files are."""
    image = Image.fromarray(pixels, mode="L")
    buf = io.BytesIO()
    (image.convert("RGBA") if rgba else image).save(buf, format="PNG")
    return buf.getvalue()


def _render(severity: np.ndarray, truth: np.ndarray, view: str, size: int, rng: np.random.Generator) -> np.ndarray:
    study = make_sample.Study(0, 0, "", "", 0, np.zeros_like(truth), severity, truth, [])
    return make_sample.render(study, view, (size, size), rng)


def _write_nih_patient(args) -> None:
    """Renders and writes one patient's PNGs: ``(dataset_dir, [(NihImage, folder)], seed, size)``."""
    dataset_dir, items, seed, size = args
    for image, folder in items:
        rng = np.random.default_rng([seed, image.patient, image.follow_up, 7])
        pixels = _render(image.severity, image.truth, "frontal", size, rng)
        os.makedirs(os.path.join(dataset_dir, folder), exist_ok=True)
        with open(os.path.join(dataset_dir, folder, image.name), "wb") as f:
            f.write(encode_png(pixels, image.rgba))


def _nih_row(image: NihImage, label_file: str) -> list[str]:
    width, height, spacing = image.original
    legacy = image.legacy_age or label_file == "sample_labels.csv"
    age = f"{image.age:03d}Y" if legacy else str(image.age)
    return [image.name, "|".join(image.findings), str(image.follow_up), str(image.patient), age, image.sex,
            image.view, str(width), str(height), f"{spacing:.3f}", f"{spacing:.3f}"]


def generate_nih(output_dir: str, *, num_patients: int = 100, seed: int = 0, image_size: int = 256,
                 label_file: str = "Data_Entry_2017.csv", official_split: bool = True, workers: int | None = None,
                 progress: bool = False) -> str:
    """Writes a synthetic NIH ChestX-ray14 under ``output_dir`` (see the module docstring).

    Args:
        output_dir: parent folder; the dataset lands in ``output_dir/ChestX-ray14`` and the
            truth in ``output_dir/hidden_truth.csv``.
        num_patients: patients (Patient ID 1..N, about 2.5 follow-ups and images each).
        seed: fixes every label and pixel.
        image_size: side of the square PNGs (NIH's are 1024).
        label_file: one of ``schemas.nih.LABEL_FILES``, written with that file's header.
        official_split: write ``train_val_list.txt`` and ``test_list.txt``.
        workers: processes (default: all cores). Pass 1 in a process that has loaded
            TensorFlow: the pool forks.
        progress: print a progress bar to stderr.

    Returns:
        The dataset folder.

    Raises:
        ValueError: a bad argument (naming it).
        OSError: ``output_dir`` not writable.
    """
    _check(num_patients, image_size)
    if label_file not in _NIH_HEADERS:
        raise ValueError(f"label_file={label_file!r}: expected one of {', '.join(nih.LABEL_FILES)}")
    dataset_dir = os.path.join(output_dir, NIH_DIR)
    os.makedirs(dataset_dir, exist_ok=True)
    plans = [plan_nih_patient(p, seed) for p in range(1, num_patients + 1)]
    total = sum(len(p) for p in plans)
    per_folder = max(NIH_MIN_PER_FOLDER, math.ceil(total / NIH_FOLDERS))
    folders: dict[str, str] = {}  # image name -> its folder, by position as NIH's
    jobs = []
    for plan in plans:
        items = []
        for image in plan:
            folders[image.name] = f"images_{len(folders) // per_folder + 1:03d}/images"
            items.append((image, folders[image.name]))
        jobs.append((dataset_dir, items, seed, image_size))
    _run(_write_nih_patient, jobs, workers, progress)

    images = [image for plan in plans for image in plan]
    with open(os.path.join(dataset_dir, label_file), "w", newline="") as f:
        f.write(_NIH_HEADERS[label_file] + "\n")
        csv.writer(f, lineterminator="\n").writerows(_nih_row(image, label_file) for image in images)
    if official_split:
        for name, split in ((nih.TRAIN_VAL_LIST, nih.TRAIN_VAL), (nih.TEST_LIST, nih.TEST)):
            with open(os.path.join(dataset_dir, name), "w", newline="") as f:
                f.writelines(f"{image.name}\n" for image in images if image.split == split)
    _write_truth(output_dir, ((f"{folders[i.name]}/{i.name}", i.split, i.truth, i.severity) for i in images))
    return dataset_dir


# --- MIMIC-CXR-JPG ------------------------------------------------------------------------

MIMIC_SPLITS = ((0.8, "train"), (0.9, "validate"), (1.0, "test"))  # cumulative, by subject
MIMIC_MEAN_STUDIES = 3.0
MIMIC_MAX_STUDIES = 10
MIMIC_TWO_FRONTALS = 0.08  # studies with PA, AP and a lateral
MIMIC_PA_LATERAL = 0.42  # PA and a lateral (CHEST (PA AND LAT))
MIMIC_AP_ONLY = 0.42  # a portable AP; the rest are AP and a lateral
MIMIC_LL_FRACTION = 0.10  # of laterals written LL rather than LATERAL
MIMIC_ODD_POSITION = 0.03  # of frontals whose ViewPosition is blank or AP AXIAL
_MIMIC_MODULUS = 9_999_991  # prime: i * k mod it is one-to-one, so ids are unique and look drawn
_VIEW_MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "AP AXIAL": "antero-posterior",
                  "LATERAL": "lateral", "LL": "left lateral", "": ""}
MIMIC_METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning")
assert set(mimic.METADATA_COLUMNS) <= set(MIMIC_METADATA_COLUMNS)
# PhysioNet's file has the 14 observations in alphabetical order, not CheXpert's.
MIMIC_LABEL_COLUMNS = (mimic.COL_SUBJECT, mimic.COL_STUDY) + tuple(sorted(chexpert.OBSERVATION_NAMES))


@dataclasses.dataclass(frozen=True)
class MimicStudy:
    """One MIMIC study: its labels row, truth and images ``(dicom_id, ViewPosition)``."""

    subject: int  # the generator's number, 1..N
    number: int  # 0.. within the subject
    subject_id: str
    study_id: str
    split: str
    date: str  # YYYYMMDD, shifted into the 22nd century as MIMIC's are
    time: str  # HHMMSS.fff
    procedure: str
    orientation: str
    images: tuple[tuple[str, str], ...]
    codes: np.ndarray  # int (14,), chexpert.OBSERVATIONS order
    severity: np.ndarray
    truth: np.ndarray


def mimic_subject_id(subject: int) -> str:
    """8 digits from 10000000: one-to-one in ``subject`` (1..~10M), spread over p10..p19."""
    return str(10_000_000 + subject * 4909 % _MIMIC_MODULUS)


def mimic_study_id(subject: int, number: int) -> str:
    """8 digits from 50000000, unique over every (subject, study number)."""
    return str(50_000_000 + (subject * MIMIC_MAX_STUDIES + number) * 7919 % _MIMIC_MODULUS)


def _lateral(rng: np.random.Generator) -> str:
    return "LL" if rng.random() < MIMIC_LL_FRACTION else "LATERAL"


def _frontal(rng: np.random.Generator, position: str) -> str:
    r = rng.random()
    return position if r >= MIMIC_ODD_POSITION else "" if r < MIMIC_ODD_POSITION / 2 else "AP AXIAL"


def plan_mimic_subject(subject: int, seed: int) -> list[MimicStudy]:
    """All studies of one MIMIC subject (no pixels yet), deterministic for (seed, subject)."""
    rng = np.random.default_rng([seed, subject])
    r = rng.random()
    split = next(name for cum, name in MIMIC_SPLITS if r < cum)
    n = int(min(rng.geometric(1.0 / MIMIC_MEAN_STUDIES), MIMIC_MAX_STUDIES))
    day = datetime.date(2110, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 80 * 365)))
    subject_id = mimic_subject_id(subject)
    studies = []
    for k in range(n):
        codes, severity, truth = make_sample.draw_labels(rng, "train")
        r = rng.random()
        if subject == 1 and k == 0:
            positions = ["PA", "AP", "LATERAL"]
        elif r < MIMIC_TWO_FRONTALS:
            positions = [_frontal(rng, "PA"), _frontal(rng, "AP"), _lateral(rng)]
        elif r < MIMIC_TWO_FRONTALS + MIMIC_PA_LATERAL:
            positions = [_frontal(rng, "PA"), _lateral(rng)]
        elif r < MIMIC_TWO_FRONTALS + MIMIC_PA_LATERAL + MIMIC_AP_ONLY:
            positions = [_frontal(rng, "AP")]
        else:
            positions = [_frontal(rng, "AP"), _lateral(rng)]
        erect = "PA" in positions
        procedure = "CHEST (PA AND LAT)" if erect else "CHEST (PORTABLE AP)"
        images = tuple(("-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, 5, dtype=np.uint64)), p)
                       for p in positions)
        seconds = int(rng.integers(0, 86400))
        clock = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.{int(rng.integers(1000)):03d}"
        studies.append(MimicStudy(subject, k, subject_id, mimic_study_id(subject, k), split, f"{day:%Y%m%d}", clock,
                                  procedure, "Erect" if erect else "Recumbent", images, codes, severity, truth))
        day += datetime.timedelta(days=int(rng.integers(1, 400)))
    return studies


def _mimic_view(position: str) -> str:
    """What to draw for a ViewPosition: a lateral for LATERAL/LL, else (blank too) a frontal."""
    return "lateral" if position in ("LATERAL", "LL") else "frontal"


def _write_mimic_subject(args) -> None:
    """Renders and writes one subject's JPEGs: ``(dataset_dir, [MimicStudy], seed, size)``."""
    dataset_dir, studies, seed, size = args
    for study in studies:
        for j, (dicom_id, position) in enumerate(study.images):
            rng = np.random.default_rng([seed, study.subject, study.number, j, 7])
            pixels = _render(study.severity, study.truth, _mimic_view(position), size, rng)
            path = os.path.join(dataset_dir, mimic.image_path(study.subject_id, study.study_id, dicom_id))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(make_sample.encode_jpeg(pixels, quality=95))


def _write_table(path: str, header: Sequence[str], rows, gzip: bool) -> None:
    """A CSV, or a gzip of it that is the same bytes for the same rows (no name or time inside)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode()
    with open(path + (".gz" if gzip else ""), "wb") as f:
        f.write(gzip_lib.compress(data, mtime=0) if gzip else data)


def generate_mimic(output_dir: str, *, num_subjects: int = 50, seed: int = 0, image_size: int = 256,
                   gzip: bool = True, workers: int | None = None, progress: bool = False) -> str:
    """Writes a synthetic MIMIC-CXR-JPG 2.0.0 under ``output_dir`` (see the module docstring).

    Args:
        output_dir: parent folder; the dataset lands in ``output_dir/mimic-cxr-jpg-2.0.0`` and
            the truth in ``output_dir/hidden_truth.csv``.
        num_subjects: subjects (about 3 studies and 5 images each).
        seed: fixes every label and pixel.
        image_size: side of the square JPEGs (MIMIC's are ~3000 px).
        gzip: write the three CSVs gzipped, as PhysioNet ships them (``.csv.gz``).
        workers: processes (default: all cores). Pass 1 in a process that has loaded
            TensorFlow: the pool forks.
        progress: print a progress bar to stderr.

    Returns:
        The dataset folder.

    Raises:
        ValueError: a bad argument (naming it).
        OSError: ``output_dir`` not writable.
    """
    _check(num_subjects, image_size, "num_subjects")
    dataset_dir = os.path.join(output_dir, MIMIC_DIR)
    os.makedirs(dataset_dir, exist_ok=True)
    plans = [plan_mimic_subject(s, seed) for s in range(1, num_subjects + 1)]
    _run(_write_mimic_subject, [(dataset_dir, plan, seed, image_size) for plan in plans], workers, progress)

    studies = sorted((study for plan in plans for study in plan), key=lambda s: (s.subject_id, s.study_id))
    metadata, split_rows = [], []
    for s in studies:
        for dicom_id, position in s.images:
            metadata.append([dicom_id, s.subject_id, s.study_id, s.procedure, position, image_size, image_size,
                             s.date, s.time, s.procedure, _VIEW_MEANINGS[position], s.orientation])
            split_rows.append([dicom_id, s.study_id, s.subject_id, s.split])
    code_of = {name: i for i, name in enumerate(chexpert.OBSERVATION_NAMES)}
    labels = [[s.subject_id, s.study_id] + [make_sample.CODE_TEXT[int(s.codes[code_of[n]])]
                                            for n in MIMIC_LABEL_COLUMNS[2:]] for s in studies]
    _write_table(os.path.join(dataset_dir, mimic.METADATA_FILES[0]), MIMIC_METADATA_COLUMNS, metadata, gzip)
    _write_table(os.path.join(dataset_dir, mimic.LABEL_FILES[0]), MIMIC_LABEL_COLUMNS, labels, gzip)
    _write_table(os.path.join(dataset_dir, mimic.SPLIT_FILES[0]), mimic.SPLIT_COLUMNS, split_rows, gzip)
    _write_truth(output_dir, ((mimic.image_path(s.subject_id, s.study_id, d), s.split, s.truth, s.severity)
                              for s in studies for d, _ in s.images))
    return dataset_dir


# --- Shared -------------------------------------------------------------------------------


def _check(count: int, image_size: int, name: str = "num_patients") -> None:
    if count < 0:
        raise ValueError(f"{name}={count}: expected >= 0")
    if image_size < imaging.MIN_SIDE:
        raise ValueError(f"image_size={image_size}: expected >= {imaging.MIN_SIDE} (the readers reject smaller)")


def _run(write: Callable, jobs: list, workers: int | None, progress: bool) -> None:
    """Runs ``write`` on every job, in a forked pool when there are enough (as make_sample)."""
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    if workers > 1 and len(jobs) > 50:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for i, _ in enumerate(pool.imap_unordered(write, jobs, chunksize=8), start=1):
                if progress:
                    make_sample.print_progress(i, len(jobs), start)
    else:
        for i, job in enumerate(jobs, start=1):
            write(job)
            if progress:
                make_sample.print_progress(i, len(jobs), start)


def _write_truth(output_dir: str, rows) -> None:
    """``hidden_truth.csv`` as make_sample writes it: path, split, truth and severity per image."""
    with open(os.path.join(output_dir, TRUTH_FILE), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(make_sample.TRUTH_HEADER)
        for path, split, truth, severity in rows:
            writer.writerow([path, split] + [str(int(t)) for t in truth] + [f"{v:.4f}" for v in severity])


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.job_parser("python -m pipeline.make_external", __doc__)
    parser.add_argument("--format", required=True, choices=FORMATS, help="Which dataset's layout to write.")
    parser.add_argument("--output_dir", required=True,
                        help=f"Parent folder of {NIH_DIR} or {MIMIC_DIR} (and of {TRUTH_FILE}).")
    parser.add_argument("--num_patients", type=int, default=None,
                        help="NIH patients (default 100, ~2.5 images each) or MIMIC subjects (default 50, "
                             "~5 images each).")
    parser.add_argument("--seed", type=int, default=0, help="Fixes every label and pixel.")
    parser.add_argument("--image_size", type=int, default=256, help="Side of the square images in pixels.")
    parser.add_argument("--label_file", default=None, choices=nih.LABEL_FILES,
                        help="NIH only: the label file's name, written with its own header "
                             "(default Data_Entry_2017.csv).")
    parser.add_argument("--workers", type=int, default=None, help="Processes (default: all cores).")
    args = parser.parse_args(argv)
    if args.num_patients is not None and args.num_patients < 0:
        parser.error(f"--num_patients={args.num_patients}: expected >= 0")
    if args.image_size < imaging.MIN_SIDE:
        parser.error(f"--image_size={args.image_size}: expected >= {imaging.MIN_SIDE}")
    if args.label_file and args.format != "nih":
        parser.error(f"--label_file is NIH's; --format={args.format} names its files itself")
    common = {"seed": args.seed, "image_size": args.image_size, "workers": args.workers, "progress": True}
    start = time.perf_counter()
    try:
        if args.format == "nih":
            path = generate_nih(args.output_dir, num_patients=100 if args.num_patients is None else args.num_patients,
                                label_file=args.label_file or nih.LABEL_FILES[0], **common)
        else:
            path = generate_mimic(args.output_dir, num_subjects=50 if args.num_patients is None else args.num_patients,
                                  **common)
    except OSError as e:  # an unwritable or full --output_dir, a file in the way: one line
        print(f"{parser.prog}: error: --output_dir={args.output_dir}: {e.strerror or e}"
              f"{f' ({e.filename})' if e.filename else ''}", file=sys.stderr)
        return 1
    name = "NIH ChestX-ray14" if args.format == "nih" else "MIMIC-CXR-JPG"
    print(f"wrote synthetic {name} to {path} (truth in {os.path.join(args.output_dir, TRUTH_FILE)}) "
          f"in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
