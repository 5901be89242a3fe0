"""schemas/sources.py: a folder's dataset format from its file names."""

from __future__ import annotations

import pytest

from schemas import chexpert, sources


@pytest.mark.parametrize("names,fmt", [
    (["train.csv", "valid.csv", "train/", "valid/"], "chexpert"),
    (["valid.csv"], "chexpert"),
    (["Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt", "images_001/"], "nih"),
    (["Data_Entry_2017_v2020.csv"], "nih"),
    (["sample_labels.csv", "images"], "nih"),
    (["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-chexpert.csv.gz", "files/"], "mimic"),
    (["gs://b/mimic/mimic-cxr-2.0.0-metadata.csv"], "mimic"),
])
def test_each_format_by_the_files_it_ships(names, fmt):
    assert sources.detect_format(names, "data/x") == fmt


def test_no_format_names_the_folder_and_what_each_needs():
    with pytest.raises(sources.FormatError, match=r"^data/x: no dataset.*train\.csv.*Data_Entry_2017\.csv.*"
                                                  r"mimic-cxr-2\.0\.0-metadata\.csv"):
        sources.detect_format(["README.md", "images/"], "data/x")


def test_several_formats_name_the_folder_the_files_and_the_flag():
    with pytest.raises(sources.FormatError, match=r"^data/x: .*2 datasets: chexpert \(train\.csv\); nih "
                                                  r"\(sample_labels\.csv\).*--format chexpert\|nih\|mimic"):
        sources.detect_format(["train.csv", "sample_labels.csv"], "data/x")


def test_labelled_observations_per_format():
    assert sources.labelled("chexpert") == chexpert.OBSERVATIONS
    assert sources.labelled("mimic") == chexpert.OBSERVATIONS
    nih_obs = sources.labelled("nih")
    assert "pleural_effusion" in nih_obs and "cardiomegaly" in nih_obs
    assert "support_devices" not in nih_obs and "lung_opacity" not in nih_obs
    with pytest.raises(sources.FormatError, match="format 'x'"):
        sources.labelled("x")
