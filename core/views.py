"""Which view a radiograph file shows, from what the file itself says: frontal, lateral or unknown.

Two sources are believed, in this order:

1. A DICOM file's ViewPosition tag (PS3.3 C.8.11.5: ``AP``/``PA`` frontal, ``LL``/``RL``
   left/right lateral); other values (obliques, decubitus, empty) say nothing we can use.
2. A CheXpert file name, ``view<N>_frontal.jpg`` / ``view<N>_lateral.jpg`` (the whole base
   name, as CheXpert writes it; a browser's `` (1)`` copy suffix is allowed).

Anything else is ``unknown``: ``scan.jpg`` may be either view, and a word inside a free
name (``lateral_scan.jpg``, ``not_lateral.png``) is a person's label, not a fact about the
pixels. Callers should say "view unknown" rather than guess. Nothing here imports
TensorFlow or a web framework; pydicom is imported only for DICOM files.
"""

from __future__ import annotations

import io
import os
import re

from core import imaging

FRONTAL, LATERAL, UNKNOWN = "frontal", "lateral", "unknown"
VIEWS = (FRONTAL, LATERAL, UNKNOWN)
# DICOM ViewPosition defined terms (PS3.3 C.8.11.5.1.1) and the spelled-out values some
# modalities write. LLD/RLD (decubitus) and LLO/RLO (oblique) are deliberately absent.
_DICOM_VIEWS = {"AP": FRONTAL, "PA": FRONTAL, "LL": LATERAL, "RL": LATERAL, "LAT": LATERAL, "LATERAL": LATERAL}
# The whole base name, so that only CheXpert's own naming counts (schemas.chexpert's paths
# end in .../study1/view1_frontal.jpg).
_CHEXPERT_NAME = re.compile(r"view\d+_(frontal|lateral)(?: \(\d+\))?\.(?:jpe?g|png|dcm|dicom)")


def dicom_view(data: bytes, name: str = "") -> str:
    """The view a DICOM file's ViewPosition tag names.

    Args:
        data: the file's bytes.
        name: its file name (``.dcm``/``.dicom`` marks DICOM without a preamble).

    Returns:
        ``frontal``, ``lateral``, or ``unknown`` when the file is not DICOM, its header
        cannot be read, or the tag is missing or names another projection.
    """
    if not imaging.is_dicom(data, name):
        return UNKNOWN
    import pydicom  # lazily, as core.imaging does: most uploads are JPEG or PNG

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        position = str(getattr(ds, "ViewPosition", "") or "")
    except Exception:  # pydicom raises many types; a header it cannot read names no view
        return UNKNOWN
    return _DICOM_VIEWS.get(position.strip().upper(), UNKNOWN)


def name_view(name: str) -> str:
    """The view a CheXpert-style file name states (``view2_lateral.jpg``), else ``unknown``."""
    match = _CHEXPERT_NAME.fullmatch(os.path.basename(name.replace("\\", "/")).lower())
    return match.group(1) if match else UNKNOWN


def view_of(name: str, data: bytes | None = None) -> str:
    """``frontal``, ``lateral`` or ``unknown`` for an image file.

    The DICOM tag wins over the name: it was written by the modality, the name by whoever
    saved the file.

    Args:
        name: the file name (a path or a browser's base name).
        data: the file's bytes, or None to judge by the name alone.
    """
    if data is not None:
        view = dicom_view(data, name)
        if view != UNKNOWN:
            return view
    return name_view(name)
