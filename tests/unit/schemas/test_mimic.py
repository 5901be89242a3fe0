"""schemas/mimic.py: MIMIC-CXR-JPG's metadata, per-study labels and split, the image path
rule and the join; neither TensorFlow nor Beam."""

from __future__ import annotations

import pytest

from schemas import chexpert, external, mimic

C = chexpert.Code
DICOM = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
META_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
               "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
               "PatientOrientationCodeSequence_CodeMeaning").split(",")
# The labels file's own column order (alphabetical), which is not CheXpert's: read by name.
LABELS_HEADER = ["subject_id", "study_id"] + sorted(chexpert.OBSERVATION_NAMES)


def _meta(dicom=DICOM, subject="10000032", study="50414267", view="PA") -> dict:
    values = [dicom, subject, study, "CHEST (PA AND LAT)", view, "3056", "2544", "21800506", "213014.531",
              "CHEST (PA AND LAT)", "postero-anterior", "Erect"]
    return dict(zip(META_HEADER, values))


def _labels(subject="10000032", study="50414267", **cells) -> dict:
    row = dict.fromkeys(LABELS_HEADER, "")
    row.update(subject_id=subject, study_id=study)
    row.update(cells)
    return row


def test_labels_are_chexpert_codes_read_by_name():
    labels = mimic.parse_labels_row(_labels(**{"No Finding": "1.0", "Edema": "-1.0", "Support Devices": "0.0"}))
    assert labels.subject_id == "10000032" and labels.study_id == "50414267"
    expected = [C.BLANK] * 14
    expected[chexpert.OBSERVATION_INDEX["no_finding"]] = C.POSITIVE
    expected[chexpert.OBSERVATION_INDEX["edema"]] = C.UNCERTAIN
    expected[chexpert.OBSERVATION_INDEX["support_devices"]] = C.NEGATIVE
    assert labels.codes == tuple(expected)
    assert labels.findings == ("No Finding",)


@pytest.mark.parametrize("cells,reason", [
    ({"Edema": "2.0"}, "bad_label"), ({"Edema": "yes"}, "bad_label"),
    ({"subject_id": "p10000032"}, "bad_id"), ({"study_id": ""}, "bad_id"), ({"subject_id": "1"}, "bad_id"),
])
def test_a_bad_labels_row_says_why(cells, reason):
    with pytest.raises(chexpert.RowError) as e:
        mimic.parse_labels_row(_labels(**cells))
    assert e.value.reason == reason


def test_the_image_path_rule():
    assert mimic.image_path("10000032", "50414267", DICOM) == f"files/p10/p10000032/s50414267/{DICOM}.jpg"
    assert mimic.image_path("19999987", "58971208", "x").startswith("files/p19/p19999987/s58971208/")


def test_a_studys_images_share_its_labels():
    index, duplicates = mimic.index_study_labels([
        mimic.parse_labels_row(_labels(**{"Cardiomegaly": "1.0", "Pleural Effusion": "-1.0"})),
        mimic.parse_labels_row(_labels(subject="10000764", study="57375967", **{"No Finding": "1.0"})),
    ])
    assert not duplicates
    frontal = mimic.join_row(_meta(), index)
    lateral = mimic.join_row(_meta(dicom="174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", view="LATERAL"), index)
    other = mimic.join_row(_meta(dicom="abc", subject="10000764", study="57375967", view="AP"), index)
    assert frontal.codes == lateral.codes != other.codes
    assert frontal.findings == lateral.findings == ("Cardiomegaly",)
    assert frontal.study_id == lateral.study_id == "10000032/50414267"
    assert (frontal.view, lateral.view, other.view) == ("frontal", "lateral", "frontal")
    assert frontal == external.ExternalRow(
        dataset="mimic", path=f"files/p10/p10000032/s50414267/{DICOM}.jpg", patient_id="10000032",
        study_id="10000032/50414267", sex="Unknown", age=None, view="frontal", projection="PA",
        codes=index["50414267"].codes, findings=("Cardiomegaly",))


@pytest.mark.parametrize("position,view", [("PA", "frontal"), ("AP", "frontal"), ("LATERAL", "lateral"),
                                           ("LL", "lateral"), ("ap", "frontal"), ("AP AXIAL", "unknown"),
                                           ("LAO", "unknown"), ("PA LLD", "unknown"), ("", "unknown")])
def test_view_from_view_position(position, view):
    index, _ = mimic.index_study_labels([mimic.parse_labels_row(_labels())])
    assert mimic.join_row(_meta(view=position), index).view == view


def test_an_image_whose_study_has_no_labels_or_another_subject():
    index, _ = mimic.index_study_labels([mimic.parse_labels_row(_labels())])
    with pytest.raises(chexpert.RowError) as e:
        mimic.join_row(_meta(study="59999999"), index)
    assert e.value.reason == "no_labels" and "59999999" in e.value.detail
    with pytest.raises(chexpert.RowError) as e:
        mimic.join_row(_meta(subject="10000033"), index)
    assert e.value.reason == "bad_id"
    for bad in ("", "../x", "a/b"):
        with pytest.raises(chexpert.RowError) as e:
            mimic.join_row(_meta(dicom=bad), index)
        assert e.value.reason == "bad_path"


def test_a_second_labels_row_for_a_study_is_returned_not_merged():
    first, second = mimic.parse_labels_row(_labels(Edema="1.0")), mimic.parse_labels_row(_labels(Edema="0.0"))
    index, duplicates = mimic.index_study_labels([first, second])
    assert index == {"50414267": first} and duplicates == [second]


def test_the_split_file():
    row = {"dicom_id": DICOM, "study_id": "50414267", "subject_id": "10000032", "split": "validate"}
    assert mimic.parse_split_row(row) == (DICOM, "validate")
    with pytest.raises(chexpert.RowError) as e:
        mimic.parse_split_row({**row, "split": "valid"})
    assert e.value.reason == "bad_split"


def test_headers():
    mimic.check_metadata_header(META_HEADER, "metadata.csv")
    mimic.check_metadata_header(META_HEADER[:3] + ["ViewPosition"], "metadata.csv")  # only the four are read
    mimic.check_labels_header(LABELS_HEADER, "chexpert.csv")
    mimic.check_split_header(["dicom_id", "study_id", "subject_id", "split"], "split.csv")
    with pytest.raises(chexpert.CsvHeaderError, match="missing column.*'ViewPosition'"):
        mimic.check_metadata_header(META_HEADER[:4], "metadata.csv")
    with pytest.raises(chexpert.CsvHeaderError, match="missing column.*'Edema'.*unknown column.*'Path'"):
        mimic.check_labels_header([c for c in LABELS_HEADER if c != "Edema"] + ["Path"], "chexpert.csv")
