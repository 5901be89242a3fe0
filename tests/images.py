"""Builders for test images in every format the readers must handle."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def gradient(h: int = 64, w: int = 48, dtype=np.uint8, maxval: int = 255) -> np.ndarray:
    """A deterministic ramp: each pixel differs from its neighbours, so resizes are visible."""
    y, x = np.mgrid[0:h, 0:w]
    return ((y * w + x) * maxval // (h * w - 1)).astype(dtype)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if arr.dtype == np.uint16:
        Image.fromarray(arr).save(buf, format="PNG")  # mode I;16
    else:
        Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def dicom_bytes(arr: np.ndarray, *, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None,
                rescale: tuple[float, float] | None = None, compressed: bool = False) -> bytes:
    """A minimal valid DICOM file holding ``arr``: uint16 with 12 bits stored, or float32
    (Float Pixel Data) when ``arr`` is floating point; a 3-D ``arr`` is multi-frame."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if compressed else ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape[-2:]
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if arr.dtype.kind == "f":
        ds.BitsAllocated = 32
        ds.FloatPixelData = arr.astype("<f4").tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if compressed:
        # Encapsulated pixel data that is not a JPEG stream: no handler can decode it.
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\xd8not a jpeg"])
        ds["PixelData"].VR = "OB"
    elif arr.dtype.kind != "f":
        ds.PixelData = arr.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_png16(path: str, width: int, height: int, maxval: int = 4095) -> None:
    """Writes a ``width`` x ``height`` 16-bit grayscale PNG a row at a time.

    Every row is the same ramp (filter "Up" makes rows after the first all zeros), so even a
    79 Mpx image is written in a second with a few MB of memory and is small on disk; its
    decoded size is what the decoder's memory bound is about.
    """
    row = (np.arange(width, dtype=np.int64) * maxval // max(width - 1, 1)).astype(">u2").tobytes()
    same = b"\x02" + bytes(len(row))  # filter type 2 (Up): each byte minus the one above = 0
    comp = zlib.compressobj(1)

    def chunk(f, kind: bytes, body: bytes) -> None:
        f.write(struct.pack(">I", len(body)) + kind + body)
        f.write(struct.pack(">I", zlib.crc32(kind + body)))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        chunk(f, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
        pending = bytearray(comp.compress(b"\x00" + row))
        for _ in range(height - 1):
            pending += comp.compress(same)
            if len(pending) > 1 << 20:
                chunk(f, b"IDAT", bytes(pending))
                pending.clear()
        pending += comp.flush()
        chunk(f, b"IDAT", bytes(pending))
        chunk(f, b"IEND", b"")


def write_dicom16(path: str, rows: int, cols: int) -> None:
    """Writes an uncompressed 16-bit DICOM of ``rows`` x ``cols`` (every row the same ramp)
    through every branch of the DICOM path that used to allocate float64 copies of the whole
    image: a modality rescale, a VOI window and MONOCHROME1 inversion."""
    row = (np.arange(cols, dtype=np.int64) * 4095 // max(cols - 1, 1)).astype(np.uint16)
    with open(path, "wb") as f:
        f.write(dicom_bytes(np.broadcast_to(row, (rows, cols)), photometric="MONOCHROME1", window=(3000, 4000),
                            rescale=(2, -100)))


def float_tiff_bytes(arr: np.ndarray) -> bytes:
    """A 32-bit float TIFF (Pillow mode F), as some research exports are."""
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.float32)).save(buf, format="TIFF")
    return buf.getvalue()


def write_float_tiff(path: str, width: int, height: int) -> None:
    """Writes a deflate-compressed float TIFF of ``width`` x ``height`` (every row a ramp)."""
    row = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (height, width)))).save(
        path, format="TIFF", compression="tiff_deflate")


def dicom_with_view(position: str | None) -> bytes:
    """A small valid DICOM file whose ViewPosition is ``position`` (absent when None)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(gradient(64, 64, maxval=4095))))
    if position is not None:
        ds.ViewPosition = position
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
