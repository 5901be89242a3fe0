"""Drawing Grad-CAM overlays: the small one the web demo shows, and the captioned one at the
film's own resolution that ``trainer.predict --heatmap`` writes as a PNG with text chunks.

Colours are matplotlib's jet; captions use matplotlib's own DejaVu Sans, so they look the
same on every machine.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from core import imaging, studies
from schemas import chexpert
from schemas.job_spec import format_probability, generator_of, provenance_line
from serving import gradcam, preprocess
from serving.job import Job

SYNTHETIC_MARK = "SYNTHETIC-TRAINED MODEL"
# matplotlib's jet as a 256-entry uint8 table: the same colours matplotlib.colormaps["jet"]
# gives (it too looks values up in 256 entries), without its float64 RGBA copy of a
# full-resolution film (~200 MB for a 2828 x 2320 original).
_JET = np.round(matplotlib.colormaps["jet"](np.arange(256))[:, :3] * 255).astype(np.uint8)
_FONTS = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


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


def render_overlay(source: np.ndarray, cam: gradcam.SourceMap | np.ndarray, caption: Sequence[str], *,
                   marked: Sequence[str] = (), frame_box: Sequence[float] | None = None,
                   alpha: float = 0.45) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The film with its heatmap at full resolution, a colour bar and a caption.

    The film keeps its pixel grid, at the top left of the picture (one overlay pixel per
    source pixel, so the overlay registers with the original); the colour bar and the
    caption sit in margins right of it and below it, where they hide no film.

    Args:
        source: uint8 (H, W), the film upright at full resolution.
        cam: the map on the film, float (H, W) in [0, 1] with NaN where there is none, or a
            ``gradcam.SourceMap`` read a strip at a time.
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
    for y in range(0, h, gradcam.STRIP_ROWS):
        stop = min(y + gradcam.STRIP_ROWS, h)
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


def heatmap(job: Job, path: str, task: str, probability: float, threshold: float,
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
        view: the image's view (``core.studies.input_view``), stated in the caption.
        warnings: the image's warnings, in red under the synthetic-data mark.

    Returns:
        ``(picture, info)``: the RGB overlay and its PNG text fields (``caption``,
        ``film_box`` as ``left,top,right,bottom``, ``source``, ``task``, ...).

    Raises:
        schemas.chexpert.RowError: the file no longer decodes.
        OSError: it can no longer be read.
    """
    spec = job.spec
    with open(path, "rb") as f:
        data = f.read()
    image = preprocess.model_input(data, path, spec)
    cam = gradcam.grad_cam(job, image, task)
    # The decoded size the model's preprocessing worked on (a JPEG may be decoded at 1/2..1/8
    # scale), and the film at full resolution: what the map is drawn on.
    decoded = imaging.decode(data, path, draft_size=spec.records_image_size).shape
    source = imaging.decode(data, path)
    top, left, fh, fw = imaging.resize_frame(*decoded, spec.records_resize)
    sy, sx = source.shape[0] / decoded[0], source.shape[1] / decoded[1]
    frame_box = (left * sx, top * sy, (left + fw) * sx, (top + fh) * sy)
    name = chexpert.SLUG_TO_NAME[task]
    call = ("POSITIVE call (at or above the threshold)" if probability >= threshold
            else "negative call (below the threshold)")
    caption = [
        f"{name}: P(positive) = {format_probability(probability, threshold)}, threshold {threshold:g} "
        f"-> {call}.",
        (f"Grad-CAM of P(positive) for {name}; colours are relative to this image's strongest region, not "
         "probabilities." if cam.max() > 0 else
         f"Grad-CAM of P(positive) for {name} is zero everywhere: no region of this film raises it, so nothing is "
         "coloured."),
        _geometry_line(spec.records_resize, spec.image_size, gradcam.feature_grid(job), decoded, source.shape),
        f"{label or path} ({source.shape[1]}x{source.shape[0]} px, view {view}). Model: "
        + provenance_line(spec.provenance) + ".",
    ]
    marked = ([f"{SYNTHETIC_MARK}: trained on synthetic images ({generator_of(spec.provenance)}); this map and "
               "probability say nothing about real radiographs."] if spec.synthetic else []) + [f"WARNING: {w}." for w in warnings]
    picture, box = render_overlay(source, gradcam.SourceMap(cam, (top, left, fh, fw), decoded, source.shape), caption,
                                  marked=marked, frame_box=frame_box)
    info = {"caption": "\n".join(marked + caption), "film_box": ",".join(map(str, box)),
            "source": path, "task": task, "probability": f"{probability:.6f}", "threshold": f"{threshold:g}",
            "model_data": studies.model_data(spec.provenance)}
    return picture, info


def save_png(picture: Image.Image, info: Mapping[str, str], path: str) -> None:
    """Writes ``picture`` with ``info`` as PNG text chunks (readable with ``Image.open(p).text``)."""
    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        meta.add_itxt(key, value)
    picture.save(path, format="PNG", pnginfo=meta, compress_level=imaging.PNG_COMPRESS_LEVEL)
