r"""Generates a synthetic, CheXpert-shaped dataset with learnable pathology signal.

    python -m pipeline.make_sample --output_dir data/synthetic --num_patients 1000

writes exactly the layout of the real download::

    DIR/CheXpert-v1.0-small/train.csv
    DIR/CheXpert-v1.0-small/valid.csv
    DIR/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
    DIR/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg
    DIR/hidden_truth.csv        (not part of CheXpert: the generator's ground truth)

How the labels are made. Each study draws a hidden severity in [0, 1] for each of the 14
observations, and the image is drawn from those severities (heart width for cardiomegaly,
a basal fluid level for pleural effusion, a wedge of opacity for atelectasis, patchy blobs
for consolidation, perihilar haze for edema, tubes and lines for support devices, ...).
The label category is drawn first with the real train.csv's prevalence (``PREVALENCE``),
then the severity from the category's band:

    positive     truth 1, severity U(0.60, 1.00)
    negative     truth 0, severity U(0.00, 0.30)
    blank        truth 0, severity U(0.00, 0.30)   (the report did not mention it)
    uncertain    truth 1 with probability UNCERTAIN_TRUTH[obs]: severity U(0.50, 0.70),
                 else severity U(0.30, 0.50)

``UNCERTAIN_TRUTH`` is high for atelectasis (0.85) and edema (0.80), so `ones` should beat
`zeros` there, and low for consolidation (0.30). Cardiomegaly's uncertain cases are instead
a distinct middle band, severity U(0.40, 0.58) with truth = severity > 0.5, which a
3-class (`multiclass`) head can learn as its own class. The valid split is labelled like
the real one: only 1.0/0.0, from the truth. The truth and severities of every study go to
``hidden_truth.csv`` so experiments can compute the oracle.

Difficulty. By default each image shows its severities exactly, so a small CNN reaches
AUROC ~1.0 and every uncertainty policy looks alike. ``--signal_noise SIGMA`` draws each
image's *visible* severity per finding as ``clip(severity + N(0, SIGMA), 0, 1)``: the truth
then is no longer readable off the image near the band edges, which is where the policies
for uncertain labels differ (see benchmarks/uncertainty.py).

Deterministic for a seed: each patient draws from its own generator seeded by (seed,
patient number), so the output does not depend on the number of worker processes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import multiprocessing
import os
import sys
import time
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from schemas import chexpert

DATASET_DIR = "CheXpert-v1.0-small"
DATASET_DIR_FULL = "CheXpert-v1.0"
TRUTH_FILE = "hidden_truth.csv"
FIRST_VALID_PATIENT = 64541

# Fraction positive / negative / uncertain / blank per observation in the real train.csv.
PREVALENCE = {
    "no_finding": (0.100, 0.000, 0.000, 0.900),
    "enlarged_cardiomediastinum": (0.048, 0.097, 0.056, 0.799),
    "cardiomegaly": (0.121, 0.050, 0.036, 0.793),
    "lung_opacity": (0.473, 0.030, 0.025, 0.473),
    "lung_lesion": (0.041, 0.006, 0.007, 0.947),
    "edema": (0.234, 0.093, 0.058, 0.615),
    "consolidation": (0.066, 0.126, 0.124, 0.684),
    "pneumonia": (0.027, 0.013, 0.084, 0.876),
    "atelectasis": (0.149, 0.006, 0.151, 0.694),
    "pneumothorax": (0.087, 0.252, 0.014, 0.647),
    "pleural_effusion": (0.386, 0.158, 0.052, 0.404),
    "pleural_other": (0.016, 0.001, 0.012, 0.971),
    "fracture": (0.040, 0.011, 0.003, 0.945),
    "support_devices": (0.519, 0.027, 0.005, 0.448),
}
# P(truth positive | label uncertain). Cardiomegaly is handled as a band (see docstring).
UNCERTAIN_TRUTH = {slug: 0.5 for slug in chexpert.OBSERVATIONS}
UNCERTAIN_TRUTH.update(atelectasis=0.85, edema=0.80, consolidation=0.30, pneumonia=0.40)
CARDIOMEGALY_BAND = (0.40, 0.58)

FRONTAL_FRACTION = 0.855
AP_FRACTION = 0.846  # of frontal views
MALE_FRACTION = 0.59
MEAN_STUDIES_PER_PATIENT = 2.9
SMALL_FRONTAL_SIZE = (390, 320)  # PIL (width, height)
FULL_FRONTAL_SIZE = (2828, 2320)

_P = chexpert.Code.POSITIVE
_N = chexpert.Code.NEGATIVE
_U = chexpert.Code.UNCERTAIN
_B = chexpert.Code.BLANK
CODE_TEXT = {_P: "1.0", _N: "0.0", _U: "-1.0", _B: ""}
# hidden_truth.csv: the image, its split, then each observation's truth and severity.
TRUTH_HEADER = (["Path", "split"] + [f"truth_{s}" for s in chexpert.OBSERVATIONS]
                + [f"severity_{s}" for s in chexpert.OBSERVATIONS])


@dataclasses.dataclass
class Study:
    """One generated study: its labels, hidden truth and images."""

    patient: int
    number: int
    split: str
    sex: str
    age: int
    codes: np.ndarray  # int (14,)
    severity: np.ndarray  # float32 (14,)
    truth: np.ndarray  # int (14,)
    views: list[tuple[str, str]]  # (file name, AP/PA) per image


def draw_labels(rng: np.random.Generator, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws (codes, severity, truth) for one study; arrays of shape (14,)."""
    n = chexpert.NUM_OBSERVATIONS
    codes = np.full(n, _B, np.int64)
    sev = np.zeros(n, np.float32)
    truth = np.zeros(n, np.int64)
    normal = rng.random() < PREVALENCE["no_finding"][0]
    for i, slug in enumerate(chexpert.OBSERVATIONS):
        if slug == "no_finding":
            continue
        pos, neg, unc, _ = PREVALENCE[slug]
        if normal:
            # A normal study mentions a few negatives and nothing else.
            cat = _N if rng.random() < neg else _B
        else:
            # Scale up positives and uncertains so the marginals match with 10% normals.
            scale = 1.0 / (1.0 - PREVALENCE["no_finding"][0])
            r = rng.random()
            p, u = pos * scale, unc * scale
            cat = _P if r < p else _U if r < p + u else _N if r < p + u + neg else _B
        if cat == _P:
            sev[i], truth[i] = rng.uniform(0.60, 1.00), 1
        elif cat == _U:
            if slug == "cardiomegaly":
                sev[i] = rng.uniform(*CARDIOMEGALY_BAND)
                truth[i] = int(sev[i] > 0.5)
            elif rng.random() < UNCERTAIN_TRUTH[slug]:
                sev[i], truth[i] = rng.uniform(0.50, 0.70), 1
            else:
                sev[i] = rng.uniform(0.30, 0.50)
        else:
            sev[i] = rng.uniform(0.0, 0.30)
        codes[i] = cat
    nf = chexpert.OBSERVATION_INDEX["no_finding"]
    support = chexpert.OBSERVATION_INDEX["support_devices"]
    others = [i for i in range(n) if i not in (nf, support)]
    truth[nf] = int(not truth[others].any())
    if normal:
        codes[nf] = _P
    if split == "valid":
        # The valid set was labelled by radiologists: only 1.0/0.0, from the truth.
        codes = np.where(truth == 1, _P, _N).astype(np.int64)
    return codes, sev, truth


def make_patient(patient: int, split: str, seed: int) -> list[Study]:
    """All studies of one patient, deterministic for (seed, patient)."""
    rng = np.random.default_rng([seed, patient])
    r = rng.random()
    sex = "Male" if r < MALE_FRACTION else "Female" if r < 0.9995 else "Unknown"
    age = int(np.clip(rng.normal(61, 17), 18, 90)) if rng.random() > 0.002 else 0
    if split == "valid":
        n_studies = 1
    else:
        n_studies = int(min(rng.geometric(1.0 / MEAN_STUDIES_PER_PATIENT), 30))
    lateral_rate = (1 - FRONTAL_FRACTION) / FRONTAL_FRACTION  # laterals per frontal
    studies = []
    for k in range(1, n_studies + 1):
        codes, sev, truth = draw_labels(rng, split)
        views = []
        if rng.random() < 0.985:
            r = rng.random()
            proj = "AP" if r < AP_FRACTION else "PA" if r < 0.998 else ("LL" if r < 0.999 else "RL")
            views.append(("frontal", proj))
            if rng.random() < lateral_rate:
                views.append(("lateral", ""))
        else:
            views.append(("lateral", ""))
        files = [(f"view{j}_{kind}.jpg", proj) for j, (kind, proj) in enumerate(views, start=1)]
        studies.append(Study(patient, k, split, sex, min(age + k // 4, 90), codes, sev, truth, files))
    return studies


# --- Rendering ----------------------------------------------------------------------------

_NOISE: np.ndarray | None = None


def _noise_bank() -> np.ndarray:
    global _NOISE
    if _NOISE is None:
        _NOISE = np.random.default_rng(12345).normal(0.0, 5.0, (1024, 1024)).astype(np.float32)
    return _NOISE


def _add_ellipse(img, cx, cy, rx, ry, amp, soft=0.15):
    """Adds ``amp`` inside an ellipse (pixel units) with a soft rim; in place."""
    h, w = img.shape
    x0, x1 = max(int(cx - rx - 2), 0), min(int(cx + rx + 3), w)
    y0, y1 = max(int(cy - ry - 2), 0), min(int(cy + ry + 3), h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    img[y0:y1, x0:x1] += amp * np.clip((1.0 - d) / soft, 0.0, 1.0)


def _add_blob(img, cx, cy, r, amp):
    """Adds a Gaussian blob of radius ``r`` pixels; in place."""
    h, w = img.shape
    x0, x1 = max(int(cx - 2.5 * r), 0), min(int(cx + 2.5 * r) + 1, w)
    y0, y1 = max(int(cy - 2.5 * r), 0), min(int(cy + 2.5 * r) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    img[y0:y1, x0:x1] += amp * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * r * r)))


def render(study: Study, view: str, size: tuple[int, int], rng: np.random.Generator,
           signal_noise: float = 0.0) -> np.ndarray:
    """Draws one radiograph from the study's hidden severities.

    Args:
        study: the study (its ``severity`` drives every finding).
        view: ``frontal`` or ``lateral``.
        size: PIL (width, height) of the small image; full-size images are upsampled.
        rng: the image's generator (anatomy jitter, blob positions, noise offset).
        signal_noise: SD of the per-finding noise between hidden and visible severity.

    Returns:
        uint8 array (height, width).
    """
    severity = study.severity
    if signal_noise > 0:  # drawn only when asked: the default output stays byte-identical
        severity = np.clip(severity + rng.normal(0.0, signal_noise, severity.shape), 0.0, 1.0)
    s = {slug: float(v) for slug, v in zip(chexpert.OBSERVATIONS, severity)}
    w, h = size
    img = np.full((h, w), 18.0, np.float32)
    j = lambda scale: rng.normal(0.0, scale)  # noqa: E731 (anatomy jitter, in image fractions)
    _add_ellipse(img, w * (0.5 + j(0.01)), h * 0.56, w * (0.47 + j(0.01)), h * 0.56, 95.0, 0.05)
    frontal = view == "frontal"
    lungs = [(0.31, 0.47), (0.69, 0.47)] if frontal else [(0.52, 0.46)]
    lrx, lry = (0.15, 0.31) if frontal else (0.27, 0.32)
    for lx, ly in lungs:
        _add_ellipse(img, w * (lx + j(0.01)), h * (ly + j(0.01)), w * lrx, h * lry, -62.0, 0.25)
    # Heart: patient's left is the image's right on a frontal film; anterior on a lateral.
    hx, hy = (0.56, 0.66) if frontal else (0.36, 0.64)
    heart_rx = w * (0.085 + 0.11 * s["cardiomegaly"] + j(0.006))
    _add_ellipse(img, w * hx, h * hy, heart_rx, h * (0.11 + 0.04 * s["cardiomegaly"]), 58.0, 0.2)
    # Mediastinum width.
    _add_ellipse(img, w * 0.5, h * 0.36, w * (0.045 + 0.06 * s["enlarged_cardiomediastinum"]), h * 0.24, 40.0, 0.3)
    # Pleural effusion: a basal fluid level rising with severity, meniscus at the edges.
    eff = s["pleural_effusion"]
    if eff > 0.05:
        level = int(h * (0.80 - 0.30 * eff))
        for lx, _ in lungs:
            x0, x1 = int(w * (lx - lrx)), int(w * (lx + lrx))
            ramp = np.linspace(0.0, 1.0, max(int(h * 0.78) - level, 1), dtype=np.float32)[:, None]
            img[level : level + ramp.shape[0], x0:x1] += 55.0 * eff * np.minimum(ramp * 3.0, 1.0)
    # Atelectasis: a wedge of opacity in the lower lobe, larger and denser with severity.
    at = s["atelectasis"]
    if at > 0.05:
        lx = lungs[0][0] if frontal else lungs[0][0] + 0.05
        cx, cy = w * (lx + j(0.02)), h * (0.62 + j(0.02))
        for t in range(4):
            _add_ellipse(img, cx + t * w * 0.02, cy - t * h * 0.02, w * 0.10 * at, h * 0.05 * at + 2, 22.0 * at, 0.5)
    # Consolidation: dense patchy blobs at a random lung position.
    co = s["consolidation"]
    if co > 0.05:
        lx, ly = lungs[int(rng.integers(len(lungs)))]
        bx, by = w * (lx + rng.uniform(-0.07, 0.07)), h * (ly + rng.uniform(-0.12, 0.15))
        for _ in range(5):
            _add_blob(img, bx + rng.normal(0, w * 0.025), by + rng.normal(0, h * 0.025), w * 0.03, 32.0 * co)
    # Edema: bilateral perihilar haze.
    ed = s["edema"]
    if ed > 0.05:
        for lx, ly in lungs:
            _add_blob(img, w * (lx + (0.06 if lx < 0.5 else -0.06)), h * (ly + 0.02), w * 0.10, 30.0 * ed)
    # Lung opacity: diffuse haze over the lower lungs.
    lo = s["lung_opacity"]
    if lo > 0.05:
        for lx, ly in lungs:
            _add_blob(img, w * lx, h * (ly + 0.1), w * 0.12, 14.0 * lo)
    # Pneumonia: a patch in an upper zone.
    pn = s["pneumonia"]
    if pn > 0.05:
        lx, ly = lungs[-1]
        _add_blob(img, w * (lx + rng.uniform(-0.05, 0.05)), h * (ly - 0.12), w * 0.045, 28.0 * pn)
    # Lung lesion: a small round nodule.
    le = s["lung_lesion"]
    if le > 0.2:
        lx, ly = lungs[0]
        _add_ellipse(img, w * (lx + rng.uniform(-0.06, 0.06)), h * (ly + rng.uniform(-0.15, 0.1)),
                     w * 0.018 + 3 * le, w * 0.018 + 3 * le, 45.0 * le, 0.3)
    # Pneumothorax: a dark apical crescent with no lung markings.
    px = s["pneumothorax"]
    if px > 0.2:
        lx, ly = lungs[-1]
        _add_ellipse(img, w * (lx + 0.05), h * (ly - 0.2), w * 0.1 * px, h * 0.09 * px, -35.0 * px, 0.3)
    # Pleural other: thickening along the lateral wall.
    po = s["pleural_other"]
    if po > 0.2:
        _add_ellipse(img, w * 0.15, h * 0.45, w * 0.015 + 2, h * 0.2, 40.0 * po, 0.4)
    # Fracture: a bright callus on a rib.
    fr = s["fracture"]
    if fr > 0.2:
        _add_blob(img, w * rng.uniform(0.2, 0.8), h * rng.uniform(0.25, 0.45), w * 0.012 + 1, 70.0 * fr)
    img = np.clip(img * rng.uniform(0.92, 1.08) + _noise_sample(rng, h, w), 0, 255).astype(np.uint8)
    sd = s["support_devices"]
    if sd > 0.3:
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        lw = max(int(w / 130), 1)
        tube_x = w * (0.5 + j(0.01))
        draw.line([(tube_x, 0), (tube_x, h * (0.25 + 0.1 * sd))], fill=235, width=lw)  # ET tube
        if sd > 0.6:
            pts = [(w * 0.82, h * 0.2), (w * 0.65, h * 0.28), (w * 0.55, h * 0.45)]
            draw.line(pts, fill=225, width=lw)  # central line
        img = np.asarray(pil)
    return img


def _noise_sample(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    bank = _noise_bank()
    if h <= bank.shape[0] and w <= bank.shape[1]:
        y, x = rng.integers(0, bank.shape[0] - h + 1), rng.integers(0, bank.shape[1] - w + 1)
        return bank[y : y + h, x : x + w]
    reps = (-(-h // bank.shape[0]), -(-w // bank.shape[1]))
    return np.roll(np.tile(bank, reps), int(rng.integers(0, 1024)), axis=1)[:h, :w]


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """8-bit grayscale JPEG, as the real CheXpert files are."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --- Writing ------------------------------------------------------------------------------


def _write_patient(args) -> list[tuple[list[str], list[str]]]:
    """Renders and writes one patient's images; returns (csv row, truth row) per image."""
    root, dataset_dir, patient, split, seed, full_size, signal_noise = args
    rows = []
    for study in make_patient(patient, split, seed):
        rng = np.random.default_rng([seed, patient, study.number, 7])
        folder = os.path.join(root, dataset_dir, split, f"patient{patient:05d}", f"study{study.number}")
        os.makedirs(folder, exist_ok=True)
        for name, proj in study.views:
            view = "lateral" if "lateral" in name else "frontal"
            small = SMALL_FRONTAL_SIZE if view == "frontal" else SMALL_FRONTAL_SIZE[::-1]
            pixels = render(study, view, small, rng, signal_noise)
            if full_size:
                full = FULL_FRONTAL_SIZE if view == "frontal" else FULL_FRONTAL_SIZE[::-1]
                up = np.asarray(Image.fromarray(pixels).resize(full, Image.BICUBIC), np.float32)
                pixels = np.clip(up + _noise_sample(rng, full[1], full[0]), 0, 255).astype(np.uint8)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(encode_jpeg(pixels))
            rel = f"{dataset_dir}/{split}/patient{patient:05d}/study{study.number}/{name}"
            csv_row = [rel, study.sex, str(study.age), view.capitalize(), proj]
            csv_row += [CODE_TEXT[int(c)] for c in study.codes]
            truth_row = [rel, split] + [str(int(t)) for t in study.truth] + [f"{v:.4f}" for v in study.severity]
            rows.append((csv_row, truth_row))
    return rows


def print_progress(done: int, total: int, start: float) -> None:
    """A progress bar on stderr: live on a terminal, ten lines in a log file."""
    tty = sys.stderr.isatty()
    if not tty and done != total and done % max(total // 10, 1):
        return  # a log file gets ten lines, a terminal a live bar
    rate = done / max(time.perf_counter() - start, 1e-9)
    bar = "#" * int(30 * done / total)
    end = "\n" if done == total or not tty else ""
    print(f"\r  [{bar:<30}] {done}/{total} patients, {rate:.0f}/s", end=end, file=sys.stderr, flush=True)


def generate(
    output_dir: str,
    *,
    num_patients: int = 1000,
    num_valid_patients: int = 200,
    seed: int = 0,
    full_size: bool = False,
    workers: int | None = None,
    progress: bool = True,
    signal_noise: float = 0.0,
) -> str:
    """Writes a synthetic CheXpert under ``output_dir``.

    Args:
        output_dir: parent folder; the dataset lands in ``output_dir/CheXpert-v1.0-small``
            (``CheXpert-v1.0`` with ``full_size``).
        num_patients: train patients (about 2.9 studies and 3.4 images each).
        num_valid_patients: valid patients (one study each, as in the real valid.csv).
        seed: fixes every label and pixel.
        full_size: write ~2828x2320 originals instead of 390x320.
        workers: processes (default: all cores).
        progress: print a progress bar to stderr.
        signal_noise: SD of the noise between hidden and visible severities (0: exact).

    Returns:
        The dataset folder.
    """
    dataset_dir = DATASET_DIR_FULL if full_size else DATASET_DIR
    os.makedirs(os.path.join(output_dir, dataset_dir), exist_ok=True)
    if signal_noise < 0:
        raise ValueError(f"signal_noise={signal_noise}: expected >= 0")
    jobs = [(output_dir, dataset_dir, p, "train", seed, full_size, signal_noise) for p in range(1, num_patients + 1)]
    jobs += [
        (output_dir, dataset_dir, p, "valid", seed, full_size, signal_noise)
        for p in range(FIRST_VALID_PATIENT, FIRST_VALID_PATIENT + num_valid_patients)
    ]
    workers = workers or os.cpu_count() or 1
    results: list[list] = []
    start = time.perf_counter()
    if workers > 1 and len(jobs) > 50:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for i, rows in enumerate(pool.imap(_write_patient, jobs, chunksize=16), start=1):
                results.append(rows)
                if progress:
                    print_progress(i, len(jobs), start)
    else:
        for i, job in enumerate(jobs, start=1):
            results.append(_write_patient(job))
            if progress:
                print_progress(i, len(jobs), start)
    header = list(chexpert.CSV_COLUMNS)
    files = {
        "train": open(os.path.join(output_dir, dataset_dir, "train.csv"), "w", newline=""),
        "valid": open(os.path.join(output_dir, dataset_dir, "valid.csv"), "w", newline=""),
    }
    with files["train"], files["valid"], open(os.path.join(output_dir, TRUTH_FILE), "w", newline="") as tf_:
        writers = {k: csv.writer(f, lineterminator="\n") for k, f in files.items()}
        for wr in writers.values():
            wr.writerow(header)
        truth = csv.writer(tf_, lineterminator="\n")
        truth.writerow(TRUTH_HEADER)
        for job, rows in zip(jobs, results):
            for csv_row, truth_row in rows:
                writers[job[3]].writerow(csv_row)
                truth.writerow(truth_row)
    return os.path.join(output_dir, dataset_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.make_sample", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default="data/synthetic", help="Parent folder of CheXpert-v1.0-small.")
    parser.add_argument("--num_patients", type=int, default=1000, help="Train patients (~3.4 images each).")
    parser.add_argument("--num_valid_patients", type=int, default=200, help="Valid patients (1 study each).")
    parser.add_argument("--seed", type=int, default=0, help="Fixes every label and pixel.")
    parser.add_argument("--full_size", action="store_true", help="Write ~2828x2320 originals (CheXpert-v1.0).")
    parser.add_argument("--workers", type=int, default=None, help="Processes (default: all cores).")
    parser.add_argument("--signal_noise", type=float, default=0.0,
                        help="SD of the noise between each finding's hidden and visible severity (0: exact; "
                             "0.15 makes the uncertainty policies differ).")
    args = parser.parse_args(argv)
    for flag in ("num_patients", "num_valid_patients", "signal_noise"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} must be >= 0")
    start = time.perf_counter()
    try:
        path = generate(
            args.output_dir,
            num_patients=args.num_patients,
            num_valid_patients=args.num_valid_patients,
            seed=args.seed,
            full_size=args.full_size,
            workers=args.workers,
            signal_noise=args.signal_noise,
        )
    except OSError as e:  # an unwritable or full --output_dir, a file in the way: one line
        print(f"{parser.prog}: error: --output_dir={args.output_dir}: {e.strerror or e}"
              f"{f' ({e.filename})' if e.filename else ''}", file=sys.stderr)
        return 1
    print(f"wrote synthetic CheXpert to {path} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
