r"""Scores image files with a trained job; optional Grad-CAM heatmaps.

    python -m trainer.predict --job_dir jobs/atelectasis xray1.jpg scans/ study.dcm
    python -m trainer.predict --job_dir jobs/atelectasis --heatmap atelectasis --out_dir out/ CheXpert-v1.0-small/valid

Accepts JPEG, PNG (8/16-bit), DICOM or a folder of them; preprocessing is the records job's
own (``trainer.inference.model_input``). Writes to ``--out_dir``:

* ``predictions.csv``: one row per image: its path, its view (``frontal``, ``lateral`` or
  ``unknown``: ``core.studies.input_view``), P(positive) per observation, the positive
  calls at the threshold, warnings, the overlay's file name (``--heatmap``) and
  ``model_data`` (``synthetic``, ``real`` or ``unknown``: what the model was trained on).
* ``predictions.json``: the same, the model's provenance, unreadable files with the reason,
  and the study table's details.
* ``predictions_studies.csv``: the CheXpert competition's format, ``Study,<observations>``,
  one row per study (the max over its frontal images; ``core.studies``); images in no
  ``patientNNNNN/studyM`` folder are left out and counted.
* with ``--heatmap TASK``: one ``<path>.gradcam_TASK.png`` per image, named by the image's
  path below the inputs' common folder (``patient00001_study1_view1_frontal.gradcam_...``),
  never one file for two images. Each shows the film at its own resolution, the Grad-CAM
  mapped back through the resize the model's input went through, a colour bar and a caption
  (task, probability, threshold, call, geometry, provenance).

The console table names inputs by their path below that common folder. A lateral view
given to a frontal-only model is scored with a warning; a model trained on synthetic data
is said to be, in every output. ``--job_dir`` may also name a SavedModel folder the trainer
exported (``JOB_DIR/saved_model``, on its own: it carries its ``config.json``); heatmaps
need ``model.keras``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
from typing import Callable, Iterable, Mapping, Sequence

from absl import app, flags

from core import cli
from trainer import startup

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the command-line flags; called only when run as a program, so importing this
    module as a library (tests, other entry points) declares nothing."""
    flags.DEFINE_string("job_dir", None, "trainer.task job folder (model.keras + config.json).")
    flags.DEFINE_string("out_dir", "predictions", "Where predictions.csv/.json, the study CSV and heatmaps go.")
    flags.DEFINE_string("heatmap", None, "Observation slug to draw Grad-CAM overlays for (one per input image).")
    flags.DEFINE_float("threshold", None, "Decision threshold (default: the job's, 0.35).")
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_boolean("overwrite", False, "Replace an earlier run's predictions in --out_dir (and remove its "
                                             "overlays); without it such a folder is refused.")
    flags.DEFINE_boolean("verbose", False, "Show TensorFlow's own start-up lines (hidden by default).")


if __name__ == "__main__":  # flags first, then TensorFlow, quietly (trainer/startup.py)
    define_flags()
    startup.begin(sys.argv)

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin  # noqa: E402

from core import imaging, studies  # noqa: E402
from schemas import chexpert  # noqa: E402
from trainer import config as config_lib  # noqa: E402
from trainer import inference  # noqa: E402
from trainer import model as model_lib  # noqa: E402

log = logging.getLogger(__name__)


PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
STUDIES_CSV = "predictions_studies.csv"
LATERAL_WARNING = "lateral view given to a model trained on frontal views only"
SYNTHETIC_MARK = "SYNTHETIC-TRAINED MODEL"
# matplotlib's jet as a 256-entry uint8 table: the same colours matplotlib.colormaps["jet"]
# gives (it too looks values up in 256 entries), without its float64 RGBA copy of a
# full-resolution film (~200 MB for a 2828 x 2320 original).
_JET = np.round(matplotlib.colormaps["jet"](np.arange(256))[:, :3] * 255).astype(np.uint8)
# Rows of a full-resolution overlay blended at a time: float32 temporaries of ~10 MB for a
# 3,000 px wide film, whatever its height.
_STRIP_ROWS = 256
_FONTS = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
# Characters kept in overlay file names; the rest (separators, spaces, quotes) become "_".
_UNSAFE = re.compile(r"[^\w.\-]+")


def list_inputs(paths: Iterable[str]) -> list[str]:
    """Files as given, and image files (by suffix) found under folders, sorted."""
    return imaging.list_image_files(paths)


def _grad_cam_function(job: inference.Job, task: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """Grad-CAM for ``task`` as one graph: uint8 (S, S, 1) -> float32 (S, S) in [0, 1]."""
    model = job.model
    backbone = next(l for l in model.layers if isinstance(l, keras.Model))
    features = keras.Model(backbone.input, backbone.get_layer(model_lib.LAST_CONV_LAYER).output)
    normalize, head = model.get_layer("normalize"), model.get_layer(task)
    prob = model_lib.probability_of(model, task)
    size = job.cfg.image_size

    @tf.function(input_signature=[tf.TensorSpec([size, size, 1], tf.uint8, name="image")])
    def cam_of(image):
        fmap = features(normalize(image[None]), training=False)
        # Only the head is differentiated: a tape that watched the backbone's variables would
        # keep all its activations for a backward pass nobody takes. The backbone ends in
        # global average pooling of fmap, recomputed here from the watched tensor so that
        # the gradient flows through the feature map.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(fmap)
            p = prob(head(tf.reduce_mean(fmap, axis=[1, 2])))
        grads = tape.gradient(p, fmap)[0]
        weights = tf.reduce_mean(grads, axis=[0, 1])
        cam = tf.nn.relu(tf.reduce_sum(fmap[0] * weights, axis=-1))
        cam = cam / (tf.reduce_max(cam) + 1e-8)
        return tf.image.resize(cam[..., None], [size, size], method="bilinear")[..., 0]

    return cam_of


def grad_cam(job: inference.Job, image: np.ndarray, task: str) -> np.ndarray:
    """Grad-CAM of P(positive) for ``task`` on the last dense block's activation.

    One image per call, through a ``tf.function`` built once per job and task and kept with
    the job: DenseNet121 at 320 px peaks at ~0.95 GB RSS on CPU and takes ~0.2 s an image
    after the first; the eager version, which taped the whole backbone, 1.4 GB and 1-2 s
    (BUILD_NOTES.md, "Inference memory").

    Args:
        job: a job loaded with ``inference.load_job``.
        image: uint8 (S, S, 1), S = ``job.cfg.image_size``.
        task: one of ``job.tasks``.

    Returns:
        float32 (S, S) in [0, 1].

    Raises:
        inference.JobError: the job is a SavedModel (no layers to take gradients at).
    """
    if not job.is_keras:
        raise inference.JobError(f"{job.job_dir}: Grad-CAM needs the job's model.keras; a SavedModel has no layers "
                                 "to take gradients at")
    fn = job.compiled(f"grad_cam/{task}", lambda: _grad_cam_function(job, task))
    return fn(tf.convert_to_tensor(image)).numpy()



def feature_grid(job: inference.Job) -> int:
    """The side of the feature map Grad-CAM is computed on (10 for DenseNet121 at 320 px):
    the heatmap's true resolution, however finely it is drawn."""
    backbone = next(l for l in job.model.layers if isinstance(l, keras.Model))
    return int(backbone.get_layer(model_lib.LAST_CONV_LAYER).output.shape[1])


# --- Mapping a map on the model's input back onto the film -----------------------------------


def _axis_weights(n_out: int, n_decoded: int, start: int, extent: int, n_map: int):
    """Bilinear taps along one axis, from a map of ``n_map`` cells over the frame
    ``[start, start + extent)`` of a decoded axis of ``n_decoded`` pixels, to ``n_out`` source
    pixels. Pixel centres sit at ``i + 0.5`` on every grid (as in Pillow's and TF's resizes).

    Returns:
        ``(i0, i1, w, inside)``: int64 (n_out,) taps, float32 (n_out,) weight of ``i1``,
        bool (n_out,) whether the pixel's centre lies in the frame (the model saw it).
    """
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_decoded / n_out)
    u = (centres - start) / extent
    inside = (u >= 0.0) & (u < 1.0)
    x = np.clip(u * n_map - 0.5, 0.0, n_map - 1.0)
    i0 = np.floor(x).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_map - 1), (x - i0).astype(np.float32), inside


class _SourceMap:
    """A map on the model's square input, read at the source film's pixels (see
    ``cam_on_source``), a strip of rows at a time."""

    def __init__(self, cam: np.ndarray, frame: Sequence[int], decoded_shape: Sequence[int],
                 source_shape: Sequence[int]):
        top, left, frame_h, frame_w = frame
        (dh, dw), (self.height, self.width) = decoded_shape, source_shape
        cam = np.asarray(cam, np.float32)
        y0, y1, wy, self.rows_in = _axis_weights(self.height, dh, top, frame_h, cam.shape[0])
        self.x0, self.x1, self.wx, self.cols_in = _axis_weights(self.width, dw, left, frame_w, cam.shape[1])
        # Rows first: (height, S) is small, and each strip then needs only its columns.
        self.by_row = cam[y0] * (1 - wy)[:, None] + cam[y1] * wy[:, None]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """float32 (stop - start, width); NaN where the model never saw the film."""
        r = self.by_row[start:stop]
        out = r[:, self.x0] * (1 - self.wx) + r[:, self.x1] * self.wx
        out[~self.rows_in[start:stop]] = np.nan
        out[:, ~self.cols_in] = np.nan
        return out


def cam_on_source(cam: np.ndarray, frame: Sequence[int], decoded_shape: Sequence[int],
                  source_shape: Sequence[int]) -> np.ndarray:
    """Maps a heatmap on the model's input back onto the source film, bilinearly.

    The model's input is ``imaging.resize`` of the decoded film (then, for a model trained
    smaller than its records, a uniform rescale, which changes no position); ``frame`` says
    which rectangle of the decoded film that square shows. A JPEG may have been decoded at a
    reduced scale (``imaging.decode``'s draft mode): ``decoded_shape`` is that size, and its
    axes are stretched onto ``source_shape``'s, exact to within one decoded pixel (the DCT
    scaling rounds the last block).

    Args:
        cam: float (S, S), the map on the model's input.
        frame: ``imaging.resize_frame(*decoded_shape, mode)``.
        decoded_shape: (height, width) of the film as the model's preprocessing decoded it.
        source_shape: (height, width) of the film at full resolution, upright.

    Returns:
        float32 ``source_shape``: the map at each source pixel; NaN where the film was
        outside the model's input (the sides a ``crop`` cut off).
    """
    m = _SourceMap(cam, frame, decoded_shape, source_shape)
    return np.concatenate([m.rows(y, min(y + _STRIP_ROWS, m.height)) for y in range(0, m.height, _STRIP_ROWS)]
                          or [np.zeros((0, m.width), np.float32)])


# --- Drawing --------------------------------------------------------------------------------


def _blend(gray: np.ndarray, cam: np.ndarray, alpha: float) -> np.ndarray:
    """uint8 (h, w) film and float (h, w) map in [0, 1] (NaN: no map) -> uint8 (h, w, 3).

    The colour's weight grows with the map (``alpha * cam``), so a cold region shows the
    film as it is rather than under a blue veil.
    """
    seen = ~np.isnan(cam)
    c = np.where(seen, np.clip(cam, 0.0, 1.0), 0.0).astype(np.float32)
    heat = _JET[np.minimum((c * 256).astype(np.int64), 255)].astype(np.float32)
    w = (alpha * c)[..., None]
    mix = (1 - w) * gray.astype(np.float32)[..., None] + w * heat
    return np.clip(np.round(mix), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Gray image (S, S, 1) uint8 with a jet-coloured heatmap (S, S) in [0, 1] blended on
    top, at the model's input size (the web demo's small view). ``render_overlay`` draws
    the full-resolution, captioned one."""
    return Image.fromarray(_blend(image[..., 0], cam, alpha))


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    # matplotlib's own DejaVu Sans: present wherever matplotlib is, so captions look the same
    # on every machine (PIL's default bitmap font cannot scale with the film).
    return ImageFont.truetype(os.path.join(_FONTS, "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"), size)


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}" if line else word
        if line and font.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line]


def render_overlay(source: np.ndarray, cam: _SourceMap | np.ndarray, caption: Sequence[str], *,
                   marked: Sequence[str] = (), frame_box: Sequence[float] | None = None,
                   alpha: float = 0.45) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The film with its heatmap at full resolution, a colour bar and a caption.

    The film keeps its pixel grid, at the top left of the picture (one overlay pixel per
    source pixel, so the overlay registers with the original); the colour bar and the
    caption sit in margins right of it and below it, where they hide no film.

    Args:
        source: uint8 (H, W), the film upright at full resolution.
        cam: the map on the film, float (H, W) in [0, 1] with NaN where there is none, or a
            ``_SourceMap`` read a strip at a time.
        caption: lines of text, wrapped to the picture's width.
        marked: lines set in bold red above the caption (the synthetic-data mark, warnings).
        frame_box: (left, top, right, bottom) in source pixels of the part the model saw,
            outlined when it is not the whole film; None for the whole film.
        alpha: the colour's weight where the map is 1.

    Returns:
        ``(picture, film_box)``: an RGB image and the film's (left, top, right, bottom) in it.
    """
    h, w = source.shape
    size = max(13, round(max(h, w) / 60))  # readable on a 390 px film and on a 3,000 px one
    font, bold = _font(size), _font(size, bold=True)
    pad, bar_w = size, max(12, size)
    labels = ("1.0", "0.5", "0")
    panel_w = pad + max(bar_w + size // 2 + max(font.getlength(t) for t in labels), font.getlength("Grad-CAM")) + pad
    width = max(w + int(panel_w), 34 * size)
    lines = [(t, bold, (200, 0, 0)) for text in marked for t in _wrap(text, bold, width - 2 * pad)]
    for text in caption:
        lines += [(t, font, (0, 0, 0)) for t in _wrap(text, font, width - 2 * pad)]
    line_h = round(size * 1.35)
    bar_h = max(h - 2 * pad - line_h, 6 * size)
    film_h = max(h, bar_h + 2 * pad + line_h)
    picture = Image.new("RGB", (width, film_h + 2 * pad + line_h * len(lines)), (255, 255, 255))
    canvas = np.asarray(picture).copy()
    for y in range(0, h, _STRIP_ROWS):
        stop = min(y + _STRIP_ROWS, h)
        strip = cam[y:stop] if isinstance(cam, np.ndarray) else cam.rows(y, stop)
        canvas[y:stop, :w] = _blend(source[y:stop], strip, alpha)
    # The colour bar: the colours at full strength, 1 at the top.
    bar_x, bar_y = w + pad, pad + line_h
    ramp = np.linspace(1.0, 0.0, bar_h)
    canvas[bar_y:bar_y + bar_h, bar_x:bar_x + bar_w] = _JET[np.minimum((ramp * 256).astype(np.int64), 255)][:, None]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    draw.text((bar_x, pad // 2), "Grad-CAM", font=font, fill=(0, 0, 0))
    for text, frac in zip(labels, (0.0, 0.5, 1.0)):
        y = bar_y + frac * (bar_h - 1)
        draw.line([(bar_x + bar_w, y), (bar_x + bar_w + size // 3, y)], fill=(0, 0, 0), width=1)
        draw.text((bar_x + bar_w + size // 2, y), text, font=font, fill=(0, 0, 0), anchor="lm")
    if frame_box is not None and tuple(frame_box) != (0, 0, w, h):
        left, top, right, bottom = frame_box
        draw.rectangle([max(left, 0), max(top, 0), min(right, w) - 1, min(bottom, h) - 1], outline=(255, 255, 255),
                       width=max(1, size // 8))
    y = film_h + pad
    for text, f, colour in lines:
        draw.text((pad, y), text, font=f, fill=colour)
        y += line_h
    return picture, (0, 0, w, h)


def _geometry_line(mode: str, size: int, grid: int, decoded: tuple[int, int], source: tuple[int, int]) -> str:
    """How the map got from the model's input to the film, and what that cannot undo."""
    (dh, dw), (h, w) = decoded, source
    cells = (f"The map has {grid}x{grid} cells (the network's last feature map), interpolated." if grid > 1 else
             "The network's last feature map is 1x1, so this map is one value and cannot point at a region.")
    how = {
        "squash": f"Model input: the whole film stretched to a {size}x{size} square (resize mode squash); the map is "
                  f"stretched back to the film's {w}x{h} px.",
        "crop": f"Model input: the film's centre square only, scaled to {size}x{size} (resize mode crop); the model "
                "never saw the film outside the white frame, which has no map.",
        "pad": f"Model input: the film padded with black to a square, scaled to {size}x{size} (resize mode pad); the "
               "map is mapped back exactly and its part over the padding dropped.",
    }[mode]
    if dw == w and dh == h:
        return f"{how} {cells}"
    return (f"{how} The film was decoded at reduced scale ({dw}x{dh}) as in training, so the mapping is exact to "
            f"within one decoded pixel (~{w / dw:.0f} film px). {cells}")


def heatmap(job: inference.Job, path: str, task: str, probability: float, threshold: float,
            label: str | None = None, view: str = studies.UNKNOWN, warnings: Sequence[str] = ()
            ) -> tuple[Image.Image, dict]:
    """The captioned Grad-CAM overlay of one image file at its own resolution.

    Args:
        job: a Keras job.
        path: the image file.
        task: one of ``job.tasks``.
        probability: the image's P(positive) for ``task`` (as scored).
        threshold: the decision threshold the call is made at.
        label: how the caption names the file (default: ``path``).
        view: the image's view (``predict_files``), stated in the caption.
        warnings: the image's warnings, in red under the synthetic-data mark.

    Returns:
        ``(picture, info)``: the RGB overlay and its PNG text fields (``caption``,
        ``film_box`` as ``left,top,right,bottom``, ``source``, ``task``, ...).

    Raises:
        schemas.chexpert.RowError: the file no longer decodes.
        OSError: it can no longer be read.
    """
    cfg = job.cfg
    with open(path, "rb") as f:
        data = f.read()
    image = inference.model_input(data, path, cfg)
    cam = grad_cam(job, image, task)
    # The decoded size the model's preprocessing worked on (a JPEG may be decoded at 1/2..1/8
    # scale), and the film at full resolution: what the map is drawn on.
    decoded = imaging.decode(data, path, draft_size=cfg.records_image_size).shape
    source = imaging.decode(data, path)
    top, left, fh, fw = imaging.resize_frame(*decoded, cfg.records_resize)
    sy, sx = source.shape[0] / decoded[0], source.shape[1] / decoded[1]
    frame_box = (left * sx, top * sy, (left + fw) * sx, (top + fh) * sy)
    name = chexpert.SLUG_TO_NAME[task]
    call = ("POSITIVE call (at or above the threshold)" if probability >= threshold
            else "negative call (below the threshold)")
    caption = [
        f"{name}: P(positive) = {config_lib.format_probability(probability, threshold)}, threshold {threshold:g} "
        f"-> {call}.",
        (f"Grad-CAM of P(positive) for {name}; colours are relative to this image's strongest region, not "
         "probabilities." if cam.max() > 0 else
         f"Grad-CAM of P(positive) for {name} is zero everywhere: no region of this film raises it, so nothing is "
         "coloured."),
        _geometry_line(cfg.records_resize, cfg.image_size, feature_grid(job), decoded, source.shape),
        f"{label or path} ({source.shape[1]}x{source.shape[0]} px, view {view}). Model: "
        + config_lib.provenance_line(cfg.provenance) + ".",
    ]
    marked = ([f"{SYNTHETIC_MARK}: trained on synthetic images (pipeline.make_sample); this map and probability say "
               "nothing about real radiographs."] if cfg.synthetic else []) + [f"WARNING: {w}." for w in warnings]
    picture, box = render_overlay(source, _SourceMap(cam, (top, left, fh, fw), decoded, source.shape), caption,
                                  marked=marked, frame_box=frame_box)
    info = {"caption": "\n".join(marked + caption), "film_box": ",".join(map(str, box)),
            "source": path, "task": task, "probability": f"{probability:.6f}", "threshold": f"{threshold:g}",
            "model_data": studies.model_data(cfg.provenance)}
    return picture, info


def save_png(picture: Image.Image, info: Mapping[str, str], path: str) -> None:
    """Writes ``picture`` with ``info`` as PNG text chunks (readable with ``Image.open(p).text``)."""
    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        meta.add_itxt(key, value)
    picture.save(path, format="PNG", pnginfo=meta, compress_level=imaging.PNG_COMPRESS_LEVEL)


# --- Naming ---------------------------------------------------------------------------------


def common_root(paths: Sequence[str]) -> str:
    """The deepest folder holding every path (absolute); the current folder for none."""
    if not paths:
        return os.getcwd()
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])


def overlay_names(paths: Sequence[str], task: str, root: str | None = None) -> dict[str, str]:
    """A distinct overlay file name for every path.

    The name is the path below ``root`` (default: ``common_root(paths)``) with its separators
    as ``_`` and its suffix dropped, and at least a CheXpert path's ``patientN/studyM/file``
    (so a single ``view1_frontal.jpg`` still says whose it is):
    ``.../in/patient00001/study1/view1_frontal.jpg`` -> ``patient00001_study1_view1_frontal.gradcam_TASK.png``.
    Names that would repeat one already given, compared case-blind (macOS and Windows disks
    are), get ``~`` and 8 hex digits of the path's SHA-1, then a counter if need be: no two
    paths ever share a file.

    Args:
        paths: the images, in the order names are given out (sorted, for names that do not
            depend on the run).
        task: the observation slug.
        root: the folder names are taken relative to.

    Returns:
        {path: file name}.
    """
    root = common_root(paths) if root is None else root
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path in paths:
        if path in names:
            continue
        absolute = os.path.abspath(path)
        parts = os.path.relpath(absolute, root).split(os.sep)
        if studies.study_of(absolute) and len(parts) < 3:
            parts = absolute.split(os.sep)[-3:]
        stem = _UNSAFE.sub("_", "_".join(parts[:-1] + [os.path.splitext(parts[-1])[0]])) or "image"
        name = f"{stem}.gradcam_{task}.png"
        if name.lower() in taken:
            digest = hashlib.sha1(absolute.encode()).hexdigest()[:8]
            name, n = f"{stem}~{digest}.gradcam_{task}.png", 2
            while name.lower() in taken:
                name, n = f"{stem}~{digest}-{n}.gradcam_{task}.png", n + 1
        taken.add(name.lower())
        names[path] = name
    return names


# --- Scoring --------------------------------------------------------------------------------


def predict_files(job: inference.Job, files: list[str], *, threshold: float, batch_size: int = 32) -> tuple[list, list]:
    """Scores files in batches.

    Returns:
        ``(results, failures)``: per file ``{"path", "view", "probs": {task: p}, "positive":
        [tasks], "warnings": [...]}`` (``view``: ``frontal``, ``lateral`` or ``unknown``,
        ``core.studies.input_view``); failures ``{"path", "reason", "detail"}``.
    """
    results, failures, batch = [], [], []

    def flush():
        if not batch:
            return
        probs = inference.predict_batch(job, np.stack([b[1] for b in batch]))
        for (r, _), p in zip(batch, probs):
            r["probs"] = {t: float(v) for t, v in zip(job.tasks, p)}
            r["positive"] = [t for t, v in r["probs"].items() if v >= threshold]
            results.append(r)
        batch.clear()

    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
            image = inference.model_input(data, path, job.cfg)
        except chexpert.RowError as e:
            failures.append({"path": path, "reason": e.reason, "detail": e.detail})
            continue
        except OSError as e:
            failures.append({"path": path, "reason": "unreadable_file", "detail": f"{path}: {e}"})
            continue
        view = studies.input_view(path, data)
        # Only a view the file states: a free name or a silent header is "unknown", and a
        # warning there would be a guess.
        warnings = [LATERAL_WARNING] if job.cfg.views == "frontal" and view == studies.LATERAL else []
        batch.append(({"path": path, "view": view, "warnings": warnings}, image))
        if len(batch) >= batch_size:
            flush()
    flush()
    return results, failures


class OutputExistsError(ValueError):
    """The output folder holds an earlier run's predictions; the message says what to do."""


def clear_earlier_run(out_dir: str, overwrite: bool) -> None:
    """An output folder with an earlier run's predictions is refused, unless ``overwrite``:
    then that run's files (its tables and the overlays its predictions.json lists) are
    removed first, so no overlay of another model or input set is left beside the new ones.

    Raises:
        OutputExistsError: the folder holds predictions and ``overwrite`` is False.
    """
    tables = [os.path.join(out_dir, n) for n in (PREDICTIONS_JSON, PREDICTIONS_CSV, STUDIES_CSV)]
    if not any(os.path.exists(t) for t in tables):
        return
    if not overwrite:
        raise OutputExistsError(f"--out_dir={out_dir} holds the predictions of an earlier run; pass --overwrite to "
                                "replace them (their overlays are removed too), or choose another --out_dir")
    try:
        with open(tables[0]) as f:
            overlays = [r["overlay"] for r in json.load(f).get("results", []) if r.get("overlay")]
    except (OSError, ValueError, AttributeError, TypeError) as e:
        log.warning("%s: unreadable (%s); removing only the tables", tables[0], e)
        overlays = []
    for path in tables + [os.path.join(out_dir, os.path.basename(o)) for o in overlays]:
        if os.path.exists(path):
            os.remove(path)


def run(job: inference.Job, inputs: Sequence[str], out_dir: str, *, threshold: float | None = None,
        heatmap_task: str | None = None, batch_size: int = 32, overwrite: bool = False) -> dict:
    """Scores ``inputs`` and writes every output into ``out_dir``.

    Args:
        job: a loaded job.
        inputs: image files and folders (searched for images).
        out_dir: created if missing; files of an earlier run with the same names are replaced.
        threshold: the decision threshold (default: the job's).
        heatmap_task: an observation to draw Grad-CAM overlays for, or None.
        batch_size: images per model call.
        overwrite: replace an earlier run's predictions in ``out_dir`` (``clear_earlier_run``).

    Returns:
        The document written as ``predictions.json``: ``results`` (with ``overlay``, a file
        name in ``out_dir``, or None), ``failures``, ``studies``, provenance, ``input_root``.

    Raises:
        inference.JobError: ``heatmap_task`` on a SavedModel.
        ValueError: ``heatmap_task`` is not one of the job's tasks.
    """
    if heatmap_task and heatmap_task not in job.tasks:
        raise ValueError(f"--heatmap {heatmap_task}: the model predicts {', '.join(job.tasks)}")
    clear_earlier_run(out_dir, overwrite)
    threshold = job.cfg.threshold if threshold is None else threshold
    files = list(dict.fromkeys(list_inputs(inputs)))  # a file named twice is scored (and drawn) once
    results, failures = predict_files(job, files, threshold=threshold, batch_size=batch_size)
    root = common_root([r["path"] for r in results] + [f["path"] for f in failures])
    os.makedirs(out_dir, exist_ok=True)
    names = overlay_names([r["path"] for r in results], heatmap_task, root) if heatmap_task else {}
    for r in results:
        r["overlay"] = None
        if not heatmap_task:
            continue
        try:
            picture, info = heatmap(job, r["path"], heatmap_task, r["probs"][heatmap_task], threshold,
                                    label=os.path.relpath(os.path.abspath(r["path"]), root), view=r["view"],
                                    warnings=r["warnings"])
        except (chexpert.RowError, OSError) as e:  # changed on disk since it was scored
            r["warnings"].append(f"no heatmap: {e}")
            continue
        save_png(picture, info, os.path.join(out_dir, names[r["path"]]))
        r["overlay"] = names[r["path"]]
    table = studies.aggregate(((r["path"], r["view"], r["probs"]) for r in results), job.tasks)
    with open(os.path.join(out_dir, STUDIES_CSV), "w", newline="") as f:
        f.write(studies.to_csv(table, job.tasks))
    data = studies.model_data(job.cfg.provenance)
    with open(os.path.join(out_dir, PREDICTIONS_CSV), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "view"] + [f"p_{t}" for t in job.tasks] + ["positive", "warnings", "overlay", "model_data"])
        for r in results:
            w.writerow([r["path"], r["view"]] + [f"{r['probs'][t]:.6f}" for t in job.tasks]
                       + [";".join(r["positive"]), ";".join(r["warnings"]), r["overlay"] or "", data])
    doc = {
        "job_dir": job.job_dir, "threshold": threshold, "model_data": data,
        "model_provenance": dict(job.cfg.provenance), "provenance": config_lib.provenance_line(job.cfg.provenance),
        "input_root": root, "heatmap": heatmap_task, "results": results, "failures": failures,
        "studies": {"csv": STUDIES_CSV, "rule": "max over the study's frontal images; a study without one: max over "
                                               "its other images",
                    "count": len(table.studies), "without_frontal": table.without_frontal,
                    "outside": list(table.outside), "summary": studies.summary(table),
                    "rows": [{"study": s.study, "basis": s.basis, "paths": list(s.paths), "left_out": list(s.left_out)}
                             for s in table.studies]},
    }
    with open(os.path.join(out_dir, PREDICTIONS_JSON), "w") as f:
        json.dump(doc, f, indent=2)
    return doc


def report(doc: dict, tasks: Sequence[str], out_dir: str, seconds: float, out=sys.stdout, err=sys.stderr) -> None:
    """Prints the table (paths below the inputs' common folder), the study summary and the
    provenance warning."""
    if doc["model_data"] == "synthetic":
        print("WARNING: the model was trained on SYNTHETIC data (pipeline.make_sample): these predictions say nothing "
              "about real radiographs", file=err)
    results, root = doc["results"], doc["input_root"]
    rel = {r["path"]: os.path.relpath(os.path.abspath(r["path"]), root) for r in results}
    width = max([len(p) for p in rel.values()] + [4])
    print(f"model: {doc['provenance']}", file=out)
    print(f"paths below {root}", file=out)
    print(f"{'file':{width}s} {'view':8s} " + " ".join(f"{t[:12]:>12s}" for t in tasks) + "   positive", file=out)
    for r in results:
        shown = [config_lib.format_probability(r["probs"][t], doc["threshold"]) for t in tasks]
        print(f"{rel[r['path']]:{width}s} {r['view']:8s} " + " ".join(f"{v:>12s}" for v in shown)
              + "   " + (", ".join(r["positive"]) or "-")
              + ("   WARNING: " + "; ".join(r["warnings"]) if r["warnings"] else ""), file=out)
    unknown = sum(r["view"] == studies.UNKNOWN for r in results)
    if unknown:
        print(f"view unknown for {unknown} image(s): no DICOM ViewPosition and not named view<N>_frontal/lateral",
              file=out)
    for fl in doc["failures"]:
        print(f"could not read {fl['path']}: {fl['reason']}: {fl['detail']}", file=err)
    print(f"studies: {doc['studies']['summary']}; wrote {os.path.join(out_dir, STUDIES_CSV)}", file=out)
    if doc["heatmap"]:
        drawn = sum(r["overlay"] is not None for r in results)
        print(f"{drawn} Grad-CAM overlays for {doc['heatmap']} at each film's own resolution in {out_dir}/ "
              f"(file names in {PREDICTIONS_CSV}'s overlay column)", file=out)
    print(f"{len(results)} scored, {len(doc['failures'])} unreadable in {seconds:.1f} s; wrote "
          f"{os.path.join(out_dir, PREDICTIONS_CSV)} and .json", file=out)


def main(argv) -> int:
    paths = argv[1:]
    if not FLAGS.job_dir or not paths:
        print("usage: python -m trainer.predict --job_dir JOB_DIR FILE_OR_FOLDER...", file=sys.stderr)
        return 2
    try:
        job = inference.load_job(FLAGS.job_dir)
    except inference.JobError as e:
        print(f"trainer.predict: error: {e}", file=sys.stderr)
        return 2
    if FLAGS.heatmap and not job.is_keras:
        print(f"trainer.predict: error: --heatmap needs model.keras; {FLAGS.job_dir} is a SavedModel folder (use "
              "its job folder)", file=sys.stderr)
        return 2
    if FLAGS.heatmap and FLAGS.heatmap not in job.tasks:
        print(f"trainer.predict: error: --heatmap {FLAGS.heatmap}: the model predicts {', '.join(job.tasks)}",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        doc = run(job, paths, FLAGS.out_dir, threshold=FLAGS.threshold, heatmap_task=FLAGS.heatmap,
                  batch_size=FLAGS.batch_size, overwrite=FLAGS.overwrite)
    except OutputExistsError as e:
        print(f"trainer.predict: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one line, not a traceback (--verbose shows it)
        print(f"trainer.predict: error: {cli.one_line(e)}", file=sys.stderr)
        if FLAGS.verbose:
            raise
        return 1
    report(doc, job.tasks, FLAGS.out_dir, time.perf_counter() - start)
    return 1 if doc["failures"] and not doc["results"] else 0


if __name__ == "__main__":
    app.run(main)
