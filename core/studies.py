"""Study-level predictions in the CheXpert competition's format, and each input's view.

The competition scored studies, not images: a submission is one CSV row per study,
``Study,Atelectasis,Cardiomegaly,...`` with the study's P(positive) per observation, where
``Study`` is the study folder as the dataset names it
(``CheXpert-v1.0/valid/patient64541/study1``). ``trainer.predict`` (``predictions_studies.csv``)
and ``pipeline.score`` (``studies.csv`` in its snapshot) both write it with ``to_csv``.

Rules, the same in both writers:

* **Study id**: the image's path, as the caller named it, cut after CheXpert's
  ``patientNNNNN/studyM`` or MIMIC-CXR-JPG's ``pSUBJECT/sSTUDY`` (eight digits each:
  ``files/p10/p10000032/s50414267/DICOM.jpg``) (``study_of``). A path with no such folders
  (``scan.jpg``, ``incoming/img01.jpg``, NIH's ``images_001/images/00000001_000.png``: NIH
  has one image per follow-up, and no study folder) names no study: it is left out of the
  study CSV and counted (``StudyTable.outside``).
* **Probability**: the maximum over the study's *frontal* images, the CheXpert paper's rule
  (Irvin et al. 2019, section 4; ``trainer.evaluate`` does the same). Laterals and images of
  unknown view enter only when a study has no frontal image at all; such a study is still
  written, since a missing row would read as "not scored", and its ``basis`` says which views
  it rests on (``predictions.json``, the score manifest's counts).
* **View** (``input_view``): a DICOM ViewPosition tag first (the modality wrote it), then a
  CSV's Frontal/Lateral column when the input came from a CSV, then a CheXpert file name
  (``view<N>_frontal.jpg``); else ``unknown``. ``core.views`` reads the tag and the name.

Nothing here imports TensorFlow or Beam: the score launcher and the trainer share it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from typing import Iterable, Mapping, Sequence

from core import views
from schemas import chexpert

FRONTAL, LATERAL, UNKNOWN = views.FRONTAL, views.LATERAL, views.UNKNOWN
STUDY_COLUMN = "Study"
# ``.../patient00001/study1/FILE``: the folder pair CheXpert names every study by; MIMIC-CXR-JPG's
# ``.../p10000032/s50414267/FILE`` (subject and study ids of eight digits, as MIMIC writes
# them, so that a free ``p1/s2`` folder is no study). The prefix before them
# (``CheXpert-v1.0-small/valid/``, ``files/p10/``, an absolute folder) is kept, so studies of
# two splits or two copies of a dataset never merge.
_STUDY_RE = re.compile(r"^(?P<study>(?:.*/)?(?:patient\d+/study\d+|p\d{8}/s\d{8}))/[^/]+$")


def csv_view(cell: str | None) -> str:
    """A CheXpert CSV's ``Frontal/Lateral`` cell as a view; anything but the two values the
    dataset uses is ``unknown`` (the cell is the CSV's word, so its case is kept strict)."""
    text = (cell or "").strip()
    return {"Frontal": FRONTAL, "Lateral": LATERAL}.get(text, UNKNOWN)


def input_view(name: str, data: bytes | None = None, from_csv: str | None = None) -> str:
    """``frontal``, ``lateral`` or ``unknown`` for one input image.

    Args:
        name: the image's path (or file name).
        data: the file's bytes, for a DICOM header; None judges by the CSV and the name.
        from_csv: the view a CSV row gave it (``csv_view``), None when not listed by a CSV.

    Returns:
        The first of: the DICOM ViewPosition tag's view, the CSV's view, the view a
        CheXpert-style file name states; ``unknown`` when none of them says.
    """
    if data is not None:
        tagged = views.dicom_view(data, name)
        if tagged != UNKNOWN:
            return tagged
    if from_csv in (FRONTAL, LATERAL):
        return from_csv
    return views.name_view(name)


def study_of(path: str) -> str | None:
    """The study an image path names: CheXpert's ``.../valid/patient64541/study1``, MIMIC's
    ``.../files/p10/p10000032/s50414267``.

    Args:
        path: an image path as the caller gave it; backslashes count as separators.

    Returns:
        The path up to and including ``studyM`` (``sSTUDY``), or None when the file does not
        sit in a ``patientNNNNN/studyM`` (``pSUBJECT/sSTUDY``) folder.
    """
    m = _STUDY_RE.match(path.replace("\\", "/"))
    return m["study"] if m else None


@dataclasses.dataclass(frozen=True)
class Study:
    """One study's row.

    Attributes:
        study: the study id (``study_of``).
        probs: {task: P(positive)}, the max over the images in ``paths``.
        basis: the views the max was taken over: ``frontal``, or, for a study without a
            frontal image, its other views joined by ``+`` (``lateral``, ``lateral+unknown``).
        paths: the images that entered the max, sorted.
        left_out: the study's images that did not (its laterals when it has a frontal).
    """

    study: str
    probs: Mapping[str, float]
    basis: str
    paths: tuple[str, ...]
    left_out: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class StudyTable:
    """Studies sorted by id, and the image paths that name no study."""

    studies: tuple[Study, ...]
    outside: tuple[str, ...]

    @property
    def without_frontal(self) -> int:
        return sum(s.basis != FRONTAL for s in self.studies)


def aggregate(images: Iterable[tuple[str, str, Mapping[str, float]]], tasks: Sequence[str],
              study_ids: Mapping[str, str] | None = None) -> StudyTable:
    """Groups per-image probabilities into studies (max over frontal images).

    Args:
        images: ``(path, view, {task: P(positive)})`` per scored image; ``view`` is one of
            ``frontal``, ``lateral``, ``unknown``.
        tasks: the observation slugs to aggregate (each image has all of them).
        study_ids: {path: study} where a dataset's own files name the study (NIH's
            ``PATIENT/FOLLOWUP``, which no folder states); other paths by ``study_of``.

    Returns:
        A ``StudyTable``.
    """
    groups: dict[str, list[tuple[str, str, Mapping[str, float]]]] = {}
    outside = []
    for path, view, probs in images:
        study = (study_ids or {}).get(path) or study_of(path)
        if study is None:
            outside.append(path)
        else:
            groups.setdefault(study, []).append((path, view, probs))
    studies = []
    for study in sorted(groups):
        items = sorted(groups[study], key=lambda item: item[0])
        frontal = [item for item in items if item[1] == FRONTAL]
        used = frontal or items
        basis = FRONTAL if frontal else "+".join(sorted({item[1] for item in items}))
        studies.append(Study(
            study=study,
            probs={t: max(float(item[2][t]) for item in used) for t in tasks},
            basis=basis,
            paths=tuple(item[0] for item in used),
            left_out=tuple(item[0] for item in items if frontal and item[1] != FRONTAL),
        ))
    return StudyTable(tuple(studies), tuple(sorted(outside)))


def to_csv(table: StudyTable, tasks: Sequence[str]) -> str:
    """The competition's CSV: ``Study`` and the observations' display names, in ``tasks``'
    order, six decimals (as scores.csv and predictions.csv), ``\\n`` line ends."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([STUDY_COLUMN] + [chexpert.SLUG_TO_NAME[t] for t in tasks])
    for s in table.studies:
        writer.writerow([s.study] + [f"{s.probs[t]:.6f}" for t in tasks])
    return buf.getvalue()


def summary(table: StudyTable) -> str:
    """One sentence for a console: how many studies, and what was left out or fell back."""
    text = f"{len(table.studies)} studies (max over frontal images)"
    if table.without_frontal:
        text += f", {table.without_frontal} without a frontal image (max over their other views)"
    if table.outside:
        text += (f"; {len(table.outside)} image(s) not in a .../patientNNNNN/studyM/ folder (nor MIMIC's "
                 ".../pSUBJECT/sSTUDY/) left out of the study CSV")
    return text


def model_data(provenance: Mapping | None) -> str:
    """``synthetic``, ``real`` or ``unknown``: what the model was trained on, for each output
    row (``pipeline.score``'s scores.csv, ``trainer.predict``'s predictions.csv).

    Args:
        provenance: a job config's ``provenance`` (``trainer.config.provenance_of``); empty
            or None for a job from before provenance was recorded.
    """
    if not provenance:
        return "unknown"
    return "synthetic" if provenance.get("synthetic") else "real"
