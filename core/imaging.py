"""Radiograph decoding, grayscale conversion, resizing and encoding: plain functions.

The records job, batch scoring and prediction all call ``preprocess`` so a model sees at
serving time exactly the pixels it was trained on. Nothing here imports Beam or TensorFlow.

Every failure is a ``schemas.chexpert.RowError`` with a reason slug, so the caller can
count it and send the row to the dead-letter output:

    empty_file, image_too_large, image_too_small, truncated_image, not_an_image,
    nonfinite_pixels, dicom_unreadable, link_outside_dataset

Memory per image is bounded: the pixel count is checked from the header before anything is
decoded, and the conversion to 8 bits works a strip of rows at a time, so an image costs its
decoded pixels plus one uint8 output, never a float64 copy of the whole image
(BUILD_NOTES.md, "Memory per image").
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image

from schemas.chexpert import RowError

RESIZE_MODES = ("squash", "crop", "pad")
ENCODINGS = ("png", "raw", "jpeg")
# A decompression-bomb guard: CheXpert originals are ~6.6 Mpx; 80 Mpx (e.g. 8,944^2) leaves
# room for any real detector while refusing a 64k x 64k PNG that would take 4 GB to decode.
MAX_PIXELS = 80_000_000
# Shorter sides are refused: no radiograph is that small, a 1x1 or 8x8 file is a placeholder
# or a broken export, and upscaling it to the model's input would invent a film. 32 is the
# smallest records size in use (the tests' --image_size=32); CheXpert-small's are >= 320.
MIN_SIDE = 32
PNG_COMPRESS_LEVEL = 1  # BUILD_NOTES.md: 1.9x faster to encode than level 6, 14% more bytes

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Rows converted at a time: 1 Mpx, so the float64 temporaries of a strip are ~8 MB.
_STRIP_PIXELS = 1 << 20
# Pillow modes wider than 8 bits: 16-bit PNG/TIFF, 32-bit integer and float TIFF.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_UINT8_RANGE = (0, 255, np.dtype(np.uint8))
_ORIENTATION = 0x0112  # the EXIF Orientation tag
# EXIF orientation -> the array transform ImageOps.exif_transpose applies (tested against it).
_EXIF_TURNS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.T,  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270 (counter-clockwise), i.e. 90 clockwise
    7: lambda a: np.rot90(a, 2).T,  # TRANSVERSE
    8: lambda a: np.rot90(a),  # ROTATE_90
}


def _check_size(name: str, width: int, height: int) -> None:
    """Refuses an image by its header's size, before a single pixel is decoded.

    Raises:
        RowError: ``image_too_large`` above ``MAX_PIXELS``, ``image_too_small`` when a side
            is under ``MIN_SIDE``.
    """
    if width * height > MAX_PIXELS:
        raise RowError("image_too_large", f"{name}: {width}x{height} pixels exceeds the {MAX_PIXELS:,} pixel limit")
    if min(width, height) < MIN_SIDE:
        raise RowError("image_too_small", f"{name}: {width}x{height} pixels; each side must be at least {MIN_SIDE}")


def _spans(height: int, width: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``_STRIP_PIXELS`` pixels (at least one row) covering the image."""
    step = max(1, _STRIP_PIXELS // max(width, 1))
    return [(y, min(y + step, height)) for y in range(0, height, step)]


def _value_range(read: Callable[[int, int], np.ndarray], spans: list[tuple[int, int]], name: str):
    """(min, max, dtype) over every strip ``read`` returns, refusing NaN and infinity.

    Raises:
        RowError: ``nonfinite_pixels``.
    """
    lo = hi = dtype = None
    for y0, y1 in spans:
        strip = read(y0, y1)
        if strip.dtype.kind in "fc" and not np.isfinite(strip).all():
            _nonfinite(name)
        s_lo, s_hi = strip.min(), strip.max()
        lo = s_lo if lo is None or s_lo < lo else lo
        hi = s_hi if hi is None or s_hi > hi else hi
        dtype = strip.dtype
    return lo, hi, dtype


def _nonfinite(name: str):
    # Stretching min..max over a NaN gives NaN everywhere, which casts to an all-black image.
    raise RowError("nonfinite_pixels", f"{name}: pixel values include NaN or infinity")


def _to_uint8(read: Callable[[int, int], np.ndarray], height: int, width: int, name: str,
              value_range: tuple | None = None) -> np.ndarray:
    """Linearly stretches an image, read a strip at a time, to the full 8-bit range.

    16-bit radiographs rarely use all 16 bits (12 is common); dividing by 257 would leave
    them dark, so the stored range is mapped min..max to 0..255. uint8 input is kept as is.

    The arithmetic is the one this function always did on the whole image (float64, then
    round half to even), applied per strip: the output is bit-identical to records built
    before, while a strip's float64 temporaries stay near 8 MB whatever the image size.

    Args:
        read: ``(y0, y1) -> array (y1 - y0, width)`` of rows y0..y1, any numeric dtype; it
            is called twice per strip (once for the range, once to convert).
        height, width: the image's size.
        name: the file's path, for error messages.
        value_range: (min, max, dtype) when the caller already knows it.

    Returns:
        uint8 (height, width).

    Raises:
        RowError: ``nonfinite_pixels``.
    """
    spans = _spans(height, width)
    lo, hi, dtype = value_range or _value_range(read, spans, name)
    out = np.empty((height, width), np.uint8)
    if dtype == np.uint8:
        for y0, y1 in spans:
            out[y0:y1] = read(y0, y1)
        return out
    if hi <= lo:
        out.fill(0)
        return out
    lo, scale = float(lo), 255.0 / (float(hi) - float(lo))
    for y0, y1 in spans:
        out[y0:y1] = np.round((read(y0, y1).astype(np.float64) - lo) * scale)
    return out


def _orient(pixels: np.ndarray, orientation: int | None) -> np.ndarray:
    """Applies an EXIF orientation to a decoded image, as ``ImageOps.exif_transpose`` does.

    Done on the uint8 result, not on Pillow's decoded image, so that a rotated 16-bit image
    costs one more byte per pixel rather than two.
    """
    turn = _EXIF_TURNS.get(orientation or 1)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


def _pil_error(e: Exception, name: str) -> RowError:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return RowError("image_too_large", f"{name}: {e}")
    if isinstance(e, OSError):
        # Pillow names the stream by its repr (an address): drop it so dead letters are stable.
        msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))
        if "truncated" in msg or "broken data stream" in msg or "premature end" in msg.lower():
            return RowError("truncated_image", f"{name}: {msg}")
        return RowError("not_an_image", f"{name}: cannot decode ({msg})")
    return RowError("not_an_image", f"{name}: cannot decode ({e})")


def _decode_pil(data: bytes, name: str, draft_size: int | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # reads the header only
            _check_size(name, *im.size)
            if draft_size and im.format == "JPEG":
                # DCT-domain downscaling: decodes a 2828x2320 original at 1/4 or 1/8 scale,
                # never below draft_size, for a several-fold speed-up on full-size inputs.
                im.draft("L", (draft_size, draft_size))
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # the first frame, decoded by load() inside this try like any other
            im.load()
            # After load(): Pillow's TIFF reader applies the orientation itself on load and
            # drops the tag, JPEG and PNG keep it for the caller (exif_transpose reads it here too).
            orientation = im.getexif().get(_ORIENTATION)
    except RowError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, ValueError, SyntaxError) as e:
        raise _pil_error(e, name) from None
    w, h = im.size
    gray = im.mode == "L" or im.mode in _WIDE_MODES

    def read(y0: int, y1: int) -> np.ndarray:
        strip = im.crop((0, y0, w, y1))
        # RGB, RGBA, P, CMYK, LA, 1: ITU-R 601 luma, as a radiograph saved in colour should
        # be; converted a strip at a time (per pixel, so the same), never the whole image.
        return np.asarray(strip if gray else strip.convert("L"))

    try:
        pixels = _to_uint8(read, h, w, name, None if im.mode in _WIDE_MODES else _UINT8_RANGE)
    finally:
        im.close()  # Pillow's decoded pixels go now, before the caller resizes
    return _orient(pixels, orientation)


def _decode_dicom(data: bytes, name: str) -> np.ndarray:
    import pydicom  # imported lazily: DICOM is rare, pydicom's import is not free
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        # The header alone: the size is checked before any pixel data is read.
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as e:  # pydicom raises many types: bad tags, short data, missing Rows
        raise RowError("dicom_unreadable", f"{name}: {type(e).__name__}: {e}") from None
    _check_size(name, cols, rows)
    try:
        # The first frame only: a multi-frame file costs one frame, not all of them.
        arr = pixel_array(io.BytesIO(data), index=0)
    except Exception as e:  # missing handler, compressed syntax, short pixel data
        raise RowError("dicom_unreadable", f"{name}: {type(e).__name__}: {e}") from None
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds

    def values(y0: int, y1: int) -> np.ndarray:
        # Modality and VOI LUTs map each pixel on its own, so strips give the values the
        # whole image would (and float64 temporaries of one strip only).
        strip = arr[y0:y1]
        if strip.dtype.kind == "f" and not np.isfinite(strip).all():
            _nonfinite(name)  # before a window clips infinity to its top value
        if strip.ndim == 3:
            strip = strip.mean(axis=-1)  # colour (SamplesPerPixel 3): the mean of R, G, B
        strip = apply_modality_lut(strip, ds)
        return apply_voi_lut(strip, ds, index=0) if windowed else strip

    try:
        if str(getattr(ds, "PhotometricInterpretation", "")).upper() != "MONOCHROME1":
            return _to_uint8(values, rows, cols, name)
        # MONOCHROME1: high values are dark, so the image is M - v with M its maximum. In the
        # values' own dtype as before; subtraction is monotone, so the new range is M - max
        # to M - min.
        lo, hi, dtype = _value_range(values, _spans(rows, cols), name)

        def inverted(y0: int, y1: int) -> np.ndarray:
            return hi - values(y0, y1)

        return _to_uint8(inverted, rows, cols, name, (hi - hi, hi - lo, dtype))
    except RowError:
        raise
    except Exception as e:  # a LUT the data does not fit: pydicom raises several types
        raise RowError("dicom_unreadable", f"{name}: {type(e).__name__}: {e}") from None


def is_dicom(data: bytes, name: str = "") -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def decode(data: bytes, name: str = "image", draft_size: int | None = None) -> np.ndarray:
    """Decodes JPEG, PNG (8/16-bit), DICOM or any Pillow format to 8-bit grayscale.

    The size is checked from the header first (``MAX_PIXELS``, ``MIN_SIDE``); an EXIF
    orientation is applied, so the film is upright as a viewer shows it; a multi-frame file
    gives its first frame. Peak memory is about the decoded image plus one uint8 copy
    (BUILD_NOTES.md).

    Args:
        data: the file's bytes.
        name: the file's path, for error messages.
        draft_size: if set, a JPEG may be decoded at a reduced scale no smaller than this.

    Returns:
        uint8 array (height, width), upright.

    Raises:
        RowError: ``empty_file``, ``image_too_large``, ``image_too_small``,
            ``truncated_image``, ``not_an_image``, ``nonfinite_pixels`` (NaN or infinity in
            a float TIFF or DICOM) or ``dicom_unreadable``.
    """
    if not data:
        raise RowError("empty_file", f"{name}: zero bytes")
    if is_dicom(data, name):
        return _decode_dicom(data, name)
    return _decode_pil(data, name, draft_size)


def refuse_non_file(path: str, name: str) -> None:
    """Refuses a path that is not a regular file (a FIFO, a device, a socket, a folder):
    opening a FIFO blocks until something writes to it, which would hang a nightly job.

    Raises:
        RowError: ``not_a_file``.
    """
    if "://" in path:
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the read that follows says which
    if not stat.S_ISREG(mode):
        raise RowError("not_a_file", _NOT_A_FILE.format(name=name))


_NOT_A_FILE = "{name}: not a regular file (a folder, FIFO or device); not read"


def refuse_link_outside(path: str, name: str, real_folders: dict[str, str] | None = None) -> None:
    """Refuses a dataset file that a symbolic link takes out of its dataset folder.

    ``schemas.chexpert.normalize_path`` checks a CSV path as text (relative, no ``..``), but
    a link inside the dataset, on the file or on any folder above it, can still lead
    anywhere (``patient1/study1/view1_frontal.jpg -> ~/.ssh/id_rsa``), and reading it would
    copy a file from outside the dataset into the records. So the file's real path must lie
    under the real path of its dataset folder: the first part of ``name``
    (``CheXpert-v1.0-small/``), which may itself be a link, as when ``--input_dir`` names one
    or the dataset lives on another disk. Checked before the file is opened; a link swapped
    between the check and the read is not covered (the dataset is not a hostile filesystem).

    Args:
        path: the file's full path, the dataset root joined with ``name``.
        name: its path relative to the dataset root, as the CSV gives it.
        real_folders: a caller's memo of dataset folder -> its real path, kept for the files
            of one shard: the folder is the same for every one of them, and resolving it is
            half of this check's cost (measured, BUILD_NOTES).

    Raises:
        RowError: ``link_outside_dataset``.
        ValueError: ``path`` does not end with ``name`` (a caller's mistake).
    """
    if "://" in path or path == name:
        return  # object stores have no links; with no dataset root there is nothing to leave
    if not path.endswith("/" + name):
        raise ValueError(f"refuse_link_outside: {path!r} is not a root joined with {name!r}")
    folder = _dataset_folder(path, name)
    if real_folders is None:
        folder, real = os.path.realpath(folder), os.path.realpath(path)
    else:
        real = _real_file(path, folder, real_folders)
        folder = real_folders[folder]
    _refuse_outside(name, real, folder)


def _dataset_folder(path: str, name: str) -> str:
    """The dataset folder of a file: the root ``path`` was joined from, and ``name``'s first part."""
    return path[: len(path) - len(name)] + name.split("/", 1)[0]


def _refuse_outside(name: str, real: str, folder: str) -> None:
    # Both are real paths (normalized, absolute): a file inside ``folder`` starts with it and
    # a slash, the common case, tested without commonpath's splitting (~4 us an image).
    if real.startswith(folder + "/"):
        return
    if os.path.commonpath([folder, real]) != folder:
        raise RowError("link_outside_dataset",
                       f"{name}: a symbolic link leads to {real}, outside the dataset folder {folder}; not followed")


def read_plain_file(path: str, name: str, real_folders: dict[str, str]) -> tuple[bytes, os.stat_result] | None:
    """``refuse_link_outside``, ``refuse_non_file`` and the read, for the common case of a
    local file that is not itself a link: one ``lstat`` serves both checks (for a file that
    is not a link, ``stat`` is ``lstat``), and the file is read with ``os.read`` into one
    buffer of its size. The writer's path for every image (BUILD_NOTES, issue 14).

    Args:
        path, name: as ``refuse_link_outside`` takes them.
        real_folders: its memo (required: this is the per-shard writer's path).

    Returns:
        The file's bytes and the ``fstat`` of the file opened, taken before the read (a
        change during or after the read gives the file another mtime than this), or None
        where the general path must decide: a link, a missing or unreadable file, anything
        but a regular file (the general path refuses it, after taking its stat), a path
        that is not a root joined with ``name``, an object store.

    Raises:
        RowError: ``link_outside_dataset`` (a folder above the file is a link out of the
            dataset folder).
    """
    if "://" in path or path == name or not path.endswith("/" + name):
        return None
    parent, base = os.path.split(path)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    mode = st.st_mode
    if not stat.S_ISREG(mode) or base in (".", ".."):
        return None
    folder = _dataset_folder(path, name)
    _refuse_outside(name, os.path.join(_real_dir(parent, folder, real_folders), base),
                    _real_dir(folder, folder, real_folders))
    try:
        # Swapped in since the lstat: a link fails the open (O_NOFOLLOW) rather than being
        # followed; a FIFO opens without waiting for a writer (O_NONBLOCK) and fstat sees it.
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
    except OSError:
        return None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return None
        return _read_all(fd, opened.st_size), opened
    except OSError:
        return None
    finally:
        os.close(fd)


_NOFOLLOW, _NONBLOCK, _CLOEXEC = (getattr(os, f, 0) for f in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC"))


def _read_all(fd: int, size: int) -> bytes:
    """Everything from ``fd`` to its end, expected to be ``size`` bytes: one read of
    ``size + 1`` and a one-byte read that finds the end, as ``readall`` does but without its
    file object and ``fstat``; a file that grew or a short read takes more reads, until one
    returns nothing."""
    data = os.read(fd, size + 1)
    chunks = [data, os.read(fd, 1 if len(data) == size else max(size - len(data), 1 << 16))]
    if not chunks[-1]:
        return data
    while chunks[-1]:  # what lstat said is not what there is (or a read stopped at 2 GiB)
        chunks.append(os.read(fd, 1 << 20))
    return b"".join(chunks)


def _real_dir(d: str, folder: str, memo: dict[str, str]) -> str:
    """The real path of ``folder`` or a folder below it, with one ``lstat`` per folder not
    in ``memo`` (``os.path.realpath`` checks every component of the absolute path: ~9
    ``lstat`` calls per image on CheXpert's layout, most of a writer's link check)."""
    real = memo.get(d)
    if real is None:
        parent, base = os.path.split(d)
        if len(d) <= len(folder) or not base or base in (".", ".."):
            real = os.path.realpath(d)
        else:
            try:
                is_link = stat.S_ISLNK(os.lstat(d).st_mode)
            except OSError:
                is_link = True  # missing or unreadable: realpath says where it points
            real = os.path.realpath(d) if is_link else os.path.join(_real_dir(parent, folder, memo), base)
        memo[d] = real
    return real


def _real_file(path: str, folder: str, memo: dict[str, str]) -> str:
    """``os.path.realpath(path)`` for a file below ``folder``, its folders resolved once
    (``_real_dir``); a link or a missing file goes through ``os.path.realpath`` itself."""
    _real_dir(folder, folder, memo)
    parent, base = os.path.split(path)
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        is_link = True
    if is_link or base in (".", ".."):
        return os.path.realpath(path)
    return os.path.join(_real_dir(parent, folder, memo), base)


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


def resize_frame(height: int, width: int, mode: str = "squash") -> tuple[int, int, int, int]:
    """Where ``resize``'s square output lies on its input, for mapping results back.

    ``resize(pixels, size, mode)`` shows, stretched uniformly to ``size`` x ``size``, the
    rectangle returned here: the whole image (``squash``, each axis by its own factor), its
    centre square (``crop``: the rest was never seen), or a square larger than the image
    (``pad``: the top/left offsets are negative and the part outside the image is black).
    Output pixel ``(i, j)`` covers input rows ``top + [i, i + 1) * frame_height / size`` and
    columns ``left + [j, j + 1) * frame_width / size``. Kept beside ``resize`` and tested
    against it, so the two cannot drift apart.

    Args:
        height, width: the decoded image's size, as ``resize`` received it.
        mode: a ``RESIZE_MODES`` value.

    Returns:
        ``(top, left, frame_height, frame_width)`` in input pixels, ints.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if mode == "crop" and height != width:
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side
    if mode == "pad" and height != width:
        side = max(height, width)
        return -((side - height) // 2), -((side - width) // 2), side, side
    return 0, 0, height, width


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


# File names the scorers take when given a folder (case-insensitive; core.inputs).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")
