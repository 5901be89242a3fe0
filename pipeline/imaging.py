"""Radiograph decoding, grayscale conversion, resizing and encoding: plain functions.

The records job, batch scoring and prediction all call ``preprocess`` so a model sees at
serving time exactly the pixels it was trained on. Nothing here imports Beam or TensorFlow.

Every failure is a ``schemas.chexpert.RowError`` with a reason slug, so the caller can
count it and send the row to the dead-letter output:

    empty_file, image_too_large, truncated_image, not_an_image, dicom_unreadable
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image

from schemas.chexpert import RowError

RESIZE_MODES = ("squash", "crop", "pad")
ENCODINGS = ("png", "raw", "jpeg")
# A decompression-bomb guard: CheXpert originals are ~6.6 Mpx; 80 Mpx (e.g. 8,944^2) leaves
# room for any real detector while refusing a 64k x 64k PNG that would take 4 GB to decode.
MAX_PIXELS = 80_000_000
PNG_COMPRESS_LEVEL = 1  # BUILD_NOTES.md: 1.9x faster to encode than level 6, 14% more bytes

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Linearly stretches any numeric 2-D array to the full 8-bit range.

    16-bit radiographs rarely use all 16 bits (12 is common); dividing by 257 would leave
    them dark, so the stored range is mapped min..max to 0..255.
    """
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _decode_pil(data: bytes, name: str, draft_size: int | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise RowError("image_too_large", f"{name}: {w}x{h} pixels exceeds the {MAX_PIXELS:,} pixel limit")
            if draft_size and im.format == "JPEG":
                # DCT-domain downscaling: decodes a 2828x2320 original at 1/4 or 1/8 scale,
                # never below draft_size, for a several-fold speed-up on full-size inputs.
                im.draft("L", (draft_size, draft_size))
            im.load()
    except RowError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RowError("image_too_large", f"{name}: {e}") from None
    except OSError as e:
        # Pillow names the stream by its repr (an address): drop it so dead letters are stable.
        msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))
        if "truncated" in msg or "broken data stream" in msg or "premature end" in msg.lower():
            raise RowError("truncated_image", f"{name}: {msg}") from None
        raise RowError("not_an_image", f"{name}: cannot decode ({msg})") from None
    except (ValueError, SyntaxError) as e:
        raise RowError("not_an_image", f"{name}: cannot decode ({e})") from None
    if im.n_frames > 1 if hasattr(im, "n_frames") else False:
        im.seek(0)
    if im.mode in ("L",):
        return np.asarray(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_uint8(np.asarray(im))
    # RGB, RGBA, P, CMYK, LA, 1: ITU-R 601 luma, as a radiograph saved in colour should be.
    return np.asarray(im.convert("L"))


def _decode_dicom(data: bytes, name: str) -> np.ndarray:
    import pydicom  # imported lazily: DICOM is rare, pydicom's import is not free
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        if rows * cols > MAX_PIXELS:
            raise RowError("image_too_large", f"{name}: {cols}x{rows} pixels exceeds the {MAX_PIXELS:,} pixel limit")
        arr = ds.pixel_array
    except RowError:
        raise
    except Exception as e:  # pydicom raises many types: missing handler, bad tags, short data
        raise RowError("dicom_unreadable", f"{name}: {type(e).__name__}: {e}") from None
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: the first frame
    elif arr.ndim == 3:
        arr = arr.mean(axis=-1)
    arr = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds, index=0)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1: high values are dark
    return _to_uint8(arr)


def is_dicom(data: bytes, name: str = "") -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def decode(data: bytes, name: str = "image", draft_size: int | None = None) -> np.ndarray:
    """Decodes JPEG, PNG (8/16-bit), DICOM or any Pillow format to 8-bit grayscale.

    Args:
        data: the file's bytes.
        name: the file's path, for error messages.
        draft_size: if set, a JPEG may be decoded at a reduced scale no smaller than this.

    Returns:
        uint8 array (height, width).

    Raises:
        RowError: ``empty_file``, ``image_too_large``, ``truncated_image``,
            ``not_an_image`` or ``dicom_unreadable``.
    """
    if not data:
        raise RowError("empty_file", f"{name}: zero bytes")
    if is_dicom(data, name):
        return _decode_dicom(data, name)
    return _decode_pil(data, name, draft_size)


def resize(pixels: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """Resizes a grayscale image to ``size`` x ``size``.

    Args:
        pixels: uint8 (height, width).
        size: output side in pixels.
        mode: ``squash`` (stretch to square, as Keras' ``target_size`` did in the seed
            project), ``crop`` (centre square crop, keeps aspect) or ``pad`` (black borders
            to a square, keeps the whole film).

    Returns:
        uint8 (size, size).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}; expected one of {RESIZE_MODES}")
    h, w = pixels.shape
    if mode == "crop" and h != w:
        side = min(h, w)
        y, x = (h - side) // 2, (w - side) // 2
        pixels = pixels[y : y + side, x : x + side]
    elif mode == "pad" and h != w:
        side = max(h, w)
        canvas = np.zeros((side, side), np.uint8)
        y, x = (side - h) // 2, (side - w) // 2
        canvas[y : y + h, x : x + w] = pixels
        pixels = canvas
    if pixels.shape == (size, size):
        return np.ascontiguousarray(pixels)
    # Pillow's bilinear filter widens its support when downscaling, i.e. it antialiases.
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


def encode(pixels: np.ndarray, encoding: str = "png") -> bytes:
    """Encodes a uint8 (height, width) image as PNG (lossless), raw bytes or JPEG (q=95)."""
    if encoding == "raw":
        return np.ascontiguousarray(pixels, np.uint8).tobytes()
    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif encoding == "jpeg":
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    else:
        raise ValueError(f"encoding {encoding!r}; expected one of {ENCODINGS}")
    return buf.getvalue()


def preprocess(data: bytes, name: str, size: int, mode: str = "squash") -> np.ndarray:
    """Bytes of any supported file -> the model's uint8 (size, size) grayscale input."""
    return resize(decode(data, name, draft_size=size), size, mode)
