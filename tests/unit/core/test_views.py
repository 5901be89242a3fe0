"""core.views: the view a file states (DICOM ViewPosition, CheXpert names), else unknown."""

from __future__ import annotations

import pytest

from core import views
from tests import images
from tests.images import dicom_with_view


@pytest.mark.parametrize("name, view", [
    ("view1_frontal.jpg", "frontal"),
    ("view2_lateral.jpg", "lateral"),
    ("VIEW3_LATERAL.JPEG", "lateral"),
    ("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", "lateral"),
    ("C:\\Users\\me\\view1_frontal.png", "frontal"),
    ("view2_lateral (1).jpg", "lateral"),  # a browser's second download of the same file
    ("scan.jpg", "unknown"),
    ("lateral_scan.jpg", "unknown"),  # a word in a free name is a label, not a fact
    ("not_lateral.png", "unknown"),
    ("view2_lateral.jpg.txt", "unknown"),
    ("myview2_lateral.jpg", "unknown"),
    ("view_lateral.jpg", "unknown"),
    ("", "unknown"),
])
def test_name_view_takes_only_chexpert_names(name, view):
    assert views.name_view(name) == view
    assert views.view_of(name) == view


@pytest.mark.parametrize("position, view", [
    ("PA", "frontal"), ("AP", "frontal"), ("LL", "lateral"), ("RL", "lateral"), ("LATERAL", "lateral"),
    ("LLD", "unknown"), ("RLO", "unknown"), ("", "unknown"), (None, "unknown"),
])
def test_dicom_view_position(position, view):
    assert views.dicom_view(dicom_with_view(position), "scan.dcm") == view


def test_the_dicom_tag_wins_over_the_name_and_the_name_fills_in_when_the_tag_is_silent():
    assert views.view_of("scan.dcm", dicom_with_view("LL")) == "lateral"
    assert views.view_of("view1_frontal.dcm", dicom_with_view("LL")) == "lateral"
    assert views.view_of("lateral_scan.dcm", dicom_with_view("PA")) == "frontal"
    assert views.view_of("view2_lateral.dcm", dicom_with_view(None)) == "lateral"
    # A JPEG is not parsed as DICOM; a damaged DICOM header names no view.
    assert views.view_of("scan.jpg", images.jpeg_bytes(images.gradient())) == "unknown"
    assert views.view_of("scan.dcm", b"DICM but not really") == "unknown"
