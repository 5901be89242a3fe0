"""Memory per image: the largest image the pixel cap accepts is preprocessed within a bound,
measured in a fresh process (tests/decode_peak.py), for the two formats that used to be
converted through whole-image float64 copies (about 2.0 and 2.7 GB at this size)."""

from __future__ import annotations

import os

import pytest

from core import imaging
from tests import decode_peak, images

# Decoded 16-bit pixels (2 bytes each; pydicom briefly holds them twice, 4), the uint8 output
# (1) and strip temporaries: measured 3.1 (PNG) and 3.8 (DICOM) bytes per pixel. The bound
# leaves 1.5x of room and is 5x below the float64 conversion's 25-34 bytes per pixel.
MAX_BYTES_PER_PIXEL = 6


@pytest.mark.parametrize("name", ["png16_80mpx.png", "dicom16_80mpx.dcm"])
def test_largest_accepted_image_is_decoded_in_bounded_memory(tmp_path, name):
    side = decode_peak.MAX_SIDE
    assert side**2 <= imaging.MAX_PIXELS < (side + 1) ** 2  # the largest square the cap lets through
    path = str(tmp_path / name)
    if name.endswith(".png"):
        images.write_png16(path, side, side)
    else:
        images.write_dicom16(path, side, side)
    try:
        result = decode_peak.measure(path)
    finally:
        os.remove(path)  # 160 MB
    assert result["shape"] == [320, 320]  # accepted and preprocessed, not refused
    limit_mb = MAX_BYTES_PER_PIXEL * side**2 / 2**20
    assert result["peak_increase_mb"] < limit_mb, f"{name}: peak +{result['peak_increase_mb']} MB > {limit_mb:.0f}"
