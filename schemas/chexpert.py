"""CheXpert's CSV: columns, observations, label codes and uncertainty policies.

Everything that the records job writes and the trainer reads is named here once. The CSV
columns are addressed by name (never by position), and the 14 observations are kept in the
CSV's own order, which is also the order of every per-observation vector in a record.

Label codes as stored in records (int64):
    POSITIVE = 1   ("1.0" or "1" in the CSV)
    NEGATIVE = 0   ("0.0" or "0")
    UNCERTAIN = -1 ("-1.0" or "-1")
    BLANK = -2     (empty cell: the report did not mention the observation)

An uncertainty policy maps each code to a target and a loss mask. Every policy here is one
row of ``POLICY_TABLE``: for each code a ``(low, high, mask, from_labeller)`` entry, and the
target is ``low + draw * (high - low)`` where ``draw`` is a per-record uniform number in
[0, 1) stored with the record. Deterministic policies have ``low == high``; label smoothing
(``lsr_*``) has a range. ``self_trained`` (U-SelfTrained, the CheXpert paper's) is the one
entry with ``from_labeller = 1``: its draw is the labeller model's probability stored with the
record (``labels/teacher``), so the target *is* that probability; where a record has no
labeller value (-1) the entry is masked, i.e. ``ignore``. The numpy writer
(``apply_policy``) and the tf.data reader (``schemas.example_tf.policy_targets``) both
evaluate this one table, so a record parsed with a policy gives exactly the targets the
records job wrote for it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import re
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

# 2: records carry labels/teacher (U-SelfTrained); readers of version 1 records default it.
SCHEMA_VERSION = 2

# --- CSV layout -------------------------------------------------------------------------

COL_PATH = "Path"
COL_SEX = "Sex"
COL_AGE = "Age"
COL_VIEW = "Frontal/Lateral"
COL_PROJECTION = "AP/PA"
META_COLUMNS = (COL_PATH, COL_SEX, COL_AGE, COL_VIEW, COL_PROJECTION)

# Display name in the CSV header -> stable slug used in flags, records and model outputs.
# The order is the CSV's and must never change: record vectors are indexed by it.
_OBSERVATIONS = (
    ("No Finding", "no_finding"),
    ("Enlarged Cardiomediastinum", "enlarged_cardiomediastinum"),
    ("Cardiomegaly", "cardiomegaly"),
    ("Lung Opacity", "lung_opacity"),
    ("Lung Lesion", "lung_lesion"),
    ("Edema", "edema"),
    ("Consolidation", "consolidation"),
    ("Pneumonia", "pneumonia"),
    ("Atelectasis", "atelectasis"),
    ("Pneumothorax", "pneumothorax"),
    ("Pleural Effusion", "pleural_effusion"),
    ("Pleural Other", "pleural_other"),
    ("Fracture", "fracture"),
    ("Support Devices", "support_devices"),
)
OBSERVATION_NAMES: tuple[str, ...] = tuple(name for name, _ in _OBSERVATIONS)
OBSERVATIONS: tuple[str, ...] = tuple(slug for _, slug in _OBSERVATIONS)
NUM_OBSERVATIONS = len(OBSERVATIONS)
SLUG_TO_NAME = dict(zip(OBSERVATIONS, OBSERVATION_NAMES))
NAME_TO_SLUG = dict(zip(OBSERVATION_NAMES, OBSERVATIONS))
OBSERVATION_INDEX = {slug: i for i, slug in enumerate(OBSERVATIONS)}

CSV_COLUMNS: tuple[str, ...] = META_COLUMNS + OBSERVATION_NAMES

# The five tasks of the CheXpert competition, in the paper's order.
COMPETITION_TASKS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion")

SEXES = ("Male", "Female", "Unknown")
VIEWS = ("Frontal", "Lateral")
# Lateral images carry an empty AP/PA cell; LL and RL are lateral decubitus projections.
PROJECTIONS = ("AP", "PA", "LL", "RL", "")

# --- Label codes --------------------------------------------------------------------------


class Code(enum.IntEnum):
    """Raw label codes as stored in records (``labels/raw``)."""

    BLANK = -2
    UNCERTAIN = -1
    NEGATIVE = 0
    POSITIVE = 1


# Column index of each code in POLICY_TABLE rows: code + 2.
CODE_OFFSET = 2
CODES = (Code.BLANK, Code.UNCERTAIN, Code.NEGATIVE, Code.POSITIVE)


class RowError(ValueError):
    """A CSV row that cannot become a record.

    Attributes:
        reason: a short machine-readable slug (``bad_label``, ``bad_age``, ...) used for
            Beam counters and the dead-letter output.
        detail: a human sentence naming the column and the offending value.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# The two reasons a file named by a CSV row or a command line has no image, in every job's
# dead letters and failure lists (build_records, score, trainer.evaluate, trainer.predict).
MISSING_FILE = "missing_file"  # no such file
UNREADABLE_FILE = "unreadable_file"  # the file is there, but reading it failed (permissions, I/O)


def unreadable_reason(exists: bool) -> str:
    """``MISSING_FILE`` or ``UNREADABLE_FILE`` for a file whose read raised ``OSError``."""
    return UNREADABLE_FILE if exists else MISSING_FILE


class CsvHeaderError(ValueError):
    """The CSV header lacks a required column or has one this schema does not know."""


_LABEL_VALUES = {1.0: Code.POSITIVE, 0.0: Code.NEGATIVE, -1.0: Code.UNCERTAIN}
# Codes and ages are ASCII digits only, trimmed of ASCII whitespace only: Python's float() and
# str.strip() also take full-width or Arabic-Indic digits and non-breaking spaces, which no
# CheXpert export writes; a cell holding them has been through something that needs a look.
_ASCII_SPACE = " \t\r\n\v\f"
_LABEL_RE = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
_AGE_RE = re.compile(r"[+-]?[0-9]+(?:\.[0-9]*)?")
# C0, DEL and C1 control characters: never part of a CheXpert path; a NUL would also end a
# path early in C and raise "embedded null byte" in Python's os calls.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A path that normalize_path returns unchanged: relative, no empty, "." or ".." segment, no
# drive, backslash, space or control character. Every CheXpert path is one; the check is a
# quarter of the cost of the general case, which runs for 224k rows at every scan.
_PLAIN_PATH_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)*")


def _trim(text: str | None) -> str:
    return (text or "").strip(_ASCII_SPACE)


def parse_label(text: str | None, column: str = "label") -> Code:
    """Parses one observation cell.

    Accepts ``1.0``, ``0.0``, ``-1.0`` (the official CSV), ``1``, ``0``, ``-1`` (circulating
    copies) and blank, in ASCII digits; surrounding ASCII whitespace is ignored.

    Args:
        text: the cell's text; ``None`` (a missing cell) counts as blank.
        column: the column name, for the error message.

    Returns:
        The ``Code``.

    Raises:
        RowError: ``bad_label`` for anything else (``"2"``, ``"yes"``, ``"nan"``, full-width
            or Arabic-Indic digits, a non-breaking space, ...).
    """
    s = _trim(text)
    if not s:
        return Code.BLANK
    if _LABEL_RE.fullmatch(s):
        code = _LABEL_VALUES.get(float(s))
        if code is not None:
            return code
    raise RowError("bad_label", f"column {column!r} has {text!r}; expected 1.0, 0.0, -1.0 or blank")


def check_header(fieldnames: Sequence[str] | None, source: str) -> None:
    """Fails fast on a CSV whose columns are not CheXpert's.

    Args:
        fieldnames: the header as read by ``csv.DictReader``.
        source: the file name, for the message.

    Raises:
        CsvHeaderError: naming every missing and every unknown column.
    """
    check_columns(fieldnames, source, CSV_COLUMNS)


def check_columns(fieldnames: Sequence[str] | None, source: str, required: Sequence[str],
                  known: Collection[str] = (), *, allow_unknown: bool = False, allow_trailing_empty: bool = False,
                  clean: Callable[[str], str] = str.strip) -> None:
    """Fails fast on a CSV header that is not its format's (CheXpert's, or an external
    dataset's: ``schemas.external``).

    Args:
        fieldnames: the header's cells.
        source: the file name, for the message.
        required: columns that must be there.
        known: further columns that may be there.
        allow_unknown: accept columns in neither list.
        allow_trailing_empty: accept empty cells at the end (a trailing comma).
        clean: how a header cell is trimmed before it is compared.

    Raises:
        CsvHeaderError: naming every missing, unknown and duplicate column.
    """
    if not fieldnames:
        raise CsvHeaderError(f"{source}: empty file, expected a header with {', '.join(required)}")
    present = [clean(f) for f in fieldnames]
    while allow_trailing_empty and present and not present[-1]:
        present.pop()
    missing = [c for c in required if c not in present]
    unknown = [] if allow_unknown else [c for c in present if c not in required and c not in known]
    dupes = sorted({c for c in present if present.count(c) > 1})
    problems = []
    if missing:
        problems.append("missing column(s) " + ", ".join(repr(c) for c in missing))
    if unknown:
        problems.append("unknown column(s) " + ", ".join(repr(c) for c in unknown))
    if dupes:
        problems.append("duplicate column(s) " + ", ".join(repr(c) for c in dupes))
    if problems:
        raise CsvHeaderError(f"{source}: " + "; ".join(problems))


# --- Rows ---------------------------------------------------------------------------------

# train/patient00001/study1/view1_frontal.jpg (the folder before train/ is the dataset's).
_PATH_RE = re.compile(r"(?:^|/)(?P<patient>patient\d+)/(?P<study>study\d+)/(?P<file>[^/]+)$")


@dataclasses.dataclass(frozen=True)
class Row:
    """One validated CSV row.

    Attributes:
        path: the CSV's ``Path``, normalised to forward slashes; the record's key.
        patient_id: e.g. ``patient00001``.
        study_id: e.g. ``patient00001/study1``.
        sex: one of ``SEXES``.
        age: years, 0-120.
        view: ``frontal`` or ``lateral``.
        projection: one of ``PROJECTIONS``.
        codes: int8 array of shape (14,), ``Code`` values in ``OBSERVATIONS`` order.
    """

    path: str
    patient_id: str
    study_id: str
    sex: str
    age: int
    view: str
    projection: str
    codes: tuple[int, ...]


def normalize_path(raw: str) -> str:
    """Normalises a CSV path and refuses any that could leave the dataset folder.

    Raises:
        RowError: ``bad_path`` for empty, absolute or ``..``-escaping paths, and for paths
            holding a control character.
    """
    if _PLAIN_PATH_RE.fullmatch(raw):
        return raw
    p = _trim(raw).replace("\\", "/")
    if not p:
        raise RowError("bad_path", "column 'Path' is empty")
    if m := _CONTROL_RE.search(p):
        raise RowError("bad_path", f"Path {raw!r} holds a control character (U+{ord(m.group()):04X}) at "
                                   f"position {m.start()}")
    if p.startswith("/") or re.match(r"^[A-Za-z]:", p) or "://" in p:
        raise RowError("bad_path", f"Path {raw!r} is absolute; paths must be relative to the input folder")
    parts = [x for x in p.split("/") if x not in ("", ".")]
    if ".." in parts:
        raise RowError("bad_path", f"Path {raw!r} contains '..' and could escape the input folder")
    return "/".join(parts)


def parse_row(row: Mapping[str, str | None]) -> Row:
    """Validates one CSV row's cells.

    Args:
        row: column name -> cell text (``records.CsvRow.cells``); cells are trimmed of ASCII
            whitespace only.

    Returns:
        A ``Row``.

    Raises:
        RowError: with the first problem found (``bad_path``, ``bad_sex``, ``bad_age``,
            ``bad_view``, ``bad_projection``, ``bad_label``).
    """
    path = normalize_path(row.get(COL_PATH) or "")
    m = _PATH_RE.search(path)
    if not m:
        raise RowError("bad_path", f"Path {path!r} is not of the form .../patientNNNNN/studyN/FILE")
    sex = _trim(row.get(COL_SEX)) or "Unknown"
    if sex not in SEXES:
        raise RowError("bad_sex", f"column 'Sex' has {row.get(COL_SEX)!r}; expected Male, Female or Unknown")
    age_text = _trim(row.get(COL_AGE))
    if not _AGE_RE.fullmatch(age_text):
        raise RowError("bad_age", f"column 'Age' has {row.get(COL_AGE)!r}, not a number in ASCII digits")
    age_f = float(age_text)
    if not math.isfinite(age_f) or age_f < 0 or age_f > 120 or age_f != int(age_f):
        raise RowError("bad_age", f"column 'Age' has {row.get(COL_AGE)!r}; expected whole years 0-120")
    view = _trim(row.get(COL_VIEW))
    if view not in VIEWS:
        raise RowError("bad_view", f"column 'Frontal/Lateral' has {row.get(COL_VIEW)!r}; expected Frontal or Lateral")
    projection = _trim(row.get(COL_PROJECTION))
    if projection not in PROJECTIONS:
        raise RowError(
            "bad_projection", f"column 'AP/PA' has {row.get(COL_PROJECTION)!r}; expected AP, PA, LL, RL or blank"
        )
    codes = tuple(int(parse_label(row.get(name), name)) for name in OBSERVATION_NAMES)
    return Row(
        path=path,
        patient_id=m["patient"],
        study_id=f"{m['patient']}/{m['study']}",
        sex=sex,
        age=int(age_f),
        view=view.lower(),
        projection=projection,
        codes=codes,
    )


# --- Uncertainty policies -------------------------------------------------------------------

BLANK_POLICIES = ("negative", "ignore")

# (low, high, mask, from_labeller) for BLANK, UNCERTAIN, NEGATIVE, POSITIVE (column = code +
# CODE_OFFSET). BLANK's entry is the "blank = negative" default; --blank=ignore overrides its
# mask to 0. `multiclass` targets are class indices: 0 negative, 1 positive, 2 uncertain.
_NEG = (0.0, 0.0, 1.0, 0.0)
_POS = (1.0, 1.0, 1.0, 0.0)
_MASKED = (0.0, 0.0, 0.0, 0.0)
POLICY_TABLE: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "ignore": (_NEG, _MASKED, _NEG, _POS),
    "zeros": (_NEG, _NEG, _NEG, _POS),
    "ones": (_NEG, _POS, _NEG, _POS),
    "multiclass": (_NEG, (2.0, 2.0, 1.0, 0.0), _NEG, _POS),
    # Label-smoothing regularisation (Pham et al. 2019): uncertain -> U(0.55, 0.85) / U(0, 0.3).
    "lsr_ones": (_NEG, (0.55, 0.85, 1.0, 0.0), _NEG, _POS),
    "lsr_zeros": (_NEG, (0.0, 0.3, 1.0, 0.0), _NEG, _POS),
    # U-SelfTrained: uncertain -> the labeller's P(positive); known labels stay as they are.
    "self_trained": (_NEG, (0.0, 1.0, 1.0, 1.0), _NEG, _POS),
}
TABLE_COLUMNS = ("low", "high", "mask", "from_labeller")
# Policies whose targets need a labeller's probabilities stored in the records.
LABELLER_POLICIES = ("self_trained",)
POLICIES = tuple(POLICY_TABLE)
NO_LABELLER_VALUE = -1.0  # labels/teacher where no labeller value was stored
MULTICLASS = "multiclass"
NUM_CLASSES_MULTICLASS = 3

# The CheXpert paper's final choice per competition task; the other nine use `ones`.
DEFAULT_POLICY = {slug: "ones" for slug in OBSERVATIONS}
DEFAULT_POLICY.update(
    atelectasis="ones",
    edema="ones",
    cardiomegaly="multiclass",
    pleural_effusion="multiclass",
    consolidation="self_trained",
)
# What `self_trained` falls back to while no labeller exists.
SELF_TRAINED_FALLBACK = "ignore"


class PolicyError(ValueError):
    """A --policy or --blank value this schema does not know, or cannot apply yet."""


def parse_policy_overrides(spec: str | None) -> dict[str, str]:
    """Parses ``"atelectasis=ones,cardiomegaly=multiclass"``.

    Returns:
        slug -> policy name, only for the observations named.

    Raises:
        PolicyError: naming the bad item.
    """
    out: dict[str, str] = {}
    if not spec:
        return out
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise PolicyError(f"--policy item {item!r} is not OBSERVATION=POLICY")
        slug, policy = (x.strip().lower() for x in item.split("=", 1))
        slug = slug.replace(" ", "_")  # lower-cased display names ("pleural effusion") are slugs
        if slug not in OBSERVATION_INDEX:
            raise PolicyError(f"--policy names unknown observation {slug!r}; known: {', '.join(OBSERVATIONS)}")
        if policy not in POLICIES:
            raise PolicyError(f"--policy {slug}={policy}: unknown policy; known: {', '.join(POLICIES)}")
        out[slug] = policy
    return out


def resolve_policies(
    overrides: Mapping[str, str] | None = None, *, have_labeller: bool = False
) -> dict[str, str]:
    """The policy for each of the 14 observations: defaults, then the user's overrides.

    ``self_trained`` needs a labeller. Where it is only the default (Consolidation) and no
    labeller is given, it falls back to ``SELF_TRAINED_FALLBACK``; where the user asked for it
    explicitly, that is an error rather than a silent change of the experiment.

    Args:
        overrides: slug -> policy (``parse_policy_overrides``).
        have_labeller: a labeller model will supply the ``self_trained`` targets.

    Returns:
        slug -> a policy name in ``POLICY_TABLE``, for all 14 observations in order.

    Raises:
        PolicyError: an explicit ``self_trained`` without a labeller.
    """
    overrides = dict(overrides or {})
    out = {}
    for slug in OBSERVATIONS:
        policy = overrides.get(slug, DEFAULT_POLICY[slug])
        if policy in LABELLER_POLICIES and not have_labeller:
            if slug in overrides:
                raise PolicyError(
                    f"--policy {slug}=self_trained needs a labeller: build the records with "
                    "`python -m pipeline.build_records --labeller JOB_DIR` (a trainer.task job trained with "
                    f"{slug}=ignore), or use ignore, zeros, ones, multiclass, lsr_ones or lsr_zeros"
                )
            policy = SELF_TRAINED_FALLBACK
        out[slug] = policy
    return out


def labelled_observations(policies: Mapping[str, str]) -> tuple[str, ...]:
    """The observations whose targets come from a labeller, in CSV order."""
    return tuple(s for s in OBSERVATIONS if policies.get(s) in LABELLER_POLICIES)


def policy_matrix(policies: Mapping[str, str], blank: str = "negative") -> np.ndarray:
    """The lookup table for a full mapping, as one float32 array.

    Args:
        policies: slug -> policy name for all 14 observations (``resolve_policies``).
        blank: ``negative`` (blank counts as a known negative) or ``ignore`` (masked).

    Returns:
        float32 array of shape (14, 4, 4): [observation, code + CODE_OFFSET,
        (low, high, mask, from_labeller)].

    Raises:
        PolicyError: unknown policy or blank mode.
    """
    if blank not in BLANK_POLICIES:
        raise PolicyError(f"--blank={blank!r}; expected one of {', '.join(BLANK_POLICIES)}")
    table = np.zeros((NUM_OBSERVATIONS, len(CODES), len(TABLE_COLUMNS)), np.float32)
    for i, slug in enumerate(OBSERVATIONS):
        policy = policies[slug]
        if policy not in POLICY_TABLE:
            raise PolicyError(f"policy {policy!r} for {slug} cannot be applied from the table")
        table[i] = POLICY_TABLE[policy]
        if blank == "ignore":
            table[i, Code.BLANK + CODE_OFFSET, 2] = 0.0
    return table


def no_labeller_values(shape: tuple[int, ...] = (NUM_OBSERVATIONS,)) -> np.ndarray:
    """float32 ``labels/teacher`` for records without labeller values: all ``NO_LABELLER_VALUE``."""
    return np.full(shape, NO_LABELLER_VALUE, np.float32)


def apply_policy(
    codes: np.ndarray, draws: np.ndarray, table: np.ndarray, labeller: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Maps raw codes to targets and loss masks (numpy; the writer's side).

    Args:
        codes: int array (..., 14) of ``Code`` values.
        draws: float32 array (..., 14), uniform in [0, 1): the record's ``labels/draw``.
        table: float32 (14, 4, 4) from ``policy_matrix``.
        labeller: float32 (..., 14) ``labels/teacher``: a labeller's P(positive), or
            ``NO_LABELLER_VALUE``; None means no labeller values at all.

    Returns:
        ``(targets, mask)``, both float32 of shape (..., 14).
    """
    codes = np.asarray(codes, np.int64)
    draws = np.asarray(draws, np.float32)
    labeller = no_labeller_values(draws.shape) if labeller is None else np.asarray(labeller, np.float32)
    entry = table[np.arange(NUM_OBSERVATIONS), codes + CODE_OFFSET]  # (..., 14, 4)
    low, high, mask, from_labeller = (entry[..., k] for k in range(4))
    use_labeller = from_labeller > 0
    have = labeller >= 0.0
    source = np.where(use_labeller, np.where(have, labeller, 0.0), draws).astype(np.float32)
    targets = low + source * (high - low)
    mask = np.where(use_labeller & ~have, 0.0, mask)  # no labeller value: ignore
    return targets.astype(np.float32), mask.astype(np.float32)


def draws_for(path: str, seed: int = 0) -> np.ndarray:
    """The record's uniform draws for label smoothing, fixed by its path and the seed.

    Stable across runs, runners and machines (sha512, not Python's salted ``hash``), so a
    rebuild gives byte-identical records. Each draw is 24 bits of the digest over 2**24,
    exactly representable in float32 and strictly below 1.

    Returns:
        float32 array (14,) in [0, 1).
    """
    digest = hashlib.sha512(f"{seed}:{path}".encode()).digest()
    words = np.frombuffer(digest, "<u4")[:NUM_OBSERVATIONS]
    return ((words >> 8).astype(np.float32) / np.float32(2**24)).astype(np.float32)


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: split assignment by patient id."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
