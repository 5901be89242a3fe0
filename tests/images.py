"""Builders for test images in every format the readers must handle."""

from __future__ import annotations

import io

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
                compressed: bool = False) -> bytes:
    """A minimal valid DICOM file holding ``arr`` (uint16, 12 bits stored)."""
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
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if compressed:
        # Encapsulated pixel data that is not a JPEG stream: no handler can decode it.
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\xd8not a jpeg"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = arr.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
